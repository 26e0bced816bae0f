"""Reading a topic from outside the job, for tail, deps and replay: from the beginning, the end or a
time, up to where it ends now or following it; one-line errors for an unreachable broker or a
missing topic."""

from __future__ import annotations

from typing import Iterator

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from dataflow.config import Config, ConfigError
from dataflow.kafka_client import client_settings
from dataflow.kafka_io import LastError

BEGINNING, END = "beginning", "end"


def consumer(config: Config, timeout_s: float | None = None) -> Consumer:
    """A consumer that commits nothing (offsets are chosen by the reader), reachable within
    kafka.timeout_s or a ConnectionError."""
    timeout_s = config.kafka.timeout_s if timeout_s is None else timeout_s
    if not config.kafka.brokers:
        raise ConfigError("give --brokers HOST:PORT (or kafka.brokers in the config)")
    last_error = LastError()
    c = Consumer(client_settings(
        config.kafka,
        **{"group.id": "flowattr-reader", "enable.auto.commit": False, "enable.partition.eof": False,
           "socket.timeout.ms": int(timeout_s * 1000),
           # The client's own log would repeat every failed attempt; the error says it once.
           "log_level": 0, "error_cb": last_error},
    ))
    try:
        c.list_topics(timeout=timeout_s)
    except KafkaException as e:
        c.poll(0)  # serves error_cb: a refused password or certificate says so, not only "timed out"
        c.close()
        raise ConnectionError(
            f"cannot reach Kafka at {config.kafka.brokers} within {timeout_s:g} s (kafka.timeout_s): {last_error.why(e)}"
        ) from None
    return c


class TopicReader:
    """One topic, every partition, from a chosen start; `ends` are the offsets where it ends now."""

    def __init__(self, client: Consumer, topic: str, timeout_s: float = 10.0):
        self.client = client
        self.topic = topic
        self.timeout_s = timeout_s
        found = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if found is None or found.error is not None:
            raise ConfigError(f"topic {topic} does not exist")
        self.partitions = sorted(found.partitions)
        self.ends = {p: self._watermarks(p)[1] for p in self.partitions}
        self.starts: dict[int, int] = {}

    def _watermarks(self, partition: int) -> tuple[int, int]:
        return self.client.get_watermark_offsets(TopicPartition(self.topic, partition), self.timeout_s, cached=False)

    def offsets_at(self, time_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose timestamp is at or after time_ms (the end if none)."""
        asked = [TopicPartition(self.topic, p, time_ms) for p in self.partitions]
        found = self.client.offsets_for_times(asked, timeout=self.timeout_s)
        return {tp.partition: tp.offset if tp.offset >= 0 else self.ends[tp.partition] for tp in found}

    def start(self, at: str | int = BEGINNING) -> None:
        """Read from the beginning, the end, or a time (epoch ms)."""
        if at == BEGINNING:
            self.starts = {p: self._watermarks(p)[0] for p in self.partitions}
        elif at == END:
            self.starts = dict(self.ends)
        else:
            self.starts = self.offsets_at(int(at))
        self.client.assign([TopicPartition(self.topic, p, o) for p, o in self.starts.items()])

    def left(self, positions: dict[int, int], until: dict[int, int] | None = None) -> int:
        """Messages between `positions` and `until` (default: the ends), summed over partitions."""
        until = self.ends if until is None else until
        return sum(max(0, until[p] - positions.get(p, self.starts.get(p, 0))) for p in self.partitions)

    def messages(self, follow: bool = False, until: dict[int, int] | None = None) -> Iterator[Message | None]:
        """Messages in each partition's order; None when a poll found nothing (a chance to stop).
        Without `follow`, ends once every partition reached `until` (default: where it ends now)."""
        until = self.ends if until is None else until
        positions = dict(self.starts)
        done = lambda: all(positions[p] >= until[p] for p in self.partitions)  # noqa: E731
        while follow or not done():
            batch = self.client.consume(500, 0.5)
            if not batch:
                # Offsets a reader never receives (transaction markers, compacted records) still count as read.
                for tp in self.client.position([TopicPartition(self.topic, p) for p in self.partitions]):
                    positions[tp.partition] = max(positions[tp.partition], tp.offset)
                yield None
                continue
            for m in batch:
                if m.error() is not None:
                    raise KafkaException(m.error())
                p = m.partition()
                if not follow and m.offset() >= until[p]:
                    positions[p] = max(positions[p], m.offset())
                    continue
                positions[p] = m.offset() + 1
                yield m
