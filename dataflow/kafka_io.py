"""Kafka mode: the job's topics, created when missing, read as Messages stamped with the broker's arrival
time (and the reader's word when it has caught up), written as batches; the exporters' entitlements read
from their compacted topic and followed."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from typing import Callable

import orjson
from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from dataflow.attribution import Shard
from dataflow.config import Config, ConfigError
from dataflow.entitlements import Entitlements
from dataflow.kafka_client import client_settings, security_settings
from dataflow.records import FORWARDED, IP_EVENTS, RAW, BadRecord, Origin, check_entitlement
from dataflow.routing import Message

# The broker stamps each message of the input topics with its own time on arrival: the clock that
# decides (dataflow/clock.py), which no producer can set.
ARRIVAL_TIME = {"message.timestamp.type": "LogAppendTime"}
# A reader asks the broker for a partition's end at most this often (a partition that trickles may need
# several questions before one finds it caught up).
CAUGHT_UP_EVERY_S = 0.1
# A partition that has caught up is polled again after at most this pause: left to itself, Bytewax's
# reader would poll it every millisecond, and a quiet job (one waiting out its max wait) would burn CPU
# for nothing. Every caught-up partition wakes the worker once a pause, so a shorter one costs an idle
# job CPU in proportion. It sleeps less when its next word is due sooner (see `_next_wake`): the pause
# must not hold the arrival clock back.
IDLE_POLL_S = 0.25
# While a question about its end is in flight, a partition looks for the answer this often.
ANSWER_POLL_S = 0.05
# A reader held back by its pace (ReadPace) looks again after this long.
PACE_POLL_S = 0.05
# A question about a partition's end not answered in this long is given up and asked again by a new client.
UNANSWERED_MS = 10_000
# Told where a reader is: (topic, partition, next offset to read, the partition's low and high watermarks).
PositionWatch = Callable[[str, int, int, int, int], None]


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
    return [k.raw_topic, k.ip_events_topic, k.attributed_topic, k.dlq_topic, k.exporters_topic, *forwards]


def ensure_topics(config: Config) -> list[str]:
    """Create the job's topics that do not exist yet, and make every input topic stamp arrival time;
    returns the topics created and says so on stderr."""
    k = config.kafka
    timeout_s = k.timeout_s
    last_error = LastError()
    admin = _admin(config, last_error)
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        admin.poll(0)  # serves error_cb
        raise ConnectionError(
            f"cannot reach Kafka at {k.brokers} within {timeout_s:g} s (kafka.timeout_s): {last_error.why(e)}"
        ) from None
    existing = set(metadata.topics)
    inputs = set(input_topics(config))
    missing = [t for t in all_topics(config) if t not in existing]
    if missing:
        brokers = sorted(metadata.brokers)
        default = cluster_replication_default(admin, brokers[0], timeout_s) if brokers else None
        replicas = replication_factor(k.replication_factor, len(brokers), default)
        futures = admin.create_topics(
            [
                NewTopic(t, num_partitions=1 if t == k.exporters_topic else k.partitions,
                         replication_factor=replicas, config=_topic_config(config, t, inputs))
                for t in missing
            ]
        )
        for topic, future in futures.items():
            try:
                future.result(timeout_s)
            except KafkaException as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise
        _say_created(admin, missing, len(brokers), timeout_s)
    stamp_arrival(admin, [t for t in inputs if t in existing], timeout_s)
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


def _say_created(admin: AdminClient, topics: list[str], brokers: int, timeout_s: float) -> None:
    created = _serving(admin, topics, timeout_s)
    shapes = {t: _shape(created[t]) for t in topics if t in created}
    print(f"flowattr: created topics {', '.join(topics)} ({'; '.join(sorted(set(shapes.values())))})",
          file=sys.stderr, flush=True)
    if brokers > 1 and any(shape.endswith("replication factor 1") for shape in shapes.values()):
        print(f"flowattr: warning: topics with a single replica on a cluster of {brokers} brokers lose data when"
              " one broker dies; set kafka.replication_factor", file=sys.stderr, flush=True)


def _serving(admin: AdminClient, topics: list[str], timeout_s: float) -> dict:
    """The topics' metadata once every partition answers for its offsets: the broker answers a creation
    before that, and a reader starting in between is told "not leader for partition"."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = admin.list_topics(timeout=timeout_s).topics
        partitions = [TopicPartition(t, p) for t in topics if t in found for p in found[t].partitions]
        if partitions and len({tp.topic for tp in partitions}) == len(topics):
            futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout_s)
            try:
                for future in futures.values():
                    future.result()
                return found
            except KafkaException:
                pass
        if time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _shape(topic) -> str:
    replicas = sorted({len(p.replicas) for p in topic.partitions.values()})
    count = len(topic.partitions)
    return f"{count} partition{'s' if count != 1 else ''}, replication factor {'/'.join(map(str, replicas))}"


