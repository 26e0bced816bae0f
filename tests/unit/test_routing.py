import os
import subprocess
import sys
import threading

import orjson
import pytest

from dataflow.attribution import Claim, Connection, Lookup, Progress, Shard
from dataflow.config import ConfigError, load_config
from dataflow.entitlements import Entitlements
from dataflow.records import FORWARDED, IP_EVENTS, RAW, Origin
from dataflow.regions import RegionMap
from dataflow.routing import Message, Router, Routers, Tally, shard_of

NOW = 1_780_000_000_000
REGIONS = {"us-east": ["10.0.0.0/16", "fd00::/16"], "eu-west": ["10.1.0.0/16"]}
ENTITLED = {"h": ["10.0.0.0/24", "fd00::/64"]}


def router(shards=8, entitled=ENTITLED, kind=Router):
    config = load_config(environ={}, overrides={"region": "us-east", "attribution.shards": shards})
    config = config.__class__(**{**config.__dict__, "regions": REGIONS})
    tally = Tally()
    return kind(config, tally, Entitlements(True, entitled), now_ms=lambda: NOW), tally


def flow(remote_ip, local_ip="10.0.0.1", workload="web", **changes):
    return {"v": 2, "kind": "flow", "flow_id": f"h:{remote_ip}", "exporter": "h", "region": "us-east",
            "local_ip": local_ip, "local_port": 40000, "remote_ip": remote_ip, "remote_port": 443,
            "direction": "outbound", "start_ms": NOW - 9000, "end_ms": NOW - 8000, "bytes_sent": 1,
            "bytes_received": 2, "local_workload": workload, **changes}


def heartbeat(ip="10.0.0.1", exporter="h", end=NOW - 1000, **changes):
    return {"v": 2, "kind": "heartbeat", "exporter": exporter, "region": "us-east", "ip": ip, "workload": "web",
            "start_ms": end - 60_000, "end_ms": end, **changes}


def message(records, role=RAW, offset=0, key=b"h", arrival=NOW):
    return Message(orjson.dumps(records), Origin("t", 0, offset, role), key=key, arrival_ms=arrival)


def items(out, kind):
    return [i for t, w in out if t not in ("answered", "forward", "dead") and type(w) is not Progress
            for i in w.items if type(i) is kind]


def test_a_flow_is_a_claim_at_its_local_address_and_a_lookup_at_its_remote_one():
    r, _ = router()
    out = r.route([message(flow("10.0.0.2"))])
    local = {t: w for t, w in out if type(w) is not Progress}[r.shard_keys[shard_of("10.0.0.1", 8)]]
    remote = {t: w for t, w in out if type(w) is not Progress}[r.shard_keys[shard_of("10.0.0.2", 8)]]
    assert Claim("10.0.0.1", "web", NOW - 9000, NOW - 8000, None, "h") in local.items
    assert Connection(("10.0.0.1", 40000, "10.0.0.2", 443), NOW - 9000, "web", "h") in local.items
    assert [i.flow["flow_id"] for i in remote.items if type(i) is Lookup] == ["h:10.0.0.2"]
    assert remote.arrival_ms == NOW
    # Then every shard hears how far this reader has got: everything before this arrival.
    told = [w for t, w in out if type(w) is Progress]
    assert len(told) == 8 and told[0].reached == {(RAW, 0): NOW - 1}


def test_external_other_region_and_forwarded_flows():
    r, tally = router()
    out = r.route([
        message([flow("203.0.113.5"), flow("10.1.0.7")]),
        message(flow("10.0.0.2", local_ip="10.1.0.9"), role=FORWARDED, key=None),
    ])
    [answered] = [v for t, v in out if t == "answered"]
    assert [(f["remote_ip"], f["outcome"]) for f in answered] == [("203.0.113.5", "external")]
    [forward] = [v for t, v in out if t == "forward"]
    assert forward.region == "eu-west" and [f["remote_ip"] for f in forward.flows] == ["10.1.0.7"]
    # The forwarded flow's local address belongs to the other region: a lookup here, never a claim.
    assert all(c.ip != "10.1.0.9" for c in items(out, Claim))
    assert len(items(out, Lookup)) == 1
    assert tally.snapshot() == {"in.raw": 2, "in.forwarded": 1, "forwarded.eu-west": 1}


