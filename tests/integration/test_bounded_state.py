"""State under a scan and a flood, with the real router and shards (no Kafka: the bounds are the shards'
own): a million lookups of distinct addresses that never send a heartbeat, and one address with a
million tiny claims. Every bound holds, every eviction is counted, every flow is still answered, and
the fleet's own flows get the answers they get without the scan."""

import resource
from collections import Counter
from dataclasses import replace

import orjson

from dataflow import simulate as sim
from dataflow.attribution import Shard
from dataflow.config import load_config
from dataflow.entitlements import Entitlements
from dataflow.records import RAW, Origin
from dataflow.routing import Message, Router, Tally

SCAN, FLOOD = 1_000_000, 1_000_000
SHARED_PORT_CLAIMS = 50_000
BATCH = 2000
BOUNDS = {"max_pending_per_shard": 500, "max_connections_per_shard": 2000, "max_ranges_per_ip": 32, "shards": 16}


def fleet_messages(fleet):
    return [(m.arrival_ms, m.key, lambda v=m.value: v) for m in fleet.flow_messages]


def scan_messages(fleet, start_ms, arrivals):
    """A host probing a million addresses of this region (IPv6: there are enough) that nobody owns."""
    template = {"v": 2, "kind": "flow", "exporter": "scanner", "region": sim.HOME, "local_ip": "fd00:0:0:fe::1",
                "local_port": 40000, "remote_port": 22, "direction": "outbound", "bytes_sent": 0,
                "bytes_received": 0, "local_workload": "scanner/probe"}
    def batch(n, i):
        t = start_ms + n * 10
        return orjson.dumps([{**template, "flow_id": f"scan:{j}", "remote_ip": f"fd00:0:0:ff::{j >> 16:x}:{j & 0xffff:x}",
                              "start_ms": t, "end_ms": t + 1} for j in range(i, min(i + BATCH, SCAN))])

    for n, i in enumerate(range(0, SCAN, BATCH)):
        yield arrivals[n % len(arrivals)], b"scanner", lambda n=n, i=i: batch(n, i)


def flood_messages(start_ms, arrivals):
    """One address claimed a million times, by ever new workloads in tiny non-touching ranges, and a shared
    address claimed port by port."""
    def tiny(i):
        return orjson.dumps([{"v": 2, "kind": "heartbeat", "exporter": "flooder", "region": sim.HOME, "ip": "10.0.254.1",
                              "workload": f"w{j}", "start_ms": start_ms + j % 30_000, "end_ms": start_ms + j % 30_000}
                             for j in range(i, i + BATCH)])

    def ports(i):
        return orjson.dumps([{"v": 2, "kind": "heartbeat", "exporter": "flooder", "region": sim.HOME, "ip": "10.0.254.2",
                              "workload": "shared", "ports": [p, p], "start_ms": start_ms, "end_ms": start_ms + 1000}
                             for p in range(i, min(i + BATCH, SHARED_PORT_CLAIMS + 1))])

    for n, i in enumerate(range(0, FLOOD, BATCH)):
        yield arrivals[n % len(arrivals)], b"flooder", lambda i=i: tiny(i)
    for n, i in enumerate(range(1, SHARED_PORT_CLAIMS + 1, BATCH)):
        yield arrivals[n % len(arrivals)], b"flooder", lambda i=i: ports(i)


def run(messages, fleet):
    """The router and the shards as the dataflow wires them, in one thread; the fleet's answers, the
    scan's answers counted by outcome, the counts, and the shards for a look at their state. Messages
    are made as they are read and the scan's answers only counted, so that the process's memory is the
    state's."""
    config = load_config(environ={}, overrides={"region": sim.HOME})
    config = replace(config, regions=sim.regions_config(), attribution=replace(config.attribution, **BOUNDS))
    entitled = fleet.entitlements()
    entitled.update(scanner=["fd00:0:0:fe::/64"], flooder=["10.0.254.0/24"])
    tally = Tally()
    ticks = iter(range(10**9))
    router = Router(config, tally, Entitlements(True, entitled), wall_s=lambda: next(ticks))
    shards = {key: Shard(config.attribution, frozenset({(RAW, 0)})) for key in router.shard_keys}
    answers, scan, evicted = [], Counter(), Counter()

    def take(flows):
        for f in flows:
            if f["flow_id"].startswith("scan:"):
                scan[(f["outcome"], f["reason"])] += 1
            else:
                answers.append(f)

    ordered = sorted(enumerate(messages), key=lambda m: (m[1][0], m[0]))
    for offset, (_, (arrival, key, make)) in enumerate(ordered):
        for target, item in router.route([Message(make(), Origin("raw", 0, offset, RAW), key=key, arrival_ms=arrival)]):
            if target == "answered":
                take(item)
            elif target in shards:
                take(shards[target].absorb(item))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    for shard in shards.values():
        take(shard.finish())
        evicted.update(shard.evicted)
    return answers, scan, tally.snapshot(), evicted, shards, peak_rss_mb