def _topic_config(config: Config, topic: str, inputs: set[str]) -> dict[str, str]:
    if topic == config.kafka.exporters_topic:
        return {"cleanup.policy": "compact", **ARRIVAL_TIME}
    return dict(ARRIVAL_TIME) if topic in inputs else {}


def stamp_arrival(admin: AdminClient, topics: list[str], timeout_s: float = 30.0) -> None:
    """An existing input topic that lets producers set its timestamps is switched to arrival time: the
    job's decisions must not rest on a clock that a host can set."""
    if not topics:
        return
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    described = admin.describe_configs(resources)
    wrong = []
    for resource, future in described.items():
        entry = future.result(timeout_s).get("message.timestamp.type")
        if entry is None or entry.value != "LogAppendTime":
            wrong.append(resource.name)
    if not wrong:
        return
    changes = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            t,
            incremental_configs=[
                ConfigEntry("message.timestamp.type", "LogAppendTime",
                            incremental_operation=AlterConfigOpType.SET)
            ],
        )
        for t in wrong
    ]
    for resource, future in admin.incremental_alter_configs(changes).items():
        try:
            future.result(timeout_s)
        except KafkaException as e:
            raise ConfigError(
                f"topic {resource.name} must stamp arrival time (message.timestamp.type=LogAppendTime) and "
                f"the job could not set it: {e}; set it on the topic"
            ) from None


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



def _admin(config: Config, last_error: LastError | None = None) -> AdminClient:
    # A broker that does not answer is reported once, by the caller, not logged by librdkafka every second.
    extra = {"log_level": 0} if last_error is None else {"error_cb": last_error, "log_level": 0}
    return AdminClient(client_settings(config.kafka, **extra))


