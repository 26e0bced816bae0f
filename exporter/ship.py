"""Ships record batches: to Kafka (keyed by exporter id, delivery reports, retries, a bounded buffer
that counts what it drops) or, for tests and file mode, as JSON-array lines to a file."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from dataflow.config import KafkaConfig
from dataflow.kafka_client import client_settings


@dataclass
class ShipStats:
    delivered: int = 0  # records acknowledged by Kafka (or written to the file)
    buffered: int = 0  # records produced, not yet acknowledged
    dropped: int = 0  # records given up: buffer full, or a permanent delivery error
    batches: int = 0  # messages acknowledged by Kafka (or lines written to the file)


def batches(records: list[dict], size: int) -> list[list[dict]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


class KafkaShipper:
    def __init__(self, kafka: KafkaConfig, key: str, buffer_max_records: int, batch_records: int):
        if not kafka.brokers:
            raise ValueError("kafka.brokers is not set (FLOWATTR_KAFKA__BROKERS or [kafka] brokers)")
        self.stats = ShipStats()
        self._topic = kafka.raw_topic
        self._key = key.encode()
        self._buffer_max = buffer_max_records
        self._batch_records = batch_records
        settings = {
            # Idempotence: librdkafka's own retries never duplicate a batch.
            "enable.idempotence": True,
            # Never expire a batch locally: while Kafka is down, our own bound decides what
            # is kept, and what it drops is counted.
            "message.timeout.ms": 0,
            "linger.ms": 200,
            "compression.type": "lz4",
            "error_cb": self._on_error,
            # Connection failures reach error_cb and the interval line; not one log line each.
            "log_level": 2,
        }
        self._producer = Producer(client_settings(kafka, **settings))
        self._last_error = ""
        self._brokers = kafka.brokers

    def unreachable(self, timeout_s: float) -> str | None:
        """Why Kafka does not answer within timeout_s, or None when it does."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as e:
            return f"cannot reach Kafka at {self._brokers} within {timeout_s:g} s (kafka.timeout_s): {e.args[0].str()}"
        return None

    def ship(self, records: list[dict]) -> None:
        for batch in batches(records, self._batch_records):
            if self.stats.buffered + len(batch) > self._buffer_max:
                self.stats.dropped += len(batch)
                continue
            self._producer.produce(
                self._topic,
                orjson.dumps(batch),
                self._key,
                on_delivery=lambda err, _msg, n=len(batch): self._on_delivery(err, n),
            )
            self.stats.buffered += len(batch)
            self._producer.poll(0)
        self._producer.poll(0)

    def _on_delivery(self, err, count: int) -> None:
        self.stats.buffered -= count
        if err is None:
            self.stats.delivered += count
            self.stats.batches += 1
        else:
            self.stats.dropped += count
            self._last_error = str(err)

    def _on_error(self, err: KafkaError) -> None:
        # Transport errors while the broker is away; librdkafka keeps retrying.
        self._last_error = err.str()

    def poll(self) -> None:
        self._producer.poll(0)

    def last_error(self) -> str:
        error, self._last_error = self._last_error, ""
        return error

    def close(self, timeout_s: float) -> None:
        """Waits for delivery up to timeout_s; what is still unacknowledged is counted as dropped."""
        self._producer.flush(timeout_s)
        self.stats.dropped += self.stats.buffered
        self.stats.buffered = 0


class FileShipper:
    """One JSON array per line, the framing of a Kafka message value; "-" writes to stdout."""

    def __init__(self, path: str, batch_records: int):
        self.stats = ShipStats()
        self._batch_records = batch_records
        self._file = sys.stdout.buffer if path == "-" else open(path, "ab")

    def ship(self, records: list[dict]) -> None:
        for batch in batches(records, self._batch_records):
            self._file.write(orjson.dumps(batch) + b"\n")
            self.stats.delivered += len(batch)
            self.stats.batches += 1
        self._file.flush()

    def poll(self) -> None:
        pass

    def last_error(self) -> str:
        return ""

    def close(self, timeout_s: float) -> None:
        if self._file is not sys.stdout.buffer:
            self._file.close()
