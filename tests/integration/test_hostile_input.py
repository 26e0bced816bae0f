"""Poison pills among good records, through the real job (file mode and real Kafka): each pill is one
dead letter with its reason and a bounded prefix, the job keeps answering every good record around it,
and its output messages fit the producer's and the broker's limits."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from dataflow import simulate as sim
from dataflow.config import load_config
from dataflow.file_io import read_outputs
from dataflow.kafka_io import ensure_topics
from kafka_io import consume_all, create_topics, read_records

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
HOME_REMOTE = ("10.0.", "fd00:0:0:")
AWAY_REMOTE = ("10.1.", "fd00:0:1:")


def nested_flow(template, depth):
    extra = "1"
    for _ in range(depth):
        extra = '{"n":' + extra + "}"
    body = orjson.dumps({**template, "flow_id": "pill-deep-field"})
    return body[:-1] + b',"extra":' + extra.encode() + b"}"


def poison_pills(template):
    """(what it is, the message, the reasons its dead letters must carry). `template` is a valid flow."""
    truncated = orjson.dumps([{**template, "flow_id": f"pill-cut-{i}"} for i in range(3000)])[:-10]
    return [
        ("array nested 256 deep", b"[" * 256 + b"]" * 256, ["too_deep"]),
        ("valid flow with a field nested 300 deep", nested_flow(template, 300), ["too_deep"]),
        ('"v": true', orjson.dumps({**template, "v": True, "flow_id": "pill-v-true"}), ["bad_version"]),
        ('"v": 1.0', orjson.dumps({**template, "v": 1.0, "flow_id": "pill-v-float"}), ["bad_version"]),
        ("empty batch []", b"[]", ["empty_batch"]),
        ("3000-record batch cut 10 bytes short", truncated, ["not_json"]),
        ("message over limits.message_bytes", orjson.dumps([{**template, "flow_id": f"pill-big-{i}", "comm": "b" * 4000}
                                                             for i in range(1100)]), ["message_too_large"]),
        ("string over limits.string_chars", orjson.dumps([{**template, "flow_id": "pill-long", "comm": "c" * 5000}]),
         ["string_too_long"]),
        ("list as direction", orjson.dumps({**template, "direction": [], "flow_id": "pill-direction"}), ["bad_direction"]),
        ("binary garbage", bytes(range(128, 256)) * 8, ["not_json"]),  # no newline: one line in file mode
        ("huge integers", orjson.dumps({**template, "flow_id": "pill-int", "bytes_sent": 2**64 - 1, "local_port": 2**63}),
         ["bad_port"]),
    ]


def long_comm_batch(template, n=600):
    """Valid flows whose answers together are megabytes: more than one output message can hold."""
    return orjson.dumps([{**template, "flow_id": f"long-comm-{i}", "comm": "w" * 4000} for i in range(n)])


def build_input(fleet):
    """The fleet's raw messages as (arrival, key, value), the pills (no key, no arrival: plain lines of a
    recording) and the long-comm batch (under its exporter's key) spread among them; the good flows, and
    each pill's expected reasons."""
    template = next(r for *_, v in fleet.flow_messages for r in orjson.loads(v)
                    if r["kind"] == "flow" and r["remote_ip"].startswith(HOME_REMOTE))
    pills = poison_pills(template)
    messages = [(m.arrival_ms, m.key, m.value) for m in fleet.flow_messages]
    middle = messages[len(messages) // 2][0]
    messages.insert(len(messages) // 2, (middle, template["exporter"].encode(), long_comm_batch(template)))
    step = max(1, len(messages) // (len(pills) + 1))
    for i, (_, pill, _) in enumerate(pills):
        messages.insert((i + 1) * step + i, (None, None, pill))
    flows = [r for arrival, key, v in messages if key for r in orjson.loads(v) if r["kind"] == "flow"]
    return messages, flows, pills


def as_lines(messages):
    return b"".join((v if key is None else b"%d\t%s\t%s" % (arrival, key, v)) + b"\n" for arrival, key, v in messages)


def write_config(path, **sections):
    regions = "\n".join(f"{r} = {orjson.dumps(c).decode()}" for r, c in sim.regions_config().items())
    text = f'region = "{sim.HOME}"\n[regions]\n{regions}\n'
    for section, values in sections.items():
        text += f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def fleet():
    start = (int(time.time()) // 60 - 10) * 60_000
    return sim.simulate(sim.Scenario(seed=3, start_ms=start, duration_s=4 * 60, interval_s=10, mean_delay_s=1.0,
                                     late_delay_s=15.0))


def check_outputs(answers, forwarded, dead, flows, pills):
    """Every good flow answered or forwarded exactly once; each pill one dead letter per expected reason,
    none keeping more than a prefix of its message."""
    home = [f["flow_id"] for f in flows if not f["remote_ip"].startswith(AWAY_REMOTE)]
    away = [f["flow_id"] for f in flows if f["remote_ip"].startswith(AWAY_REMOTE)]
    assert Counter(a["flow_id"] for a in answers) == Counter(home)
    assert Counter(f["flow_id"] for f in forwarded) == Counter(away)
    assert Counter(d["reason"] for d in dead) == Counter(r for _, _, reasons in pills for r in reasons)
    assert all(len(orjson.dumps(d)) < 8000 for d in dead)
    assert all(d["original_bytes"] < 4_000_000 or d["truncated"] for d in dead)


def test_file_mode_dead_letters_each_poison_pill_and_answers_every_good_record(tmp_path, fleet, figures):
    messages, flows, pills = build_input(fleet)
    folder = sim.write(fleet, tmp_path / "input")
    (folder / "forwarded.ndjson").unlink()
    (folder / "flows.ndjson").write_bytes(as_lines(messages))
    config = write_config(tmp_path / "flowattr.toml", attribution={"delay_s": 12, "max_wait_s": 30})
    run = subprocess.run([sys.executable, "-m", "dataflow.cli", "--config", str(config), "run", "--input-dir",
                          str(folder), "--output-dir", str(tmp_path / "out")],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "unaccounted              0" in run.stdout
    answers = read_outputs(tmp_path / "out", "attributed")
    forwarded = read_outputs(tmp_path / "out", f"forward.{sim.AWAY}")
    dead = read_outputs(tmp_path / "out", "dlq")
    check_outputs(answers, forwarded, dead, flows, pills)
    figures.record("test_file_mode_dead_letters_each_poison_pill_and_answers_every_good_record",
                   f"{len(pills)} poison pills among good batches (file mode)",
                   "each pill one dead letter with its reason and a bounded prefix; every good flow answered once",
                   messages_in=len(messages), answered=len(answers), forwarded=len(forwarded),
                   dead_lettered=len(dead), lost=len(flows) - len(answers) - len(forwarded), repeats_disagreeing=0)


@pytest.mark.kafka
def test_kafka_job_dead_letters_each_poison_pill_and_splits_its_outputs_to_fit(kafka_bootstrap, tmp_path, fleet, figures):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    k = {"brokers": kafka_bootstrap, "partitions": 1, "raw_topic": f"{prefix}flows.raw",
         "ip_events_topic": f"{prefix}ip-events", "attributed_topic": f"{prefix}flows.attributed",
         "dlq_topic": f"{prefix}flows.dlq", "forward_prefix": f"{prefix}flows.forward.",
         "exporters_topic": f"{prefix}exporters"}
    # The raw topic takes messages up to 8 MB, so the oversize pill reaches the job; the answers' topic
    # takes only 200 kB, so the job must split its answers to fit it.
    create_topics(kafka_bootstrap, [k["raw_topic"]], config={"max.message.bytes": "8000000"})
    create_topics(kafka_bootstrap, [k["attributed_topic"]], config={"max.message.bytes": "200000"})
    config_path = write_config(tmp_path / "flowattr.toml", kafka=k,
                               attribution={"delay_s": 12, "max_wait_s": 30})
    ensure_topics(load_config(config_path, environ={}))
    messages, flows, pills = build_input(fleet)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 8_000_000, "linger.ms": 5})
    for entitlement in [orjson.loads(m.value) for m in fleet.entitlement_messages]:
        producer.produce(k["exporters_topic"], orjson.dumps(entitlement), entitlement["exporter"].encode())
    for _, key, value in messages:
        producer.produce(k["raw_topic"], value, key)
        producer.poll(0)
    assert producer.flush(60) == 0

    job = subprocess.Popen([sys.executable, "-m", "dataflow.cli", "--config", str(config_path), "run",
                            "--summary-every", "1"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True)
    reader.start()
    topics = [k["attributed_topic"], f"{prefix}flows.forward.{sim.AWAY}", k["dlq_topic"]]
    home = sum(1 for f in flows if not f["remote_ip"].startswith(AWAY_REMOTE))
    try:
        out = read_records(kafka_bootstrap, topics, timeout_s=240, settle_s=3, until=lambda r: (
            len(r[topics[0]]) >= home and len(r[topics[1]]) >= len(flows) - home and len(r[topics[2]]) >= len(pills)))
    finally:
        job.send_signal(signal.SIGTERM)
        code = job.wait(timeout=60)
        reader.join(timeout=10)
    stderr = job.stderr.read()
    assert code == 0 and "panicked" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    answers, forwarded, dead = (out[t] for t in topics)
    check_outputs(answers, forwarded, dead, flows, pills)
    sizes = [len(r.value) for r in consume_all(kafka_bootstrap, topics[0])]
    assert max(sizes) <= 200_000 and len(sizes) > 600 * 4000 // 200_000
    figures.record("test_kafka_job_dead_letters_each_poison_pill_and_splits_its_outputs_to_fit",
                   f"{len(pills)} poison pills among good batches (Kafka), answers' topic max.message.bytes 200 kB",
                   "as in file mode, and every output message within the topic's limit; exit 0 on SIGTERM",
                   messages_in=len(messages), answered=len(answers), forwarded=len(forwarded),
                   dead_lettered=len(dead), lost=len(flows) - len(answers) - len(forwarded), repeats_disagreeing=0)
