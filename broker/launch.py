"""Runs a real single-node Apache Kafka broker (KRaft) on 127.0.0.1 from Apache's jars on Maven Central.

CLI: `python broker/launch.py fetch | up [--port 19092] | down [--keep-data]` (`up` after
`down --keep-data` restarts the broker on its data). Library: `with Broker() as b: b.bootstrap`.
With `Broker(sasl_ssl=SaslSsl(keystore, users))` it also listens with SASL over TLS on `b.sasl_ssl_bootstrap`;
`Broker(join=b, node_id=2)` is a second broker (no controller) in b's cluster.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
JARS_DIR = HERE / "jars"
RUN_DIR = HERE / "run"  # logs, the fetch lock, work in progress; git-ignored
# Where `up` leaves its pid, state and log for `down`. Tests point it elsewhere so they
# never touch a broker a developer started with `make kafka-up`.
STATE_DIR = Path(os.environ.get("FLOWATTR_BROKER_STATE_DIR", RUN_DIR))
PID_FILE = STATE_DIR / "kafka.pid"
STATE_FILE = STATE_DIR / "kafka.json"
STAMP = ".fetched"  # inside JARS_DIR; holds the hash of the pom the jars came from
DEFAULT_PORT = 19092

# Start-up speed over peak throughput: C1 only and a serial GC start quickest, and the
# machine has 2 cores to share with the code under test.
JVM_FLAGS = [
    "-Xmx512m", "-Xms256m",
    "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
# Per-request chatter that buries the lines that explain a failure.
logger.state.name = state.change.logger
logger.state.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
"""


class BrokerError(RuntimeError):
    pass


class PortInUse(BrokerError):
    pass


# ---------------------------------------------------------------- jars and class-data archive

def _pom_hash() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_ready() -> bool:
    stamp = JARS_DIR / STAMP
    return stamp.is_file() and stamp.read_text().strip() == _pom_hash()


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BrokerError("java not found (Kafka 4.x brokers need Java 17+)")
    return java


def cds_archive() -> Path:
    # A class-data archive only fits the JVM build and the jars that wrote it; the jars
    # folder is replaced whole on a new fetch, so naming the JVM is enough.
    real = os.path.realpath(java_bin())
    tag = hashlib.sha256(f"{real}:{os.stat(real).st_mtime_ns}".encode()).hexdigest()[:12]
    return JARS_DIR / f"kafka-{tag}.jsa"


