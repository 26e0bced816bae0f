"""The Bytewax dataflow, top to bottom as in the diagram of DESIGN.md. The only module that imports
Bytewax's operators; every decision it makes is delegated to plain modules.

Run it in one process with `flowattr run`, or as a cluster with
`python -m bytewax.run "dataflow.flow:from_environment()" -w W -i I -a "host0:port;host1:port"`,
configured by FLOWATTR_CONFIG and FLOWATTR_* variables.
"""

from __future__ import annotations

import gc
import pickle
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from dataflow import file_io, kafka_io
from dataflow.attribution import Shard, ShardWork
from dataflow.config import Config, check_job, load_config
from dataflow.records import DeadLetter, Origin, encode_batches
from dataflow.routing import Router, Tally
from dataflow.shutdown import Shutdown

NOT_SHARDS = ("forward", "external", "dead")
# Bytewax's epoch when none is given. A shard can go a whole epoch or two without a delivery while
# input flows (the exchange between workers moves by epochs), so "no input" must mean longer than that.
DEFAULT_EPOCH_S = 10.0
RECORDS_PER_MESSAGE = 500


def from_environment() -> Dataflow:
    config = load_config()
    check_job(config)
    shutdown = Shutdown()
    shutdown.install()
    return build(config, Tally(), shutdown)


def build(config: Config, tally: Tally, shutdown: Shutdown | None = None) -> Dataflow:
    shutdown = shutdown or Shutdown()
    file_mode = bool(config.files.input_dir)
    epoch_s = config.recovery.snapshot_s if config.recovery.dir else DEFAULT_EPOCH_S
    idle_s = max(config.attribution.idle_advance_s, 2 * epoch_s)
    config = replace(config, attribution=replace(config.attribution, idle_advance_s=idle_s))
    flow = Dataflow("flowattr")
    collector = StateCollector()

    if file_mode:
        messages = op.input("read_files", flow, shutdown.source(file_io.InputFolder(config.files.input_dir)))
        raw_partitions = 1
    else:
        kafka_io.ensure_topics(config)
        raw_partitions = kafka_io.partition_count(config, config.kafka.raw_topic)
        streams = []
        for topic, role in kafka_io.input_topics(config).items():
            raw = op.input(f"read_{role}", flow, shutdown.source(kafka_io.source(config, topic)))
            streams.append(op.map(f"as_message_{role}", raw, lambda m, role=role: kafka_io.as_message(m, role)))
        messages = op.merge("messages", *streams)

    router = Router(config, tally)
    routed = op.flat_map_batch("decode_and_route", messages, router.route)
    split = op.branch("split_shard_work", routed, lambda item: item[0] not in NOT_SHARDS)
    by_shard = split.trues
    others = split.falses

    decided = op.stateful_batch(
        "attribute", by_shard, lambda resume: ShardLogic(config, resume, raw_partitions, not file_mode, collector)
    )
    decided_flows = op.map("decided_flows", decided, lambda key_flows: key_flows[1])
    external = op.filter_map(
        "external_flows", others, lambda item: item[1] if item[0] == "external" else None
    )
    answers = op.merge("answers", decided_flows, external)
    answers = op.map("count_outcomes", answers, lambda flows: _count_outcomes(flows, tally))
    forwards = op.filter_map("forwards", others, lambda item: item[1] if item[0] == "forward" else None)
    dead = op.filter_map("dead_letters", others, lambda item: item[1].to_record() if item[0] == "dead" else None)

    if file_mode:
        out = config.files.output_dir
        op.output("write_attributed", answers, file_io.OutputFiles(out, "attributed"))
        for region in sorted(set(config.regions) - {config.region}):
            to_region = op.filter_map(
                f"forward_to_{region}", forwards, lambda f, r=region: f.flows if f.region == r else None
            )
            op.output(f"write_forward_{region}", to_region, file_io.OutputFiles(out, f"forward.{region}"))
        op.output(
            "write_dead_letters", op.map("dead_letter_lists", dead, lambda r: [r]), file_io.OutputFiles(out, "dlq")
        )
    else:
        k = config.kafka
        forward_topics = [config.forward_topic(r) for r in sorted(set(config.regions) - {config.region})]
        answers_max = kafka_io.max_value_bytes(config, [k.attributed_topic])
        forwards_max = kafka_io.max_value_bytes(config, forward_topics) if forward_topics else answers_max
        dead_max = kafka_io.max_value_bytes(config, [k.dlq_topic])
        op.output(
            "write_attributed",
            op.flat_map("encode_attributed", answers, lambda flows: _messages(flows, None, answers_max, config, tally)),
            kafka_io.sink(config, k.attributed_topic, min(answers_max, dead_max)),
        )
        op.output(
            "write_forwards",
            op.flat_map(
                "encode_forwards",
                forwards,
                lambda f: _messages(f.flows, config.forward_topic(f.region), forwards_max, config, tally),
            ),
            kafka_io.sink(config, None, min(forwards_max, dead_max)),
        )
        op.output(
            "write_dead_letters",
            op.map("encode_dead_letters", dead, lambda r: kafka_io.sink_message(orjson.dumps(r))),
            kafka_io.sink(config, k.dlq_topic, dead_max),
        )
    return flow


