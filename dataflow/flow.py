"""The Bytewax dataflow, top to bottom as in the diagram of DESIGN.md. The only module that imports
Bytewax's operators; every decision it makes is delegated to plain modules.

Run it in one process with `flowattr run`, or as a cluster with
`python -m bytewax.run "dataflow.flow:from_environment()" -w W -i I -a "host0:port;host1:port"`,
configured by FLOWATTR_CONFIG and FLOWATTR_* variables.
"""

from __future__ import annotations

import ctypes
import gc
import pickle
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from dataflow import file_io, kafka_io
from dataflow.attribution import Lookup, Shard
from dataflow.config import Config, check_job, load_config
from dataflow.entitlements import Entitlements
from dataflow.metrics import JobMetrics
from dataflow.packed import PACKING
from dataflow.records import DeadLetter, Origin, encode_batches
from dataflow.routing import Routers, Tally
from dataflow.shutdown import Shutdown

NOT_SHARDS = ("forward", "answered", "dead")
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
    entitlements = Entitlements(bool(config.trust.require_entitlement), config.entitlements)
    flow = Dataflow("flowattr")
    collector = StateCollector()
    metrics = JobMetrics(config, tally)  # serves /metrics, /healthz, /readyz when metrics.port is set

    if file_mode:
        rejected = file_io.read_entitlements(config.files.input_dir, entitlements)
        tally.add({"dead.bad_entitlement": rejected} if rejected else {})
        messages = op.input("read_files", flow, shutdown.source(file_io.InputFolder(config.files.input_dir)))
        partitions = file_io.roles_present(config.files.input_dir)
    else:
        kafka_io.ensure_topics(config)
        kafka_io.follow_entitlements(config, entitlements)
        partitions = kafka_io.partitions_of(config)
        streams = []
        pace = kafka_io.ReadPace(config.kafka.read_ahead_ms)
        for topic, role in kafka_io.input_topics(config).items():
            raw = op.input(f"read_{role}", flow, shutdown.source(kafka_io.source(config, topic, metrics.position, pace)))
            streams.append(op.map(f"as_message_{role}", raw, lambda m, role=role: kafka_io.as_message(m, role)))
        messages = op.merge("messages", *streams)
    if entitlements.required and not entitlements.exporters():
        print(
            "flowattr: no exporter is entitled to claim any address yet ([entitlements], the exporters topic); "
            "until one is, flows are answered but no ownership is learned",
            file=sys.stderr,
        )

    routers = Routers(config, tally, entitlements)
    routed = op.flat_map_batch("decode_and_route", messages, routers.route)
    split = op.branch("split_shard_work", routed, lambda item: item[0] not in NOT_SHARDS)
    by_shard = split.trues
    others = split.falses

    decided = op.stateful_batch(
        "attribute",
        by_shard,
        lambda resume: metrics.shard(ShardLogic(config, resume, partitions, file_mode, collector, tally)),
    )
    decided = op.branch("split_decided", decided, lambda key_out: type(key_out[1]) is list)
    decided_flows = op.map("decided_flows", decided.trues, lambda key_flows: key_flows[1])
    shard_dead = op.map("shard_dead_letters", decided.falses, lambda key_letter: key_letter[1].to_record())
    answered_at_once = op.filter_map(
        "answered_at_once", others, lambda item: item[1] if item[0] == "answered" else None
    )
    answers = op.merge("answers", decided_flows, answered_at_once)
    answers = op.map("count_outcomes", answers, lambda flows: _count_outcomes(flows, tally))
    forwards = op.filter_map("forwards", others, lambda item: item[1] if item[0] == "forward" else None)
    dead = op.filter_map("dead_letters", others, lambda item: item[1].to_record() if item[0] == "dead" else None)
    dead = op.merge("all_dead_letters", dead, shard_dead)

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
    metrics.running = True
    return flow


