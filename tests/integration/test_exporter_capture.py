"""The exporter on real connections: two test hosts (network namespaces joined by a veth pair), real
TCP both ways over IPv4 and IPv6, and every record the one agent writes checked field by field."""

from __future__ import annotations

import json
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

from dataflow.records import RAW, TimeBounds, decode_message, Origin

REPO = Path(__file__).resolve().parents[2]
# Test-only private addresses, inside namespaces these tests create and delete.
A4, B4, B4_SPARE = "10.231.0.1", "10.231.0.2", "10.231.0.3"
A6, B6 = "fd00:231::1", "fd00:231::2"
HOST_IDENTITY = "host/test-node"

pytestmark = pytest.mark.ebpf

# One TCP peer, run inside a namespace: `serve HOST PORT COUNT REPLY` answers COUNT connections,
# each read to EOF then answered with REPLY bytes; `connect HOST PORT SEND SRC BIND_PORT HOLD_S`
# sends SEND bytes, holds the connection open HOLD_S seconds, half-closes, and reads to EOF.
# Both print one JSON line per connection with what they really sent and received.
PEER = r"""
import json, os, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
def out(**fields):
    print(json.dumps(dict(fields, pid=os.getpid())), flush=True)
def read_all(sock):
    total = 0
    while chunk := sock.recv(65536):
        total += len(chunk)
    return total
if mode == "serve":
    count, reply = int(sys.argv[4]), int(sys.argv[5])
    server = socket.socket(family)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(64)
    print("ready", flush=True)
    for _ in range(count):
        conn, peer = server.accept()
        received = read_all(conn)
        conn.sendall(b"r" * reply)
        conn.close()
        out(local_port=port, remote_ip=peer[0], remote_port=peer[1], sent=reply, received=received)
else:
    send, src, bind_port, hold = int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), float(sys.argv[7])
    client = socket.socket(family)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    client.bind((src, bind_port))
    client.connect((host, port))
    client.sendall(b"s" * send)
    if hold:
        print("holding", flush=True)
        time.sleep(hold)
    client.shutdown(socket.SHUT_WR)
    received = read_all(client)
    local_port = client.getsockname()[1]
    client.close()
    out(local_port=local_port, remote_ip=host, remote_port=port, sent=send, received=received)
"""


def require_ebpf() -> None:
    """Outside CI a non-root run skips; in CI a missing prerequisite fails."""
    from exporter.capture import CaptureError, check_prerequisites

    problem = None
    if os.geteuid() != 0:
        problem = "needs root (network namespaces, eBPF)"
    else:
        try:
            check_prerequisites()
        except CaptureError as e:
            problem = str(e)
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"eBPF prerequisites missing in CI: {problem}", pytrace=False)
        pytest.skip(problem)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture
