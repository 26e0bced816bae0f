import orjson

from bench.baseline import attribute_by_events
from dataflow.regions import RegionMap

REGIONS = RegionMap({"home": ["10.0.0.0/16"]})


def event(ip, owner, action, time_ms):
    return orjson.dumps({"v": 1, "kind": "ip_event", "ip": ip, "owner": owner, "action": action, "time_ms": time_ms})


def flow_batch(fid, remote_ip, start):
    return orjson.dumps([{"kind": "flow", "flow_id": fid, "remote_ip": remote_ip, "start_ms": start}])


def test_late_events_misattribute_and_a_holdback_only_delays_the_question():
    events = [
        (1_000, event("10.0.0.9", "old", "assigned", 0)),
        (70_000, event("10.0.0.9", "old", "unassigned", 50_000)),  # 20 s late
        (75_000, event("10.0.0.9", "new", "assigned", 51_000)),  # 24 s late
    ]
    # The flow to the new owner started at 60 s and arrives at 62 s: the events have not arrived yet.
    flows = [(62_000, flow_batch("f1", "10.0.0.9", 60_000)), (62_000, flow_batch("f2", "203.0.113.1", 60_000))]
    [now] = attribute_by_events(flows, [], events, REGIONS, "home")
    assert (now["flow_id"], now["remote_workload"]) == ("f1", "old")  # wrong
    [held] = attribute_by_events(flows, [], events, REGIONS, "home", holdback_ms=15_000)
    assert held["remote_workload"] == "new"
    [gap] = attribute_by_events(flows, [], events, REGIONS, "home", holdback_ms=10_000)
    assert gap["outcome"] == "unattributed"  # between the unassignment and the assignment