@contextlib.contextmanager
def _lock():
    # Two test runs (or a test run and `make kafka-up`) may prepare at once.
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / ".prepare.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def fetch(quiet: bool = False) -> Path:
    """Copies the broker's jars into broker/jars unless the current pom's jars are already there."""
    if jars_ready():
        return JARS_DIR
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn not found on PATH: it is needed once to fetch Kafka's jars")
    # Fetch aside and swap, so a failed or changed fetch never leaves a mix of two Kafka
    # versions on the classpath.
    tmp = RUN_DIR / "jars.fetching"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM),
           "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
    if not quiet:
        print("fetching Kafka jars with Maven ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(f"mvn failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    shutil.rmtree(JARS_DIR, ignore_errors=True)
    tmp.rename(JARS_DIR)
    (JARS_DIR / STAMP).write_text(_pom_hash() + "\n")
    return JARS_DIR


def train_cds(quiet: bool = False) -> None:
    """Starts and stops one broker with -XX:ArchiveClassesAtExit, so later JVMs map the
    classes they need instead of loading them from 45 jars: start-up here went from ~5 s to ~3 s."""
    archive = cds_archive()
    tmp = RUN_DIR / f"{archive.name}.tmp"
    tmp.unlink(missing_ok=True)
    if not quiet:
        print("training a class-data archive for faster broker start-up ...", file=sys.stderr)
    trainee = Broker(log_path=RUN_DIR / "kafka-cds-training.log", _dump_cds_to=tmp)
    try:
        with trainee:
            pass
        # A JVM killed while writing leaves a torn archive, and a torn archive crashes every
        # JVM that maps it (SIGBUS): try it once before it is used for real.
        check = subprocess.run(
            [java_bin(), *JVM_FLAGS, f"-XX:SharedArchiveFile={tmp}", "-XX:ErrorFile=/dev/null",
             "-cp", str(JARS_DIR / "*"), "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True, cwd=RUN_DIR)
        if trainee.exit_code == -signal.SIGKILL or check.returncode != 0 or not tmp.is_file():
            raise BrokerError(f"archive unusable (broker exit {trainee.exit_code},"
                              f" check exit {check.returncode})")
    except BrokerError as e:
        # Start-up is only slower without it; a broken broker will be reported by the real start.
        print(f"warning: no class-data archive: {e}", file=sys.stderr)
        tmp.unlink(missing_ok=True)
        return
    os.replace(tmp, archive)


def prepare(quiet: bool = False) -> None:
    """Everything a start needs that outlives one broker: the jars, then the class-data archive."""
    with _lock():
        fetch(quiet)
        if not cds_archive().is_file():
            train_cds(quiet)


def kafka_version() -> str:
    for jar in JARS_DIR.glob("kafka_2.13-*.jar"):
        return jar.name[len("kafka_2.13-"):-len(".jar")]
    return "?"


# ---------------------------------------------------------------- ports and processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        # Java binds with SO_REUSEADDR, so TIME_WAIT leftovers must not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
    return True


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if pytest is killed hard, the broker goes with it.
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_our_broker(pid: int) -> bool:
    # A stale pid file may name a pid that now belongs to someone else.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def terminate(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM (Kafka then shuts down cleanly), SIGKILL if it is still there after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # reap it if it is our child
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.05)
    raise BrokerError(f"kafka broker pid {pid} survived SIGKILL")


def _prune_logs(keep: int = 20) -> None:
    # Test brokers get a fresh port, hence a fresh log name, every run: keep the recent ones only.
    logs = sorted(RUN_DIR.glob("kafka-[0-9]*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in logs[keep:]:
        old.unlink(missing_ok=True)


def random_uuid() -> str:
    """What `kafka-storage random-uuid` prints, without a second JVM start (~1 s here)."""
    # Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 unpadded, never starting
    # with "-" (it would read as a command-line flag).
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- the broker

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener beside the plaintext one. keystore: one PEM file holding the broker's
    unencrypted private key and its certificate chain. users: name -> password, accepted by PLAIN
    and by both SCRAM mechanisms."""

    keystore: Path
    users: Mapping[str, str]


class Broker:
    """One KRaft broker+controller on 127.0.0.1 with its own fresh data folder, removed by stop().

    port=None picks a free port. The log goes to broker/run/kafka-<port>.log and stays after
    stop(). die_with_parent: the JVM gets SIGTERM when the thread that started it exits.
    """

    def __init__(self, port: int | None = None, *, die_with_parent: bool = True,
                 log_path: Path | None = None, start_timeout: float = 60.0,
                 sasl_ssl: SaslSsl | None = None, properties: Mapping[str, str] | None = None,
                 join: "Broker | None" = None, node_id: int = 1,
                 _dump_cds_to: Path | None = None):
        self._dump_cds_to = _dump_cds_to  # set only by train_cds()
        self.port = port
        self.controller_port: int | None = None
        self.sasl_ssl = sasl_ssl
        self.sasl_ssl_port: int | None = None
        # Extra server.properties lines, over the defaults (e.g. num.partitions).
        self.properties = dict(properties or {})
        self.join = join
        self.node_id = node_id
        self.cluster_id: str | None = None
        self.die_with_parent = die_with_parent
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.data_dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self.exit_code: int | None = None  # set by stop()

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        if self.sasl_ssl_port is None:
            raise BrokerError("broker not started with a SASL_SSL listener")
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Broker":
        """Starts the broker: on fresh data, or, after stop(keep_data=True) or kill(), on the data it
        had, with the same ports (a restart, as after a crash or a reboot)."""
        t0 = time.monotonic()
        restart = self.data_dir is not None
        if self.port is None:
            self.port = free_port()
        elif not port_free(self.port):
            raise PortInUse(f"port {self.port} on 127.0.0.1 is already in use")
        if restart:  # the quorum's address is in the data's own properties
            props = (self.data_dir / "server.properties").read_text()
            self.controller_port = int(props.split("controller.quorum.bootstrap.servers=127.0.0.1:")[1].split()[0])
        else:
            self.controller_port = free_port()
            while self.controller_port == self.port:
                self.controller_port = free_port()
            if self.sasl_ssl is not None:  # a restart keeps the listener it had
                self.sasl_ssl_port = free_port()
                while self.sasl_ssl_port in (self.port, self.controller_port):
                    self.sasl_ssl_port = free_port()
        if self._dump_cds_to is None:
            prepare(quiet=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        if self.log_path is None:
            _prune_logs()
            self.log_path = RUN_DIR / f"kafka-{self.port}.log"
        if not restart:
            self.data_dir = Path(tempfile.mkdtemp(prefix=f"flowattr-kafka-{self.port}-"))
        try:
            if not restart:
                self._format()
            self._launch()
            self._wait_ready(t0 + self.start_timeout)
        except BaseException:
            self.stop(keep_data=restart)
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _java(self, main: str, *args: str) -> list[str]:
        if self._dump_cds_to is not None:
            # Only the broker writes the archive: it loads a superset of the format tool's classes.
            cds = [f"-XX:ArchiveClassesAtExit={self._dump_cds_to}"] if main == "kafka.Kafka" else []
        else:
            archive = cds_archive()
            # An archive from other jars or another JVM is only a warning; the JVM runs without it.
            cds = [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []
        return [java_bin(), *JVM_FLAGS, *cds, f"-XX:ErrorFile={RUN_DIR}/hs_err_pid%p.log",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp", str(JARS_DIR / "*"), main, *args]

    def _format(self) -> None:
        d = self.data_dir
        (d / "log4j2.properties").write_text(LOG4J2)
        (d / "server.properties").write_text(self._server_properties())
        self.cluster_id = self.join.cluster_id if self.join else random_uuid()
        # A joining broker brings no controller: the cluster's quorum is the first broker's.
        quorum = ["--no-initial-controllers"] if self.join else ["--standalone"]
        # SCRAM credentials live in the cluster's metadata: KRaft takes the first ones at format time.
        scram = [] if self.sasl_ssl is None else [
            arg for name, password in self.sasl_ssl.users.items() for mechanism in SASL_MECHANISMS[1:]
            for arg in ("--add-scram", f"{mechanism}=[name={name},password={password}]")]
        fmt = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", *quorum,
                       "--cluster-id", self.cluster_id, "--config", str(d / "server.properties"), *scram),
            capture_output=True, text=True, cwd=d)
        if fmt.returncode != 0:
            raise BrokerError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")

    def _server_properties(self) -> str:
        p, c = self.port, self.controller_port
        listeners = f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}"
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        if self.sasl_ssl is not None:
            listeners += f",SASL_SSL://127.0.0.1:{self.sasl_ssl_port}"
            protocols += ",SASL_SSL:SASL_SSL"
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{c}",
            f"listeners={listeners}",
            f"advertised.listeners={listeners}",
            f"listener.security.protocol.map={protocols}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.data_dir / 'data'}",
            "num.partitions=1",
            "auto.create.topics.enable=true",
            # One node: every internal topic must live with a single replica.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Tests join consumer groups: one offsets partition is created in a blink, 50 are not,
            # and a group should not sit out the default 3 s before its first rebalance.
            "offsets.topic.num.partitions=1",
            "transaction.state.log.num.partitions=1",
            "group.initial.rebalance.delay.ms=0",
            # Few threads: 2 cores shared with the code under test.
            "num.network.threads=2",
            "num.io.threads=2",
            "background.threads=2",
            "num.recovery.threads.per.data.dir=1",
            "log.segment.bytes=16777216",
            "log.retention.check.interval.ms=60000",
            *self._sasl_ssl_properties(),
            *self._joining_properties(),
            *(f"{k}={v}" for k, v in self.properties.items()),
            "",
        ])

    def _joining_properties(self) -> list[str]:
        # Later lines of a properties file win: these turn the node above into a broker of join's cluster.
        if self.join is None:
            return []
        return [
            "process.roles=broker",
            f"node.id={self.node_id}",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.join.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
        ]

    def _sasl_ssl_properties(self) -> list[str]:
        # Clients of the SASL_SSL listener only; the brokers' own traffic stays on PLAINTEXT.
        if self.sasl_ssl is None:
            return []
        at = "listener.name.sasl_ssl."
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_ssl.users.items())
        return [
            f"{at}sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
            f"{at}plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required"
            f" {plain_users};",
            *(f"{at}{m.lower()}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
              for m in SASL_MECHANISMS[1:]),
            f"{at}ssl.keystore.type=PEM",
            f"{at}ssl.keystore.location={self.sasl_ssl.keystore}",
        ]

    def _launch(self) -> None:
        log = open(self.log_path, "ab")  # a restart's log follows the first run's
        try:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.data_dir / "server.properties")),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Own session: a Ctrl-C meant for the caller's terminal must not kill it mid-test.
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        finally:
            log.close()

    def _wait_ready(self, deadline: float) -> None:
        # Poll the socket cheaply, then ask for metadata through a real Kafka client: an open
        # port alone does not prove the broker answers requests.
        from confluent_kafka.admin import AdminClient

        admin = None
        last_error = "port never opened"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"kafka broker exited with code {self.proc.returncode} during start-up;"
                                  f" tail of {self.log_path}:\n{tail(self.log_path)}")
            if not _port_accepts(self.port):
                time.sleep(0.1)
                continue
            if admin is None:
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
            try:
                md = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                if md.brokers:
                    return
                last_error = "metadata listed no brokers"
            except Exception as e:  # noqa: BLE001 - any failure here means "not yet"
                last_error = str(e)
            time.sleep(0.1)
        raise BrokerError(f"kafka broker on {self.bootstrap} not ready after {self.start_timeout:.0f} s"
                          f" ({last_error}); tail of {self.log_path}:\n{tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: the data stays for start() to restart on."""
        if self.proc is not None:
            self.proc.kill()
            self.exit_code = self.proc.wait()
            self.proc = None

    def stop(self, timeout: float = 30.0, keep_data: bool = False) -> None:
        """SIGTERM (Kafka shuts down cleanly, ~0.5 s here), SIGKILL after `timeout`. The data is
        removed unless keep_data, for start() to restart on."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.exit_code = self.proc.returncode
            self.proc = None
        if self.data_dir is not None and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


# ---------------------------------------------------------------- CLI

def _read_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def cmd_up(port: int) -> int:
    state = _read_state()
    running = state if state and state.get("pid") and _alive(state["pid"]) and _is_our_broker(state["pid"]) else None
    if running and running["port"] == port:
        print(f"kafka already running (pid {running['pid']})", file=sys.stderr)
        print(running["bootstrap"])
        return 0
    if not port_free(port):
        print(f"error: port {port} on 127.0.0.1 is already in use; pick another with --port",
              file=sys.stderr)
        return 1
    if running:
        print(f"error: a kafka broker already runs on {running['bootstrap']} (pid {running['pid']});"
              f" run `down` first", file=sys.stderr)
        return 1
    broker = Broker(port, die_with_parent=False, log_path=STATE_DIR / "kafka.log")
    if state and state.get("kept") and Path(state["data_dir"]).is_dir():  # `down --keep-data`: restart on it
        if state["port"] != port:
            print(f"error: the kept broker data is for port {state['port']}; `up --port {state['port']}`"
                  " restarts on it, `down` removes it", file=sys.stderr)
            return 1
        broker.data_dir = Path(state["data_dir"])
    elif state and state.get("data_dir"):  # left by a broker that died without `down`
        shutil.rmtree(state["data_dir"], ignore_errors=True)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        broker.start()
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    PID_FILE.write_text(f"{broker.pid}\n")
    STATE_FILE.write_text(json.dumps({
        "pid": broker.pid, "port": broker.port, "bootstrap": broker.bootstrap,
        "data_dir": str(broker.data_dir), "log": str(broker.log_path),
    }, indent=1) + "\n")
    print(f"kafka {kafka_version()} up in {broker.startup_seconds:.1f} s (pid {broker.pid},"
          f" log {broker.log_path})", file=sys.stderr)
    print(broker.bootstrap)
    return 0


def cmd_down(keep_data: bool = False) -> int:
    state = _read_state() or {}
    pid = state.get("pid")
    if pid is None and PID_FILE.is_file():
        try:
            pid = int(PID_FILE.read_text().strip())
        except ValueError:
            pid = None
    if pid is not None and _alive(pid) and _is_our_broker(pid):
        terminate(pid)
        print(f"kafka broker pid {pid} stopped", file=sys.stderr)
    else:
        print("no kafka broker running", file=sys.stderr)
    PID_FILE.unlink(missing_ok=True)
    if keep_data and state.get("data_dir"):
        STATE_FILE.write_text(json.dumps({**state, "pid": None, "kept": True}, indent=1) + "\n")
        print(f"kept its data in {state['data_dir']}: `up --port {state['port']}` restarts on it", file=sys.stderr)
        return 0
    if state.get("data_dir"):
        shutil.rmtree(state["data_dir"], ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="broker/launch.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="copy Kafka's jars into broker/jars, train a class-data archive (once)")
    up = sub.add_parser("up", help="start the broker in the background and print its address")
    up.add_argument("--port", type=int, default=DEFAULT_PORT)
    down = sub.add_parser("down", help="stop the broker and remove its data")
    down.add_argument("--keep-data", action="store_true", help="keep the data: the next `up` restarts on it")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            prepare()
            print(f"kafka {kafka_version()} jars in {JARS_DIR}", file=sys.stderr)
            return 0
        if args.cmd == "up":
            return cmd_up(args.port)
        return cmd_down(args.keep_data)
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