def test_every_record_is_counted_in_and_out():
    r, tally = router()
    event = {"v": 1, "kind": "ip_event", "ip": "10.0.255.1", "owner": "lb/a", "action": "assigned", "time_ms": NOW}
    out = r.route([
        message([flow("10.0.0.2"), heartbeat(), {"v": 1}, flow("10.0.0.3", open=True)]),
        message(event, role=IP_EVENTS, key=None),
        Message(b"garbage", Origin("t", 0, 9, RAW), key=b"h", arrival_ms=NOW),
    ])
    counts = tally.snapshot()
    assert counts["in.raw"] == 5 and counts["in.ip_events"] == 1
    assert counts["dead.unknown_kind"] == 1 and counts["dead.not_json"] == 1
    assert counts["absorbed.heartbeat"] == 1 and counts["absorbed.ip_event"] == 1 and counts["absorbed.open_flow"] == 1
    assert len(items(out, Lookup)) == 1  # in 6 = 1 lookup + 2 dead + 3 absorbed


def test_a_records_times_are_judged_against_its_arrival_whenever_it_is_read():
    """A live run (the wall clock at the arrival) and a replay a week later (the wall clock far ahead)
    must keep and refuse the same records: the bounds move with the message's arrival."""
    hour, day = 3_600_000, 86_400_000
    week_old = NOW - 8 * day
    for wall in (week_old + 5_000, NOW):
        config = load_config(environ={}, overrides={"region": "us-east", "attribution.shards": 8})
        config = config.__class__(**{**config.__dict__, "regions": REGIONS})
        tally = Tally()
        r = Router(config, tally, Entitlements(True, ENTITLED), now_ms=lambda: wall)
        fresh = flow("10.0.0.2", start_ms=week_old - 9000, end_ms=week_old - 8000)
        ahead = flow("10.0.0.3", start_ms=week_old + hour, end_ms=week_old + 2 * hour)
        stale = flow("10.0.0.4", start_ms=week_old - 8 * day, end_ms=week_old - 8 * day + 1000)
        out = r.route([message([fresh, ahead, stale], arrival=week_old)])
        assert [i.flow["flow_id"] for i in items(out, Lookup)] == ["h:10.0.0.2"], wall
        assert tally.snapshot()["dead.time_out_of_range"] == 2, wall
    # A message without an arrival time (a recording that has none) is judged against the wall clock.
    r, tally = router()
    r.route([Message(orjson.dumps(flow("10.0.0.2", start_ms=NOW + 2 * hour, end_ms=NOW + 2 * hour)),
                     Origin("t", 0, 0, RAW), key=b"h")])
    assert tally.snapshot()["dead.time_out_of_range"] == 1


def test_a_record_must_come_under_its_exporters_key():
    r, tally = router()
    out = r.route([message([flow("10.0.0.2"), heartbeat(exporter="other")], key=b"h"),
                   message(flow("10.0.0.3"), key=None, offset=1)])
    dead = [v for t, v in out if t == "dead"]
    assert [d.reason for d in dead] == ["exporter_key_mismatch", "exporter_key_mismatch"]
    assert len(items(out, Lookup)) == 1
    assert tally.snapshot()["dead.exporter_key_mismatch"] == 2


