"""A local deployment of the job: `flowattr run --processes N` supervises N `flowattr run` processes on
loopback forming one Bytewax cluster with recovery. As on Kubernetes, they stop and start all together:
when one dies, and when `flowattr scale` asks for another size, which then resumes from recovery."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from dataflow.config import Config, ConfigError

PID_FILE, DESIRED_FILE, STATUS_FILE = "supervisor.pid", "desired.json", "status.json"
DEFAULT_RUN_DIR = "out/local"
# A cluster counts as running once every process has been up this long: Bytewax processes that cannot
# form their cluster exit within it.
SETTLE_S = 3.0
STOP_TIMEOUT_S = 60.0
# A cluster that keeps failing is restarted after a pause that doubles up to this, as the kubelet does.
MAX_BACKOFF_S = 60.0


@dataclass
class Status:
    generation: int = 0
    state: str = "starting"  # starting, running, stopped
    processes: int = 0
    workers: int = 0
    pids: tuple[int, ...] = ()
    restarts: int = 0  # times the cluster came down on its own and was restarted


def read_json(path: Path) -> dict | None:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def write_json(path: Path, value: dict) -> None:
    # Written aside and renamed: a reader never sees half a file.
    part = path.with_suffix(".part")
    part.write_bytes(orjson.dumps(value))
    os.replace(part, path)


def supervisor_pid(run_dir: Path) -> int | None:
    """The live supervisor's pid, or None."""
    try:
        pid = int((run_dir / PID_FILE).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def request_scale(run_dir: Path, processes: int, workers: int | None, timeout_s: float) -> tuple[Status, Status]:
    """Ask the supervisor in run_dir for a new size, wait until that runs; returns (before, after)."""
    pid = supervisor_pid(run_dir)
    if pid is None:
        raise ConfigError(f"no local deployment runs in {run_dir} (start one: flowattr run --processes N)")
    before = Status(**read_json(run_dir / STATUS_FILE))
    write_json(run_dir / DESIRED_FILE, {"processes": processes, "workers": workers or before.workers})
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = read_json(run_dir / STATUS_FILE)
        if now and now["generation"] > before.generation and now["state"] == "running":
            after = Status(**now)
            if after.processes == processes:
                return before, after
        if supervisor_pid(run_dir) is None:
            raise ConfigError(f"the local deployment in {run_dir} stopped while rescaling (see {run_dir}/logs)")
        time.sleep(0.2)
    raise ConfigError(f"the local deployment in {run_dir} was not running {processes} processes after {timeout_s:.0f} s")


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, run_dir: Path, processes: int, workers: int,
                 summary_every: float):
        if not config.kafka.brokers:
            raise ConfigError("a local deployment reads Kafka: give --brokers HOST:PORT (or kafka.brokers)")
        if supervisor_pid(run_dir) is not None:
            raise ConfigError(f"a local deployment already runs in {run_dir}")
        self.run_dir = run_dir
        self.recovery = Path(config.recovery.dir or run_dir / "recovery")
        self.command = [sys.executable, "-m", "dataflow.cli", *(["--config", config_path] if config_path else []),
                        "run", "--summary-every", str(summary_every)]
        # The flags given to this command reach the processes through their environment.
        self.env = {**os.environ, "FLOWATTR_KAFKA__BROKERS": config.kafka.brokers, "FLOWATTR_REGION": config.region,
                    "FLOWATTR_RECOVERY__DIR": str(self.recovery.resolve())}
        # Processes on one host cannot share a port: process i serves its metrics and probes on port + i.
        self.metrics_port = config.metrics.port
        self.status = Status(processes=processes, workers=workers)
        self.rescale = self.stop = False
        self.children: list[subprocess.Popen] = []

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        _init_recovery(self.recovery)
        (self.run_dir / PID_FILE).write_text(str(os.getpid()))
        write_json(self.run_dir / DESIRED_FILE, {"processes": self.status.processes, "workers": self.status.workers})
        signal.signal(signal.SIGHUP, self._on_rescale)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        try:
            backoff = 1.0
            while not self.stop:
                started = time.monotonic()
                self._start()
                ended_alone = self._watch()
                self._stop_children()
                if ended_alone:
                    self.status.restarts += 1
                    backoff = 1.0 if time.monotonic() - started > 2 * MAX_BACKOFF_S else min(2 * backoff, MAX_BACKOFF_S)
                    self._say(f"a process exited on its own (see {self.run_dir}/logs): restarting all "
                              f"{self.status.processes} from recovery in {backoff:.0f} s")
                    self._pause(backoff)
                if self.rescale:
                    self.rescale = False
                    desired = read_json(self.run_dir / DESIRED_FILE) or {}
                    before = (self.status.processes, self.status.workers)
                    self.status.processes = int(desired.get("processes", before[0]))
                    self.status.workers = int(desired.get("workers", before[1]))
                    self._say(f"rescaling {before[0]} x {before[1]} -> {self.status.processes} x {self.status.workers}"
                              " (processes x workers), resuming from recovery")
        finally:
            self._stop_children()
            self.status.state, self.status.pids = "stopped", ()
            write_json(self.run_dir / STATUS_FILE, asdict(self.status))
            (self.run_dir / PID_FILE).unlink(missing_ok=True)
        self._say(f"stopped; restarts {self.status.restarts}")
        return 0

    def _start(self) -> None:
        n, s = self.status.processes, self.status
        s.generation += 1
        s.state = "starting"
        addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(n))
        self.children = []
        for i in range(n):
            env = dict(self.env)
            if n > 1:
                env.update(FLOWATTR_CLUSTER__ADDRESSES=addresses, FLOWATTR_CLUSTER__PROCESS_ID=str(i))
            if self.metrics_port:
                env["FLOWATTR_METRICS__PORT"] = str(self.metrics_port + i)
            log = open(self.run_dir / "logs" / f"process-{i}.log", "ab")
            self.children.append(subprocess.Popen([*self.command, "-w", str(s.workers)], env=env, stdout=log,
                                                  stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        s.pids = tuple(c.pid for c in self.children)
        write_json(self.run_dir / STATUS_FILE, asdict(s))
        self._say(f"generation {s.generation}: {n} process(es) x {s.workers} worker(s), pids {list(s.pids)}")

    def _watch(self) -> bool:
        """Until asked to stop or rescale (False) or a process exits on its own (True)."""
        started = time.monotonic()
        while not (self.stop or self.rescale):
            if any(c.poll() is not None for c in self.children):
                return True
            if self.status.state == "starting" and time.monotonic() - started >= SETTLE_S:
                self.status.state = "running"
                write_json(self.run_dir / STATUS_FILE, asdict(self.status))
            time.sleep(0.1)
        return False

    def _stop_children(self) -> None:
        # All at once: a process whose peer went away exits anyway; each ends its run with its summary.
        for c in self.children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for c in self.children:
            try:
                c.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        self.children = []

    def _pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until and not (self.stop or self.rescale):
            time.sleep(0.1)

    def _on_rescale(self, signum, frame) -> None:
        self.rescale = True

    def _on_stop(self, signum, frame) -> None:
        self.stop = True

    def _say(self, text: str) -> None:
        print(f"flowattr run: local deployment {self.run_dir}: {text}", flush=True)


def _init_recovery(folder: Path) -> None:
    """One recovery partition, made before any process starts so that no two make it at once."""
    if any(folder.glob("*.sqlite3")):
        return
    from bytewax.recovery import init_db_dir

    folder.mkdir(parents=True, exist_ok=True)
    init_db_dir(folder, 1)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
