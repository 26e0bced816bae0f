"""Kafka mode: the job's topics, created when missing, read as Messages and written as batches."""

from __future__ import annotations

from typing import Any, Iterator

from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dataflow.config import Config
from dataflow.records import FORWARDED, IP_EVENTS, RAW, Origin
from dataflow.routing import Message


def input_topics(config: Config) -> dict[str, str]:
    """Topic -> the role its records play."""
    return {
        config.kafka.raw_topic: RAW,
        config.forward_topic(config.region): FORWARDED,
        config.kafka.ip_events_topic: IP_EVENTS,
    }


def all_topics(config: Config) -> list[str]:
    k = config.kafka
    forwards = [config.forward_topic(r) for r in sorted(set(config.regions) | {config.region})]
    return [k.raw_topic, k.ip_events_topic, k.attributed_topic, k.dlq_topic, *forwards]


def ensure_topics(config: Config, timeout_s: float = 30.0) -> list[str]:
    """Create the job's topics that do not exist yet; returns the ones created."""
    admin = AdminClient({"bootstrap.servers": config.kafka.brokers})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as e:
        raise ConnectionError(f"cannot reach Kafka at {config.kafka.brokers}: {e}") from None
    missing = [t for t in all_topics(config) if t not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=config.kafka.partitions, replication_factor=1) for t in missing]
        )
        for topic, future in futures.items():
            try:
                future.result(timeout_s)
            except KafkaException as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise
    return missing


def partition_count(config: Config, topic: str, timeout_s: float = 30.0) -> int:
    admin = AdminClient({"bootstrap.servers": config.kafka.brokers})
    return len(admin.list_topics(topic, timeout=timeout_s).topics[topic].partitions)


def source(config: Config, topic: str) -> KafkaSource:
    offset = OFFSET_BEGINNING if config.kafka.starting_offset == "beginning" else OFFSET_END
    return KafkaSource(
        config.kafka.brokers.split(","),
        [topic],
        tail=True,
        starting_offset=offset,
        batch_size=config.kafka.batch_size,
        raise_on_errors=False,
    )


def as_message(item: KafkaSourceMessage | KafkaError, role: str) -> Message:
    if isinstance(item, KafkaError):
        m = item.msg
        origin = Origin(m.topic or "", -1 if m.partition is None else m.partition, m.offset or -1, role)
        return Message(m.value, origin, error=str(item.err))
    return Message(item.value, Origin(item.topic, item.partition, item.offset, role))


def sink(config: Config, topic: str | None) -> KafkaSink:
    return KafkaSink(
        config.kafka.brokers.split(","),
        topic,
        # Idempotence: a retried batch is neither duplicated nor reordered.
        add_config={"linger.ms": "20", "compression.type": "lz4", "batch.size": "1000000", "enable.idempotence": "true"},
    )


def sink_message(value: bytes, topic: str | None = None, key: bytes | None = None) -> KafkaSinkMessage:
    return KafkaSinkMessage(key, value, topic=topic)


def read_topic(brokers: str, topic: str, timeout_s: float = 5.0, from_end: bool = False) -> Iterator[Any]:
    """Every message now in `topic` (or, following, the new ones), for `flowattr tail`."""
    consumer = Consumer(
        {"bootstrap.servers": brokers, "group.id": "flowattr-tail", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        if meta.topics[topic].error is not None:
            raise KeyError(f"topic {topic} does not exist")
        offset = OFFSET_END if from_end else OFFSET_BEGINNING
        consumer.assign([TopicPartition(topic, p, offset) for p in meta.topics[topic].partitions])
        while True:
            msg = consumer.poll(timeout_s)
            if msg is None:
                yield None
                continue
            if msg.error():
                raise KafkaException(msg.error())
            yield msg
    finally:
        consumer.close()
