"""Kafka mode: the job's topics, created when missing, read as Messages and written as batches."""

from __future__ import annotations

import sys
from typing import Any, Iterator

from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from dataflow.config import Config, KafkaConfig
from dataflow.kafka_client import client_settings, security_settings
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
    """Create the job's topics that do not exist yet; returns the ones created and says so on stderr."""
    k = config.kafka
    errors: list[str] = []
    admin = _admin(config, errors)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        admin.poll(0)  # serves error_cb
        raise ConnectionError(f"cannot reach Kafka at {k.brokers}: {_reason(e, errors)}") from None
    missing = [t for t in all_topics(config) if t not in metadata.topics]
    if not missing:
        return missing
    brokers = sorted(metadata.brokers)
    default = cluster_replication_default(admin, brokers[0], timeout_s) if brokers else None
    replicas = replication_factor(k.replication_factor, len(brokers), default)
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=k.partitions, replication_factor=replicas) for t in missing]
    )
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise
    created = admin.list_topics(timeout=timeout_s).topics
    shapes = sorted({_shape(created[t]) for t in missing if t in created})
    print(f"flowattr: created topics {', '.join(missing)} ({'; '.join(shapes)})", file=sys.stderr, flush=True)
    if len(brokers) > 1 and any(_shape(created[t]).endswith("replication factor 1") for t in missing if t in created):
        print(
            f"flowattr: warning: topics with a single replica on a cluster of {len(brokers)} brokers lose data when"
            " one broker dies; set kafka.replication_factor",
            file=sys.stderr,
            flush=True,
        )
    return missing


def replication_factor(configured: int, brokers: int, cluster_default: int | None) -> int:
    """The replication factor to create topics with: the configured one; else the cluster's own default
    (-1), except that a default of 1 on a cluster of several brokers becomes min(3, brokers), since a
    single replica loses data when one broker dies. cluster_default None: the cluster would not say."""
    if configured != -1:
        return configured
    if brokers > 1 and cluster_default == 1:
        return min(3, brokers)
    return -1


def cluster_replication_default(admin: AdminClient, broker_id: int, timeout_s: float) -> int | None:
    """A broker's default.replication.factor, or None where describing configs is not allowed."""
    resource = ConfigResource(ResourceType.BROKER, str(broker_id))
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout_s)
    except KafkaException:
        return None
    entry = entries.get("default.replication.factor")
    return int(entry.value) if entry is not None and entry.value is not None else None


def _shape(topic) -> str:
    replicas = {len(p.replicas) for p in topic.partitions.values()}
    return f"{len(topic.partitions)} partitions, replication factor {'/'.join(map(str, sorted(replicas)))}"


def partition_count(config: Config, topic: str, timeout_s: float = 30.0) -> int:
    return len(_admin(config).list_topics(topic, timeout=timeout_s).topics[topic].partitions)


def _admin(config: Config, errors: list[str] | None = None) -> AdminClient:
    """errors: collects the client's errors (a refused password, an untrusted certificate) in place
    of librdkafka's log lines, which repeat every retry."""
    extra = {} if errors is None else {"error_cb": lambda e: errors.append(e.str()), "log_level": 0}
    return AdminClient(client_settings(config.kafka, **extra))


def _reason(e: KafkaException, errors: list[str]) -> str:
    # The client's own error says why (authentication, TLS); the exception only that it timed out.
    return errors[-1] if errors else e.args[0].str()


def source(config: Config, topic: str) -> KafkaSource:
    offset = OFFSET_BEGINNING if config.kafka.starting_offset == "beginning" else OFFSET_END
    return KafkaSource(
        config.kafka.brokers.split(","),
        [topic],
        tail=True,
        starting_offset=offset,
        add_config=security_settings(config.kafka),
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
        add_config={
            **security_settings(config.kafka),
            "linger.ms": "20",
            "compression.type": "lz4",
            "batch.size": "1000000",
            "enable.idempotence": "true",
        },
    )


def sink_message(value: bytes, topic: str | None = None, key: bytes | None = None) -> KafkaSinkMessage:
    return KafkaSinkMessage(key, value, topic=topic)


def read_topic(kafka: KafkaConfig, topic: str, timeout_s: float = 5.0, from_end: bool = False) -> Iterator[Any]:
    """Every message now in `topic` (or, following, the new ones), for `flowattr tail`."""
    errors: list[str] = []
    settings = {"group.id": "flowattr-tail", "enable.auto.commit": False, "log_level": 0,
                "error_cb": lambda e: errors.append(e.str())}
    consumer = Consumer(client_settings(kafka, **settings))
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s)
        except KafkaException as e:
            consumer.poll(0)  # serves error_cb
            raise ConnectionError(f"cannot reach Kafka at {kafka.brokers}: {_reason(e, errors)}") from None
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
