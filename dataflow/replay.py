"""`flowattr replay`: a bounded backfill. Answers again the flows that started in [--from, --to) and
reached the broker by --until (default: max_wait after --to; a connection is reported when it closes,
so a long one comes later). Reads the input topics by the broker's arrival time, from
`2 x max_wait + delay` before --from (to warm ownership and the exporters' clocks up) to the last
moment a flow that arrived by --until can be decided at, runs the same router and shards as the job,
and writes to its own topic exactly those answers: nothing forwarded, nothing dead-lettered again, the
live job and its topics untouched. The arrival clock (dataflow/clock.py) makes the answers those the
live job gave."""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dataflow import kafka_io
from dataflow.attribution import Lookup, Shard, ShardWork
from dataflow.config import Config, ConfigError
from dataflow.entitlements import Entitlements
from dataflow.kafka_client import client_settings
from dataflow.records import IP_EVENTS, Origin, encode_batch
from dataflow.routing import Message, Router, Tally
from dataflow.summary import render
from dataflow.times import HELP as TIME_HELP
from dataflow.times import format_ms, parse_time
from dataflow.topic_reader import consumer

EXAMPLES = """examples:
  flowattr replay --from 2026-11-28T10:00:00Z --to 2026-11-28T11:00:00Z
  flowattr replay --from 3h --to 2h --sink flows.attributed.backfill-0900
  flowattr replay --from 3h --to 2h --until 10m    # and the range's long connections that closed since
"""
RECORDS_PER_MESSAGE = 500