def test_a_claim_outside_the_exporters_entitlement_is_never_ownership():
    r, tally = router()
    liar = flow("10.0.0.2", local_ip="10.0.5.5", workload="liar")  # 10.0.5.5 is not within h's /24
    out = r.route([message([liar, heartbeat(ip="10.0.5.5")])])
    assert items(out, Claim) == [] and items(out, Connection) == []
    [lookup] = items(out, Lookup)  # its remote end is still answered
    assert (lookup.flow["local_workload"], lookup.flow["claimed_local_workload"]) == (None, "liar")
    assert lookup.flow["local_refused"] == "unentitled"
    [dead] = [v for t, v in out if t == "dead"]
    assert dead.reason == "unentitled_claim"
    assert tally.snapshot()["refused.unentitled"] == 1


def test_an_exporter_whose_clock_runs_ahead_of_its_arrival_is_not_believed():
    r, tally = router()
    ahead = 20 * 60_000
    fast = [flow("10.0.0.2", start_ms=NOW - 9000 + ahead, end_ms=NOW - 8000 + ahead), heartbeat(end=NOW + ahead)]
    out = r.route([message(fast, arrival=NOW - 30_000)])
    assert items(out, Claim) == [] and items(out, Lookup) == []
    [answered] = [v for t, v in out if t == "answered"]
    assert [(f["outcome"], f["reason"], f["local_workload"]) for f in answered] == [("unattributed", "untrusted_clock", None)]
    assert [v.reason for t, v in out if t == "dead"] == ["untrusted_clock"]
    # Another exporter's records, read by the same worker, are untouched.
    out = r.route([message([{**flow("10.0.0.3"), "exporter": "g"}], key=b"g", offset=1)])
    assert len(items(out, Lookup)) == 1


def test_one_record_from_the_future_is_not_believed_but_its_batch_is():
    r, _ = router()
    odd = flow("10.0.0.2", start_ms=NOW + 50 * 60_000, end_ms=NOW + 50 * 60_000 + 1)
    out = r.route([message([odd, flow("10.0.0.3"), heartbeat()])])
    assert [l.flow["remote_ip"] for l in items(out, Lookup)] == ["10.0.0.3"]
    [answered] = [v for t, v in out if t == "answered"]
    assert [f["reason"] for f in answered] == ["untrusted_clock"]


def test_a_claim_through_a_shared_address_carries_its_ports():
    r, _ = router()
    out = r.route([message([flow("10.0.0.2", local_ports=[20000, 20999]), heartbeat(ports=[21000, 21999])])])
    assert sorted(c.ports for c in items(out, Claim)) == [(20000, 20999), (21000, 21999)]


