"""The exporter's loop: drains closed connections as they come and polls the workload maps every
second; every interval ships the closed connections as `flow` records and a `heartbeat` per
(local address, workload) held in the interval, and prints one stats line (cumulative) on stderr."""

from __future__ import annotations

import sys
import threading
import time

from dataflow.config import Config
from exporter.capture import Capture, check_prerequisites
from exporter.holdings import Holdings, Pair
from exporter.identity import IdentityError, interface_addresses, read_identity
from exporter.metrics import ExporterMetrics
from exporter.report import Host, reporter_for
from exporter.ship import FileShipper, KafkaShipper

# How long a stopping agent waits for Kafka to acknowledge what it still holds.
CLOSE_TIMEOUT_S = 10.0
POLL_MS = 200
# How often the workload maps are read: a heartbeat claims a mapping from the first poll that saw it
# to the last, so this bounds how much of a mapping's time goes unclaimed at either end.
MAP_POLL_S = 1.0


def run(config: Config, out: str | None, stop: threading.Event) -> None:
    """Runs until `stop` is set, then ships what it has and returns."""
    settings = config.exporter
    check_prerequisites()  # privileges first: without them nothing else matters
    identity = read_identity(settings.identity_file)
    reporter = reporter_for(config.exporter_id(), config.region)
    if out:
        shipper = FileShipper(out, settings.batch_records)
    else:
        shipper = KafkaShipper(
            config.kafka, reporter.exporter, settings.buffer_max_records, settings.batch_records
        )
        # Said once and at once; then capture goes on, buffering (bounded, counted) until Kafka answers:
        # an exporter that exits would lose the connections it sees meanwhile.
        why = shipper.unreachable(config.kafka.timeout_s)
        if why:
            _log(f"{why}; buffering up to {settings.buffer_max_records} records until it answers")
    flows_total = heartbeats_total = 0
    try:
        metrics = ExporterMetrics(config, shipper)  # /metrics, /healthz, /readyz when metrics.port is set
        capture = Capture(settings)
    except BaseException:
        shipper.close(0)
        raise
    metrics.capturing = True
    try:
        _log(f"capturing; exporter={reporter.exporter} identity={identity} interval={settings.interval_s}s")
        records: list[dict] = []
        holdings = Holdings()
        identity_ips: set[str] = set()  # local ends of connections the host identity named
        registered, host = _look(capture, identity)
        interval_start_ns = time.monotonic_ns()
        holdings.observe(interval_start_ns, _held(registered, host, identity_ips, metrics))
        next_poll = time.monotonic() + MAP_POLL_S
        next_report = time.monotonic() + settings.interval_s
        while True:
            stopping = stop.is_set()
            wait_ms = 0 if stopping else min(POLL_MS, max(0, int((next_report - time.monotonic()) * 1000)))
            arrived = capture.drain(wait_ms)
            metrics.turned()
            metrics.connections += len(arrived)
            for conn in arrived:
                # Named as it arrives, against the addresses the host has now.
                record = reporter.flow(conn, host)
                if not conn.workload and record["local_workload"]:
                    identity_ips.add(conn.local_ip)
                records.append(record)
            shipper.poll()
            reporting = stopping or time.monotonic() >= next_report
            if not reporting:
                if time.monotonic() >= next_poll:
                    registered, host = _look(capture, identity)
                    holdings.observe(time.monotonic_ns(), _held(registered, host, identity_ips, metrics))
                    next_poll = time.monotonic() + MAP_POLL_S
                continue
            next_report += settings.interval_s
            identity = _reread_identity(settings.identity_file, identity)
            open_connections = capture.open_connections()
            registered, host = _look(capture, identity)
            identity_ips.update(
                conn.local_ip for conn in open_connections
                if not conn.workload and host.names(conn.local_ip, conn.netns)
            )
            now_ns = time.monotonic_ns()
            holdings.observe(now_ns, _held(registered, host, identity_ips, metrics))
            next_poll = time.monotonic() + MAP_POLL_S
            held = holdings.report(interval_start_ns, now_ns)
            interval_start_ns = now_ns
            heartbeats = reporter.heartbeats(open_connections, held, host, now_ns)
            shipper.ship(records + heartbeats)
            flows_total += len(records)
            heartbeats_total += len(heartbeats)
            records = []
            counters = capture.counters()
            metrics.flows, metrics.heartbeats = flows_total, heartbeats_total
            metrics.kernel, metrics.open_connections = counters, len(open_connections)
            stats = shipper.stats
            error = shipper.last_error()
            _log(
                f"flows={flows_total} heartbeats={heartbeats_total} "
                f"lost_events={counters['lost_events']} connections_full={counters['connections_full']} "
                f"delivered={stats.delivered} buffered={stats.buffered} dropped={stats.dropped}"
                + (f" last_error={error!r}" if error else "")
            )
            if stopping:
                break
    finally:
        capture.close()
        shipper.close(CLOSE_TIMEOUT_S)
        stats = shipper.stats
        _log(f"stopped; delivered={stats.delivered} dropped={stats.dropped}")


def _look(capture: Capture, identity: str | None) -> tuple[set[Pair], Host]:
    """The registrations now, and what the host identity may name: the host's own addresses (read
    in the host network namespace, where the agent runs) that no registration names, not even for
    some ports, and only for sockets in that namespace."""
    registered = capture.registrations()
    addresses = frozenset(interface_addresses() - {ip for ip, _, _ in registered})
    return registered, Host(identity, addresses, capture.host_netns)


def _held(registered: set[Pair], host: Host, identity_ips: set[str], metrics: ExporterMetrics) -> set[Pair]:
    """What this host can claim now: every workload map entry, and the host identity on each address
    that a connection named by the identity used and that is still configured on an interface of the
    host network namespace. (All interface addresses would also claim bridge and link-local addresses
    every host has.)"""
    held = set(registered)
    metrics.workloads = len(held)
    if host.identity and identity_ips:
        identity_ips &= host.addresses  # gone from the interfaces: a new connection must show it again
        held |= {(ip, host.identity, None) for ip in identity_ips}
    return held


def _reread_identity(path: str, previous: str | None) -> str | None:
    # Certificates rotate; a file that turns unreadable keeps the last good identity.
    try:
        return read_identity(path)
    except IdentityError as e:
        _log(f"{e}; keeping {previous!r}")
        return previous


def _log(line: str) -> None:
    print(f"flowattr export: {line}", file=sys.stderr, flush=True)