def hosts():
    """Two test hosts: namespace a (A4, A6) and b (B4, B4_SPARE, B6) joined by a veth pair."""
    require_ebpf()
    tag = uuid.uuid4().hex[:6]
    a, b = f"fa-a-{tag}", f"fa-b-{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", f"fa{tag}a", "netns", a, "type", "veth", "peer", "name", f"fa{tag}b", "netns", b)
        for ns, dev, addresses in ((a, f"fa{tag}a", (A4,)), (b, f"fa{tag}b", (B4, B4_SPARE))):
            for address in addresses:
                sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            six = A6 if ns == a else B6
            sh("ip", "-n", ns, "addr", "add", f"{six}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield {"a": a, "b": b}
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def pin_dir():
    require_ebpf()
    path = Path(f"/sys/fs/bpf/flowattr-test-{uuid.uuid4().hex[:8]}")
    yield path
    for child in path.glob("*"):
        child.unlink()
    if path.exists():
        path.rmdir()


def exporter_env(pin_dir: Path, tmp_path: Path, **settings: str) -> dict[str, str]:
    identity = tmp_path / "identity"
    identity.write_text(HOST_IDENTITY + "\n")
    env = dict(os.environ)
    env.update(
        FLOWATTR_EXPORTER__PIN_DIR=str(pin_dir),
        FLOWATTR_EXPORTER__IDENTITY_FILE=str(identity),
        FLOWATTR_EXPORTER__INTERVAL_S="1",
        FLOWATTR_EXPORTER__EXPORTER_ID="test-node",
        FLOWATTR_REGION="test-region",
        PYTHONPATH=str(REPO),
    )
    env.update({f"FLOWATTR_{name.upper()}": value for name, value in settings.items()})
    return env


def flowattr(*args: str, env: dict[str, str], user: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "exporter.cli", *args]
    if user:
        command = ["setpriv", f"--reuid={user}", "--regid=65534", "--clear-groups",
                   "--inh-caps=-all", "--bounding-set=-all", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


class Agent:
    """`flowattr export` as a process; its stderr lines are collected as they come."""

    def __init__(self, env: dict[str, str], out: Path | None, prefix: tuple[str, ...] = ()):
        args = ["--out", str(out)] if out else []
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "exporter.cli", "export", *args],
            env=env, cwd=REPO, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("capturing", timeout=60)

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"agent never said {text!r}; it said:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        return code

    def stats(self) -> dict[str, int]:
        """The last interval line's counters."""
        last = [line for line in self.lines if "lost_events=" in line][-1]
        return {k: int(v) for k, v in (f.split("=") for f in last.split(": ", 1)[1].split() if "=" in f
                                          and f.split("=")[1].isdigit())}


def peer(ns: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", PEER, *map(str, args)],
        stdout=subprocess.PIPE, text=True,
    )


def serve(ns: str, host: str, port: int, count: int, reply: int) -> subprocess.Popen:
    server = peer(ns, "serve", host, port, count, reply)
    assert server.stdout.readline().strip() == "ready"
    return server


def connect(ns, host, port, send, src, bind_port=0, hold=0.0) -> dict:
    client = peer(ns, "connect", host, port, send, src, bind_port, hold)
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 0
    return json.loads(out.splitlines()[-1])


def read_batches(path: Path) -> list[dict]:
    """Every record the agent wrote, each checked by the job's own decoder."""
    records = []
    now = int(time.time() * 1000)
    bounds = TimeBounds(now - 3_600_000, now + 60_000)
    for number, line in enumerate(path.read_bytes().splitlines()):
        good, dead = decode_message(line, Origin(str(path), 0, number, RAW), bounds)
        assert not dead, [d.to_record() for d in dead]
        records.extend(orjson.loads(line))
    return records


def seen(record: dict) -> tuple:
    return (record["local_ip"], record["local_port"], record["remote_ip"], record["remote_port"],
            record["direction"], record["bytes_sent"], record["bytes_received"],
            record["local_workload"], record.get("pid"))


def expect(local_ip: str, workload: str, direction: str, report: dict) -> tuple:
    return (local_ip, report["local_port"], report["remote_ip"], report["remote_port"], direction,
            report["sent"], report["received"], workload, report["pid"])


def test_every_connection_is_reported_exactly(hosts, pin_dir, tmp_path):
    env = exporter_env(pin_dir, tmp_path)
    registrations = [
        (A4, "ws-a"), (A6, "ws-a6"), (B4, "ws-b"), (B6, "ws-b6"),
        # Two workloads behind B4, told apart by local port: one port, and one port and a range.
        (B4, "shared-one", "8001"), (B4, "shared-two", "8002"), (B4, "shared-two", "40000-40063"),
    ]
    for ip, workload, *ports in registrations:
        args = ["--ports", ports[0]] if ports else []
        assert flowattr("ipman", "add", ip, workload, *args, env=env).returncode == 0
    listed = flowattr("ipman", "list", env=env).stdout.splitlines()
    assert f"{B4}:8001\tshared-one" in listed and f"{A6}\tws-a6" in listed
    assert f"{B4}:40000-40063\tshared-two" in listed
    overlapping = flowattr("ipman", "add", B4, "other", "--ports", "40063-40100", env=env)
    assert overlapping.returncode == 1 and "overlaps" in overlapping.stderr
    # Part of a registered range is not a registration: removing it would cut the range in two.
    partial = flowattr("ipman", "remove", B4, "--ports", "40000-40031", env=env)
    assert partial.returncode == 1 and "not registered" in partial.stderr

    out = tmp_path / "flows.jsonl"
    agent = Agent(env, out)
    a, b = hosts["a"], hosts["b"]
    try:
        # (server ns, server ip, port, reply, server workload, client ns, client ip, client
        #  workload, bytes each client connection sends, client bind port)
        plan = [
            (b, B4, 7000, 777, "ws-b", a, A4, "ws-a", [1000, 250_000, 1_234_567], 0),
            (a, A4, 7001, 4321, "ws-a", b, B4, "ws-b", [11, 22, 33], 0),
            (b, B6, 7002, 99, "ws-b6", a, A6, "ws-a6", [5000, 70_000], 0),
            (a, A6, 7003, 123_456, "ws-a6", b, B6, "ws-b6", [1, 2], 0),
            (b, B4, 8001, 10, "shared-one", a, A4, "ws-a", [8001], 0),
            (b, B4, 8002, 20, "shared-two", a, A4, "ws-a", [8002], 0),
            (a, A4, 7004, 30, "ws-a", b, B4, "shared-two", [40002], 40002),
            # No entry, and not an address of the agent's own network namespace: nobody, never the host.
            (b, B4_SPARE, 7005, 40, None, a, A4, "ws-a", [7005], 0),
        ]
        expected = []
        for server_ns, server_ip, port, reply, server_wl, client_ns, client_ip, client_wl, sends, bind in plan:
            server = serve(server_ns, server_ip, port, len(sends), reply)
            for send in sends:
                report = connect(client_ns, server_ip, port, send, client_ip, bind)
                expected.append(expect(client_ip, client_wl, "outbound", report))
            out_lines, _ = server.communicate(timeout=60)
            for line in out_lines.splitlines():
                report = json.loads(line)
                expected.append(expect(server_ip, server_wl, "inbound", report))

        # A long-lived connection spanning intervals: both ends must heartbeat while it is open.
        server = serve(b, B4, 7006, 1, 555)
        held_from = time.time() * 1000
        report = connect(a, B4, 7006, 3_000_000, A4, 0, 3.5)
        expected.append(expect(A4, "ws-a", "outbound", report))
        expected.append(expect(B4, "ws-b", "inbound", json.loads(server.communicate(timeout=60)[0])))
        time.sleep(1.0)  # the last sockets are destroyed once the final ACKs land
    finally:
        assert agent.stop() == 0, "\n".join(agent.lines)

    records = read_batches(out)
    ours = {A4, A6, B4, B4_SPARE, B6}
    flows = [r for r in records if r["kind"] == "flow" and r["local_ip"] in ours]
    assert sorted(seen(r) for r in flows) == sorted(expected)

    ids = [r["flow_id"] for r in flows]
    assert len(set(ids)) == len(ids)
    for r in flows:
        assert r["exporter"] == "test-node" and r["region"] == "test-region"
        assert held_from - 120_000 < r["start_ms"] <= r["end_ms"] <= time.time() * 1000
        assert r["comm"] == os.path.basename(sys.executable)[:15]
    long_lived = [r for r in flows if 7006 in (r["local_port"], r["remote_port"])]
    assert all(r["end_ms"] - r["start_ms"] >= 3000 for r in long_lived)

    ranges = {("shared-one", 8001): [8001, 8001], ("shared-two", 8002): [8002, 8002],
              ("shared-two", 40002): [40000, 40063]}
    for r in flows:
        assert r.get("local_ports") == ranges.get((r["local_workload"], r["local_port"])), r

    heartbeats = [r for r in records if r["kind"] == "heartbeat" and r["ip"] in ours]
    # Every registration heartbeats, whatever its traffic, port ranges with their ports; the host
    # identity only for addresses of the agent's own network namespace (none here).
    assert {(h["ip"], h["workload"], tuple(h.get("ports", ()))) for h in heartbeats} == {
        (A4, "ws-a", ()), (A6, "ws-a6", ()), (B4, "ws-b", ()), (B6, "ws-b6", ()),
        (B4, "shared-one", (8001, 8001)), (B4, "shared-two", (8002, 8002)), (B4, "shared-two", (40000, 40063)),
    }
    assert all(r["v"] == 2 for r in records)
    # The long-lived connection's start is claimed too, though it began before its interval.
    assert any(h["ip"] == A4 and h["workload"] == "ws-a" and h["start_ms"] <= held_from + 50
               and h["end_ms"] - h["start_ms"] >= 1000 for h in heartbeats)

    stats = agent.stats()
    assert stats["lost_events"] == 0 and stats["connections_full"] == 0


@pytest.fixture
def host_link(hosts):
    """A veth from the agent's own (host) network namespace to namespace a: HOST4 is an address of
    the host, A_LINK4 one of namespace a, as a node and one of its pods."""
    tag = f"{os.getpid() % 10000}{uuid.uuid4().hex[:3]}"
    subnet = f"10.232.{int(tag[-3:], 16) % 250}"
    host_dev, pod_dev = f"fax{tag}h", f"fax{tag}p"
    addresses = {"host": f"{subnet}.1", "pod": f"{subnet}.2"}
    try:
        sh("ip", "link", "add", host_dev, "type", "veth", "peer", "name", pod_dev, "netns", hosts["a"])
        sh("ip", "addr", "add", f"{addresses['host']}/30", "dev", host_dev)
        sh("ip", "link", "set", host_dev, "up")
        sh("ip", "-n", hosts["a"], "addr", "add", f"{addresses['pod']}/30", "dev", pod_dev)
        sh("ip", "-n", hosts["a"], "link", "set", pod_dev, "up")
        yield addresses
    finally:
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True)


