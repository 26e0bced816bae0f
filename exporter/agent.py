"""The exporter's loop: drains closed connections as they come; every interval ships them as `flow`
records with a `heartbeat` per local address whose workload has open connections, and prints one
stats line (cumulative counts) on stderr."""

from __future__ import annotations

import sys
import threading
import time

from dataflow.config import Config
from exporter.capture import Capture, check_prerequisites
from exporter.identity import IdentityError, read_identity
from exporter.report import ClosedConnection, reporter_for
from exporter.ship import FileShipper, KafkaShipper

# How long a stopping agent waits for Kafka to acknowledge what it still holds.
CLOSE_TIMEOUT_S = 10.0
POLL_MS = 200


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
    flows_total = heartbeats_total = 0
    try:
        capture = Capture(settings)
    except BaseException:
        shipper.close(0)
        raise
    try:
        _log(f"capturing; exporter={reporter.exporter} identity={identity} interval={settings.interval_s}s")
        closed: list[ClosedConnection] = []
        next_report = time.monotonic() + settings.interval_s
        while True:
            stopping = stop.is_set()
            wait_ms = 0 if stopping else min(POLL_MS, max(0, int((next_report - time.monotonic()) * 1000)))
            closed += capture.drain(wait_ms)
            shipper.poll()
            if not stopping and time.monotonic() < next_report:
                continue
            next_report += settings.interval_s
            identity = _reread_identity(settings.identity_file, identity)
            records = [reporter.flow(conn, identity) for conn in closed]
            heartbeats = reporter.heartbeats(capture.open_connections(), identity, time.monotonic_ns())
            shipper.ship(records + heartbeats)
            flows_total += len(records)
            heartbeats_total += len(heartbeats)
            closed = []
            counters = capture.counters()
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


def _reread_identity(path: str, previous: str | None) -> str | None:
    # Certificates rotate; a file that turns unreadable keeps the last good identity.
    try:
        return read_identity(path)
    except IdentityError as e:
        _log(f"{e}; keeping {previous!r}")
        return previous


def _log(line: str) -> None:
    print(f"flowattr export: {line}", file=sys.stderr, flush=True)
