"""The test broker itself: it carries bytes faithfully, and broker/launch.py's CLI fails and
cleans up the way its users rely on."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.launch import Broker, PortInUse
from kafka_io import consume_all, produce

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "broker" / "launch.py"

pytestmark = pytest.mark.kafka


def _gone(pid: int) -> bool:
    # The CLI's broker is nobody's child here once `up` exits, so it may linger as a zombie
    # until its new parent reaps it: that counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _cli(*args: str, state_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLOWATTR_BROKER_STATE_DIR": str(state_dir)}
    return subprocess.run([sys.executable, str(LAUNCH), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def listener():
    """A plain socket listening on a free 127.0.0.1 port; yields the port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_round_trip_keeps_every_message_exactly_once(kafka_bootstrap, kafka_topics):
    (topic,) = kafka_topics("roundtrip", partitions=3)
    n = 2000
    # Empty, binary and large values: a broker or helper that mangles bytes shows up here.
    values = [b"", bytes(range(256)), b"x" * 100_000] + [f"msg-{i}".encode() for i in range(n - 3)]
    keys = [f"k{i % 50}".encode() for i in range(n)]

    delivered = produce(kafka_bootstrap, topic, values, keys=keys)
    got = consume_all(kafka_bootstrap, topic, n=n, timeout=60)

    assert len(got) == n
    assert {(r.partition, r.offset) for r in got} == set(delivered)
    by_position = {(r.partition, r.offset): (r.key, r.value) for r in got}
    assert [by_position[pos] for pos in delivered] == list(zip(keys, values))
    assert len({r.partition for r in got}) == 3  # the keys really spread over the partitions


def test_consume_all_returns_messages_beyond_n(kafka_bootstrap, kafka_topics):
    (topic,) = kafka_topics("beyond")
    produce(kafka_bootstrap, topic, [b"a", b"b", b"c"])
    got = consume_all(kafka_bootstrap, topic, n=2, timeout=30)
    assert [r.value for r in got] == [b"a", b"b", b"c"]


def test_up_on_a_port_in_use_says_so_and_starts_nothing(tmp_path, listener):
    t0 = time.monotonic()
    res = _cli("up", "--port", str(listener), state_dir=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [f"error: port {listener} on 127.0.0.1 is already in use; pick another with --port"]
    assert res.stdout == ""
    assert time.monotonic() - t0 < 10  # it did not wait for a JVM
    assert not (tmp_path / "kafka.pid").exists()


def test_library_refuses_a_port_in_use(listener):
    with pytest.raises(PortInUse, match=str(listener)):
        Broker(listener).start()


def test_up_then_down_removes_data_and_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    up = _cli("up", "--port", str(port), state_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"127.0.0.1:{port}"
        state = json.loads((tmp_path / "kafka.json").read_text())
        pid, data_dir = state["pid"], Path(state["data_dir"])
        assert int((tmp_path / "kafka.pid").read_text()) == pid
        assert data_dir.is_dir() and (data_dir / "data").is_dir()
        assert b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()

        again = _cli("up", "--port", str(port), state_dir=tmp_path)  # idempotent
        assert again.returncode == 0 and again.stdout.strip() == f"127.0.0.1:{port}"
        assert json.loads((tmp_path / "kafka.json").read_text())["pid"] == pid
    finally:
        down = _cli("down", state_dir=tmp_path)

    assert down.returncode == 0, down.stderr
    assert _gone(pid)
    assert not data_dir.exists()
    assert not (tmp_path / "kafka.pid").exists() and not (tmp_path / "kafka.json").exists()
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))

    twice = _cli("down", state_dir=tmp_path)
    assert twice.returncode == 0
    assert "no kafka broker running" in twice.stderr


def test_library_broker_context_cleans_up():
    with Broker() as b:
        assert b.bootstrap == f"127.0.0.1:{b.port}"
        pid, data_dir = b.pid, b.data_dir
        assert data_dir.is_dir()
        produce(b.bootstrap, "auto-created", [b"hello"])  # auto.create.topics.enable stays on
        assert [r.value for r in consume_all(b.bootstrap, "auto-created", n=1)] == [b"hello"]
    assert _gone(pid)
    assert not data_dir.exists()
    assert b.pid is None


def test_a_killed_broker_restarts_on_its_data_and_a_cli_broker_after_down_keep_data(tmp_path):
    broker = Broker()
    try:
        broker.start()
        produce(broker.bootstrap, "kept", [b"before the crash"])
        broker.kill()
        assert broker.exit_code == -9 and broker.data_dir.is_dir()
        broker.start()
        produce(broker.bootstrap, "kept", [b"after the restart"])
        assert [r.value for r in consume_all(broker.bootstrap, "kept", n=2)] == [
            b"before the crash", b"after the restart"]
    finally:
        broker.stop()
    assert broker.data_dir is None

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    up = _cli("up", "--port", port, state_dir=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        produce(up.stdout.strip(), "kept", [b"first run"])
        down = _cli("down", "--keep-data", state_dir=tmp_path)
        assert down.returncode == 0 and "restarts on it" in down.stderr
        again = _cli("up", "--port", port, state_dir=tmp_path)
        assert again.returncode == 0, again.stderr
        assert [r.value for r in consume_all(again.stdout.strip(), "kept", n=1)] == [b"first run"]
    finally:
        _cli("down", state_dir=tmp_path)
    assert not (tmp_path / "kafka.json").exists()
