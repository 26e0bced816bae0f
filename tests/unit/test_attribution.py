from dataflow.attribution import Shard, ShardWork
from dataflow.config import AttributionConfig

MIN = 60_000
T0 = 1_780_000_000_000


def shard(partitions=1, live=False, **settings):
    settings = AttributionConfig(**{"delay_s": 60, "max_wait_s": 300, "idle_advance_s": 5, **settings})
    return Shard(settings, partitions, live)


def flow(remote_ip="10.0.0.9", start=T0, end=None, local_ip="10.0.0.1", local_port=40000, remote_port=443):
    return {
        "flow_id": f"f-{start}-{remote_ip}",
        "local_ip": local_ip,
        "local_port": local_port,
        "remote_ip": remote_ip,
        "remote_port": remote_port,
        "start_ms": start,
        "end_ms": end or start + 100,
        "local_workload": "client",
    }


def claims(*items, now=0):
    return ShardWork.of(claims=list(items), progress={0: now})


def lookups(*flows, now=0):
    return ShardWork.of(lookups=list(flows), progress={0: now})


def clock(now):
    return ShardWork.of(progress={0: now})


def test_no_answer_before_the_delay_then_the_covering_range():
    s = shard()
    assert s.absorb(claims(("10.0.0.9", "web", T0 - MIN, T0 + MIN), now=T0), 0) == []
    assert s.absorb(lookups(flow(), now=T0 + 100), 0) == []
    assert s.absorb(clock(T0 + MIN - 1), 0) == []
    [answer] = s.absorb(clock(T0 + MIN), 0)
    assert (answer["outcome"], answer["remote_workload"], answer["source"], answer["match"]) == (
        "attributed",
        "web",
        "heartbeat",
        "range",
    )


def test_address_reassigned_each_flow_gets_the_owner_at_its_start():
    s = shard()
    s.absorb(claims(("10.0.0.9", "old", T0, T0 + 10_000), ("10.0.0.9", "new", T0 + 15_000, T0 + 5 * MIN)), 0)
    s.absorb(lookups(flow(start=T0 + 5_000), flow(start=T0 + 20_000)), 0)
    answers = s.absorb(clock(T0 + 3 * MIN), 0)
    assert {a["start_ms"]: a["remote_workload"] for a in answers} == {T0 + 5_000: "old", T0 + 20_000: "new"}


def test_heartbeat_late_but_within_the_max_wait_is_used():
    s = shard()
    s.absorb(lookups(flow(), now=T0), 0)
    assert s.absorb(clock(T0 + 2 * MIN), 0) == []  # first try found nothing: waits
    [answer] = s.absorb(claims(("10.0.0.9", "web", T0 - 5_000, T0 + 5_000), now=T0 + 2 * MIN), 0)
    assert answer["remote_workload"] == "web"
    assert s.pending() == 0


def test_heartbeat_after_the_max_wait_is_too_late():
    s = shard()
    s.absorb(lookups(flow(), now=T0), 0)
    [answer] = s.absorb(clock(T0 + 5 * MIN), 0)
    assert (answer["outcome"], answer["reason"], answer["remote_workload"]) == ("unattributed", "no_owner", None)
    assert s.absorb(claims(("10.0.0.9", "web", T0 - 5_000, T0 + 5_000), now=T0 + 6 * MIN), 0) == []


def test_two_workloads_claiming_the_start_is_a_conflict():
    s = shard()
    s.absorb(claims(("10.0.0.9", "a", T0 - MIN, T0 + 1_000), ("10.0.0.9", "b", T0 - 1_000, T0 + MIN)), 0)
    s.absorb(lookups(flow()), 0)
    [answer] = s.absorb(clock(T0 + 2 * MIN), 0)
    assert (answer["outcome"], answer["reason"]) == ("unattributed", "conflict")


def test_ipv6_addresses_are_attributed_like_ipv4():
    s = shard()
    s.absorb(claims(("fd00::9", "web6", T0 - MIN, T0 + MIN)), 0)
    s.absorb(lookups(flow(remote_ip="fd00::9", local_ip="fd00::1")), 0)
    [answer] = s.absorb(clock(T0 + MIN), 0)
    assert answer["remote_workload"] == "web6"


def test_a_start_older_than_the_retention_is_expired():
    s = shard(retention_s=600)
    s.absorb(clock(T0 + 20 * MIN), 0)
    [answer] = s.absorb(lookups(flow(start=T0)), 0)
    assert (answer["outcome"], answer["reason"]) == ("unattributed", "expired")


def test_ranges_past_the_retention_are_forgotten():
    s = shard(retention_s=600)
    s.absorb(claims(("10.0.0.9", "web", T0, T0 + MIN), now=T0 + MIN), 0)
    s.absorb(clock(T0 + 30 * MIN), 0)
    assert "10.0.0.9" not in s.ranges


def test_the_remote_hosts_report_of_the_connection_wins_over_a_skewed_range():
    s = shard()
    # The server's clock runs 400 ms behind: its new owner's range starts "after" the client's start,
    # and the previous owner's range is within the guard. Only the server's own report can tell.
    s.absorb(claims(("10.0.0.9", "old", T0 - MIN, T0 - 100), ("10.0.0.9", "new", T0 + 300, T0 + MIN)), 0)
    c = flow(start=T0)
    report = ShardWork.of(connections=[(("10.0.0.9", 443, "10.0.0.1", 40000), T0 + 350, "new")])
    s.absorb(report, 0)
    s.absorb(lookups(c), 0)
    [answer] = s.absorb(clock(T0 + 2 * MIN), 0)
    assert (answer["remote_workload"], answer["match"]) == ("new", "connection")