class StateCollector:
    """Keeps Python's cycle collector off the shards' state, and gives the memory the state frees back to
    the system.

    The state is millions of small lists, tuples and dicts that never form cycles, and the collector
    would scan them all again and again: measured, it took more time than attribution itself. So it
    runs rarely, and what has survived a while is frozen out of its sight (freed by reference
    counting as usual when dropped; only a cycle among frozen objects would outlive its use).

    Every second each shard frees the buffer of the lookups it has just decided. The C allocator keeps
    freed pages in its heaps for reuse, and in a steady stream that slack grows with the rate: measured
    in-process, about 30 bytes per pending lookup, all handed back by a trim every few seconds."""

    FREEZE_EVERY_S = 1.0  # a freeze is cheap: it moves the generations aside, visiting nothing
    TRIM_EVERY_S = 10.0  # a trim walks the allocator's free lists: a few ms

    def __init__(self) -> None:
        gc.set_threshold(100_000, 50, 1000)
        self._lock = threading.Lock()
        self._next = time.monotonic() + self.FREEZE_EVERY_S
        self._next_trim = time.monotonic() + self.TRIM_EVERY_S
        self.trim = _allocator_trim()

    def tend(self) -> None:
        now = time.monotonic()
        if now >= self._next and self._lock.acquire(blocking=False):
            try:
                gc.freeze()
                self._next = now + self.FREEZE_EVERY_S
                if now >= self._next_trim:
                    self.trim()
                    self._next_trim = now + self.TRIM_EVERY_S
            finally:
                self._lock.release()


def _allocator_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0): free pages in every heap back to the system. A C library without it has
    nothing to call."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def _resumed(snapshot: bytes) -> Shard:
    """A shard from its recovery snapshot. The compiled shard's snapshot names its exact fields, so one
    written by another version (or by the Python source instead of the compiled build) cannot be read:
    say so, rather than run on with a shard half understood."""
    try:
        shard = pickle.loads(snapshot)
    except Exception as e:  # noqa: BLE001 - whatever the unpickling met, the cause is the same
        raise RuntimeError(f"{_UNREADABLE} ({type(e).__name__}: {e})") from e
    if type(shard) is not Shard:
        raise RuntimeError(f"{_UNREADABLE} (it holds a {type(shard).__name__})")
    if getattr(shard, "packing", None) != PACKING:
        raise RuntimeError(f"{_UNREADABLE} (its lookups are packed in another layout)")
    return shard


_UNREADABLE = ("a shard's recovery snapshot was written by another version or build of flowattr and cannot be"
               " read: start the job with an empty recovery.dir and backfill the gap with `flowattr replay`")


class ShardLogic(StatefulBatchLogic):
    """Bytewax's hold on one Shard: feeds it work and progress, answers the rest at the end of a file
    input, snapshots it. It needs no timer: readers keep telling it how far they have read."""

    def __init__(self, config: Config, resume: bytes | None, partitions, finite: bool, collector, tally: Tally):
        self.collector = collector
        self.tally = tally
        self.keep = config.limits.dead_letter_bytes
        if resume is not None:
            self.shard = _resumed(resume)
        else:
            self.shard = Shard(config.attribution, partitions, int(config.trust.clock_bound_s * 1000))
        self.finite = finite
        self.recovery = bool(config.recovery.dir)

    def on_batch(self, items: list) -> tuple[list, bool]:
        decided, dead = [], []
        late = self.shard.late
        for item in items:
            try:
                decided.extend(self.shard.absorb(item))
            except Exception as e:  # noqa: BLE001 - a surprise in one message's work must not stop the job
                dead.extend(self._dead_letters(item, e))
        if self.shard.late > late:
            # Evidence read after the clock had passed its arrival: a replay may answer differently.
            self.tally.add({"late": self.shard.late - late})
        if self.shard.evicted:
            self.tally.add({f"evicted.{kind}": n for kind, n in self.shard.evicted.items()})
            self.shard.evicted.clear()
        self.collector.tend()
        return ([decided] if decided else []) + dead, StatefulBatchLogic.RETAIN

    def _dead_letters(self, item, error: Exception) -> list[DeadLetter]:
        """The flows whose lookups came in the work that failed, as dead letters (they would otherwise
        never be answered); the failure is counted whatever the work held."""
        detail = f"{type(error).__name__}: {error}"
        lookups = [i.flow for i in getattr(item, "items", ()) if type(i) is Lookup]
        self.tally.add({"errors.shard": 1, "dead.internal_error": len(lookups)})
        where = Origin("shard", *getattr(item, "order", (0, -1, -1))[1:], "shard")
        return [DeadLetter.of("internal_error", detail, orjson.dumps(f), where, self.keep) for f in lookups]

    def on_eof(self) -> tuple[list, bool]:
        if not self.finite:
            return [], StatefulBatchLogic.RETAIN
        decided = self.shard.finish()
        return ([decided] if decided else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        # The runtime asks at every epoch even without recovery; copying a large shard for nothing
        # would cost more than the attribution itself.
        if not self.recovery:
            return None
        return pickle.dumps(self.shard, protocol=pickle.HIGHEST_PROTOCOL)


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
