"""The job process's Prometheus metrics, read at scrape time from what the job keeps anyway: its Tally
(records in, answers, forwards, dead letters), its shards' stats() and its Kafka readers' positions;
served with the liveness and readiness checks by dataflow/endpoint.py when metrics.port is set."""

from __future__ import annotations

import time
import weakref
from typing import Any, Iterator

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dataflow.config import Config
from dataflow.endpoint import Endpoint
from dataflow.kafka_client import client_settings
from dataflow.routing import Tally

# Tally key prefix -> (metric, help, label). Answers carry two labels and are handled on their own.
TALLY_COUNTERS = {
    "in": ("flowattr_records_in", "Records read, by the role of their topic.", "role"),
    "forwarded": ("flowattr_forwarded", "Flows forwarded to another region's collector.", "region"),
    "dead": ("flowattr_dead_letters", "Records sent to the dead-letter topic, by reason.", "reason"),
    "absorbed": ("flowattr_absorbed", "Evidence records taken into ownership state, by kind.", "kind"),
    "refused": ("flowattr_refused_claims", "Ownership claims refused, by reason.", "reason"),
}
# A reader that has not looked at Kafka for this long is stuck: the runtime polls its readers
# continually, with input or without.
STALE_READER_S = 120.0
READY_TIMEOUT_S = 2.0


class JobMetrics:
    def __init__(self, config: Config, tally: Tally):
        self.config = config
        self.tally = tally
        self.shard_logics: weakref.WeakSet = weakref.WeakSet()
        # (topic, partition) -> (next offset to read, low watermark, high watermark, monotonic time)
        self.positions: dict[tuple[str, int], tuple[int, int, int, float]] = {}
        self.running = False
        self._admin = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.endpoint = None
        if config.metrics.port:
            self.endpoint = Endpoint(config.metrics, self.registry, self.live, self.ready)

    # Hooks called by dataflow/flow.py and the Kafka readers.

    def shard(self, logic):
        """Watches a shard's Bytewax logic (its `.shard.stats()`); returns it."""
        self.shard_logics.add(logic)
        return logic

    def position(self, topic: str, partition: int, offset: int, low: int, high: int) -> None:
        self.positions[(topic, partition)] = (offset, low, high, time.monotonic())

    # Checks.

    def live(self) -> str | None:
        now = time.monotonic()
        stale = [f"{t}[{p}]" for (t, p), (*_, at) in _copy(self.positions.items()) if now - at > STALE_READER_S]
        if stale:
            return f"readers of {', '.join(sorted(stale))} have not polled Kafka for {STALE_READER_S:.0f} s"
        return None

    def ready(self) -> str | None:
        if not self.running:
            return "starting: the dataflow is not built yet"
        if self.config.files.input_dir:
            return None
        if self._admin is None:
            self._admin = AdminClient(client_settings(self.config.kafka, log_level=0))
        try:
            self._admin.list_topics(self.config.kafka.raw_topic, timeout=READY_TIMEOUT_S)
        except KafkaException as e:
            return f"Kafka at {self.config.kafka.brokers} does not answer: {e.args[0].str()}"
        return None

    # The Prometheus collector.

    def collect(self) -> Iterator[Any]:
        counts = self.tally.snapshot()
        families = {
            prefix: CounterMetricFamily(name, text, labels=[label])
            for prefix, (name, text, label) in TALLY_COUNTERS.items()
        }
        answers = CounterMetricFamily(
            "flowattr_answers", "Flows answered, by outcome and, for unattributed ones, reason.",
            labels=["outcome", "reason"],
        )
        for key, value in sorted(counts.items()):
            prefix, _, rest = key.partition(".")
            if prefix == "out":
                outcome, _, reason = rest.partition(".")
                answers.add_metric([outcome, reason], value)
            elif prefix in families:
                families[prefix].add_metric([rest], value)
        yield answers
        yield from families.values()
        yield from self._shard_gauges()
        yield from self._consumer_lag()

    def _shard_gauges(self) -> Iterator[Any]:
        totals = {"addresses": 0, "ranges": 0, "pending": 0, "reports": 0, "buffered": 0, "late": 0}
        held: dict[str, int] = {}
        clocks = []
        logics = _copy(self.shard_logics)
        for logic in logics:
            stats = _stats(logic.shard)
            for name in totals:
                totals[name] += stats.get(name, 0)
            if stats.get("clock_ms", 0) > 0:
                clocks.append(stats["clock_ms"])
            for kind, size in _again(logic.shard.held_bytes).items():
                held[kind] = held.get(kind, 0) + size
        gauges = [
            ("flowattr_shards", "Address shards held by this process.", len(logics)),
            ("flowattr_tracked_addresses", "Addresses with ownership ranges.", totals["addresses"]),
            ("flowattr_ownership_ranges", "Ownership ranges held.", totals["ranges"]),
            ("flowattr_pending_lookups", "Flows waiting for their remote address's owner.", totals["pending"]),
            ("flowattr_connection_reports", "Connection reports held for their other end's lookup.", totals["reports"]),
            ("flowattr_buffered_evidence", "Work waiting for the clock to reach its arrival time.", totals["buffered"]),
        ]
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        packed = GaugeMetricFamily(
            "flowattr_held_bytes", "Bytes of the packed state the shards hold, by kind: lookups, connection "
            "reports, the exporters' clock differences (object headers and the allocator's slack come on top).",
            labels=["kind"],
        )
        for kind, size in sorted(held.items()):
            packed.add_metric([kind], size)
        yield packed
        yield CounterMetricFamily(
            "flowattr_late_evidence", "Work that arrived behind its shard's clock.", value=totals["late"]
        )
        now_ms = time.time() * 1000
        behind = [now_ms - c for c in clocks if c <= now_ms]
        if behind:
            yield GaugeMetricFamily(
                "flowattr_event_time_lag_seconds",
                "Wall clock minus the decision clock of this process's slowest shard.",
                value=max(behind) / 1000,
            )

    def _consumer_lag(self) -> Iterator[Any]:
        lag = GaugeMetricFamily(
            "flowattr_consumer_lag_messages",
            "Messages in a partition not yet read by this process, from its own read offsets and the "
            "high watermarks its fetches brought back.",
            labels=["topic", "partition"],
        )
        from_beginning = self.config.kafka.starting_offset == "beginning"
        for (topic, partition), (offset, low, high, _) in sorted(_copy(self.positions.items())):
            if offset >= 0:
                behind = high - offset
            else:  # nothing read yet: all of it, or nothing when starting at the end
                behind = high - low if from_beginning else 0
            lag.add_metric([topic, str(partition)], max(0, behind))
        yield lag


def _stats(shard) -> dict[str, int]:
    return _again(shard.stats)


def _copy(items) -> list:
    return _again(lambda: list(items))


def _again(read, tries: int = 100):
    # Read while worker threads may be changing what is read: a collection that changes size mid-read
    # ("changed size during iteration") is read again; the last try lets the error through.
    for _ in range(tries - 1):
        try:
            return read()
        except RuntimeError:
            continue
    return read()