def test_without_the_connection_report_the_skewed_boundary_is_a_conflict_not_a_guess():
    s = shard()
    s.absorb(claims(("10.0.0.9", "old", T0 - MIN, T0 - 100), ("10.0.0.9", "new", T0 + 300, T0 + MIN)), 0)
    s.absorb(lookups(flow(start=T0)), 0)
    [answer] = s.absorb(clock(T0 + 2 * MIN), 0)
    assert (answer["outcome"], answer["reason"]) == ("unattributed", "conflict")


def test_assignment_events_answer_only_for_addresses_without_heartbeats():
    s = shard()
    s.absorb(ShardWork.of(ip_events=[("10.0.255.1", "lb/public", T0 - MIN), ("10.0.0.9", "lb/stale", T0 - MIN)]), 0)
    s.absorb(claims(("10.0.0.9", "web", T0 - MIN, T0 + MIN)), 0)
    s.absorb(lookups(flow(remote_ip="10.0.255.1"), flow(remote_ip="10.0.0.9")), 0)
    answers = {a["remote_ip"]: a for a in s.absorb(clock(T0 + 2 * MIN), 0)}
    assert (answers["10.0.255.1"]["remote_workload"], answers["10.0.255.1"]["source"]) == ("lb/public", "ip_event")
    assert (answers["10.0.0.9"]["remote_workload"], answers["10.0.0.9"]["source"]) == ("web", "heartbeat")


def test_idle_input_lets_event_time_follow_the_wall_clock():
    s = shard(live=True)
    s.absorb(lookups(flow(), now=T0 + 1000), wall_ms=1_000_000)
    assert s.tick(1_000_000 + 4_000) == []  # not idle long enough
    assert s.tick(1_000_000 + 30_000) == []  # event time T0+31s: before the delay
    [answer] = s.tick(1_000_000 + 5 * MIN)
    assert answer["reason"] == "no_owner"
    assert s.pending() == 0


def test_end_of_input_answers_every_pending_lookup():
    s = shard()
    s.absorb(claims(("10.0.0.9", "web", T0 - MIN, T0 + MIN)), 0)
    s.absorb(lookups(flow(), flow(remote_ip="10.0.0.10")), 0)
    answers = {a["remote_ip"]: a for a in s.finish()}
    assert answers["10.0.0.9"]["remote_workload"] == "web"
    assert answers["10.0.0.10"]["reason"] == "no_owner"


def test_event_time_is_where_the_slowest_partition_has_got():
    # A backfill reads partition 1 far ahead of partition 0; the lookup must wait for partition 0.
    s = shard(partitions=2, live=True)
    s.absorb(ShardWork.of(lookups=[flow()], progress={1: T0 + 10 * MIN}), wall_ms=0)
    assert s.absorb(ShardWork.of(progress={0: T0 + 30_000, 1: T0 + 11 * MIN}), wall_ms=1_000) == []
    work = ShardWork.of(claims=[("10.0.0.9", "web", T0 - MIN, T0 + MIN)], progress={0: T0 + MIN, 1: T0 + 12 * MIN})
    [answer] = s.absorb(work, wall_ms=2_000)
    assert answer["remote_workload"] == "web"


def test_live_a_silent_partition_stops_holding_event_time_back():
    s = shard(partitions=2, live=True)
    s.absorb(ShardWork.of(lookups=[flow()], progress={0: T0}), wall_ms=0)
    assert s.absorb(clock(T0 + 2 * MIN), wall_ms=1_000) == []  # partition 1 may still speak
    [answer] = s.absorb(clock(T0 + 6 * MIN), wall_ms=6_000)  # it has not, for idle_advance_s
    assert answer["reason"] == "no_owner"


def test_an_answer_from_events_waits_for_a_late_unassignment():
    s = shard(event_settle_s=120)
    s.absorb(ShardWork.of(ip_events=[("10.0.255.1", "lb/old", T0 - 10 * MIN)]), 0)
    s.absorb(lookups(flow(remote_ip="10.0.255.1", start=T0)), 0)
    assert s.absorb(clock(T0 + 90_000), 0) == []  # past the delay, but events may still be late
    # The load balancer was released 5 s before the flow; the event says so 100 s late.
    s.absorb(ShardWork.of(ip_events=[("10.0.255.1", None, T0 - 5_000)], progress={0: T0 + 100_000}), 0)
    assert s.absorb(clock(T0 + 2 * MIN), 0) == []
    [answer] = s.absorb(clock(T0 + 5 * MIN), 0)
    assert (answer["outcome"], answer["reason"]) == ("unattributed", "no_owner")


def test_events_settled_answer_without_waiting_for_the_deadline():
    s = shard(event_settle_s=120)
    s.absorb(ShardWork.of(ip_events=[("10.0.255.1", "lb/one", T0 - 10 * MIN)]), 0)
    s.absorb(lookups(flow(remote_ip="10.0.255.1", start=T0)), 0)
    [answer] = s.absorb(clock(T0 + 2 * MIN), 0)
    assert (answer["remote_workload"], answer["source"]) == ("lb/one", "ip_event")