class StateCollector:
    """Keeps Python's cycle collector off the shards' state.

    The state is millions of small lists, tuples and dicts that never form cycles, and the collector
    would scan them all again and again: measured, it took more time than attribution itself. So it
    runs rarely, and what has survived a while is frozen out of its sight (freed by reference
    counting as usual when dropped; only a cycle among frozen objects would outlive its use)."""

    FREEZE_EVERY_S = 1.0  # a freeze is cheap: it moves the generations aside, visiting nothing

    def __init__(self) -> None:
        gc.set_threshold(100_000, 50, 1000)
        self._lock = threading.Lock()
        self._next = time.monotonic() + self.FREEZE_EVERY_S

    def tend(self) -> None:
        now = time.monotonic()
        if now >= self._next and self._lock.acquire(blocking=False):
            try:
                gc.freeze()
                self._next = now + self.FREEZE_EVERY_S
            finally:
                self._lock.release()


class ShardLogic(StatefulBatchLogic):
    """Bytewax's hold on one Shard: feeds it batches, wakes it while input is idle, snapshots it."""

    def __init__(self, config: Config, resume: bytes | None, raw_partitions: int, live: bool, collector):
        self.collector = collector
        if resume is not None:
            self.shard = pickle.loads(resume)
        else:
            self.shard = Shard(config.attribution, raw_partitions, live)
        self.idle = timedelta(seconds=config.attribution.idle_advance_s) if live else None
        self.recovery = bool(config.recovery.dir)

    def on_batch(self, batches: list[list[ShardWork]]) -> tuple[list, bool]:
        wall = _wall_ms()
        decided = []
        for works in batches:
            for work in works:
                decided.extend(self.shard.absorb(work, wall))
        self.collector.tend()
        return ([decided] if decided else []), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list, bool]:
        decided = self.shard.tick(_wall_ms())
        return ([decided] if decided else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        if self.idle is not None:
            return [], StatefulBatchLogic.RETAIN
        decided = self.shard.finish()
        return ([decided] if decided else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.idle is None or not self.shard.pending():
            return None
        return datetime.now(timezone.utc) + self.idle

    def snapshot(self) -> bytes | None:
        # The runtime asks at every epoch even without recovery; copying a large shard for nothing
        # would cost more than the attribution itself.
        if not self.recovery:
            return None
        return pickle.dumps(self.shard, protocol=pickle.HIGHEST_PROTOCOL)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _count_outcomes(flows: list[dict[str, Any]], tally: Tally) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    for f in flows:
        counts[f"out.{f['outcome']}" if f["reason"] is None else f"out.unattributed.{f['reason']}"] += 1
    tally.add(counts)
    return flows


def _messages(records: list[dict[str, Any]], topic: str | None, max_bytes: int, config: Config, tally: Tally):
    """Output messages that the producer and the broker will take; an answer too large for any
    message goes to the dead letters in its place, as much of it as a dead letter keeps."""
    values, oversize = encode_batches(records, max_bytes, RECORDS_PER_MESSAGE)
    messages = [kafka_io.sink_message(v, topic) for v in values]
    if oversize:
        tally.add({"dead.answer_too_large": len(oversize)})
    for record, value in oversize:
        where = Origin(topic or config.kafka.attributed_topic, -1, -1, "output")
        detail = f"the answer for flow {record.get('flow_id')!r} is {len(value)} bytes, over the {max_bytes} a message takes"
        letter = DeadLetter.of("answer_too_large", detail, value, where, config.limits.dead_letter_bytes)
        messages.append(kafka_io.sink_message(orjson.dumps(letter.to_record()), config.kafka.dlq_topic))
    return messages
