"""The sustained benchmark reads a run's RSS only once it has settled: the rule that decides whether a run
goes on, and what its plateau says."""

from bench.sustained import flat, last_minute, plateau

MIB = 2**20


def samples(rss_mib_at: list[tuple[float, float]]) -> list[dict]:
    return [{"s": s, "rss": int(mib * MIB), "cpu": s / 2, "answered": int(s * 100)} for s, mib in rss_mib_at]


def test_a_minute_moving_by_less_than_its_share_is_flat_and_one_moving_more_is_not():
    steady = samples([(420 + 5 * i, 200 + 0.3 * i) for i in range(13)])  # +3.6 MiB over the minute: 1.8%
    falling = samples([(420 + 5 * i, 220 - 0.5 * i) for i in range(13)])  # -6 MiB a minute: 2.8%
    assert flat(steady)
    assert not flat(falling)
    assert not flat(steady[:1])  # one sample says nothing of a drift


def test_the_last_minute_is_read_from_the_run_length_not_from_the_planned_one():
    run = samples([(5 * i, 100 + i) for i in range(121)])  # 600 s
    assert [s["s"] for s in last_minute(run, 600)] == [540 + 5 * i for i in range(13)]


def test_a_plateau_says_whether_the_run_had_settled():
    rising = samples([(5 * i, 100 + (i if i < 84 else 84)) for i in range(97)])  # flat from 420 s on
    figures = {"delay_s": 60, "max_wait_s": 300, "rate": 1000, "base_rss": 50 * MIB, "samples": rising}
    settled = plateau({**figures, "seconds": 480})
    assert settled["flat"] and settled["drift_per_min"] == 0
    assert settled["rss"] == 184 * MIB and settled["growth"] == 134 * MIB
    # A run that ended before delay + max wait (360 s) never read a full window.
    assert plateau({**figures, "samples": rising[:61], "seconds": 300}) is None
    moving = plateau({**figures, "samples": samples([(5 * i, 100 + i) for i in range(97)]), "seconds": 480})
    assert not moving["flat"] and moving["drift_per_min"] == 12 * MIB
