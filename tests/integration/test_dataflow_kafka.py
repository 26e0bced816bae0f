"""The job on a real Kafka broker: raw, forward and event topics in; attributed, forward and dead-letter
topics out; every flow checked against the simulation's truth; counts in equal counts out."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from dataflow import simulate as sim
from dataflow.config import load_config
from dataflow.file_io import read_outputs
from dataflow.kafka_io import ensure_topics
from kafka_io import produce, produce_fleet, publish_entitlements, read_records, record_topics
from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka

BAD_MESSAGES = [
    (b"definitely not json", "not_json"),
    (b'{"v": 1, "kind": "flow", "flow_id": "bad-1"}', "missing_field"),
    (b'{"v": 1, "kind": "ip_event", "ip": "10.0.255.9", "owner": "lb/x", "action": "assigned", "time_ms": 1}', "wrong_topic"),
    (b'{"v": 7, "kind": "flow"}', "bad_version"),
    (b'"a string"', "not_object"),
]


def write_config(path, bootstrap, prefix, partitions=3, **files):
    regions = "\n".join(f"{r} = {orjson.dumps(c).decode()}" for r, c in sim.regions_config().items())
    extra = "".join(f'{k} = "{v}"\n' for k, v in files.items())
    path.write_text(
        f'region = "{sim.HOME}"\n[regions]\n{regions}\n'
        f'[kafka]\nbrokers = "{bootstrap}"\npartitions = {partitions}\nraw_topic = "{prefix}flows.raw"\n'
        f'ip_events_topic = "{prefix}ip-events"\nattributed_topic = "{prefix}flows.attributed"\n'
        f'dlq_topic = "{prefix}flows.dlq"\nforward_prefix = "{prefix}flows.forward."\n'
        f'exporters_topic = "{prefix}exporters"\n'
        # The fleet reports every 10 s instead of every minute, so the delay and the wait shrink with
        # it and the test's tail stays short; the method is the same.
        f"[attribution]\ndelay_s = 12\nmax_wait_s = 30\n"
        + (f"[files]\n{extra}" if extra else "")
    )
    return path


@pytest.fixture(scope="module")
def fleet():
    start = (int(time.time()) // 60 - 12) * 60_000
    return sim.simulate(sim.Scenario(seed=5, start_ms=start, duration_s=6 * 60, interval_s=10, mean_delay_s=1.0,
                                     late_delay_s=15.0))


def load(bootstrap, config_path, fleet, side_topics=True, raw=True):
    config = load_config(config_path, environ={})
    ensure_topics(config)
    k = config.kafka
    publish_entitlements(bootstrap, k.exporters_topic, fleet)
    if side_topics:
        produce(bootstrap, k.ip_events_topic, [m.value for m in fleet.ip_event_messages])
        produce(bootstrap, config.forward_topic(sim.HOME), [m.value for m in fleet.forwarded_messages])
    if raw:
        produce_raw(bootstrap, config, fleet)
    flows = sum(1 for m in fleet.flow_messages for r in orjson.loads(m.value) if r["kind"] == "flow")
    forwarded_in = sum(len(orjson.loads(m.value)) for m in fleet.forwarded_messages) if side_topics else 0
    return config, flows + forwarded_in


def produce_raw(bootstrap, config, fleet):
    raw = config.kafka.raw_topic
    produce_fleet(bootstrap, raw, fleet.flow_messages)
    produce(bootstrap, raw, [v for v, _ in BAD_MESSAGES], keys=[b"bad"] * len(BAD_MESSAGES))


def outcomes(records):
    return {a["flow_id"]: (a["outcome"], a["remote_workload"], a["reason"]) for a in records}


def test_raw_topic_through_the_job_to_its_output_topics(kafka_bootstrap, tmp_path, fleet):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config_path = write_config(tmp_path / "flowattr.toml", kafka_bootstrap, prefix)
    # As live: the assignment events and forwarded flows are in the job's hands before the raw flows
    # they describe. A backfill reads those topics at its own pace (docs/attribution.md).
    config, flows_in = load(kafka_bootstrap, config_path, fleet, raw=False)
    errors = open(tmp_path / "job.err", "w")
    job = subprocess.Popen([sys.executable, "-m", "dataflow.cli", "--config", str(config_path), "run",
                            "--summary-every", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True)
    reader.start()
    k = config.kafka
    topics = [k.attributed_topic, config.forward_topic(sim.AWAY), k.dlq_topic]
    try:
        side = f"in.forwarded={sum(len(orjson.loads(m.value)) for m in fleet.forwarded_messages)} in.ip_events=5"
        deadline = time.monotonic() + 120
        while not any(side in line for line in lines) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
        produce_raw(kafka_bootstrap, config, fleet)
        out = read_records(kafka_bootstrap, topics, settle_s=3, until=lambda r: (
            len(r[topics[0]]) + len(r[topics[1]]) >= flows_in and len(r[topics[2]]) >= len(BAD_MESSAGES)))
        attributed, forwarded, dead = (out[t] for t in topics)
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
        reader.join(timeout=10)
        errors.close()
    stdout, stderr = "".join(lines), (tmp_path / "job.err").read_text()
    assert "stopped;" in stdout, stderr

    # Counts in equal counts out: every flow in exactly one output topic, exactly once.
    ids = [a["flow_id"] for a in attributed] + [f["flow_id"] for f in forwarded]
    assert len(ids) == len(set(ids)) == flows_in
    assert sorted(d["reason"] for d in dead) == sorted(reason for _, reason in BAD_MESSAGES)
    assert all(d["topic"] == config.kafka.raw_topic and d["offset"] >= 0 for d in dead)

    wrong = [a for a in attributed if a["outcome"] == "attributed" and a["flow_id"] in fleet.truth
             and fleet.truth[a["flow_id"]] != a["remote_workload"]]
    assert wrong == []
    answered = [a for a in attributed if a["outcome"] != "external"]
    assert sum(a["outcome"] == "attributed" for a in answered) > 0.9 * len(answered)
    assert {f["remote_ip"].startswith(("10.1.", "fd00:0:1:")) for f in forwarded} == {True}
    assert any(a["source"] == "ip_event" for a in attributed)  # load balancers, from assignment events

    # The summary line counts what the topics hold.
    last = [line for line in stdout.splitlines() if line.startswith("flowattr run: stopped;")][-1]
    counts = dict(item.split("=") for item in last.split(";", 1)[1].split())
    assert int(counts["forwarded.eu-west"]) == len(forwarded)
    assert sum(int(v) for k, v in counts.items() if k.startswith("dead.")) == len(BAD_MESSAGES)


def test_two_processes_of_two_workers_on_kafka_answer_as_one_worker_on_the_recording(kafka_bootstrap, tmp_path, fleet):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    # Decisions run on the broker's arrival times, which the recording of the topic keeps: the file
    # run over that recording must give every flow the answer the cluster gave it.
    config_path = write_config(tmp_path / "flowattr.toml", kafka_bootstrap, prefix, partitions=3)
    config, flows_in = load(kafka_bootstrap, config_path, fleet)

    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = [
        subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflow.flow:from_environment()", "-w", "2",
                          "-i", str(i), "-a", addresses], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "FLOWATTR_CONFIG": str(config_path)})
        for i in range(2)
    ]
    try:
        forwarded_n = sum(1 for m in fleet.flow_messages for r in orjson.loads(m.value)
                          if r["kind"] == "flow" and r["remote_ip"].startswith(("10.1.", "fd00:0:1:")))
        attributed = read_records(kafka_bootstrap, [config.kafka.attributed_topic],
                                     until=lambda r: len(r[config.kafka.attributed_topic]) >= flows_in - forwarded_n)
        attributed = attributed[config.kafka.attributed_topic]
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    # The same topics as recorded, with their arrival times and keys, one worker, file mode.
    folder = record_topics(kafka_bootstrap, config, tmp_path / "recording")
    file_config = write_config(tmp_path / "file.toml", kafka_bootstrap, prefix, input_dir=folder, output_dir=tmp_path / "out")
    single = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:from_environment()"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "FLOWATTR_CONFIG": str(file_config)},
                            capture_output=True, timeout=300)
    assert single.returncode == 0, single.stderr
    one = outcomes(read_outputs(tmp_path / "out", "attributed"))
    many = outcomes(attributed)
    assert len(attributed) == len(many) == len(one)
    assert many == one


def test_tail_prints_one_record_per_line_whatever_the_framing(kafka_bootstrap):
    topic = f"t{uuid.uuid4().hex[:8]}.flows.attributed"
    config = load_config(environ={}, overrides={"kafka.brokers": kafka_bootstrap, "kafka.attributed_topic": topic,
                                                "kafka.partitions": 1})  # one partition: one order to print
    ensure_topics(config)
    produce(kafka_bootstrap, topic, [orjson.dumps([{"n": 1}, {"n": 2}]), orjson.dumps({"n": 3})])
    tail = subprocess.run([sys.executable, "-m", "dataflow.cli", "tail", topic, "--brokers", kafka_bootstrap],
                          cwd=ROOT, capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert tail.returncode == 0, tail.stderr
    assert [orjson.loads(line) for line in tail.stdout.splitlines()] == [{"n": 1}, {"n": 2}, {"n": 3}]
    missing = subprocess.run([sys.executable, "-m", "dataflow.cli", "tail", "no.such.topic", "--brokers",
                              kafka_bootstrap], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert missing.returncode == 2 and "no.such.topic does not exist" in missing.stderr


def test_a_job_stopped_and_restarted_with_recovery_answers_every_flow(kafka_bootstrap, tmp_path, fleet):
    prefix = f"t{uuid.uuid4().hex[:8]}."
    config_path = write_config(tmp_path / "flowattr.toml", kafka_bootstrap, prefix, partitions=1)
    config, flows_in = load(kafka_bootstrap, config_path, fleet, side_topics=False, raw=False)
    half = len(fleet.flow_messages) // 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWATTR_RECOVERY__DIR": str(tmp_path / "recovery"),
           "FLOWATTR_RECOVERY__SNAPSHOT_S": "1"}
    k = config.kafka

    def run_until(count):
        job = subprocess.Popen([sys.executable, "-m", "dataflow.cli", "--config", str(config_path), "run"],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            read_records(kafka_bootstrap, [k.attributed_topic], timeout_s=120, settle_s=3,
                         until=lambda r: len({a["flow_id"] for a in r[k.attributed_topic]}) >= count)
        finally:
            job.send_signal(signal.SIGTERM)
            job.wait(timeout=60)

    produce_fleet(kafka_bootstrap, k.raw_topic, fleet.flow_messages[:half])
    first_half = sum(1 for m in fleet.flow_messages[:half] for r in orjson.loads(m.value) if r["kind"] == "flow")
    forwarded = lambda messages: sum(  # noqa: E731
        1 for m in messages for r in orjson.loads(m.value)
        if r["kind"] == "flow" and r["remote_ip"].startswith(("10.1.", "fd00:0:1:")))
    # Most of the first half: the rest waits in the shards' state for evidence from the second half.
    run_until(int(0.8 * (first_half - forwarded(fleet.flow_messages[:half]))))
    assert any((tmp_path / "recovery").iterdir())

    produce_fleet(kafka_bootstrap, k.raw_topic, fleet.flow_messages[half:])
    run_until(flows_in - forwarded(fleet.flow_messages))

    answers = read_records(kafka_bootstrap, [k.attributed_topic], until=lambda r: False, timeout_s=8)[k.attributed_topic]
    ids = {a["flow_id"] for a in answers}
    assert len(ids) == flows_in - forwarded(fleet.flow_messages)  # every flow, at least once
    # The restart resumed from its snapshot: it did not read the first half again from the beginning
    # (which is where it starts without recovery), only the last moments before the stop.
    duplicates = len(answers) - len(ids)
    assert duplicates < 0.2 * first_half
    assert [a for a in answers if a["outcome"] == "attributed" and a["flow_id"] in fleet.truth
            and fleet.truth[a["flow_id"]] != a["remote_workload"]] == []
    # Fewer than in one go: no assignment events here, and the flows whose other side came in the
    # second half, produced after the job had waited past their maximum wait, were given up.
    assert sum(a["outcome"] == "attributed" for a in answers) > 0.85 * len(answers)
