"""Hostile input against the decoder, generated: valid records mutated, truncated, given wrong types,
extreme numbers, deep nesting and huge strings, alone and in mixed batches. Whatever comes in, the
decoder answers (never raises), accounts for every element (valid + dead letters = in), keeps dead
letters small and encodable, and passes on only records the job can encode again."""

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from collections import Counter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.config import LimitsConfig
from dataflow.records import FORWARDED, IP_EVENTS, RAW, Origin, TimeBounds, attributed, decode_message, encode_batches

NOW = 1_780_000_000_000
BOUNDS = TimeBounds(NOW - 7 * 86_400_000, NOW + 3_600_000)
LIMITS = LimitsConfig(message_bytes=64 * 1024, records_per_message=50, depth=6, string_chars=300, dead_letter_bytes=200)
ROLES = {RAW: Origin("flows.raw", 0, 7, RAW), FORWARDED: Origin("flows.forward.x", 1, 8, FORWARDED),
         IP_EVENTS: Origin("ip-events", 2, 9, IP_EVENTS)}
# A dead letter's record: its bounded prefix (base64 at worst), a detail of a line, its coordinates.
DEAD_LETTER_MAX = LIMITS.dead_letter_bytes * 4 // 3 + 4 + 500 * 4 + 400

times = st.integers(BOUNDS.earliest_ms, BOUNDS.latest_ms)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)  # mapped ones are IPv4
names = st.text(min_size=1, max_size=40)
ports = st.integers(0, 65535)


@st.composite
def flows(draw):
    start = draw(times)
    ip = draw(st.sampled_from([ipv4, ipv6]))
    record = {"v": 1, "kind": "flow", "flow_id": draw(st.text(min_size=1, max_size=200)), "exporter": draw(names),
              "region": draw(names), "local_ip": draw(ip), "local_port": draw(ports), "remote_ip": draw(ip),
              "remote_port": draw(ports), "direction": draw(st.sampled_from(["outbound", "inbound"])),
              "start_ms": start, "end_ms": draw(st.integers(start, BOUNDS.latest_ms)),
              "bytes_sent": draw(st.integers(0, 2**63)), "bytes_received": draw(st.integers(0, 2**63)),
              "local_workload": draw(st.none() | names)}
    if draw(st.booleans()):
        record["comm"] = draw(st.text(max_size=20))
    return record


@st.composite
def heartbeats(draw):
    start = draw(times)
    return {"v": 1, "kind": "heartbeat", "exporter": draw(names), "region": draw(names),
            "ip": draw(ipv4 | ipv6), "workload": draw(names), "start_ms": start,
            "end_ms": draw(st.integers(start, BOUNDS.latest_ms))}


@st.composite
def ip_events(draw):
    return {"v": 1, "kind": "ip_event", "ip": draw(ipv4), "owner": draw(names),
            "action": draw(st.sampled_from(["assigned", "unassigned"])), "time_ms": draw(times)}


valid = flows() | heartbeats() | ip_events()
extreme_numbers = st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1e308, -0.0, 1.5, 10**30])
scalars = st.none() | st.booleans() | extreme_numbers | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)


def nested(depth, leaf):
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


hostile_values = (json_values | extreme_numbers | st.integers(1, 40).map(lambda d: nested(d, 1))
                  | st.integers(250, 300).map(lambda n: "x" * n) | st.just("y" * 5000))


@st.composite
def mutated(draw):
    """A valid record with fields dropped, retyped, or added."""
    record = dict(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "retype", "add"]))
        if action == "drop" and record:
            record.pop(draw(st.sampled_from(sorted(record))))
        elif action == "retype" and record:
            record[draw(st.sampled_from(sorted(record)))] = draw(hostile_values)
        else:
            record[draw(st.text(max_size=10) | st.just("k" * 400))] = draw(hostile_values)
    return record


elements = valid | mutated() | json_values


def encode(value) -> bytes:
    # json, not orjson: it writes what orjson would refuse to (nesting past 255), as a hostile sender could.
    return json.dumps(value).encode()


@st.composite
def messages(draw):
    """Bytes of one message: a record, a batch, truncated, or not JSON at all."""
    kind = draw(st.sampled_from(["record", "batch", "truncated", "bytes", "huge", "deep"]))
    if kind == "record":
        return encode(draw(elements))
    if kind == "batch":
        return encode(draw(st.lists(elements, max_size=60)))
    if kind == "truncated":
        value = encode(draw(st.lists(valid, min_size=1, max_size=5)))
        return value[: draw(st.integers(0, len(value) - 1))]
    if kind == "huge":
        return encode([draw(valid) for _ in range(3)] + ["z" * (LIMITS.message_bytes + 1)])
    if kind == "deep":
        return b"[" * draw(st.integers(1, 1500)) + b"]" * draw(st.integers(0, 1500))
    return draw(st.binary(max_size=200))