class LastError:
    """A client's error callback that keeps its latest error (a refused password, an untrusted
    certificate), in place of librdkafka's log lines, which repeat every retry."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, error) -> None:
        self.text = error.str()

    def why(self, e: KafkaException) -> str:
        # The client's own error says why; the exception only that the request timed out.
        return self.text or e.args[0].str()


def source(config: Config, topic: str, watch: PositionWatch | None = None, pace: ReadPace | None = None) -> KafkaSource:
    """watch: told where each reader is, for the job's own consumer lag (Bytewax keeps offsets in its
    snapshots, not in a consumer group that lag tools could see). pace: shared by every reader of the
    process, so that none runs far ahead of the others."""
    offset = OFFSET_BEGINNING if config.kafka.starting_offset == "beginning" else OFFSET_END
    return ArrivalSource(
        config.kafka.brokers.split(","),
        [topic],
        tail=True,
        starting_offset=offset,
        # Errors only: a broker's passing warnings (a coordinator still loading) are not the user's business.
        add_config={**security_settings(config.kafka), "log_level": "3",
                    "queued.max.messages.kbytes": str(config.kafka.prefetch_kbytes)},
        batch_size=config.kafka.batch_size,
        raise_on_errors=False,
        margin_ms=config.kafka.caught_up_margin_ms,
        watch=watch,
        pace=pace,
    )


class ReadPace:
    """How far, in arrival time, each input partition this process reads has been read.

    Shards apply evidence only as far as the slowest input partition has been read and hold whatever was
    read from further ahead. In a replay every reader could run as fast as its partition allows, and one
    whose messages cover more arrival time each (fewer or smaller ones a second) would fill the shards
    with input they cannot use yet, more the longer the replay. So a reader more than `lead_ms` ahead of
    the slowest reader here waits, and its partition waits in Kafka instead (besides what librdkafka has
    fetched ahead, `kafka.prefetch_kbytes`). Live, every partition is caught up and none waits. Readers in
    other processes are not seen: each process paces its own."""

    def __init__(self, lead_ms: int):
        self.lead_ms = lead_ms
        self._reached: dict[tuple[str, int], int | None] = {}  # None: joined, nothing read yet
        self._unheard = 0
        self._lock = threading.Lock()
        self.waits = 0  # polls a reader held off

    def join(self, partition: tuple[str, int]) -> None:
        """A reader of this process starts: until it has read something (or caught up), it is the slowest
        one, since the arrival clock waits for it too."""
        with self._lock:
            if partition not in self._reached:
                self._reached[partition] = None
                self._unheard += 1

    def read(self, partition: tuple[str, int], arrival_ms: int) -> None:
        with self._lock:
            before = self._reached.get(partition)
            if before is None:
                self._unheard -= partition in self._reached
                self._reached[partition] = arrival_ms
            elif arrival_ms > before:
                self._reached[partition] = arrival_ms

    def ahead(self, partition: tuple[str, int]) -> bool:
        """Whether the partition's reader is to wait: it has read more than the lead past the slowest
        reader, or anything while another has read nothing yet. The slowest never waits."""
        with self._lock:
            mine = self._reached.get(partition)
            if mine is None:
                return False
            if not self._unheard and mine - min(self._reached.values()) <= self.lead_ms:  # type: ignore[type-var]
                return False
            self.waits += 1
            return True


class CaughtUp:
    """A reader's word that a partition held nothing more as of `at_ms` (broker time, less a margin)."""

    __slots__ = ("topic", "partition", "at_ms")

    def __init__(self, topic: str, partition: int, at_ms: int):
        self.topic, self.partition, self.at_ms = topic, partition, at_ms


