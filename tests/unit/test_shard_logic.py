"""The Bytewax hold on a shard, driven directly: a surprise while one message's work is applied
dead-letters that work's flows with the exception, and the shard goes on with the next; the input waiting
for the clock holds its lookups packed; a shard resumes
from its own snapshot and refuses, saying what to do, one it cannot read; the memory the state frees goes
back to the system."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow.attribution import Lookup, Progress, Shard, ShardWork
from dataflow.config import AttributionConfig, load_config
from dataflow.flow import ShardLogic, StateCollector
from dataflow.records import RAW
from dataflow.routing import Tally

NOW = 1_780_000_000_000


def flow(flow_id):
    return {"v": 2, "kind": "flow", "flow_id": flow_id, "exporter": "h", "region": "us-east", "local_ip": "10.0.0.1",
            "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 443, "direction": "outbound",
            "start_ms": NOW - 9000, "end_ms": NOW - 8000, "bytes_sent": 1, "bytes_received": 2, "local_workload": None}


class Poisoned:
    """A shard that fails on any work carrying the flow "poison"."""

    def __init__(self, shard):
        self.shard = shard

    def absorb(self, item):
        if any(i.flow["flow_id"] == "poison" for i in item.items):
            raise ZeroDivisionError("division by zero")
        return self.shard.absorb(item)

    def __getattr__(self, name):
        return getattr(self.shard, name)


def test_a_failing_work_dead_letters_its_lookups_and_the_shard_goes_on(monkeypatch):
    tally = Tally()
    logic = ShardLogic(load_config(environ={}), None, frozenset({(RAW, 0)}), True, StateCollector(), tally)
    monkeypatch.setattr(logic, "shard", Poisoned(logic.shard))
    works = [ShardWork(NOW, (2, 0, 1), [Lookup(flow("good-1"))]),
             ShardWork(NOW + 1, (2, 0, 2), [Lookup(flow("poison")), Lookup(flow("neighbour"))]),
             ShardWork(NOW + 2, (2, 0, 3), [Lookup(flow("good-2"))])]
    out, _ = logic.on_batch(works)
    letters = [o for o in out if type(o) is not list]
    assert [(d.reason, d.detail, d.origin.offset) for d in letters] == [
        ("internal_error", "ZeroDivisionError: division by zero", 2)] * 2
    assert tally.snapshot() == {"errors.shard": 1, "dead.internal_error": 2}
    answered, _ = logic.on_eof()
    assert sorted(f["flow_id"] for flows in answered for f in flows) == ["good-1", "good-2"]


def test_works_that_name_the_same_place_are_applied_in_the_order_they_came():
    shard = Shard(AttributionConfig(), frozenset({("raw", 0)}))
    for i in range(3):
        shard.absorb(ShardWork(NOW, (2, 0, 0), [Lookup(flow(f"same-place-{i}"))]))
    assert len(shard.inbox) == 3
    shard.absorb(Progress({("raw", 0): NOW + 1}))
    assert shard.pending() == 3 and not shard.inbox
    assert [a["flow_id"] for a in shard.finish()] == ["same-place-0", "same-place-1", "same-place-2"]


def test_input_waiting_for_the_clock_holds_its_lookups_packed_and_the_work_as_it_came_stays():
    shard = Shard(AttributionConfig(), frozenset({("raw", 0)}))
    work = ShardWork(NOW, (2, 0, 0), [Lookup(flow(f"h:{i}")) for i in range(3)])
    shard.absorb(work)
    [(_, _, _, held)] = shard.inbox
    assert [type(i) for i in work.items] == [Lookup] * 3  # what the runtime handed over is not changed
    assert [type(i) for i in held.items] == [bytes] * 3 and max(len(i) for i in held.items) < 80
    assert pickle.loads(pickle.dumps(shard)).stats() == shard.stats()
    assert [a["flow_id"] for a in shard.finish()] == ["h:0", "h:1", "h:2"]


@pytest.mark.parametrize("snapshot", [b"not a snapshot", pickle.dumps({"now_ms": 0})])
def test_a_snapshot_the_shard_cannot_read_stops_the_job_saying_what_to_do(snapshot):
    with pytest.raises(RuntimeError, match="another version or build of flowattr .* empty recovery.dir"):
        ShardLogic(load_config(environ={}), snapshot, frozenset({(RAW, 0)}), True, StateCollector(), Tally())


def test_a_snapshot_whose_lookups_are_packed_in_another_layout_is_refused():
    older = Shard(AttributionConfig(), frozenset({(RAW, 0)}))
    older.packing -= 1
    with pytest.raises(RuntimeError, match="empty recovery.dir .*packed in another layout"):
        ShardLogic(load_config(environ={}), pickle.dumps(older), frozenset({(RAW, 0)}), True, StateCollector(), Tally())


def test_a_shard_resumes_from_its_own_snapshot():
    config = load_config(environ={}, overrides={"recovery.dir": "/unused"})
    logic = ShardLogic(config, None, frozenset({(RAW, 0)}), False, StateCollector(), Tally())
    logic.on_batch([ShardWork(NOW, (2, 0, 1), [Lookup(flow("waits"))]), Progress({(RAW, 0): NOW + 1000})])
    resumed = ShardLogic(config, logic.snapshot(), frozenset({(RAW, 0)}), False, StateCollector(), Tally())
    assert resumed.shard.pending() == 1 and resumed.shard.stats() == logic.shard.stats()


# In a fresh interpreter: this one's heap holds whatever the tests before it left.
FREED_THEN_TRIMMED = """
import os
from dataflow.flow import StateCollector

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

# Freed buffers between live ones, as a shard's decided seconds lie between its waiting ones.
kept, freed = [], []
for _ in range(800):
    freed.append(bytearray(b"x" * 65536))
    kept.append(bytearray(b"y" * 1024))
del freed
before = resident()
StateCollector().trim()
print(before - resident(), len(kept))
"""


def test_the_collector_hands_memory_the_state_freed_back_to_the_system():
    run = subprocess.run([sys.executable, "-c", FREED_THEN_TRIMMED], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    given_back, kept = map(int, run.stdout.split())
    assert given_back > 30 * 2**20 and kept == 800
