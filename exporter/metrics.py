"""The exporter's Prometheus metrics and its liveness and readiness: what the agent's loop counts
(connections, records, the kernel's loss counters, map fill) and what its shipper reports (batches,
records delivered, buffered, dropped), served by dataflow/endpoint.py when metrics.port is set."""

from __future__ import annotations

import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dataflow.config import Config
from dataflow.endpoint import Endpoint

# The loop wakes at least every POLL_MS; this long without a turn means it is stuck.
STALLED_S = 30.0


class ExporterMetrics:
    def __init__(self, config: Config, shipper):
        self.settings = config.exporter
        self.shipper = shipper  # its `stats` (ShipStats) is read at scrape time
        self.capturing = False
        self.turned_at = time.monotonic()
        self.connections = 0  # closed connections drained from the kernel
        self.flows = 0
        self.heartbeats = 0
        self.kernel: dict[str, int] = {}  # exporter/capture.py COUNTER_NAMES -> cumulative value
        self.open_connections = 0
        self.workloads = 0  # (address, workload) registrations in the pinned maps
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.endpoint = None
        if config.metrics.port:
            self.endpoint = Endpoint(config.metrics, self.registry, self.live, self.ready)

    def turned(self) -> None:
        """The agent's loop went round once."""
        self.turned_at = time.monotonic()

    def live(self) -> str | None:
        stalled = time.monotonic() - self.turned_at
        if self.capturing and stalled > STALLED_S:
            return f"the capture loop has not turned for {stalled:.0f} s"
        return None

    def ready(self) -> str | None:
        if not self.capturing:
            return "starting: the BPF programs are not loaded yet"
        return self.live()

    def collect(self) -> Iterator[Any]:
        stats = self.shipper.stats
        counters = [
            ("flowattr_exporter_connections", "Closed TCP connections captured.", self.connections),
            ("flowattr_exporter_lost_events",
             "Closed connections lost because the kernel's ring buffer was full.", self.kernel.get("lost_events", 0)),
            ("flowattr_exporter_untracked_connections",
             "Connections not tracked because the connections map was full.", self.kernel.get("connections_full", 0)),
            ("flowattr_exporter_batches_sent", "Batches (messages) acknowledged by Kafka or written out.", stats.batches),
            ("flowattr_exporter_records_delivered", "Records acknowledged by Kafka or written out.", stats.delivered),
            ("flowattr_exporter_records_dropped",
             "Records given up: buffer full, or a permanent delivery error.", stats.dropped),
        ]
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)
        records = CounterMetricFamily("flowattr_exporter_records", "Records shipped, by kind.", labels=["kind"])
        records.add_metric(["flow"], self.flows)
        records.add_metric(["heartbeat"], self.heartbeats)
        yield records
        yield GaugeMetricFamily("flowattr_exporter_records_buffered",
                                "Records handed to Kafka and not yet acknowledged.", value=stats.buffered)
        entries = GaugeMetricFamily("flowattr_exporter_map_entries",
                                    "Entries in a BPF map (workloads: address and workload pairs registered).",
                                    labels=["map"])
        entries.add_metric(["connections"], self.open_connections)
        entries.add_metric(["workloads"], self.workloads)
        yield entries
        capacity = GaugeMetricFamily("flowattr_exporter_map_capacity", "Entries a BPF map can hold (workloads: each of its two maps).",
                                      labels=["map"])
        capacity.add_metric(["connections"], self.settings.max_connections)
        capacity.add_metric(["workloads"], self.settings.max_workloads)
        yield capacity
        yield GaugeMetricFamily("flowattr_exporter_capturing", "1 once the BPF programs are loaded.",
                                value=int(self.capturing))