def test_a_scan_and_a_flood_stay_within_the_bounds_and_leave_real_answers_alone(figures):
    import time
    fleet = sim.simulate(sim.Scenario(seed=4, start_ms=(int(time.time()) // 60 - 10) * 60_000, duration_s=4 * 60,
                                      interval_s=10, mean_delay_s=1.0, late_delay_s=15.0))
    real = fleet_messages(fleet)
    alone, _, _, evicted_alone, _, _ = run(real, fleet)
    assert not evicted_alone  # the bounds are above the fleet's own needs

    arrivals = [a for a, _, _ in real]
    hostile = list(scan_messages(fleet, fleet.flow_messages[0][0] - 60_000, arrivals)) + \
        list(flood_messages(fleet.flow_messages[0][0] - 60_000, arrivals))
    answers, scan, counts, evicted, shards, peak_rss_mb = run(real + hostile, fleet)

    for shard in shards.values():
        held = [r for _, r in shard.reports.items()]
        assert shard.report_count == len(held) == sum(shard.reports_of.values()) <= BOUNDS["max_connections_per_shard"]
        assert shard.pending() <= BOUNDS["max_pending_per_shard"]
        assert sum(shard.unnamed.values()) <= shard.pending()
        assert all(len(spans) <= 3 * BOUNDS["max_ranges_per_ip"] for spans in shard.ranges.values())
        assert all(len(by_port) <= BOUNDS["max_ranges_per_ip"] for by_port in shard.port_ranges.values())
    # Every flow answered once; the scan's as nobody's; the fleet's as without the scan.
    by_id = Counter(a["flow_id"] for a in answers)
    assert set(by_id.values()) == {1}
    assert scan == {("unattributed", "no_owner"): SCAN}
    outcome = lambda a: (a["outcome"], a["remote_workload"], a["reason"], a["source"], a["match"])  # noqa: E731
    mine = {a["flow_id"]: outcome(a) for a in answers}
    theirs = {a["flow_id"]: outcome(a) for a in alone}
    differ = [fid for fid in theirs if mine.get(fid) != theirs[fid]]
    assert differ == []
    # And what was pushed out is counted.
    assert evicted["lookups"] >= SCAN - 16 * BOUNDS["max_pending_per_shard"]
    assert evicted["connections"] >= SCAN - 16 * BOUNDS["max_connections_per_shard"]
    assert evicted["ranges"] >= FLOOD - BOUNDS["max_ranges_per_ip"]
    assert evicted["port_ranges"] == SHARED_PORT_CLAIMS - BOUNDS["max_ranges_per_ip"]
    figures.record("test_a_scan_and_a_flood_stay_within_the_bounds_and_leave_real_answers_alone",
                   f"scan of {SCAN:,} unowned addresses; {FLOOD:,} tiny claims on one address; "
                   f"{SHARED_PORT_CLAIMS:,} port ranges on one shared address",
                   f"every shard within its bounds ({', '.join(f'{k} {v}' for k, v in BOUNDS.items())}); evicted "
                   f"{', '.join(f'{k} {v:,}' for k, v in sorted(evicted.items()))}; fleet answers as without the "
                   f"scan; the test process's peak RSS {peak_rss_mb} MB",
                   messages_in=len(real) + len(hostile), answered=len(answers) + SCAN, forwarded=counts.get("forwarded.eu-west", 0),
                   dead_lettered=sum(v for k, v in counts.items() if k.startswith("dead.")),
                   lost=len(theirs) - len(answers), repeats_disagreeing=len(differ))