def register(sub) -> None:
    replay = sub.add_parser(
        "replay", help="answer again the flows that started in a time range, into a topic of its own",
        epilog=EXAMPLES + f"\nTIME is {TIME_HELP}. --until must be at least attribution.max_wait_s + 1 s before now.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("--from", dest="start", metavar="TIME", required=True, help="first start time of the range")
    replay.add_argument("--to", dest="end", metavar="TIME", required=True, help="end of the range (excluded)")
    replay.add_argument("--until", metavar="TIME", help="last arrival of a flow to answer (default: --to + "
                        "attribution.max_wait_s); flows reported later, such as longer connections, are left out")
    replay.add_argument("--sink", metavar="TOPIC", help="output topic (default: <attributed topic>.replay-FROM-TO)")
    replay.add_argument("--brokers", help="Kafka bootstrap servers")
    replay.add_argument("--region", help="the region whose flows to replay")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar (it goes to stderr on a terminal)")
    replay.set_defaults(handler=replay_command)


class Window:
    """Which flows (by start and by arrival) and which input (by arrival) a replay covers."""

    def __init__(self, config: Config, start_ms: int, end_ms: int, now_ms: int, until_ms: int | None = None):
        a = config.attribution
        self.start_ms, self.end_ms = start_ms, end_ms
        max_wait = int(a.max_wait_s * 1000)
        if end_ms <= start_ms:
            raise ConfigError(f"bad times: --to ({format_ms(end_ms)}) must be after --from ({format_ms(start_ms)})")
        # An exporter reports a connection when it closes, so a flow of the range may arrive at any
        # time after it; those that arrived by `until` are answered.
        self.until_ms = end_ms + max_wait if until_ms is None else until_ms
        if self.until_ms <= start_ms:
            raise ConfigError(f"bad times: --until ({format_ms(self.until_ms)}) must be after --from "
                              f"({format_ms(start_ms)})")
        # Evidence that came up to max_wait before the range still speaks for its first flows; the
        # exporters' clocks are then known from the max_wait before that (their memory), sampled by the
        # decisions of up to a delay earlier.
        self.read_from_ms = start_ms - 2 * max_wait - int(a.delay_s * 1000)
        # Assignment events are few and stay valid for long: as far back as the job's state remembers.
        self.events_from_ms = start_ms - int(a.retention_s * 1000)
        # A flow is decided at most max_wait after it arrived, at a point of the shards' decision grid.
        self.read_to_ms = self.until_ms + max_wait + Shard.DUE_GRID_MS
        if self.read_to_ms > now_ms:
            grid_s = Shard.DUE_GRID_MS // 1000
            if until_ms is None:
                raise ConfigError(f"bad times: --to must be at least 2 x attribution.max_wait_s + {grid_s} s "
                                  f"({(self.read_to_ms - end_ms) / 1000:g} s) before now, or give an earlier --until: "
                                  "the flows of the range are not all decided yet")
            raise ConfigError(f"bad times: --until must be at least attribution.max_wait_s + {grid_s} s "
                              f"({(self.read_to_ms - self.until_ms) / 1000:g} s) before now: the flows that arrived "
                              "by then are not all decided yet")

    def covers(self, flow: dict[str, Any]) -> bool:
        return self.start_ms <= flow["start_ms"] < self.end_ms


def replay_command(args, config: Config) -> int:
    now = int(time.time() * 1000)
    until = None if args.until is None else parse_time(args.until, now)
    window = Window(config, parse_time(args.start, now), parse_time(args.end, now), now, until)
    k = config.kafka
    sink = args.sink or f"{k.attributed_topic}.replay-{_compact(window.start_ms)}-{_compact(window.end_ms)}"
    live = {k.attributed_topic, k.dlq_topic, *(config.forward_topic(r) for r in config.regions)}
    if sink in live or sink in kafka_io.input_topics(config):
        raise ConfigError(f"--sink {sink} is one of the live job's topics: a replay writes to its own")
    # Today's entitlements: the exporters topic keeps only the latest entry of each exporter.
    entitlements = Entitlements(bool(config.trust.require_entitlement), config.entitlements)
    stop = threading.Event()
    client = consumer(config)
    try:
        kafka_io.follow_entitlements(config, entitlements, stop=stop)
        started = time.monotonic()
        result = Replay(config, window, entitlements, kafka_io.partitions_of(config))
        result.read(client, show_progress=not args.no_progress)
        written = write(config, sink, result.answers)
    finally:
        stop.set()
        client.close()
    print(f"flowattr replay: flows started {format_ms(window.start_ms)} .. {format_ms(window.end_ms)}, arrived by "
          f"{format_ms(window.until_ms)} -> {sink} in {time.monotonic() - started:.1f} s, region {config.region}")
    print(render(result.summary(written)))
    return 0


class Replay:
    """The job's router and shards in one process, fed a window of the input in arrival order; keeps
    the answers of the window's flows."""

    def __init__(self, config: Config, window: Window, entitlements: Entitlements,
                 partitions: frozenset[tuple[str, int]]):
        self.config = config
        self.window = window
        self.tally = Tally()
        ticks = itertools.count(start=1)
        # Every batch tells the shards how far it has read (the job does so at most every 0.1 s).
        self.router = Router(config, self.tally, entitlements, wall_s=lambda: float(next(ticks)))
        self.partitions = partitions
        self.shards: dict[str, Shard] = {}
        self.answers: list[dict[str, Any]] = []
        self.outside = Counter()
        self.arrived_later: set[str] = set()  # flow ids of the range read after --until: answered, not kept
        self.later = 0
        self.undecided = 0
        self.messages_read = 0

    def read(self, client: Consumer, show_progress: bool) -> None:
        starts, ends, roles = self._offsets(client)
        total = sum(max(0, ends[tp] - starts[tp]) for tp in starts)
        client.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        positions = dict(starts)
        done = {tp for tp in starts if starts[tp] >= ends[tp]}
        bar = _progress(total, show_progress)
        # A partition with nothing (more) in the window has been read up to the window's end.
        finished = [self._caught_up(tp, roles) for tp in done]
        try:
            while len(done) < len(starts) or finished:
                messages, finished = finished, []
                batch = client.consume(1000, 0.5) if len(done) < len(starts) else []
                if not batch:
                    # Offsets never delivered (transaction markers, compacted records) count as read.
                    for tp in client.position([TopicPartition(*tp) for tp in starts if tp not in done]):
                        if tp.offset >= ends[tp.topic, tp.partition]:
                            done.add((tp.topic, tp.partition))
                            messages.append(self._caught_up((tp.topic, tp.partition), roles))
                for m in batch:
                    if m.error() is not None:
                        raise ConnectionError(f"reading {m.topic()}: {m.error().str()}")
                    tp = (m.topic(), m.partition())
                    if tp in done or m.offset() >= ends[tp]:
                        continue
                    positions[tp] = m.offset() + 1
                    messages.append(Message(m.value(), Origin(m.topic(), m.partition(), m.offset(), roles[m.topic()]),
                                            key=m.key(), arrival_ms=m.timestamp()[1]))
                    if positions[tp] >= ends[tp]:
                        done.add(tp)
                        client.pause([TopicPartition(*tp)])
                        messages.append(self._caught_up(tp, roles))
                read = sum(1 for m in messages if m.caught_up_ms is None)
                self.messages_read += read
                self.route(messages)
                bar.update(read)
                bar.set_postfix_str(f"{total - self.messages_read} left", refresh=False)
        finally:
            bar.close()
        self.finish()

    def route(self, messages: list[Message]) -> None:
        """Messages of the window in their partitions' order, those past the window's end included
        (the word that a partition has been read to it)."""
        until = self.window.until_ms
        by_until = [m for m in messages if m.caught_up_ms is None and m.arrival_ms <= until]
        # Arrivals rise along a partition: its messages after --until, and its end, come after the rest.
        after = [m for m in messages if m.caught_up_ms is not None or m.arrival_ms > until]
        for group, later in ((by_until, False), (after, True)):
            if group:
                self._route(group, later)

    def finish(self) -> None:
        """End of the window: a flow of the range still pending arrived after --until (so its deadline
        lies past what was read); one that arrived by then cannot be, and would count as undecided."""
        for shard in self.shards.values():
            for flow in shard.finish():
                if self.window.covers(flow):
                    if flow["flow_id"] in self.arrived_later:
                        self.later += 1
                    else:
                        self.undecided += 1

    def _offsets(self, client: Consumer):
        """Per (topic, partition): the first offset in the window, the first past it; each topic's role."""
        roles = kafka_io.input_topics(self.config)
        starts, ends = {}, {}
        for topic, role in roles.items():
            meta = client.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                raise ConfigError(f"topic {topic} does not exist")
            since = self.window.events_from_ms if role == IP_EVENTS else self.window.read_from_ms
            for edge, at in ((starts, since), (ends, self.window.read_to_ms)):
                asked = [TopicPartition(topic, p, at) for p in meta.partitions]
                for tp in client.offsets_for_times(asked, timeout=10):
                    if tp.offset < 0:  # nothing that late: the partition's end
                        tp.offset = client.get_watermark_offsets(TopicPartition(topic, tp.partition), 10)[1]
                    edge[topic, tp.partition] = tp.offset
        return starts, ends, roles

    def _caught_up(self, tp: tuple[str, int], roles: dict[str, str]) -> Message:
        # Arrival times are the broker's and rise along a partition: all before the end offset came earlier.
        return Message(None, Origin(tp[0], tp[1], -1, roles[tp[0]]), caught_up_ms=self.window.read_to_ms - 1)

    def _route(self, messages: list[Message], later: bool) -> None:
        for key, item in self.router.route(messages):
            if key == "answered":
                self._note_later(later, item)
                self._keep(item)
            elif key in ("forward", "dead"):
                continue  # counted by the router; the live job has written them already
            else:
                shard = self.shards.get(key)
                if shard is None:
                    shard = self.shards[key] = Shard(self.config.attribution, self.partitions,
                                                     int(self.config.trust.clock_bound_s * 1000))
                if type(item) is ShardWork:
                    self._note_later(later, [x.flow for x in item.items if type(x) is Lookup])
                self._keep(shard.absorb(item))

    def _note_later(self, later: bool, flows: list[dict[str, Any]]) -> None:
        if later:
            self.arrived_later.update(f["flow_id"] for f in flows if self.window.covers(f))

    def _keep(self, flows: list[dict[str, Any]]) -> None:
        for flow in flows:
            if not self.window.covers(flow):
                self.outside["before" if flow["start_ms"] < self.window.start_ms else "after"] += 1
            elif flow["flow_id"] in self.arrived_later:
                self.later += 1
            else:
                self.answers.append(flow)

    def summary(self, written: int) -> dict[str, Any]:
        counts = self.tally.snapshot()
        outcomes = Counter(a["outcome"] if a["reason"] is None else f"unattributed.{a['reason']}" for a in self.answers)
        return {
            "messages read": self.messages_read,
            "records in": sum(v for k, v in counts.items() if k.startswith("in.")),
            "flows answered": len(self.answers),
            "attributed": outcomes["attributed"],
            "unattributed": {k.split(".", 1)[1]: v for k, v in sorted(outcomes.items()) if k.startswith("unattributed.")},
            "external": outcomes["external"],
            "written": written,
            "outside range": {f"started {k}": v for k, v in sorted(self.outside.items())},
            "arrived later": self.later,
            "not re-forwarded": {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("forwarded.")},
            "dead not resent": {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("dead.")},
            "undecided": self.undecided,
        }


def write(config: Config, topic: str, answers: list[dict[str, Any]]) -> int:
    """The answers to `topic` (created when missing) in batches; returns how many the broker confirmed."""
    k = config.kafka
    admin = AdminClient(client_settings(k))
    metadata = admin.list_topics(timeout=10)
    if topic not in metadata.topics:
        # Sized as the job sizes its own topics: the configured counts, else the cluster's defaults.
        brokers = sorted(metadata.brokers)
        default = kafka_io.cluster_replication_default(admin, brokers[0], 10) if brokers else None
        replicas = kafka_io.replication_factor(k.replication_factor, len(brokers), default)
        for future in admin.create_topics([NewTopic(topic, num_partitions=k.partitions,
                                                    replication_factor=replicas)]).values():
            future.result(30)
    producer = Producer(client_settings(config.kafka, **{"enable.idempotence": True, "linger.ms": 20,
                                                         "compression.type": "lz4"}))
    confirmed, failed = [0], []

    def delivered(err, msg, n):
        if err is None:
            confirmed[0] += n
        else:
            failed.append(str(err))

    for i in range(0, len(answers), RECORDS_PER_MESSAGE):
        batch = answers[i : i + RECORDS_PER_MESSAGE]
        while True:
            try:
                producer.produce(topic, encode_batch(batch), on_delivery=lambda e, m, n=len(batch): delivered(e, m, n))
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    if failed or confirmed[0] != len(answers):
        raise ConnectionError(f"{len(answers) - confirmed[0]} of {len(answers)} answers not written to {topic}: "
                              f"{failed[:1] or 'not confirmed within 60 s'}")
    return confirmed[0]


def _progress(total: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="msg", desc="replay", disable=None if show else True, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)


def _compact(ms: int) -> str:
    return format_ms(ms).replace("-", "").replace(":", "")[:15] + "Z"
