"""Captured connections -> flow and heartbeat records, as docs/records.md and the job's decoder want them."""

import orjson

from dataflow.records import RAW, Origin, TimeBounds, decode_message
from exporter.holdings import Span
from exporter.report import INBOUND, OUTBOUND, ClosedConnection, OpenConnection, Reporter, address
from exporter.ship import batches

REPORTER = Reporter("node-1", "eu-1", "boot-7", realtime_offset_ns=1_700_000_000_000_000_000)


def closed(**overrides) -> ClosedConnection:
    fields = dict(start_ns=5_000_000_000, end_ns=7_500_000_000, bytes_sent=1234, bytes_received=56,
                  cookie=42, pid=99, local_ip="10.0.0.1", local_port=40000, remote_ip="10.0.0.2",
                  remote_port=443, direction=OUTBOUND, comm="curl", workload="web")
    return ClosedConnection(**{**fields, **overrides})


def test_flow_record_carries_every_field_in_epoch_ms():
    assert REPORTER.flow(closed(), host_identity="host-a") == {
        "v": 1, "kind": "flow", "flow_id": "node-1:boot-7:42", "exporter": "node-1", "region": "eu-1",
        "local_ip": "10.0.0.1", "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 443,
        "direction": "outbound", "start_ms": 1_700_000_005_000, "end_ms": 1_700_000_007_500,
        "bytes_sent": 1234, "bytes_received": 56, "local_workload": "web", "pid": 99, "comm": "curl",
    }


def test_host_identity_names_the_local_end_when_the_maps_did_not():
    record = REPORTER.flow(closed(workload="", direction=INBOUND, pid=0), host_identity="host-a")
    assert record["local_workload"] == "host-a" and record["direction"] == "inbound"
    assert "pid" not in record and "comm" not in record
    assert REPORTER.flow(closed(workload=""), host_identity=None)["local_workload"] is None


def test_v4_mapped_addresses_are_written_as_ipv4():
    assert address(b"\0" * 10 + b"\xff\xff" + bytes([10, 231, 0, 1])) == "10.231.0.1"
    assert address(bytes.fromhex("fd000231000000000000000000000001")) == "fd00:231::1"


def test_one_heartbeat_per_address_and_workload_from_the_oldest_open_connection():
    open_connections = [
        OpenConnection("10.0.0.1", 3_000_000_000, "web"),
        OpenConnection("10.0.0.1", 2_000_000_000, "web"),
        OpenConnection("10.0.0.9", 4_000_000_000, ""),  # host identity
        OpenConnection("10.0.0.1", 1_000_000_000, "api"),
    ]
    beats = REPORTER.heartbeats(open_connections, [], "host-a", now_ns=9_000_000_000)
    assert spans(beats) == [
        ("10.0.0.1", "api", 1000, 9000), ("10.0.0.1", "web", 2000, 9000), ("10.0.0.9", "host-a", 4000, 9000),
    ]
    assert REPORTER.heartbeats([OpenConnection("10.0.0.9", 1, "")], [], None, now_ns=5) == []


def test_held_mappings_heartbeat_and_merge_with_open_connections():
    held = [
        Span("10.0.0.1", "web", 6_000_000_000, 9_000_000_000),  # still held: merged with its open connection
        Span("10.0.0.2", "db", 6_000_000_000, 9_000_000_000),  # held, only short connections
        Span("10.0.0.3", "old", 6_000_000_000, 7_000_000_000),  # removed mid-interval
    ]
    beats = REPORTER.heartbeats([OpenConnection("10.0.0.1", 2_000_000_000, "web")], held, None, 9_000_000_000)
    assert spans(beats) == [
        ("10.0.0.1", "web", 2000, 9000), ("10.0.0.2", "db", 6000, 9000), ("10.0.0.3", "old", 6000, 7000),
    ]


def spans(beats: list[dict]) -> list[tuple]:
    return [(b["ip"], b["workload"], b["start_ms"] - 1_700_000_000_000, b["end_ms"] - 1_700_000_000_000)
            for b in beats]


def test_the_jobs_decoder_accepts_what_the_exporter_writes():
    now_ms = 1_700_000_010_000
    records = [REPORTER.flow(closed(), "h")] + REPORTER.heartbeats(
        [OpenConnection("fd00::1", 1_000_000_000, "web")], [], "h", 9_000_000_000)
    for batch in batches(records, 1):
        good, dead = decode_message(orjson.dumps(batch), Origin("t", 0, 0, RAW),
                                    TimeBounds(now_ms - 60_000, now_ms + 60_000))
        assert dead == [] and len(good) == 1


def test_batches_split_records_in_order():
    assert batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert batches([], 2) == []
