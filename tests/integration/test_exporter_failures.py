"""The exporter when things are missing: no privileges, no tracefs, no bpffs, no maps, and Kafka
away for a while (what it buffers is delivered once when Kafka is back; what it drops is counted)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import orjson
import pytest

from kafka_io import consume_all
from test_exporter_capture import (  # noqa: F401 - hosts and pin_dir are fixtures
    A4, B4, REPO, Agent, connect, exporter_env, flowattr, hosts, pin_dir, require_ebpf, serve,
)

pytestmark = pytest.mark.ebpf


def one_clear_line(result, *words: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_without_privileges_export_and_ipman_say_what_is_missing(pin_dir, tmp_path):
    env = exporter_env(pin_dir, tmp_path)
    one_clear_line(flowattr("export", "--out", "-", env=env, user="nobody"), "CAP_BPF", "CAP_PERFMON")
    one_clear_line(flowattr("ipman", "add", A4, "ws-a", env=env, user="nobody"), "CAP_BPF")
    assert flowattr("ipman", "add", A4, "ws-a", env=env).returncode == 0  # root creates the maps
    one_clear_line(flowattr("ipman", "list", env=env, user="nobody"), "CAP_BPF")
    one_clear_line(flowattr("ipman", "remove", A4, env=env, user="nobody"), "CAP_BPF")


@pytest.mark.parametrize(
    "mount_point, words",
    [("/sys/kernel/tracing", ("tracefs", "mount -t tracefs")), ("/sys/fs/bpf", ("BPF filesystem",))],
)
def test_without_a_filesystem_export_says_how_to_mount_it(pin_dir, tmp_path, mount_point, words):
    env = exporter_env(pin_dir, tmp_path)
    # Unmounted in a private mount namespace only: the rest of the machine keeps its mounts.
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"umount -l {mount_point} && exec {sys.executable} -m exporter.cli export --out -"],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    one_clear_line(result, *words)


class Gate:
    """A TCP forwarder to the broker on a fixed loopback port, closed (connection refused) until opened."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        if self._server:
            self._server.close()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.kafka
def test_kafka_away_then_back_buffered_records_are_delivered_once(
    hosts, pin_dir, tmp_path, kafka_bootstrap, kafka_topics
):
    require_ebpf()
    (topic,) = kafka_topics("flows.raw")
    gate = Gate(kafka_bootstrap)
    # Room for 4 records: an outage of 3 connections (6 flows, 2 a batch) must drop one batch.
    env = exporter_env(
        pin_dir, tmp_path,
        kafka__brokers=gate.address, kafka__raw_topic=topic,
        exporter__buffer_max_records="4", exporter__batch_records="2",
    )
    # No workload maps, and the namespaces' addresses are not the host's own: both ends are nobody's
    # (never the host identity's) and nothing but the flows is shipped, so the counts below are exact.
    agent = Agent(env, out=None)
    try:
        server = serve(hosts["b"], B4, 7200, 3, 10)
        ports = [connect(hosts["a"], B4, 7200, 100 + i, A4)["local_port"] for i in range(3)]
        server.communicate(timeout=60)
        wait_until(lambda: "flows=6 " in agent.lines[-1], 30, "6 flows while Kafka is away")
        during = agent.stats()
        assert during["delivered"] == 0 and during["buffered"] == 4 and during["dropped"] == 2

        gate.open()
        wait_until(lambda: agent.stats()["delivered"] == 4, 60, "delivery once Kafka is back")
    finally:
        code = agent.stop()
        gate.close()
    assert code == 0
    after = agent.stats()
    assert after["buffered"] == 0 and after["dropped"] == 2

    messages = consume_all(kafka_bootstrap, topic, n=2, timeout=30)
    assert all(m.key == b"test-node" for m in messages)
    records = [r for m in messages for r in orjson.loads(m.value)]
    flows = [r for r in records if r["kind"] == "flow"]
    assert len(flows) == 4  # nothing delivered twice, the dropped batch never
    assert max(Counter(r["flow_id"] for r in flows).values()) == 1
    for r in flows:
        mine = r["local_port"] if r["direction"] == "outbound" else r["remote_port"]
        assert mine in ports
        assert r["local_workload"] is None
