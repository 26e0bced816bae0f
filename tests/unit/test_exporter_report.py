"""Captured connections -> flow and heartbeat records, as docs/records.md and the job's decoder want them."""

import orjson

from dataflow.records import RAW, Origin, TimeBounds, decode_message
from exporter.holdings import Span
from exporter.report import INBOUND, OUTBOUND, ClosedConnection, Host, OpenConnection, Reporter, address
from exporter.ship import batches

REPORTER = Reporter("node-1", "eu-1", "boot-7", realtime_offset_ns=1_700_000_000_000_000_000)
HOST_NETNS = 4026531833
NOBODY = Host(None)


def host_a(*addresses: str) -> Host:
    return Host("host-a", frozenset(addresses or ("10.0.0.1", "10.0.0.9")), HOST_NETNS)


def closed(**overrides) -> ClosedConnection:
    fields = dict(start_ns=5_000_000_000, end_ns=7_500_000_000, bytes_sent=1234, bytes_received=56,
                  cookie=42, pid=99, local_ip="10.0.0.1", local_port=40000, remote_ip="10.0.0.2",
                  remote_port=443, direction=OUTBOUND, comm="curl", workload="web", netns=HOST_NETNS)
    return ClosedConnection(**{**fields, **overrides})


def test_flow_record_carries_every_field_in_epoch_ms():
    assert REPORTER.flow(closed(), host_a()) == {
        "v": 2, "kind": "flow", "flow_id": "node-1:boot-7:42", "exporter": "node-1", "region": "eu-1",
        "local_ip": "10.0.0.1", "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 443,
        "direction": "outbound", "start_ms": 1_700_000_005_000, "end_ms": 1_700_000_007_500,
        "bytes_sent": 1234, "bytes_received": 56, "local_workload": "web", "pid": 99, "comm": "curl",
    }


def test_host_identity_names_the_local_end_when_the_maps_did_not():
    record = REPORTER.flow(closed(workload="", direction=INBOUND, pid=0), host_a())
    assert record["local_workload"] == "host-a" and record["direction"] == "inbound"
    assert "pid" not in record and "comm" not in record
    assert REPORTER.flow(closed(workload=""), NOBODY)["local_workload"] is None


def test_the_host_identity_names_only_sockets_of_the_host_namespace_on_the_hosts_addresses():
    pod_socket = closed(workload="", local_ip="10.244.1.7", netns=4026532500)
    assert REPORTER.flow(pod_socket, host_a())["local_workload"] is None
    # Even on an address the host also has: another namespace is not the host.
    assert REPORTER.flow(closed(workload="", netns=4026532500), host_a())["local_workload"] is None
    # A kernel without BTF cannot tell namespaces: the address decides.
    unknown = Host("host-a", frozenset({"10.0.0.1"}), None)
    assert REPORTER.flow(closed(workload="", netns=0), unknown)["local_workload"] == "host-a"
    assert REPORTER.flow(pod_socket, unknown)["local_workload"] is None


def test_a_flow_named_by_a_port_range_entry_says_which_ports_the_claim_covers():
    record = REPORTER.flow(closed(local_port=20417, workload="shop/cart", ports=(20000, 20999)), NOBODY)
    assert record["local_workload"] == "shop/cart" and record["local_ports"] == [20000, 20999]
    assert "local_ports" not in REPORTER.flow(closed(), NOBODY)


def test_v4_mapped_addresses_are_written_as_ipv4():
    assert address(b"\0" * 10 + b"\xff\xff" + bytes([10, 231, 0, 1])) == "10.231.0.1"
    assert address(bytes.fromhex("fd000231000000000000000000000001")) == "fd00:231::1"


def test_one_heartbeat_per_address_and_workload_from_the_oldest_open_connection():
    open_connections = [
        OpenConnection("10.0.0.1", 3_000_000_000, "web"),
        OpenConnection("10.0.0.1", 2_000_000_000, "web"),
        OpenConnection("10.0.0.9", 4_000_000_000, "", netns=HOST_NETNS),  # host identity
        OpenConnection("10.0.0.1", 1_000_000_000, "api"),
    ]
    beats = REPORTER.heartbeats(open_connections, [], host_a("10.0.0.9"), now_ns=9_000_000_000)
    assert spans(beats) == [
        ("10.0.0.1", "api", 1000, 9000), ("10.0.0.1", "web", 2000, 9000), ("10.0.0.9", "host-a", 4000, 9000),
    ]
    assert REPORTER.heartbeats([OpenConnection("10.0.0.9", 1, "", netns=HOST_NETNS)], [], NOBODY, now_ns=5) == []


def test_the_host_identity_never_claims_an_address_that_is_not_the_hosts():
    # A pod's socket whose address has no map entry: not on the host's interfaces, so no claim.
    beats = REPORTER.heartbeats([OpenConnection("10.244.1.7", 1_000_000_000, "", netns=4026532500)], [],
                                host_a("192.168.1.10"), now_ns=9_000_000_000)
    assert beats == []


def test_port_range_claims_heartbeat_with_their_ports():
    held = [Span("10.0.3.8", "shop/cart", 6_000_000_000, 9_000_000_000, (20000, 20999)),
            Span("10.0.3.8", "shop/web", 6_000_000_000, 9_000_000_000, (8443, 8443))]
    open_connections = [OpenConnection("10.0.3.8", 2_000_000_000, "shop/cart", (20000, 20999))]
    beats = REPORTER.heartbeats(open_connections, held, NOBODY, 9_000_000_000)
    assert [(b["workload"], b["ports"], b["start_ms"] - 1_700_000_000_000) for b in beats] == [
        ("shop/web", [8443, 8443], 6000), ("shop/cart", [20000, 20999], 2000),
    ]
    assert all(b["v"] == 2 and b["ip"] == "10.0.3.8" for b in beats)


def test_held_mappings_heartbeat_and_merge_with_open_connections():
    held = [
        Span("10.0.0.1", "web", 6_000_000_000, 9_000_000_000),  # still held: merged with its open connection
        Span("10.0.0.2", "db", 6_000_000_000, 9_000_000_000),  # held, only short connections
        Span("10.0.0.3", "old", 6_000_000_000, 7_000_000_000),  # removed mid-interval
    ]
    beats = REPORTER.heartbeats([OpenConnection("10.0.0.1", 2_000_000_000, "web")], held, NOBODY, 9_000_000_000)
    assert spans(beats) == [
        ("10.0.0.1", "web", 2000, 9000), ("10.0.0.2", "db", 6000, 9000), ("10.0.0.3", "old", 6000, 7000),
    ]


def spans(beats: list[dict]) -> list[tuple]:
    return [(b["ip"], b["workload"], b["start_ms"] - 1_700_000_000_000, b["end_ms"] - 1_700_000_000_000)
            for b in beats]


def test_the_jobs_decoder_accepts_what_the_exporter_writes():
    now_ms = 1_700_000_010_000
    records = [REPORTER.flow(closed(), host_a()), REPORTER.flow(closed(ports=(40000, 40000)), NOBODY)]
    records += REPORTER.heartbeats(
        [OpenConnection("fd00::1", 1_000_000_000, "web")],
        [Span("10.0.3.8", "cart", 6_000_000_000, 9_000_000_000, (20000, 20999))], host_a(), 9_000_000_000)
    for batch in batches(records, 1):
        good, dead = decode_message(orjson.dumps(batch), Origin("t", 0, 0, RAW),
                                    TimeBounds(now_ms - 60_000, now_ms + 60_000))
        assert dead == [] and len(good) == 1


def test_batches_split_records_in_order():
    assert batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert batches([], 2) == []
