import orjson

from bench.baseline import attribute_by_events
from dataflow.regions import RegionMap

REGIONS = RegionMap({"home": ["10.0.0.0/16"]})


def event(ip, owner, action, time_ms):
    return orjson.dumps({"v": 1, "kind": "ip_event", "ip": ip, "owner": owner, "action": action, "time_ms": time_ms})


def flow_batch(fid, remote_ip, start):
    return orjson.dumps([{"kind": "flow", "flow_id": fid, "remote_ip": remote_ip, "remote_port": 8443, "start_ms": start}])


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


def test_the_time_indexed_lookup_names_the_owner_at_the_start_from_the_events_arrived_by_then():
    events = [
        (1_000, event("10.0.0.9", "old", "assigned", 0)),
        (70_000, event("10.0.0.9", "old", "unassigned", 50_000)),
        (75_000, event("10.0.0.9", "new", "assigned", 51_000)),
        (700_000, event("10.0.0.9", "new", "unassigned", 300_000)),  # ten minutes late
        (301_000, event("10.0.0.9", "third", "assigned", 300_500)),
    ]
    flows = [(62_000, flow_batch("f1", "10.0.0.9", 60_000)), (310_000, flow_batch("f2", "10.0.0.9", 305_000))]
    at_start = {a["flow_id"]: a["remote_workload"]
                for a in attribute_by_events(flows, [], events, REGIONS, "home", 15 * 60_000, at_start=True)}
    assert at_start == {"f1": "new", "f2": "third"}
    # Owner now after the same holdback: by then "third" owns it, and f1 started under "new".
    now = {a["flow_id"]: a["remote_workload"]
           for a in attribute_by_events(flows, [], events, REGIONS, "home", 15 * 60_000)}
    assert now == {"f1": "third", "f2": "third"}
    # Before an event has arrived, the time-indexed lookup cannot know it.
    [early] = attribute_by_events(flows[:1], [], events, REGIONS, "home", 5_000, at_start=True)
    assert early["remote_workload"] == "old"


def test_events_with_a_port_range_answer_only_flows_to_those_ports():
    shared = [
        (1_000, orjson.dumps({"kind": "ip_event", "ip": "10.0.0.5", "owner": "a", "action": "assigned",
                              "time_ms": 0, "ports": [20000, 20999]})),
        (1_000, orjson.dumps({"kind": "ip_event", "ip": "10.0.0.5", "owner": "b", "action": "assigned",
                              "time_ms": 0, "ports": [21000, 21999]})),
    ]
    batch = orjson.dumps([{"kind": "flow", "flow_id": f"p{port}", "remote_ip": "10.0.0.5", "remote_port": port,
                           "start_ms": 5_000} for port in (20000, 21500, 22000)])
    for at_start in (False, True):
        answers = {a["flow_id"]: a["remote_workload"] for a in
                   attribute_by_events([(6_000, batch)], [], shared, REGIONS, "home", 1_000, at_start=at_start)}
        assert answers == {"p20000": "a", "p21500": "b", "p22000": None}
