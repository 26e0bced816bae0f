"""End to end: test hosts (network namespaces) whose workloads are registered with ipman, one address
handed from one workload to another mid-test, the real agent shipping every second to the real Kafka
broker, and the real job attributing flows.raw: every connection's two flows come out of
flows.attributed once each, both ends named right, nothing misattributed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from dataflow.config import load_config
from kafka_io import read_records
from dataflow.kafka_io import ensure_topics
from test_exporter_capture import Agent, connect, exporter_env, flowattr, pin_dir, require_ebpf, serve, sh  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ebpf, pytest.mark.kafka]

# Test-only private addresses, inside namespaces this test creates and deletes.
A1, A2, A6 = "10.232.0.1", "10.232.0.11", "fd00:232::1"
B1, R, B6 = "10.232.0.2", "10.232.0.12", "fd00:232::2"  # R changes hands mid-test
OURS = {A1, A2, A6, B1, R, B6}
WORKLOADS = {A1: "shop/frontend", A2: "shop/batch", A6: "shop/frontend6", B1: "shop/cart", B6: "shop/cart6"}


@pytest.fixture
def hosts():
    require_ebpf()
    tag = uuid.uuid4().hex[:6]
    a, b = f"fe-a-{tag}", f"fe-b-{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", f"fe{tag}a", "netns", a, "type", "veth", "peer", "name", f"fe{tag}b", "netns", b)
        for ns, dev, v4, v6 in ((a, f"fe{tag}a", (A1, A2), A6), (b, f"fe{tag}b", (B1, R), B6)):
            for address in v4:
                sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def job_config(path: Path, bootstrap: str, prefix: str) -> Path:
    path.write_text(
        'region = "e2e"\n[regions]\ne2e = ["10.232.0.0/24", "fd00:232::/64"]\n'
        # The platform's word: the test host's exporter may claim the test network.
        '[entitlements]\ntest-node = ["10.232.0.0/24", "fd00:232::/64"]\n'
        f'[kafka]\nbrokers = "{bootstrap}"\npartitions = 1\nraw_topic = "{prefix}flows.raw"\n'
        f'ip_events_topic = "{prefix}ip-events"\nattributed_topic = "{prefix}flows.attributed"\n'
        f'dlq_topic = "{prefix}flows.dlq"\nforward_prefix = "{prefix}flows.forward."\n'
        # The agent reports every second instead of every minute: delay and wait shrink with it.
        "[attribution]\ndelay_s = 3\nmax_wait_s = 8\n"
    )
    return path


class Connections:
    """Runs connections and remembers, per flow (local ip:port, remote ip:port), the remote workload."""

    def __init__(self) -> None:
        self.expected: dict[tuple, str] = {}

    def run(self, server_ns, server_ip, port, clients, owner_of, hold=0.0):
        """clients: [(client ns, client ip)]; owner_of: ip -> workload at the time of the connection."""
        server = serve(server_ns, server_ip, port, len(clients), 100)
        for client_ns, client_ip in clients:
            report = connect(client_ns, server_ip, port, 1000, client_ip, 0, hold)
            self.expected[(client_ip, report["local_port"], server_ip, port)] = owner_of[server_ip]
        for line in server.communicate(timeout=60)[0].splitlines():
            report = orjson.loads(line)
            self.expected[(server_ip, port, report["remote_ip"], report["remote_port"])] = owner_of[report["remote_ip"]]


def key(flow: dict) -> tuple:
    return (flow["local_ip"], flow["local_port"], flow["remote_ip"], flow["remote_port"])


def test_every_connection_is_attributed_right_at_both_ends(hosts, pin_dir, tmp_path, kafka_bootstrap):
    a, b = hosts
    prefix = f"e2e{uuid.uuid4().hex[:8]}."
    config_path = job_config(tmp_path / "flowattr.toml", kafka_bootstrap, prefix)
    config = load_config(config_path, environ={})
    ensure_topics(config)
    env = exporter_env(pin_dir, tmp_path, region="e2e", kafka__brokers=kafka_bootstrap,
                       kafka__raw_topic=config.kafka.raw_topic)
    owners = dict(WORKLOADS, **{R: "shop/old"})
    for ip, workload in owners.items():
        assert flowattr("ipman", "add", ip, workload, env=env).returncode == 0

    job = subprocess.Popen([sys.executable, "-m", "dataflow.cli", "--config", str(config_path), "run",
                            "--summary-every", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    agent = None
    try:
        agent = Agent(env, out=None)
        conns = Connections()
        conns.run(b, B1, 7300, [(a, A1), (a, A1), (a, A2)], owners)
        conns.run(a, A1, 7301, [(b, B1), (b, R), (b, R)], owners)
        conns.run(b, R, 7302, [(a, A1), (a, A2)], owners)
        conns.run(b, B6, 7303, [(a, A6), (a, A6)], owners)
        conns.run(b, B1, 7304, [(a, A2)], owners, hold=2.5)  # open across intervals

        # R changes hands: the platform unregisters the old workload and registers the new one.
        assert flowattr("ipman", "remove", R, env=env).returncode == 0
        time.sleep(2.0)
        owners[R] = "shop/new"
        assert flowattr("ipman", "add", R, "shop/new", env=env).returncode == 0
        time.sleep(2.0)
        conns.run(b, R, 7305, [(a, A1), (a, A2)], owners)
        conns.run(a, A1, 7306, [(b, R), (b, R)], owners)
        time.sleep(1.5)  # the last sockets are destroyed once the final ACKs land, then one interval

        expected = conns.expected
        topics = [config.kafka.attributed_topic, config.kafka.raw_topic]
        ours = lambda records: [r for r in records if r.get("local_ip") in OURS]  # noqa: E731
        out = read_records(kafka_bootstrap, topics, timeout_s=40, settle_s=3, until=lambda r: (
            len({key(f) for f in ours(r[topics[0]])}) >= len(expected)))
    finally:
        if agent:
            assert agent.stop() == 0, "\n".join(agent.lines)
        job.send_signal(signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=60)
    assert "stopped;" in stdout, stderr

    raw = [r for r in ours(out[config.kafka.raw_topic]) if r["kind"] == "flow"]
    attributed = ours(out[config.kafka.attributed_topic])
    # Every connection reported at both ends, and every reported flow answered exactly once.
    assert sorted(key(f) for f in raw) == sorted(expected)
    assert sorted(r["flow_id"] for r in attributed) == sorted(f["flow_id"] for f in raw)
    answers = {key(r): (r["outcome"], r["remote_workload"], r["reason"]) for r in attributed}
    assert answers == {k: ("attributed", workload, None) for k, workload in expected.items()}
    # The reassigned address was named by its owner at each connection's time, both ways.
    assert {w for k, w in expected.items() if k[2] == R} == {"shop/old", "shop/new"}
    # The agent claimed every registered address every interval (docs/records.md, heartbeat).
    beats = [r for r in ours([dict(r, local_ip=r["ip"]) for r in out[config.kafka.raw_topic]
                              if r["kind"] == "heartbeat"])]
    assert {(h["ip"], h["workload"]) for h in beats} == set(WORKLOADS.items()) | {(R, "shop/old"), (R, "shop/new")}
    old_end = max(h["end_ms"] for h in beats if h["workload"] == "shop/old")
    new_start = min(h["start_ms"] for h in beats if h["workload"] == "shop/new")
    assert new_start - old_end >= 1500  # the two owners' claims never touch
