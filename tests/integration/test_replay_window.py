"""What a replay reads before its range is enough to answer it as the live job did, even when the live
job learned the exporters' clocks from a burst of history well before the range: the job's own router
and shards, in this process, fed every message (the live job) and then only those from the replay's
window (`flowattr replay`), must answer every flow of the range the same."""

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
from dataflow.replay import Window
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


def answer(config, fleet, messages, now_ms: int) -> dict[str, dict]:
    """Every flow the router and shards answer for these messages, read three partitions a topic."""
    roles = input_topics(config)
    partitions = config.kafka.partitions
    entitlements = Entitlements(bool(config.trust.require_entitlement), config.entitlements)
    for m in fleet.entitlement_messages:
        record = orjson.loads(m.value)
        entitlements.set(record["exporter"], record["cidrs"])
    ticks = itertools.count(1)
    router = Router(config, Tally(), entitlements, now_ms=lambda: now_ms, wall_s=lambda: float(next(ticks)))
    every = frozenset((role, p) for role in roles.values() for p in range(partitions))
    shards: dict[str, Shard] = {}
    answers: dict[str, dict] = {}

    def route(batch):
        for key, item in router.route(batch):
            if key in ("forward", "dead"):
                continue
            if key != "answered":
                shard = shards.get(key)
                if shard is None:
                    shard = shards[key] = Shard(config.attribution, every, int(config.trust.clock_bound_s * 1000))
                item = shard.absorb(item)
            answers.update((a["flow_id"], a) for a in item)

    offsets: dict[tuple[str, int], int] = {}
    for i in range(0, len(messages), 20):
        batch = []
        for arrival, topic, key, value in messages[i : i + 20]:
            p = zlib.crc32(key or b"") % partitions
            offsets[topic, p] = offset = offsets.get((topic, p), -1) + 1
            batch.append(Message(value, Origin(topic, p, offset, roles[topic]), key=key, arrival_ms=arrival))
        route(batch)
    route([Message(None, Origin(topic, p, -1, role), caught_up_ms=now_ms)
           for topic, role in roles.items() for p in range(partitions)])
    return answers


# (where the fleet starts within a minute, where the range starts after the fleet does): the burst of
# history lands within the range's warm-up, or well before it (the replay then never reads it).
@pytest.mark.parametrize("phase_ms, range_s", [(58_234, 30), (58_234, 110), (22_234, 110)])
def test_a_replay_reads_enough_before_its_range_to_answer_as_the_live_job(tmp_path: Path, phase_ms: int,
                                                                           range_s: int):
    start = BASE_MS + phase_ms
    fleet = sim.simulate(sim.Scenario(seed=31, start_ms=start, duration_s=170, interval_s=10, mean_delay_s=1.0,
                                      late_delay_s=15.0))
    config = load_config(write_config(tmp_path / "flowattr.toml", "127.0.0.1:9", "t."), environ={})
    messages = delivered(config, fleet, start)
    now = start + 3_600_000
    live = answer(config, fleet, messages, now)

    lo, hi = start + range_s * 1000, start + range_s * 1000 + 40_000
    window = Window(config, lo, hi, now)
    events = config.kafka.ip_events_topic
    read = [m for m in messages if m[0] >= (window.events_from_ms if m[1] == events else window.read_from_ms)]
    assert (window.read_from_ms > start) == (range_s > 30)
    replayed = answer(config, fleet, read, now)

    in_range = sorted(fid for fid, a in live.items() if lo <= a["start_ms"] < hi)
    assert len(in_range) > 500
    assert {fid: outcome(replayed[fid]) for fid in in_range} == {fid: outcome(live[fid]) for fid in in_range}
