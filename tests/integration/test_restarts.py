"""Restarts and replays against the real broker: whatever the restart, every flow is answered (nothing
lost) and every repeated answer for a flow_id is the same answer, so a consumer that keeps the first
answer per flow_id, or the last, gets the same result (docs/RELIABILITY.md, the delivery guarantee)."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from dataflow import simulate as sim
from dataflow.config import load_config
from dataflow.kafka_io import ensure_topics
from kafka_io import read_records

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka
AWAY_REMOTE = ("10.1.", "fd00:0:1:")


@pytest.fixture(scope="module")
def fleet():
    start = (int(time.time()) // 60 - 8) * 60_000
    return sim.simulate(sim.Scenario(seed=21, start_ms=start, duration_s=3 * 60, interval_s=10, mean_delay_s=1.0,
                                     late_delay_s=15.0))


class Job:
    """`flowattr run` on one configuration, started and stopped as an operator (or a crash) would."""

    def __init__(self, tmp_path, bootstrap, fleet):
        prefix = f"t{uuid.uuid4().hex[:8]}."
        self.bootstrap = bootstrap
        self.kafka = {"brokers": bootstrap, "partitions": 2, "raw_topic": f"{prefix}flows.raw",
                      "ip_events_topic": f"{prefix}ip-events", "attributed_topic": f"{prefix}flows.attributed",
                      "dlq_topic": f"{prefix}flows.dlq", "forward_prefix": f"{prefix}flows.forward.",
                      "exporters_topic": f"{prefix}exporters"}
        regions = "\n".join(f"{r} = {orjson.dumps(c).decode()}" for r, c in sim.regions_config().items())
        self.config = tmp_path / "flowattr.toml"
        self.config.write_text(f'region = "{sim.HOME}"\n[regions]\n{regions}\n[kafka]\n'
                               + "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.kafka.items())
                               + "[attribution]\ndelay_s = 6\nmax_wait_s = 15\n")
        self.recovery = tmp_path / "recovery"
        self.log = open(tmp_path / "job.log", "ab")
        ensure_topics(load_config(self.config, environ={}))
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for entitlement in [orjson.loads(m.value) for m in fleet.entitlement_messages]:
            self.producer.produce(self.kafka["exporters_topic"], orjson.dumps(entitlement),
                                  entitlement["exporter"].encode())
        assert self.producer.flush(60) == 0
        self.fleet = fleet
        flows = [r for *_, v in fleet.flow_messages for r in orjson.loads(v) if r["kind"] == "flow"]
        self.expected = {f["flow_id"] for f in flows if not f["remote_ip"].startswith(AWAY_REMOTE)}
        self.expected |= {f["flow_id"] for *_, v in fleet.forwarded_messages for f in orjson.loads(v)}
        self.messages_in = len(fleet.flow_messages) + len(fleet.ip_event_messages) + len(fleet.forwarded_messages)
        self.prefix = prefix
        self.proc = None

    def produce(self, share_from: float, share_to: float):
        """That share of the fleet's messages, in arrival order, as the hosts and the other region would
        send them while the job runs. Load balancers known only from assignment events, and flows the
        other region forwards here, are among them: the answers that once changed on a restart."""
        f = self.fleet
        topics = [(self.kafka["ip_events_topic"], f.ip_event_messages, False),
                  (f"{self.prefix}flows.forward.{sim.HOME}", f.forwarded_messages, False),
                  (self.kafka["raw_topic"], f.flow_messages, True)]
        for topic, messages, keyed in topics:
            lo, hi = int(share_from * len(messages)), int(share_to * len(messages))
            for m in messages[lo:hi]:
                self.producer.produce(topic, m.value, m.key if keyed else None)
                self.producer.poll(0)
        assert self.producer.flush(60) == 0

    def start(self, recovery: bool, snapshot_s: float = 1.0):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if recovery:
            env.update(FLOWATTR_RECOVERY__DIR=str(self.recovery), FLOWATTR_RECOVERY__SNAPSHOT_S=str(snapshot_s))
        self.proc = subprocess.Popen([sys.executable, "-m", "dataflow.cli", "--config", str(self.config), "run"],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=self.log)

    def answers(self, until_share: float = 1.0, timeout_s: float = 120):
        topic = self.kafka["attributed_topic"]
        want = int(until_share * len(self.expected))
        return read_records(self.bootstrap, [topic], timeout_s=timeout_s, settle_s=2,
                            until=lambda r: len({a["flow_id"] for a in r[topic]} & self.expected) >= want)[topic]

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def disagreements(answers):
    """flow_id -> the distinct answers given for it, for the flows answered more than one way."""
    given = defaultdict(set)
    for a in answers:
        given[a["flow_id"]].add((a["outcome"], a["remote_workload"], a["reason"], a["source"], a["match"]))
    return {fid: seen for fid, seen in given.items() if len(seen) > 1}


RESTARTS = {
    # name: (recovery, snapshot_s, how the first run ends, how far it got)
    "killed before its first snapshot, with recovery": (True, 600.0, signal.SIGKILL, 0.5),
    "killed after snapshots, with recovery": (True, 1.0, signal.SIGKILL, 0.5),
    "stopped (SIGTERM) and restarted, with recovery": (True, 1.0, signal.SIGTERM, 0.5),
    "killed, without recovery (restart reads from the beginning)": (False, 1.0, signal.SIGKILL, 0.5),
    "a whole second run from the beginning (a replay of a live run)": (False, 1.0, signal.SIGTERM, 1.0),
}


@pytest.mark.parametrize("kind", list(RESTARTS))
def test_a_restart_loses_nothing_and_repeats_only_identical_answers(kind, kafka_bootstrap, tmp_path, fleet, figures):
    recovery, snapshot_s, sig, share = RESTARTS[kind]
    job = Job(tmp_path, kafka_bootstrap, fleet)
    try:
        # Live: the first part of the input comes while the job runs, the rest while it is down.
        job.start(recovery, snapshot_s)
        job.produce(0.0, share)
        job.answers(until_share=share * 0.6 if share < 1 else 1.0)
        if sig == signal.SIGKILL:
            time.sleep(min(snapshot_s, 3.0))  # with short snapshots, let one be taken
        code = job.stop(sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        job.produce(share, 1.0)
        job.start(recovery, snapshot_s)
        answers = job.answers()
        assert job.stop() == 0
    finally:
        job.close()
    answered = {a["flow_id"] for a in answers}
    lost = job.expected - answered
    disagreeing = disagreements(answers)
    repeats = len(answers) - len(answered)
    figures.record(f"test_a_restart_loses_nothing_and_repeats_only_identical_answers[{kind}]", f"restart: {kind}",
                   f"every flow answered; {repeats} repeated answers, each identical to the first",
                   messages_in=job.messages_in, answered=len(answers), forwarded=0, dead_lettered=0,
                   lost=len(lost), repeats_disagreeing=len(disagreeing))
    assert not lost
    assert not disagreeing, list(disagreeing.items())[:5]
    assert any(a["source"] == "ip_event" for a in answers)  # the load balancers were in it