def test_a_quiet_reader_tells_the_shards_only_when_its_progress_crosses_a_due_point():
    config = load_config(environ={}, overrides={"region": "us-east", "attribution.shards": 4})
    config = config.__class__(**{**config.__dict__, "regions": REGIONS})
    wall = [0.0]
    r = Router(config, Tally(), Entitlements(False), now_ms=lambda: NOW, wall_s=lambda: wall[0])
    grid = Shard.DUE_GRID_MS
    start = (NOW // grid) * grid
    told = []
    # A reader that has caught up says so every 0.1 s, each time a little further on.
    for i in range(40):
        wall[0] += 0.1
        caught_up = [Message(None, Origin("t", p, -1, RAW), caught_up_ms=start + 100 * i + p) for p in (0, 1)]
        told += [w.reached for t, w in r.route(caught_up) if type(w) is Progress and t == r.shard_keys[0]]
    # The first word, then once for each due point the slower partition passed, at the first progress
    # that reached it: no decision comes later than if every word were told.
    slowest = [min(reached.values()) for reached in told]
    assert slowest == [start, start + grid, start + 2 * grid, start + 3 * grid]


def test_each_worker_thread_routes_with_its_own_progress():
    config = load_config(environ={}, overrides={"region": "us-east", "attribution.shards": 4})
    config = config.__class__(**{**config.__dict__, "regions": REGIONS})
    routers = Routers(config, Tally(), Entitlements(False))
    told: dict[int, list] = {}

    def read(partition):
        msgs = [Message(orjson.dumps(flow("10.0.0.2")), Origin("t", partition, i, RAW), key=b"h",
                        arrival_ms=NOW + partition * 1000 + i) for i in range(50)]
        told[partition] = [w.reached for m in msgs for t, w in routers.route([m]) if type(w) is Progress]

    threads = [threading.Thread(target=read, args=(p,)) for p in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A worker tells only of the partitions it read itself, never of another thread's.
    for partition, reached in told.items():
        assert reached and all(set(r) == {(RAW, partition)} for r in reached)


def test_shards_are_the_same_in_every_process():
    # Every process of a cluster must send an address to the same shard, whatever its hash seed.
    code = "from dataflow.routing import shard_of; print([shard_of(f'10.0.{i}.7', 128) for i in range(50)])"
    seen = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout
        for seed in ("1", "2", "3")
    }
    assert len(seen) == 1 and len(set(eval(seen.pop()))) > 20


def test_region_trie_longest_prefix_and_external():
    regions = RegionMap({"a": ["10.0.0.0/8"], "b": ["10.1.0.0/16"], "c": ["fd00::/8"]})
    assert [regions.region_of(ip) for ip in ("10.9.9.9", "10.1.2.3", "fd00::1", "8.8.8.8", "2001:db8::1")] == [
        "a", "b", "c", None, None]
    with pytest.raises(ConfigError):
        RegionMap({"a": ["10.0.0.0/33"]})
    with pytest.raises(ConfigError, match="host bits"):
        RegionMap({"a": ["10.0.0.1/8"]})


class BreaksOnOne(Router):
    """A router that fails on one flow after it had started to route it."""

    def _route_flow(self, record, *args):
        super()._route_flow(record, *args)  # it had started: its claim and lookup must not leak out
        if record["flow_id"] == "h:10.0.0.66":
            raise KeyError("a field nobody expected")


def test_a_surprise_in_one_message_dead_letters_that_message_whole_and_the_rest_go_on():
    r, tally = router(kind=BreaksOnOne)
    poisoned = message([flow("10.0.0.5"), flow("10.0.0.66")], offset=1)
    out = r.route([message(flow("10.0.0.2"), offset=0), poisoned, message(flow("10.0.0.3"), offset=2)])
    assert sorted(i.flow["flow_id"] for i in items(out, Lookup)) == ["h:10.0.0.2", "h:10.0.0.3"]
    [letter] = [w for t, w in out if t == "dead"]
    assert letter.reason == "internal_error" and letter.detail == "KeyError: 'a field nobody expected'"
    assert letter.original == poisoned.value and letter.origin.offset == 1
    counts = tally.snapshot()
    assert counts["in.raw"] == 3 and counts["dead.internal_error"] == 1


def test_a_flow_within_its_messages_heartbeat_sends_no_claim_of_its_own_and_one_outside_it_does():
    r, _ = router()
    beat = heartbeat(end=NOW - 5000)  # holds NOW - 65000 .. NOW - 5000
    inside = flow("10.0.0.2")  # NOW - 9000 .. NOW - 8000
    later = flow("10.0.0.3", start_ms=NOW - 4000, end_ms=NOW - 3000)
    other = flow("10.0.0.4", workload="api")
    out = r.route([message([inside, later, other, beat])])
    claims = items(out, Claim)
    assert claims[0] == Claim("10.0.0.1", "web", NOW - 65000, NOW - 5000, None, "h")  # first, wherever it came
    assert sorted(claims[1:]) == sorted([Claim("10.0.0.1", "web", NOW - 4000, NOW - 3000, None, "h"),
                                         Claim("10.0.0.1", "api", NOW - 9000, NOW - 8000, None, "h")])
    # Every flow is still a lookup and leaves its connection report.
    assert len(items(out, Lookup)) == 3 and len(items(out, Connection)) == 3
