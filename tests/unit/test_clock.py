import pickle
import random
from collections import deque

import pytest

from dataflow.clock import PeerClocks

GUARD_MS, BOUND_MS, MEMORY_MS = 1_000, 5_000, 60_000


class RegroupingPeerClocks:
    """The rule PeerClocks keeps, written the plain way: regroup the whole window by peer at every sample."""

    def __init__(self):
        self.samples: dict[str, deque] = {}
        self.known: dict[str, tuple[int, int]] = {}
        self.spread = 0

    def observe(self, looker, reporter, difference_ms, at_ms):
        if looker == reporter or abs(difference_ms) > 2 * BOUND_MS:
            return
        for exporter, peer, sample in ((reporter, looker, difference_ms), (looker, reporter, -difference_ms)):
            samples = self.samples.setdefault(exporter, deque(maxlen=PeerClocks.SAMPLES))
            samples.append((peer, sample, at_ms))
            stats = self.stats(samples)
            if stats is not None:
                self.known[exporter] = stats
                if abs(stats[0]) <= BOUND_MS:
                    self.spread = max(self.spread, abs(stats[0]) + stats[1])

    def forget(self, now_ms):
        for exporter, samples in list(self.samples.items()):
            kept = deque((s for s in samples if s[2] >= now_ms - MEMORY_MS), maxlen=PeerClocks.SAMPLES)
            if len(kept) == len(samples):
                continue
            self.samples[exporter] = kept
            stats = self.stats(kept)
            if stats is None:
                self.known.pop(exporter, None)
            else:
                self.known[exporter] = stats
            if not kept:
                del self.samples[exporter]
        self.spread = max((abs(m) + s for m, s in self.known.values() if abs(m) <= BOUND_MS), default=0)

    @staticmethod
    def stats(samples):
        by_peer: dict[str, list[int]] = {}
        for p, d, _ in samples:
            by_peer.setdefault(p, []).append(d)
        if len(by_peer) < PeerClocks.MIN_PEERS:
            return None
        ordered = sorted(sorted(ds)[len(ds) // 2] for ds in by_peer.values())
        n = len(ordered)
        return ordered[n // 2], ordered[(3 * n) // 4] - ordered[n // 4]

    def clock(self, exporter):
        known = self.known.get(exporter)
        if known is None:
            return 0, max(0, self.spread - GUARD_MS // 2)
        median, scatter = known
        if abs(median) > BOUND_MS:
            return None
        return median, max(0, scatter - GUARD_MS // 2)

    def untrusted(self):
        return sorted(e for e in self.samples if self.clock(e) is None)


def connections(rng: random.Random, count: int):
    """Halves of connections among hosts of which some run skewed (a few beyond the bound), some peers
    much busier than others, with differences coarse enough that equal medians are common."""
    hosts = [f"h{i}" for i in range(rng.randint(4, 14))]
    skew = {h: rng.choice([0, 0, 0, 200, -700, 3_000, -4_000, 7_000, -12_000]) for h in hosts}
    weights = [rng.choice([1, 1, 2, 10]) for _ in hosts]
    for _ in range(count):
        looker, reporter = rng.choices(hosts, weights, k=2)
        noise = rng.choice([0, 0, 50, -50, rng.randint(-600, 600), rng.randint(-3 * BOUND_MS, 3 * BOUND_MS)])
        yield looker, reporter, skew[reporter] - skew[looker] + noise


@pytest.mark.parametrize("seed", range(40))
def test_peer_clocks_decide_exactly_as_regrouping_the_window_would(seed):
    rng = random.Random(seed)
    clocks, reference = PeerClocks(GUARD_MS, BOUND_MS, MEMORY_MS), RegroupingPeerClocks()
    evidence = list(connections(rng, 1200))
    hosts = sorted({h for looker, reporter, _ in evidence for h in (looker, reporter)}) + ["never-seen"]
    now, full, forgotten = 0, False, set()
    for step, (looker, reporter, difference) in enumerate(evidence):
        # Samples come at uneven rates, and once after a quiet spell longer than the memory.
        now += rng.choice([0, 10, 100, 500]) + (2 * MEMORY_MS if step == len(evidence) // 3 else 0)
        if step % 7 == 0:
            before = set(reference.known)
            clocks.forget(now)
            reference.forget(now)
            forgotten |= before - set(reference.known)
        clocks.observe(looker, reporter, difference, now)
        reference.observe(looker, reporter, difference, now)
        if step == len(evidence) // 2:  # a shard restored from its snapshot goes on deciding the same
            clocks = pickle.loads(pickle.dumps(clocks, protocol=pickle.HIGHEST_PROTOCOL))
        assert clocks.known == reference.known, step
        assert clocks.spread == reference.spread, step
        assert [clocks.clock(h) for h in hosts] == [reference.clock(h) for h in hosts], step
        assert clocks.untrusted() == reference.untrusted(), step
        full = full or any(len(s) == PeerClocks.SAMPLES for s in reference.samples.values())
    # The sequences reached what the equivalence is about: full windows, and clocks known, then forgotten.
    assert full, "no full window"
    assert forgotten, "no clock forgotten"


def test_a_clock_is_known_only_from_the_differences_of_its_memory():
    clocks = PeerClocks(GUARD_MS, BOUND_MS, MEMORY_MS)
    for i, peer in enumerate(("a", "b", "c")):  # "fast" runs 3 s ahead of three peers
        clocks.observe(peer, "fast", 3_000, at_ms=i)
    clocks.observe("d", "e", 0, at_ms=MEMORY_MS)
    assert clocks.clock("fast") == (3_000, 0)
    assert clocks.clock("never-seen") == (0, 3_000 - GUARD_MS // 2)  # as far off as any known clock
    clocks.forget(MEMORY_MS)  # nothing is older than the memory yet
    assert clocks.clock("fast") == (3_000, 0)
    clocks.forget(MEMORY_MS + 1)  # the first difference is gone: two peers are too few to know it
    assert "fast" not in clocks.known and clocks.spread == 0
    assert clocks.clock("fast") == clocks.clock("never-seen") == (0, 0)
    clocks.forget(MEMORY_MS + 3)
    assert "fast" not in clocks.samples and set(clocks.samples) == {"d", "e"}


def test_one_busy_peer_with_a_bad_clock_cannot_pass_its_offset_on():
    clocks = PeerClocks(GUARD_MS, BOUND_MS, MEMORY_MS)
    for i in range(40):  # "bad" runs 8 s ahead and reports most of "web"'s connections
        clocks.observe("web", "bad", 8_000, i)
        if i % 4 == 0:
            clocks.observe("web", f"peer-{i % 12}", 0, i)
            clocks.observe(f"peer-{i % 12}", "bad", 8_000, i)
    assert clocks.clock("web") == (0, 0)
    assert clocks.known["bad"] == (8_000, 0)
    assert clocks.untrusted() == ["bad"]


def test_held_bytes_are_eight_for_each_difference_its_peers_order_and_their_medians():
    clocks = PeerClocks(500, 30_000, 60_000)
    for k in range(40):  # more than SAMPLES: the oldest leave
        clocks.observe("a", "b", 100 + k, 1_000 + k)
    kept = PeerClocks.SAMPLES
    # each of a and b: (key, time) per difference, the sorted keys, one median
    assert clocks.nbytes() == 2 * 8 * (2 * kept + kept + 1)
    clocks.forget(1_000_000)
    assert clocks.nbytes() == 0


def test_a_bound_whose_differences_would_not_fit_a_sample_key_is_refused():
    PeerClocks(500, (1 << 30) - 1, 60_000)
    with pytest.raises(ValueError):
        PeerClocks(500, 1 << 30, 60_000)
