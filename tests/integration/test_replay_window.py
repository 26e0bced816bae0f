"""What a replay reads is enough to answer its range as the live job did, even when the live job learned
the exporters' clocks from a burst of history well before the range, and when the range's long
connections close (and so arrive) long after it: the job's own router and shards, in this process, fed
every message (the live job), and a replay (`flowattr replay`'s own) fed only its window, must answer
every flow of the range that arrived by --until the same, each once, and no other."""

from __future__ import annotations

import itertools
import random
import zlib
from pathlib import Path

import orjson
import pytest

from dataflow import simulate as sim
from dataflow.attribution import Shard
from dataflow.config import load_config
from dataflow.entitlements import Entitlements
from dataflow.kafka_io import input_topics
from dataflow.records import Origin
from dataflow.replay import Replay, Window
from dataflow.routing import Message, Router, Tally
from tests.integration.test_local_scale import write_config

DAY_MS = 86_400_000
BASE_MS = 1_780_000_000_000 // DAY_MS * DAY_MS


def outcome(a):
    return a["outcome"], a["remote_workload"], a["reason"], a["source"], a["match"]


def delivered(config, fleet, start_ms: int) -> list[tuple[int, str, bytes | None, bytes]]:
    """(arrival, topic, key, value) as a fleet published into a running job arrives: the history the
    simulation starts with (batches due before its start) all at once, as the publisher sends it on
    starting, then every batch at its time."""
    k = config.kafka
    rng = random.Random(5)  # each batch a little after its time, as a loaded machine sends it
    messages = [(m.arrival_ms + rng.randrange(500), k.raw_topic, m.key, m.value) for m in fleet.flow_messages]
    messages += [(m.arrival_ms, config.forward_topic(sim.HOME), m.key, m.value) for m in fleet.forwarded_messages]
    history = sorted(m for m in messages if m[0] < start_ms)
    burst = [(start_ms - 5_000 + i, topic, key, value) for i, (_, topic, key, value) in enumerate(history)]
    events = [(start_ms - 6_000, k.ip_events_topic, None, m.value) for m in fleet.ip_event_messages]
    return sorted(events + burst + [m for m in messages if m[0] >= start_ms], key=lambda m: m[0])


def entitlements_of(config, fleet) -> Entitlements:
    entitlements = Entitlements(bool(config.trust.require_entitlement), config.entitlements)
    for m in fleet.entitlement_messages:
        record = orjson.loads(m.value)
        entitlements.set(record["exporter"], record["cidrs"])
    return entitlements


def as_read(config, messages) -> list[Message]:
    """The messages as a consumer reads them, three partitions a topic, keyed as their producer keyed them."""
    roles = input_topics(config)
    partitions = config.kafka.partitions
    offsets: dict[tuple[str, int], int] = {}
    read = []
    for arrival, topic, key, value in messages:
        p = zlib.crc32(key or b"") % partitions
        offsets[topic, p] = offset = offsets.get((topic, p), -1) + 1
        read.append(Message(value, Origin(topic, p, offset, roles[topic]), key=key, arrival_ms=arrival))
    return read


def caught_up(config, at_ms: int) -> list[Message]:
    return [Message(None, Origin(topic, p, -1, role), caught_up_ms=at_ms)
            for topic, role in input_topics(config).items() for p in range(config.kafka.partitions)]


def every_partition(config) -> frozenset:
    return frozenset((role, p) for role in input_topics(config).values() for p in range(config.kafka.partitions))


def answer(config, fleet, messages, now_ms: int) -> dict[str, dict]:
    """Every flow the router and shards answer for every message (the live job)."""
    ticks = itertools.count(1)
    router = Router(config, Tally(), entitlements_of(config, fleet), now_ms=lambda: now_ms,
                    wall_s=lambda: float(next(ticks)))
    shards: dict[str, Shard] = {}
    answers: dict[str, dict] = {}

    def route(batch):
        for key, item in router.route(batch):
            if key in ("forward", "dead"):
                continue
            if key != "answered":
                shard = shards.get(key)
                if shard is None:
                    shard = shards[key] = Shard(config.attribution, every_partition(config),
                                                int(config.trust.clock_bound_s * 1000))
                item = shard.absorb(item)
            answers.update((a["flow_id"], a) for a in item)

    read = as_read(config, messages)
    for i in range(0, len(read), 20):
        route(read[i : i + 20])
    route(caught_up(config, now_ms))
    return answers


def replay(config, fleet, window: Window, messages) -> Replay:
    """`flowattr replay`'s reading of the window: from where it starts to where it ends, then its end."""
    events = config.kafka.ip_events_topic
    read = [m for m in as_read(config, messages)
            if (window.events_from_ms if m.origin.topic == events else window.read_from_ms) <= m.arrival_ms
            < window.read_to_ms]
    result = Replay(config, window, entitlements_of(config, fleet), every_partition(config))
    for i in range(0, len(read), 20):
        result.route(read[i : i + 20])
    result.route(caught_up(config, window.read_to_ms - 1))
    result.finish()
    return result


def arrivals(config, messages) -> dict[str, int]:
    """Each flow's arrival, by its id."""
    flows = (config.kafka.raw_topic, config.forward_topic(sim.HOME))
    return {r["flow_id"]: arrival for arrival, topic, _, value in messages if topic in flows
            for r in orjson.loads(value) if r["kind"] == "flow"}


# (where the fleet starts within a minute, where the range starts after the fleet does, --until after
# --to, None for the default): the burst of history lands within the range's warm-up, or well before it
# (the replay then never reads it).
@pytest.mark.parametrize("phase_ms, range_s, until_s", [(58_234, 30, None), (58_234, 110, 10), (22_234, 110, None)])
def test_a_replay_reads_enough_before_its_range_to_answer_as_the_live_job(tmp_path: Path, phase_ms: int,
                                                                           range_s: int, until_s: int | None):
    start = BASE_MS + phase_ms
    fleet = sim.simulate(sim.Scenario(seed=31, start_ms=start, duration_s=170, interval_s=10, mean_delay_s=1.0,
                                      late_delay_s=15.0))
    config = load_config(write_config(tmp_path / "flowattr.toml", "127.0.0.1:9", "t."), environ={})
    messages = delivered(config, fleet, start)
    now = start + 3_600_000
    live = answer(config, fleet, messages, now)

    lo, hi = start + range_s * 1000, start + range_s * 1000 + 40_000
    window = Window(config, lo, hi, now, None if until_s is None else hi + until_s * 1000)
    assert (window.read_from_ms > start) == (range_s > 30)
    replayed = replay(config, fleet, window, messages)

    arrived = arrivals(config, messages)
    in_range = {fid for fid, a in live.items() if lo <= a["start_ms"] < hi}
    by_until = sorted(fid for fid in in_range if arrived[fid] <= window.until_ms)
    assert len(by_until) > 500
    assert sorted(a["flow_id"] for a in replayed.answers) == by_until  # each once, none other
    assert {a["flow_id"]: outcome(a) for a in replayed.answers} == {fid: outcome(live[fid]) for fid in by_until}
    # Long connections of the range that closed after --until: read, answered or left pending, none kept.
    read_later = [fid for fid in in_range if window.until_ms < arrived[fid] < window.read_to_ms]
    assert replayed.later == len(read_later) > 0
    assert replayed.undecided == 0
