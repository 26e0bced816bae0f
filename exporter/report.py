"""Turns captured connections and held addresses into the records of docs/records.md: a `flow` per
closed connection and a `heartbeat` per (local address, workload) held in the interval. Pure: no BPF,
no Kafka."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from exporter.holdings import Ports, Span

VERSION = 2  # docs/records.md: v2 adds port-range claims
OUTBOUND, INBOUND = 1, 2
_DIRECTIONS = {OUTBOUND: "outbound", INBOUND: "inbound"}
_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


@dataclass(frozen=True)
class ClosedConnection:
    """One connection as the kernel side reported it at socket destruction (monotonic times)."""

    start_ns: int
    end_ns: int
    bytes_sent: int
    bytes_received: int
    cookie: int
    pid: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    direction: int
    comm: str
    workload: str  # "" when the workload maps had no entry
    ports: Ports | None = None  # the port range of the (IPv4, ports) entry that named the workload
    netns: int = 0  # the socket's network namespace inode, 0 when the kernel side cannot tell


@dataclass(frozen=True)
class OpenConnection:
    local_ip: str
    start_ns: int
    workload: str
    ports: Ports | None = None
    netns: int = 0


@dataclass(frozen=True)
class Host:
    """What the host identity may name: a socket in the host's network namespace on one of the
    host's own addresses that no map entry names (not even for some ports). Anything else without
    an entry (a pod's socket, another namespace) is nobody's."""

    identity: str | None
    addresses: frozenset[str] = frozenset()
    netns: int | None = None  # the host namespace's inode; None: the kernel side cannot tell

    def names(self, local_ip: str, netns: int) -> str | None:
        if not self.identity or local_ip not in self.addresses:
            return None
        if self.netns is not None and netns != self.netns:
            return None
        return self.identity


@dataclass(frozen=True)
class Reporter:
    """Who is reporting, and how to turn the kernel's monotonic clock into epoch milliseconds."""

    exporter: str
    region: str
    boot_id: str
    # CLOCK_REALTIME - CLOCK_MONOTONIC, taken once at startup.
    realtime_offset_ns: int

    def epoch_ms(self, monotonic_ns: int) -> int:
        return (monotonic_ns + self.realtime_offset_ns) // 1_000_000

    def flow(self, conn: ClosedConnection, host: Host) -> dict:
        record = {
            "v": VERSION,
            "kind": "flow",
            # The socket cookie is unique per boot, so this id survives replays and agent restarts.
            "flow_id": f"{self.exporter}:{self.boot_id}:{conn.cookie}",
            "exporter": self.exporter,
            "region": self.region,
            "local_ip": conn.local_ip,
            "local_port": conn.local_port,
            "remote_ip": conn.remote_ip,
            "remote_port": conn.remote_port,
            "direction": _DIRECTIONS[conn.direction],
            "start_ms": self.epoch_ms(conn.start_ns),
            "end_ms": self.epoch_ms(max(conn.end_ns, conn.start_ns)),
            "bytes_sent": conn.bytes_sent,
            "bytes_received": conn.bytes_received,
            "local_workload": conn.workload or host.names(conn.local_ip, conn.netns),
        }
        if conn.workload and conn.ports:
            record["local_ports"] = list(conn.ports)
        if conn.pid:
            record["pid"] = conn.pid
            record["comm"] = conn.comm
        return record

    def heartbeats(
        self,
        open_connections: list[OpenConnection],
        held: list[Span],
        host: Host,
        now_ns: int,
    ) -> list[dict]:
        """One per (local address, workload, ports) and span: the spans the maps (or the identity's
        addresses) were held in this interval, and, for pairs with connections open, from the oldest
        open connection's start to now; both for one pair make one heartbeat from the earlier start.
        Open connections without an entry count for the host identity only where it names them."""
        oldest: dict[tuple[str, str, Ports | None], int] = {}
        for conn in open_connections:
            if conn.workload:
                key = (conn.local_ip, conn.workload, conn.ports)
            elif identity := host.names(conn.local_ip, conn.netns):
                key = (conn.local_ip, identity, None)
            else:
                continue
            oldest[key] = min(oldest.get(key, conn.start_ns), conn.start_ns)
        spans = []
        for span in held:
            key = (span.ip, span.workload, span.ports)
            if span.end_ns == now_ns and key in oldest:
                spans.append((*key, min(span.start_ns, oldest.pop(key)), now_ns))
            else:
                spans.append((*key, span.start_ns, span.end_ns))
        spans += [(*key, start_ns, now_ns) for key, start_ns in oldest.items()]
        records = []
        for ip, workload, ports, start_ns, end_ns in sorted(spans, key=lambda s: (s[0], s[2] or (0, 0), s[1], s[3])):
            record = {
                "v": VERSION,
                "kind": "heartbeat",
                "exporter": self.exporter,
                "region": self.region,
                "ip": ip,
                "workload": workload,
                "start_ms": self.epoch_ms(start_ns),
                "end_ms": self.epoch_ms(max(end_ns, start_ns)),
            }
            if ports:
                record["ports"] = list(ports)
            records.append(record)
        return records


def reporter_for(exporter: str, region: str) -> Reporter:
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    return Reporter(exporter, region, boot_id, time.time_ns() - time.monotonic_ns())


def address(raw: bytes) -> str:
    """16 bytes from the kernel side; v4-mapped addresses are written as plain IPv4 (records.md).
    inet_ntop rather than ipaddress: this runs twice per connection."""
    if raw[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)
