"""The plain parts of the commands: TIME arguments, tail's filters and rows, deps' edge counting."""

from __future__ import annotations

import argparse

import pytest

from dataflow.config import ConfigError
from dataflow.deps import Dependencies, Edge, dot, table
from dataflow.tail import format_bytes, matcher, table_line
from dataflow.times import format_ms, parse_time

NOW = 1_795_000_000_000


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("15m", NOW - 900_000),
    ("-2h30m", NOW - 9_000_000),
    ("1d", NOW - 86_400_000),
    ("90s", NOW - 90_000),
    ("1795000000123", 1_795_000_000_123),
    ("2026-11-28T12:00:00Z", 1_795_867_200_000),
    ("2026-11-28T12:00:00", 1_795_867_200_000),  # no zone: UTC
    ("2026-11-28T13:00:00+01:00", 1_795_867_200_000),
])
def test_times_are_read_as_people_write_them(text, expected):
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "15 minutes", "2026-13-01", "", "m"])
def test_a_bad_time_says_what_is_accepted(text):
    with pytest.raises(ConfigError, match="bad time .* give ISO 8601"):
        parse_time(text, NOW)


def test_format_ms_reads_back():
    assert format_ms(1_795_867_200_123) == "2026-11-28T12:00:00.123Z"
    assert parse_time(format_ms(1_795_867_200_123)) == 1_795_867_200_123


def flow(fid, local, remote, direction="outbound", outcome="attributed", reason=None, lport=40000, rport=8443,
         lip="10.0.0.1", rip="10.0.0.2", sent=100, received=900):
    return {"kind": "attributed", "flow_id": fid, "local_workload": local, "remote_workload": remote,
            "local_ip": lip, "remote_ip": rip, "local_port": lport, "remote_port": rport, "direction": direction,
            "outcome": outcome, "reason": reason, "start_ms": NOW, "bytes_sent": sent, "bytes_received": received}


def filters(**given):
    names = ("workload", "remote_workload", "ip", "outcome", "reason")
    return matcher(argparse.Namespace(**{n: given.get(n) for n in names}))


def test_tail_filters_and_together_and_or_within():
    a = flow("a", "shop/cart", "shop/db")
    b = flow("b", "shop/api", None, outcome="unattributed", reason="no_owner", rip="10.0.0.9")
    c = flow("c", "bank/core", "shop/db")
    records = [a, b, c, {"kind": "dead_letter", "reason": "not_json"}]
    pick = lambda **f: [r.get("flow_id") for r in records if filters(**f)(r)]  # noqa: E731
    assert pick(workload=["shop/*"]) == ["a", "b"]
    assert pick(workload=["shop/*"], remote_workload=["shop/db"]) == ["a"]
    assert pick(ip=["10.0.0.9"]) == ["b"]
    assert pick(outcome=["unattributed", "external"]) == ["b"]
    assert pick(reason=["not_json"]) == [None]
    assert pick() == ["a", "b", "c", None]


def test_a_table_row_shows_the_connection_from_client_to_server():
    out = table_line(flow("a", "shop/cart", "shop/db", sent=1500, received=2_500_000), 0)
    assert "shop/cart 10.0.0.1:40000" in out and out.index("shop/cart") < out.index(" -> ") < out.index("shop/db")
    inbound = table_line(flow("b", "shop/db", None, direction="inbound", outcome="unattributed", reason="conflict"), 0)
    assert inbound.index("? 10.0.0.2:8443") < inbound.index(" -> ") < inbound.index("shop/db 10.0.0.1")
    assert "unattributed (conflict)" in inbound
    assert format_bytes(812) == "812 B" and format_bytes(45_300) == "45.3 kB" and format_bytes(2_500_000) == "2.5 MB"


def test_deps_counts_a_connection_reported_by_both_ends_once():
    d = Dependencies()
    # One connection, reported by the client (outbound) and the server (inbound, its ends mirrored).
    d.add(flow("c1", "web", "db", lport=40000, rport=5432, lip="10.0.0.1", rip="10.0.0.2"))
    d.add(flow("c1s", "db", "web", direction="inbound", lport=5432, rport=40000, lip="10.0.0.2", rip="10.0.0.1",
               sent=900, received=100))
    # A second connection only the server reported (the client's batch was lost).
    d.add(flow("c2s", "db", "web", direction="inbound", lport=5432, rport=40001, lip="10.0.0.2", rip="10.0.0.1"))
    d.add(flow("c2s", "db", "web", direction="inbound", lport=5432, rport=40001, lip="10.0.0.2", rip="10.0.0.1"))
    d.add(flow("u", "web", None, outcome="unattributed", reason="no_owner"))
    d.add(flow("x", None, "db"))
    assert d.edges() == [Edge("web", "db", 2, 2000)]
    assert d.left_out == {"repeated answer": 1, "no_owner": 1, "local end unknown": 1}
    assert d.edges(["cache"]) == []
    assert table(d.edges()).splitlines()[1].split() == ["web", "db", "2", "2.0", "kB"]
    assert '"web" -> "db" [label="2 flows\\n2.0 kB"' in dot(d.edges())
