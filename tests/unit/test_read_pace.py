"""Readers of one process keep pace with each other in arrival time: in a replay, a partition read far
ahead of the slowest one would only fill the shards with input they cannot apply yet. (What it
bounds in a replay of uneven partitions, against a real broker: tests/integration/test_paced_readers.py.)"""
from __future__ import annotations

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, TIMESTAMP_NOT_AVAILABLE

from bytewax.connectors.kafka import KafkaSourceMessage
from dataflow.kafka_io import ReadPace, _CaughtUpPartition

RAW = "flows.raw"


def test_a_partition_more_than_the_lead_past_the_slowest_waits_and_goes_on_once_it_is_not():
    pace = ReadPace(lead_ms=5_000)
    pace.read((RAW, 0), 100_000)
    assert not pace.ahead((RAW, 0))  # alone, it is the slowest
    pace.read((RAW, 1), 104_000)
    pace.read((RAW, 2), 106_000)
    assert not pace.ahead((RAW, 1))
    assert pace.ahead((RAW, 2))
    assert not pace.ahead((RAW, 3)), "a partition not read yet is held back by nobody"
    pace.read((RAW, 0), 101_500)
    assert not pace.ahead((RAW, 2))
    pace.read((RAW, 2), 90_000)  # an older timestamp does not move a partition back
    assert pace.ahead((RAW, 2)) is False and pace.waits == 1


def test_while_a_reader_that_joined_has_read_nothing_the_others_wait_for_it():
    pace = ReadPace(lead_ms=5_000)
    for partition in (0, 1):
        pace.join((RAW, partition))
    pace.read((RAW, 0), 100_000)
    assert pace.ahead((RAW, 0)), "a reader ran ahead of one whose first fetch had not come back"
    assert not pace.ahead((RAW, 1))
    pace.read((RAW, 1), 99_000)
    assert not pace.ahead((RAW, 0)) and not pace.ahead((RAW, 1))
    pace.join((RAW, 1))  # joining again (a reader rebuilt) forgets nothing
    assert not pace.ahead((RAW, 0))


class _Consumer:
    def get_watermark_offsets(self, partition, cached=False):
        return 0, 1_000


class _Reader:
    """Bytewax's partition reader over a partition whose messages arrived `step_ms` apart."""

    def __init__(self, partition: int, step_ms: int, kind: int = TIMESTAMP_LOG_APPEND_TIME):
        self._topic, self._part_idx, self._offset, self._consumer = RAW, partition, 0, _Consumer()
        self.step_ms, self.kind, self.reads = step_ms, kind, 0

    def next_batch(self):
        self.reads += 1
        batch = [KafkaSourceMessage(None, b"[]", RAW, [], None, self._offset + i, self._part_idx,
                                    (self.kind, 1_000_000 + (self._offset + i) * self.step_ms)) for i in range(10)]
        self._offset += 10
        return batch


def test_a_reader_ahead_reads_nothing_until_the_slow_one_catches_up_and_is_still_seen_alive():
    pace = ReadPace(lead_ms=5_000)
    seen = []
    watch = lambda topic, partition, offset, low, high: seen.append((partition, offset))  # noqa: E731
    sparse, dense = _Reader(0, step_ms=1_000), _Reader(1, step_ms=100)
    fast = _CaughtUpPartition(sparse, 1000, watch, admin=None, pace=pace)
    slow = _CaughtUpPartition(dense, 1000, watch, admin=None, pace=pace)
    assert len(slow.next_batch()) == 10  # read up to 1,000,900
    assert len(fast.next_batch()) == 10  # read up to 1,009,000: 8.1 s ahead
    assert fast.next_batch() == [] and sparse.reads == 1
    assert fast.next_awake() is not None, "a waiting reader looks again soon, without being woken"
    assert seen[-1] == (0, 10), "a waiting reader still tells where it is"
    for _ in range(4):
        slow.next_batch()  # up to 1,004,900
    assert fast.next_batch() != [] and sparse.reads == 2


def test_a_partition_whose_messages_carry_no_arrival_time_is_never_held_and_holds_the_others_until_caught_up():
    pace = ReadPace(lead_ms=5_000)
    untimed = _Reader(0, step_ms=1_000, kind=TIMESTAMP_NOT_AVAILABLE)
    part = _CaughtUpPartition(untimed, 1000, None, admin=None, pace=pace)
    other = _CaughtUpPartition(_Reader(1, step_ms=1_000), 1000, None, admin=None, pace=pace)
    assert len(other.next_batch()) == 10
    for _ in range(3):
        assert len(part.next_batch()) == 10
    assert untimed.reads == 3 and other.next_batch() == []  # the arrival clock waits for it as well
    pace.read((RAW, 0), 2_000_000)  # its caught-up word
    assert other.next_batch() != []
