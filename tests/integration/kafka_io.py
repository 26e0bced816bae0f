"""Small Kafka helpers for integration tests: create topics, produce bytes, read a topic back whole.

Plain functions over confluent-kafka so a test's Kafka traffic reads in three lines.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


class Record(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def unique_name(base: str = "topic") -> str:
    # One broker serves the whole session (and perhaps a developer's other runs): never reuse a name.
    return f"{base}-{uuid.uuid4().hex[:10]}"


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 1,
                  config: dict[str, str] | None = None, timeout: float = 30.0) -> list[str]:
    """Creates the topics and returns once the broker lists every partition with a leader."""
    names = list(names)
    a = admin(bootstrap)
    futures = a.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1, config=config or {})
         for n in names],
        operation_timeout=timeout, request_timeout=timeout)
    for name, fut in futures.items():
        fut.result(timeout=timeout)
    # CreateTopics answers before every partition has a leader; a producer that starts in
    # that window sees "unknown partition" and the test flakes.
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        md = a.list_topics(timeout=max(0.1, deadline - time.monotonic()))
        for n in list(pending):
            t = md.topics.get(n)
            if t is not None and t.error is None and len(t.partitions) == partitions \
                    and all(p.leader >= 0 for p in t.partitions.values()):
                pending.discard(n)
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after {timeout} s: {sorted(pending)}")
            time.sleep(0.05)
    return names


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    for fut in admin(bootstrap).delete_topics(names, operation_timeout=timeout).values():
        fut.result(timeout=timeout)


def produce(bootstrap: str, topic: str, values: Iterable[bytes], *,
            keys: Iterable[bytes | None] | None = None, partition: int | None = None,
            timeout: float = 30.0) -> list[tuple[int, int]]:
    """Produces the values in order, waits for every delivery report, and returns each message's
    (partition, offset). Raises if any message was not delivered."""
    values = list(values)
    keys = list(keys) if keys is not None else [None] * len(values)
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    reports: list[tuple[int, int] | None] = [None] * len(values)
    errors: list[str] = []

    def on_delivery(i: int):
        def cb(err, msg):
            if err is not None:
                errors.append(f"message {i}: {err}")
            else:
                reports[i] = (msg.partition(), msg.offset())
        return cb

    for i, (k, v) in enumerate(zip(keys, values)):
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                p.produce(topic, value=v, key=k, on_delivery=on_delivery(i), **kwargs)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                p.poll(0.1)
    left = p.flush(timeout)
    if errors:
        raise KafkaException(f"{len(errors)} of {len(values)} messages to {topic} failed: {errors[:5]}")
    if left or any(r is None for r in reports):
        raise TimeoutError(f"{sum(r is None for r in reports)} of {len(values)} messages to {topic}"
                           f" not confirmed within {timeout} s")
    return reports  # type: ignore[return-value]


def consume_all(bootstrap: str, topic: str, n: int | None = None,
                timeout: float = 30.0) -> list[Record]:
    """Reads the topic from the beginning of every partition, without a consumer group's
    offsets, until at least `n` messages are seen (n=None: whatever is there now) AND every
    partition is read up to its end, so messages beyond `n` are returned too, not hidden.

    Returns what it has when `timeout` runs out: compare its length with what you expect.
    Ordered by (partition, offset)."""
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique_name("kafka-io"),  # never committed; assign() ignores groups
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
    })
    try:
        md = c.list_topics(topic, timeout=timeout)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            raise KafkaException(f"topic {topic!r} not available: {t.error if t else 'missing'}")
        parts = sorted(t.partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        records: list[Record] = []
        next_offset = {p: 0 for p in parts}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.2):
                if m.error() is not None:
                    raise KafkaException(m.error())
                records.append(Record(m.partition(), m.offset(), m.key(), m.value()))
                next_offset[m.partition()] = m.offset() + 1
            if n is not None and len(records) < n:
                continue
            if all(_read_to_end(c, topic, p, next_offset[p]) for p in parts):
                break
        return sorted(records)
    finally:
        c.close()


def _read_to_end(c: Consumer, topic: str, partition: int, next_offset: int) -> bool:
    # Compared with a fresh high watermark; with read_committed, aborted or control records
    # can leave the last offsets unread, so the position after fetching counts as well.
    low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)
    if high <= low or next_offset >= high:
        return True
    pos = c.position([TopicPartition(topic, partition)])[0].offset
    return pos >= high


def read_records(bootstrap: str, topics: list[str], until, timeout_s: float = 180.0,
                 settle_s: float = 0.0) -> dict[str, list[dict]]:
    """Records per topic, batches unpacked, from the beginning, once `until(records by topic)` holds
    and settle_s more (for what should not come, such as a duplicate), or at the timeout."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe(list(topics))
    records: dict[str, list[dict]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout_s
    settled_at = None
    try:
        while time.monotonic() < deadline and (settled_at is None or time.monotonic() < settled_at):
            if settled_at is None and until(records):
                settled_at = time.monotonic() + settle_s
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            parsed = orjson.loads(msg.value())
            records[msg.topic()].extend(parsed if isinstance(parsed, list) else [parsed])
    finally:
        consumer.close()
    return records


def produce_fleet(bootstrap: str, topic: str, messages: list) -> None:
    """A simulated fleet's messages (simulate.Delivery: arrival, key, value) in arrival order, each under
    its key (a raw message: its exporter's id), as they were sent."""
    messages = sorted(messages, key=lambda m: m.arrival_ms)
    produce(bootstrap, topic, [m.value for m in messages], keys=[m.key for m in messages])


def publish_entitlements(bootstrap: str, topic: str, fleet) -> None:
    """What a trusted platform component publishes: each exporter's addresses, keyed by its id."""
    produce_fleet(bootstrap, topic, fleet.entitlement_messages)


def record_topics(bootstrap: str, config, folder: Path) -> Path:
    """The job's input topics as a file-mode recording: arrival time and key before each message,
    partitions merged in arrival order; the entitlements as exporters.ndjson."""
    from dataflow.file_io import EXPORTERS_FILE, INPUT_FILES
    from dataflow.kafka_io import input_topics

    folder.mkdir(parents=True, exist_ok=True)
    files = {role: name for name, role in INPUT_FILES.items()}
    for topic, role in input_topics(config).items():
        messages = sorted(timestamped(bootstrap, topic), key=lambda m: (m[0], m[1], m[2]))
        with open(folder / files[role], "wb") as f:
            f.write(b"".join(b"%d\t%s\t%s\n" % (ts, key or b"", value) for ts, _, _, key, value in messages))
    with open(folder / EXPORTERS_FILE, "wb") as f:
        f.write(b"".join(value + b"\n" for *_, value in timestamped(bootstrap, config.kafka.exporters_topic)))
    return folder


def timestamped(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[int, int, int, bytes | None, bytes]]:
    """(timestamp, partition, offset, key, value) of every message now in the topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("kafka-io"), "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=timeout).topics[topic].partitions)
        deadline = time.monotonic() + timeout
        ends = {p: _watermarks(c, TopicPartition(topic, p), deadline) for p in parts}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out = []
        done = {p for p, (lo, hi) in ends.items() if hi <= lo}
        while len(done) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.2):
                if m.error() is None:
                    out.append((m.timestamp()[1], m.partition(), m.offset(), m.key(), m.value()))
                    if m.offset() >= ends[m.partition()][1] - 1:
                        done.add(m.partition())
        return out
    finally:
        c.close()


def _watermarks(c: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    # A partition whose leadership is still settling (a topic the job has just created, on a loaded
    # machine) answers "not leader" for a moment: a retriable error, asked again until the deadline.
    while True:
        try:
            return c.get_watermark_offsets(partition, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as e:
            if not e.args[0].retriable() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