def test_the_host_identity_names_only_the_host_namespaces_own_addresses(hosts, host_link, pin_dir, tmp_path):
    """Without map entries the host identity names the host's own sockets; a socket in another
    network namespace (a pod without an entry) is nobody's, never the host's."""
    env = exporter_env(pin_dir, tmp_path)
    assert not pin_dir.exists()
    listed = flowattr("ipman", "list", env=env)
    assert listed.returncode == 0 and listed.stdout == ""
    removed = flowattr("ipman", "remove", A4, env=env)
    assert removed.returncode == 1 and "no pinned map" in removed.stderr

    host, pod = host_link["host"], host_link["pod"]
    out = tmp_path / "flows.jsonl"
    agent = Agent(env, out)
    try:
        time.sleep(1.2)  # the agent reads the host's addresses every second
        server = subprocess.Popen([sys.executable, "-c", PEER, "serve", host, "7100", "1", "64"],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        report = connect(hosts["a"], host, 7100, 128, pod)
        server.communicate(timeout=60)
        # The pod side serving too: an inbound socket in the pod's namespace.
        server = serve(hosts["b"], B4, 7101, 1, 32)
        connect(hosts["a"], B4, 7101, 16, A4)
        server.communicate(timeout=60)
        # The host's own address configured inside the pod's namespace too: still not the host.
        sh("ip", "-n", hosts["a"], "addr", "add", f"{host}/32", "dev", "lo")
        server = serve(hosts["a"], host, 7102, 1, 8)
        same_address = connect(hosts["a"], host, 7102, 4, host)
        server.communicate(timeout=60)
        time.sleep(1.0)
    finally:
        assert agent.stop() == 0
    records = read_batches(out)
    flows = [r for r in records if r["kind"] == "flow" and r["local_ip"] in (host, pod, A4, B4)]
    assert sorted(seen(r)[:-1] for r in flows if r["local_ip"] in (host, pod)) == sorted([
        (pod, report["local_port"], host, 7100, "outbound", 128, 64, None),
        (host, 7100, pod, report["local_port"], "inbound", 64, 128, HOST_IDENTITY),
        (host, same_address["local_port"], host, 7102, "outbound", 4, 8, None),
        (host, 7102, host, same_address["local_port"], "inbound", 8, 4, None),
    ])
    assert [r["local_workload"] for r in flows if r["local_ip"] in (A4, B4)] == [None, None]
    beats = {(r["ip"], r["workload"]) for r in records if r["kind"] == "heartbeat"}
    assert (host, HOST_IDENTITY) in beats
    assert not {ip for ip, _ in beats} & {pod, A4, B4}
    # The agent created the maps, so a platform can register workloads from now on.
    assert (pin_dir / "ip_workload").exists() and (pin_dir / "ip_ports_workload").exists()


def test_registered_addresses_heartbeat_every_interval_and_stop_when_removed(hosts, pin_dir, tmp_path):
    """Only short connections, yet both addresses claim every interval without a gap; once B4's
    mapping is removed its claims stop at the last poll that saw it."""
    env = exporter_env(pin_dir, tmp_path)
    for ip, workload in ((A4, "ws-a"), (B4, "ws-b")):
        assert flowattr("ipman", "add", ip, workload, env=env).returncode == 0
    out = tmp_path / "flows.jsonl"
    agent = Agent(env, out)
    started = time.time() * 1000
    try:
        server = serve(hosts["b"], B4, 7200, 6, 10)
        for _ in range(6):
            connect(hosts["a"], B4, 7200, 10, A4)
            time.sleep(0.4)
        server.communicate(timeout=60)
        time.sleep(1.5)
        assert flowattr("ipman", "remove", B4, env=env).returncode == 0
        removed_at = time.time() * 1000
        time.sleep(3.5)
    finally:
        assert agent.stop() == 0, "\n".join(agent.lines)
    stopped = time.time() * 1000

    records = read_batches(out)
    beats = sorted((r["start_ms"], r["end_ms"], r["ip"], r["workload"])
                   for r in records if r["kind"] == "heartbeat" and r["ip"] in (A4, B4))
    assert {(ip, wl) for _, _, ip, wl in beats} == {(A4, "ws-a"), (B4, "ws-b")}
    a = [(start, end) for start, end, ip, _ in beats if ip == A4]
    b = [(start, end) for start, end, ip, _ in beats if ip == B4]
    # A4: one heartbeat per interval, each starting where the previous one ended, agent start to stop.
    assert a[0][0] - started < 1500 and stopped - a[-1][1] < 1500
    assert all(prev[1] == nxt[0] for prev, nxt in zip(a, a[1:])), a
    assert len(a) >= 8
    # B4: contiguous until the removal, nothing claimed after it.
    assert b[0][0] - started < 1500 and all(prev[1] == nxt[0] for prev, nxt in zip(b, b[1:])), b
    assert removed_at - 1500 < b[-1][1] <= removed_at
    flows = [r for r in records if r["kind"] == "flow" and r["local_ip"] in (A4, B4)]
    assert len(flows) == 12 and all(r["end_ms"] <= removed_at for r in flows)