class ArrivalSource(KafkaSource):
    """Bytewax's Kafka source, whose partitions also say when they have caught up with the broker:
    a quiet partition must not hold the arrival clock back, and only its reader knows it is quiet."""

    def __init__(self, *args, margin_ms: int, watch: PositionWatch | None = None, pace: ReadPace | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.margin_ms = margin_ms
        self.watch = watch
        self.pace = pace
        self._admin: AdminClient | None = None
        self._replaced_at = -1.0  # a broken broker must not have a new client made every 0.1 s
        self._admin_lock = threading.Lock()

    def build_part(self, step_id, for_part, resume_state):
        return _CaughtUpPartition(super().build_part(step_id, for_part, resume_state), self.margin_ms, self.watch,
                                  self.admin, self.pace)

    def admin(self, failed: AdminClient | None = None) -> AdminClient:
        """One client per process asks the broker for its partitions' high watermarks. A client whose
        question failed is replaced (once, however many partitions saw it fail, and at most once a
        second): its view of the partitions' leaders may be stale, and it would not refresh it (seen:
        "leader epoch is older than broker epoch" on every question after a leader change, which froze
        the arrival clock)."""
        with self._admin_lock:
            now = time.monotonic()
            if self._admin is not None and self._admin is failed and now - self._replaced_at >= 1.0:
                self._admin, self._replaced_at = None, now
            if self._admin is None:
                self._admin = AdminClient({"bootstrap.servers": ",".join(self._brokers), **self._add_config})
            return self._admin


class _CaughtUpPartition(StatefulSourcePartition):
    """Wraps Bytewax's partition reader (0.21: its consumer and next offset are `_consumer`, `_offset`).

    The word "caught up as of t" is a promise that every message the broker stamped before t (less the
    margin) has been read. The watermark a consumer caches is only as fresh as its last fetch, which a
    loaded machine can leave seconds behind, so the word is given only after the broker itself was
    asked for the partition's end, and speaks of the moment the question was sent."""

    def __init__(self, inner, margin_ms: int, watch: PositionWatch | None, admin: Callable[..., AdminClient],
                 pace: ReadPace | None = None):
        self.inner = inner
        self.margin_ms = margin_ms
        self.watch = watch
        self.admin = admin
        self.pace = pace
        self.partition = TopicPartition(inner._topic, inner._part_idx)
        self.key = (inner._topic, inner._part_idx)
        if pace is not None:
            pace.join(self.key)
        self.said_at = 0.0
        self.said_cell = -1  # the due-grid cell of the last word
        self.asked: tuple[Future, int, AdminClient] | None = None  # a question in flight: when, by whom
        self.awake: datetime | None = None

    def next_batch(self):
        self.awake = None
        if self.pace is not None and self.pace.ahead(self.key):
            self._tell_watch(self._cached_ends())
            self.awake = datetime.now(timezone.utc) + timedelta(seconds=PACE_POLL_S)
            return []
        batch = self.inner.next_batch()
        cached = self._cached_ends()
        self._tell_watch(cached)
        if batch:
            if self.pace is not None:
                read = max((_arrival(m) or -1 for m in batch if type(m) is KafkaSourceMessage), default=-1)
                if read >= 0:
                    self.pace.read(self.key, read)
            return batch
        if cached is None or not self._caught_up(*cached):
            return batch
        word = self._answer(cached[0])
        if word is not None:
            self.said_cell = word.at_ms // Shard.DUE_GRID_MS
            self.awake = self._next_wake()
            if self.pace is not None:
                self.pace.read(self.key, word.at_ms)
            return [word]
        now = time.monotonic()
        # Shards decide only at points of the due grid: a word that would not carry this partition past
        # the next point changes nothing, and in a cluster every word costs every process a wake-up.
        if self.asked is None and time.time() * 1000 >= self._next_point_ms() and now - self.said_at >= CAUGHT_UP_EVERY_S:
            self.said_at = now
            self._ask()
        self.awake = self._next_wake()
        return batch

    def _tell_watch(self, cached: tuple[int, int] | None) -> None:
        # Told even while the reader waits: a reader held back by its pace is alive.
        if self.watch is not None and cached is not None:
            self.watch(self.partition.topic, self.partition.partition, self.inner._offset, *cached)

    def _next_point_ms(self) -> int:
        """The wall-clock moment the margin-delayed clock passes the due point after the last word: a
        question is worth asking from then on."""
        return (self.said_cell + 1) * Shard.DUE_GRID_MS + self.margin_ms

    def _next_wake(self) -> datetime:
        """When a caught-up partition next looks: soon while its question is in flight, at the next due
        point if that comes sooner than the idle pause (so that the word for it is asked for at once),
        and otherwise after the idle pause, to read what came meanwhile."""
        if self.asked is not None:
            pause = ANSWER_POLL_S
        else:
            now_ms = time.time() * 1000
            point_ms = self._next_point_ms()
            if now_ms >= point_ms:  # a question is due; asked once the last one is CAUGHT_UP_EVERY_S old
                pause = self.said_at + CAUGHT_UP_EVERY_S - time.monotonic()
            else:
                pause = (point_ms - now_ms) / 1000
            pause = min(IDLE_POLL_S, max(pause, 0.0))
        return datetime.now(timezone.utc) + timedelta(seconds=pause)

    def _ask(self) -> None:
        asked_ms = int(time.time() * 1000)
        admin = self.admin()
        try:
            future = admin.list_offsets({self.partition: OffsetSpec.latest()})[self.partition]
        except KafkaException:
            self.admin(failed=admin)
            return
        self.asked = (future, asked_ms, admin)

    def _answer(self, low: int) -> CaughtUp | None:
        """The word, once the broker has answered and nothing came after what was read."""
        if self.asked is None:
            return None
        future, asked_ms, admin = self.asked
        if not future.done():
            if time.time() * 1000 - asked_ms > UNANSWERED_MS:
                self.asked = None
                self.admin(failed=admin)
            return None
        self.asked = None
        try:
            high = future.result().offset
        except KafkaException:
            self.admin(failed=admin)
            return None
        if not self._caught_up(low, high):
            return None
        return CaughtUp(self.partition.topic, self.partition.partition, asked_ms - self.margin_ms)

    def _cached_ends(self) -> tuple[int, int] | None:
        # The watermarks the consumer's fetches brought back: no request to the broker.
        try:
            low, high = self.inner._consumer.get_watermark_offsets(self.partition, cached=True)
        except KafkaException:
            return None
        return None if high < 0 else (low, high)

    def _caught_up(self, low: int, high: int) -> bool:
        position = self.inner._offset
        if position < 0:
            # Nothing read yet: caught up only if there is nothing to read.
            return low == high or position == OFFSET_END
        return position >= high

    def next_awake(self):
        return self.awake

    def snapshot(self):
        return self.inner.snapshot()

    def close(self):
        self.inner.close()


def as_message(item: KafkaSourceMessage | KafkaError | CaughtUp, role: str) -> Message:
    if isinstance(item, CaughtUp):
        return Message(None, Origin(item.topic, item.partition, -1, role), caught_up_ms=item.at_ms)
    if isinstance(item, KafkaError):
        m = item.msg
        origin = Origin(m.topic or "", -1 if m.partition is None else m.partition, m.offset or -1, role)
        return Message(m.value, origin, error=str(item.err), key=m.key, arrival_ms=_arrival(m))
    return Message(item.value, Origin(item.topic, item.partition, item.offset, role), key=item.key,
                   arrival_ms=_arrival(item))


def _arrival(message: KafkaSourceMessage) -> int | None:
    kind, ms = message.timestamp or (TIMESTAMP_NOT_AVAILABLE, 0)
    return None if kind == TIMESTAMP_NOT_AVAILABLE else ms


def partitions_of(config: Config, timeout_s: float = 30.0) -> frozenset[tuple[str, int]]:
    """Every input partition the arrival clock waits for, as (role, partition)."""
    admin = _admin(config)
    found = set()
    for topic, role in input_topics(config).items():
        meta = admin.list_topics(topic, timeout=timeout_s).topics[topic]
        found.update((role, p) for p in meta.partitions)
    return frozenset(found)


def follow_entitlements(
    config: Config, entitlements: Entitlements, timeout_s: float = 30.0, stop: threading.Event | None = None
) -> threading.Thread:
    """Read the exporters topic to its end now (so the first claims are judged on the whole table), then
    keep following it in the background until `stop` (the job: for its whole life). Bad entries are
    skipped and counted in `entitlements.rejected`."""
    stop = stop or threading.Event()
    topic = config.kafka.exporters_topic
    consumer = Consumer(client_settings(config.kafka, **{"group.id": "flowattr-entitlements",
                                                          "enable.auto.commit": False}))
    meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
    parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
    ends = {p.partition: consumer.get_watermark_offsets(p, timeout=timeout_s)[1] for p in parts}
    consumer.assign(parts)
    read = {p: -1 for p in ends}

    def take(msg) -> None:
        read[msg.partition()] = msg.offset()
        exporter = (msg.key() or b"").decode("utf-8", "replace")
        if msg.value() is None:
            entitlements.set(exporter, None)
            return
        try:
            record = check_entitlement(orjson.loads(msg.value()))
        except (ValueError, BadRecord):
            entitlements.rejected += 1
            return
        if record["exporter"] != exporter:
            entitlements.rejected += 1
            return
        entitlements.set(exporter, record["cidrs"])

    deadline = time.monotonic() + timeout_s
    while any(read[p] < ends[p] - 1 for p in ends) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            take(msg)

    def follow() -> None:
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                take(msg)
        consumer.close()

    thread = threading.Thread(target=follow, name="entitlements", daemon=True)
    thread.start()
    return thread


def sink(config: Config, topic: str | None, max_value: int) -> KafkaSink:
    """A producer whose messages, and batches of them, stay within what the topics take (max_value
    from max_value_bytes): a batch the broker refuses would be lost, not retried."""
    max_message = str(max_value + FRAMING_BYTES)
    return KafkaSink(
        config.kafka.brokers.split(","),
        topic,
        # Idempotence: a retried batch is neither duplicated nor reordered.
        add_config={
            **security_settings(config.kafka),
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
