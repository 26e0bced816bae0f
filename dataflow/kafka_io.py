"""Kafka mode: the job's topics, created when missing, read as Messages and written as batches."""

from __future__ import annotations

from typing import Any, Iterator

from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

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


def ensure_topics(config: Config) -> list[str]:
    """Create the job's topics that do not exist yet; returns the ones created."""
    timeout_s = config.kafka.timeout_s
    admin = _admin(config)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as e:
        raise ConnectionError(
            f"cannot reach Kafka at {config.kafka.brokers} within {timeout_s:g} s (kafka.timeout_s): {e.args[0].str()}"
        ) from None
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


def partition_count(config: Config, topic: str) -> int:
    return len(_admin(config).list_topics(topic, timeout=config.kafka.timeout_s).topics[topic].partitions)


# Room for what Kafka adds around a value (record and batch headers, the key) within a message's limit.
FRAMING_BYTES = 512


def max_value_bytes(config: Config, topics: list[str]) -> int:
    """The largest message value the job may write to all of `topics`: its producer's message.max.bytes
    or the smallest max.message.bytes the broker keeps for those topics, whichever is less."""
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    limit = config.kafka.max_message_bytes
    admin = _admin(config)  # held until the answers are in: dropping it cancels them
    for future in admin.describe_configs(resources, request_timeout=config.kafka.timeout_s).values():
        try:
            entries = future.result(config.kafka.timeout_s)
        except KafkaException as e:
            raise ConnectionError(f"cannot read topic limits from Kafka at {config.kafka.brokers}: {e}") from None
        entry = entries.get("max.message.bytes")
        if entry is not None and entry.value is not None:
            limit = min(limit, int(entry.value))
    return limit - FRAMING_BYTES


def _admin(config: Config) -> AdminClient:
    # A broker that does not answer is reported once, by the caller, not logged by librdkafka every second.
    return AdminClient({"bootstrap.servers": config.kafka.brokers, "log_level": 0})


def source(config: Config, topic: str) -> KafkaSource:
    offset = OFFSET_BEGINNING if config.kafka.starting_offset == "beginning" else OFFSET_END
    return KafkaSource(
        config.kafka.brokers.split(","),
        [topic],
        tail=True,
        starting_offset=offset,
        batch_size=config.kafka.batch_size,
        raise_on_errors=False,
        # Errors only: a broker's passing warnings (a coordinator still loading) are not the user's business.
        add_config={"log_level": "3"},
    )


def as_message(item: KafkaSourceMessage | KafkaError, role: str) -> Message:
    if isinstance(item, KafkaError):
        m = item.msg
        origin = Origin(m.topic or "", -1 if m.partition is None else m.partition, m.offset or -1, role)
        return Message(m.value, origin, error=str(item.err))
    return Message(item.value, Origin(item.topic, item.partition, item.offset, role))


def sink(config: Config, topic: str | None, max_value: int) -> KafkaSink:
    """A producer whose messages, and batches of them, stay within what the topics take (max_value
    from max_value_bytes): a batch the broker refuses would be lost, not retried."""
    max_message = str(max_value + FRAMING_BYTES)
    return KafkaSink(
        config.kafka.brokers.split(","),
        topic,
        # Idempotence: a retried batch is neither duplicated nor reordered.
        add_config={
            "linger.ms": "20",
            "compression.type": "lz4",
            "batch.size": max_message,
            "message.max.bytes": max_message,
            "enable.idempotence": "true",
            "log_level": "3",
        },
    )


def sink_message(value: bytes, topic: str | None = None, key: bytes | None = None) -> KafkaSinkMessage:
    return KafkaSinkMessage(key, value, topic=topic)


def read_topic(
    brokers: str, topic: str, timeout_s: float = 5.0, from_end: bool = False, connect_timeout_s: float = 10.0
) -> Iterator[Any]:
    """Every message now in `topic` (or, following, the new ones), for `flowattr tail`; None after
    timeout_s without a new one."""
    consumer = Consumer(
        {"bootstrap.servers": brokers, "group.id": "flowattr-tail", "enable.auto.commit": False, "log_level": 0}
    )
    try:
        try:
            meta = consumer.list_topics(topic, timeout=connect_timeout_s)
        except KafkaException as e:
            raise ConnectionError(
                f"cannot reach Kafka at {brokers} within {connect_timeout_s:g} s (kafka.timeout_s): {e.args[0].str()}"
            ) from None
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
