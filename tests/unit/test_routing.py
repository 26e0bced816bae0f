import os
import subprocess
import sys

import orjson
import pytest

from dataflow.attribution import CLAIM, CONNECTION, LOOKUP
from dataflow.config import ConfigError, load_config
from dataflow.records import FORWARDED, IP_EVENTS, RAW, Origin
from dataflow.regions import RegionMap
from dataflow.routing import Message, Router, Tally, shard_of

NOW = 1_780_000_000_000
REGIONS = {"us-east": ["10.0.0.0/16", "fd00::/16"], "eu-west": ["10.1.0.0/16"]}


def router(shards=8):
    config = load_config(environ={}, overrides={"region": "us-east", "attribution.shards": shards})
    config = config.__class__(**{**config.__dict__, "regions": REGIONS})
    tally = Tally()
    return Router(config, tally, now_ms=lambda: NOW), tally


def flow(remote_ip, local_ip="10.0.0.1", workload="web", **changes):
    return {"v": 1, "kind": "flow", "flow_id": f"h:{remote_ip}", "exporter": "h", "region": "us-east",
            "local_ip": local_ip, "local_port": 40000, "remote_ip": remote_ip, "remote_port": 443,
            "direction": "outbound", "start_ms": NOW - 9000, "end_ms": NOW - 8000, "bytes_sent": 1,
            "bytes_received": 2, "local_workload": workload, **changes}


def message(records, role=RAW, offset=0):
    return Message(orjson.dumps(records), Origin("t", 0, offset, role))


def test_a_flow_is_a_heartbeat_at_its_local_address_and_a_lookup_at_its_remote_one():
    r, _ = router()
    out = {key: works[0] for key, works in r.route([message(flow("10.0.0.2"))])}
    local = out[r.shard_keys[shard_of("10.0.0.1", 8)]]
    remote = out[r.shard_keys[shard_of("10.0.0.2", 8)]]
    assert (CLAIM, "10.0.0.1", "web", NOW - 9000, NOW - 8000) in local.items
    assert (CONNECTION, ("10.0.0.1", 40000, "10.0.0.2", 443), NOW - 9000, "web") in local.items
    assert [i[1]["flow_id"] for i in remote.items if i[0] == LOOKUP] == ["h:10.0.0.2"]


def test_external_other_region_and_forwarded_flows():
    r, tally = router()
    out = r.route([
        message([flow("203.0.113.5"), flow("10.1.0.7")]),
        message(flow("10.0.0.2", local_ip="10.1.0.9"), role=FORWARDED),
    ])
    tags = [tag for tag, _ in out]
    [external] = [v for t, v in out if t == "external"]
    assert [(f["remote_ip"], f["outcome"]) for f in external] == [("203.0.113.5", "external")]
    [forward] = [v for t, v in out if t == "forward"]
    assert forward.region == "eu-west" and [f["remote_ip"] for f in forward.flows] == ["10.1.0.7"]
    # The forwarded flow's local address belongs to the other region: a lookup here, never a claim.
    works = [w for t, v in out if t not in ("external", "forward", "dead") for w in v]
    assert all(i[1] != "10.1.0.9" for w in works for i in w.items if i[0] == CLAIM)
    assert sum(i[0] == LOOKUP for w in works for i in w.items) == 1
    assert tally.snapshot() == {"in.raw": 2, "in.forwarded": 1, "forwarded.eu-west": 1}  # outcomes are counted on the way out
    assert "dead" not in tags


def test_every_record_is_counted_in_and_out():
    r, tally = router()
    heartbeat = {"v": 1, "kind": "heartbeat", "exporter": "h", "region": "us-east", "ip": "10.0.0.1",
                 "workload": "web", "start_ms": NOW - 60_000, "end_ms": NOW}
    event = {"v": 1, "kind": "ip_event", "ip": "10.0.255.1", "owner": "lb/a", "action": "assigned", "time_ms": NOW}
    out = r.route([
        message([flow("10.0.0.2"), heartbeat, {"v": 1}, flow("10.0.0.3", open=True)]),
        message(event, role=IP_EVENTS),
        Message(b"garbage", Origin("t", 0, 9, RAW)),
    ])
    counts = tally.snapshot()
    assert counts["in.raw"] == 5 and counts["in.ip_events"] == 1
    assert counts["dead.unknown_kind"] == 1 and counts["dead.not_json"] == 1
    assert counts["absorbed.heartbeat"] == 1 and counts["absorbed.ip_event"] == 1 and counts["absorbed.open_flow"] == 1
    lookups = sum(i[0] == LOOKUP for t, v in out if t not in ("external", "forward", "dead") for w in v for i in w.items)
    assert lookups == 1  # in 6 = 1 lookup + 2 dead + 3 absorbed


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