def elements_in(value: bytes) -> int:
    """How many records the message stands for: each element of a batch within the limits, else one."""
    try:
        parsed = orjson.loads(value) if value and len(value) <= LIMITS.message_bytes else None
    except orjson.JSONDecodeError:
        return 1
    if isinstance(parsed, list) and 0 < len(parsed) <= LIMITS.records_per_message:
        return len(parsed)
    return 1


@pytest.fixture(scope="module")
def decoded(figures):
    """What the generated messages held and where it went, for docs/RELIABILITY.md."""
    counts = Counter()
    yield counts
    figures.record("test_fuzz_records.py (hypothesis)", "generated hostile messages and mixed batches",
                   "the decoder never raises; valid + dead letters = elements in; dead letters bounded; what passes encodes",
                   messages_in=counts["messages"], answered=counts["valid"], forwarded=0, dead_lettered=counts["dead"],
                   lost=counts["elements"] - counts["valid"] - counts["dead"], repeats_disagreeing=0)


def check_decoded(value: bytes, role: str, counts: Counter) -> tuple[list, list]:
    records, dead = decode_message(value, ROLES[role], BOUNDS, limits=LIMITS)
    counts.update(messages=1, elements=elements_in(value), valid=len(records), dead=len(dead))
    assert len(records) + len(dead) == elements_in(value)
    for letter in dead:
        out = orjson.dumps(letter.to_record())
        assert len(out) <= DEAD_LETTER_MAX
        assert letter.origin == ROLES[role] and letter.reason
    for record in records:
        # Whatever passed must encode as the job's answer, within a message of its own.
        answer = attributed(record, "attributed", "w") if record["kind"] == "flow" else record
        assert orjson.loads(orjson.dumps([answer]))[0]["kind"] == answer["kind"]
    return records, dead


# `make fuzz` raises these through the environment for a longer search.
EXAMPLES = int(os.environ.get("FLOWATTR_FUZZ_EXAMPLES", "300"))
FUZZ_RUNS = int(os.environ.get("FLOWATTR_FUZZ_RUNS", "100000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(messages(), st.sampled_from(sorted(ROLES)))
def test_every_message_is_answered_and_every_element_accounted_for(decoded, value, role):
    check_decoded(value, role, decoded)


@FUZZ
@given(st.lists(valid, min_size=1, max_size=20), st.lists(mutated() | json_values, max_size=20), st.randoms())
def test_a_mixed_batch_keeps_its_good_records(decoded, good, bad, rng):
    batch = [(True, r) for r in good] + [(False, r) for r in bad]
    rng.shuffle(batch)
    records, dead = check_decoded(encode([r for _, r in batch]), RAW, decoded)
    kept = {i for i, (ok, _) in enumerate(batch)} - {d.index for d in dead}
    # Every valid flow and heartbeat survives its neighbours (ip_events do not belong on the raw topic).
    must_keep = {i for i, (ok, r) in enumerate(batch) if ok and r["kind"] != "ip_event"}
    assert must_keep <= kept and len(records) == len(kept)


@FUZZ
@given(st.lists(flows(), max_size=40), st.integers(300, 3000))
def test_output_batches_hold_every_answer_within_the_limit(answers, max_bytes):
    values, oversize = encode_batches(answers, max_bytes, 7)
    assert all(len(v) <= max_bytes for v in values)
    assert [r for v in values for r in orjson.loads(v)] + [r for r, _ in oversize] == \
        [a for a in answers if a not in [r for r, _ in oversize]] + [r for r, _ in oversize]


def test_coverage_guided_fuzzing_of_the_decoder_finds_no_crash(tmp_path, figures):
    # Bounded here; `make fuzz` runs it for minutes. Coverage guidance reaches inputs a grammar misses.
    harness = Path(__file__).with_name("fuzz_decoder.py")
    run = subprocess.run([sys.executable, str(harness), str(tmp_path / "corpus"), f"-runs={FUZZ_RUNS}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(harness.parents[2])})
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Done {FUZZ_RUNS} runs" in run.stderr
    figures.record("fuzz_decoder.py (atheris)", "coverage-guided random bytes",
                   "the decoder never raises; valid + dead letters = elements in (checked in every run)",
                   messages_in=FUZZ_RUNS, answered=None, forwarded=None, dead_lettered=None, lost=0,
                   repeats_disagreeing=0)


@FUZZ
@given(st.lists(valid | mutated(), min_size=1, max_size=5), st.sampled_from(sorted(ROLES)))
def test_a_field_beyond_the_contract_changes_nothing_but_itself(batch, role):
    # Records of the contract's fields only are decoded in one compiled call; one more field sends each
    # record through the checks one by one. Both must keep the same records and name the same reasons.
    plain = [r for r in batch if "beyond" not in r]
    records, dead = decode_message(encode(plain), ROLES[role], BOUNDS, limits=LIMITS)
    more, more_dead = decode_message(encode([{**r, "beyond": 1} for r in plain]), ROLES[role], BOUNDS, limits=LIMITS)
    assert [(d.reason, d.index) for d in more_dead] == [(d.reason, d.index) for d in dead]
    assert more == [{**r, "beyond": 1} for r in records]
