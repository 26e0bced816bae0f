"""The reader's caught-up word when the broker's answers fail: the client that asked is replaced, and the
word comes once a new client's answer does. (With a real broker: tests/integration/test_caught_up.py.)"""
from __future__ import annotations

import time
from concurrent.futures import Future
from datetime import datetime, timezone

from confluent_kafka import KafkaError, KafkaException

from dataflow import kafka_io
from dataflow.kafka_io import ANSWER_POLL_S, IDLE_POLL_S, ArrivalSource, CaughtUp, _CaughtUpPartition


class _Consumer:
    def get_watermark_offsets(self, partition, cached=False):
        return 0, 5


class _Reader:
    """Bytewax's partition reader, read up to offset 5 of 5."""

    _topic, _part_idx, _offset, _consumer = "flows.raw", 0, 5, _Consumer()

    def next_batch(self):
        return []


class _Answer:
    offset = 5


class _Admin:
    """Answers every question with `outcome`: an error, or the partition's end."""

    def __init__(self, outcome):
        self.outcome, self.asked = outcome, 0

    def list_offsets(self, request):
        self.asked += 1
        future = Future()
        if isinstance(self.outcome, KafkaError):
            future.set_exception(KafkaException(self.outcome))
        else:
            future.set_result(self.outcome)
        return {partition: future for partition in request}


def _words(part, seconds=1.5):
    words = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        words += [w for w in part.next_batch() if type(w) is CaughtUp]
        time.sleep(0.01)
    return words


def test_a_client_whose_answers_fail_is_replaced_and_the_word_then_comes(monkeypatch):
    fenced = KafkaError(KafkaError.FENCED_LEADER_EPOCH)
    made = [_Admin(fenced), _Admin(_Answer())]
    monkeypatch.setattr("dataflow.kafka_io.AdminClient", lambda settings: made.pop(0))
    source = ArrivalSource(["127.0.0.1:9"], ["flows.raw"], margin_ms=1000)
    stale = source.admin()
    part = _CaughtUpPartition(_Reader(), 1000, None, source.admin)

    before = int(time.time() * 1000)
    words = _words(part)
    assert stale.asked == 1, "a failed client was asked again"
    assert source.admin() is not stale
    assert words and all(w.at_ms >= before - 1000 for w in words)


def test_a_broker_that_always_fails_gets_a_new_client_at_most_once_a_second(monkeypatch):
    made = []

    def client(settings):
        made.append(_Admin(KafkaError(KafkaError._TRANSPORT)))
        return made[-1]

    monkeypatch.setattr("dataflow.kafka_io.AdminClient", client)
    source = ArrivalSource(["127.0.0.1:9"], ["flows.raw"], margin_ms=1000)
    part = _CaughtUpPartition(_Reader(), 1000, None, source.admin)
    assert _words(part, 2.5) == []
    # Asked every 0.1 s, each question failing: the first client, then one more a second at most.
    assert sum(a.asked for a in made) >= 10
    assert 2 <= len(made) <= 4


def test_a_quiet_partition_speaks_once_a_due_point_passes_not_at_every_poll(monkeypatch):
    admin = _Admin(_Answer())
    monkeypatch.setattr("dataflow.kafka_io.AdminClient", lambda settings: admin)
    part = _CaughtUpPartition(_Reader(), 1000, None, ArrivalSource(["127.0.0.1:9"], ["flows.raw"], margin_ms=1000).admin)
    words = _words(part, 3.5)
    cells = [w.at_ms // 1000 for w in words]
    # Polled every 10 ms here, when `_next_wake` says by the runtime: one question and one word for each grid
    # point the margin-delayed wall clock passed, each word in a cell of its own.
    assert 3 <= len(words) <= 5 and cells == sorted(set(cells))
    # A question asked at the last poll is answered at the next, which the loop above no longer makes.
    assert admin.asked == len(words) + (part.asked is not None)


def test_a_caught_up_partition_sleeps_until_its_next_word_is_due_but_no_longer_than_the_idle_pause(monkeypatch):
    part = _CaughtUpPartition(_Reader(), 1000, None, ArrivalSource(["127.0.0.1:9"], ["flows.raw"], margin_ms=1000).admin)
    part.said_cell = 100  # the last word spoke for the cell of 100 s: the next is asked for at 101 s + the margin
    wall, mono = [0.0], 50.0
    monkeypatch.setattr(kafka_io.time, "time", lambda: wall[0])
    monkeypatch.setattr(kafka_io.time, "monotonic", lambda: mono)

    def pause(at_s: float) -> float:
        wall[0] = at_s
        return (part._next_wake() - datetime.now(timezone.utc)).total_seconds()

    assert abs(pause(101.9) - 0.1) < 0.02, "the next point is 0.1 s away: it wakes for it"
    assert abs(pause(101.2) - IDLE_POLL_S) < 0.02, "the next point is 0.8 s away: it looks again after the idle pause"
    assert pause(102.0) < 0.02, "the point has passed and the last question is old: it asks at once"
    part.said_at = mono - 0.04
    assert abs(pause(102.0) - 0.06) < 0.02, "a question was asked 0.04 s ago: the next one waits out the 0.1 s"
    part.asked = (Future(), 102_000, None)
    assert abs(pause(102.0) - ANSWER_POLL_S) < 0.02, "a question is in flight: it looks for the answer soon"
