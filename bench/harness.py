"""What every benchmark of the job shares: the machine it ran on, the job's processes and their CPU
and memory, the figures file each benchmark writes (out/bench/NAME.json), and a section that fails
without failing the run. Kafka topics are made and filled with the tests' helpers
(tests/integration/kafka_io.py), so the benchmarks and the tests talk to the broker one way."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
FIGURES = REPO / "out" / "bench"  # out/ is git-ignored; `make bench` empties this folder first


def save(name: str, figures: dict[str, Any], started: float) -> Path:
    """This benchmark's figures, with the command, the machine and how long it took."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.json"
    command = shlex.join([".venv/bin/python", "-m", f"bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]])
    record = {"command": command, "machine": machine(), "seconds": time.monotonic() - started, "figures": figures}
    path.write_text(json.dumps(record, indent=1, default=str))
    return path


def machine() -> dict[str, str]:
    import importlib.metadata as md

    import confluent_kafka

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        from broker.launch import kafka_version

        kafka = kafka_version()
    except Exception:  # noqa: BLE001 - only a label
        kafka = "?"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "dataflow"], cwd=REPO, capture_output=True, text=True).stdout
    compiled = sorted(p.name.split(".")[0] for p in (REPO / "dataflow").glob("*.so"))
    return {
        "code": commit + (" with uncommitted changes in dataflow/" if dirty.strip() else ""),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bytewax": md.version("bytewax"),
        "confluent-kafka": f"{md.version('confluent-kafka')} (librdkafka {confluent_kafka.libversion()[0]})",
        "kafka broker": kafka,
        "compiled by cython " + md.version("cython"): ", ".join(compiled) or "nothing (the Python source ran)",
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS), or the most it has had (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jobs(toml: Path, processes: int, profile_to: Path | None = None) -> list[subprocess.Popen]:
    """`flowattr run` in `processes` processes forming one Bytewax cluster on this machine."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if processes > 1:
        env["FLOWATTR_CLUSTER__ADDRESSES"] = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    profiler = ["bench.cpu_profile", str(profile_to)] if profile_to else []
    return [subprocess.Popen(
        [sys.executable, "-m", *profiler, "dataflow.cli", "--config", str(toml), "run", "--summary-every", "3600"],
        cwd=REPO, env={**env, "FLOWATTR_CLUSTER__PROCESS_ID": str(i)} if processes > 1 else env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for i in range(processes)]


def stop_jobs(jobs: list[subprocess.Popen]) -> str:
    """SIGTERM, as a pod is stopped; the errors of any job that did not end well."""
    errors = []
    for j in jobs:
        if j.poll() is None:
            j.send_signal(signal.SIGTERM)
    for j in jobs:
        try:
            _, err = j.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            j.kill()
            _, err = j.communicate()
        if j.returncode not in (0, -signal.SIGTERM):
            errors.append(f"job exited {j.returncode}: {err[-800:]}")
    return "; ".join(errors)


def new_consumer(bootstrap: str, topics: list[str]):
    """A consumer of every partition of `topics` from the beginning, outside any consumer group."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "fetch.max.bytes": "52428800"})
    parts = []
    for topic in topics:
        md = consumer.list_topics(topic, timeout=10)
        parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions]
    consumer.assign(parts)
    return consumer


def guarded(name: str, fn: Callable[[], Any], results: dict[str, Any]) -> Any:
    """A failing section is reported, not fatal: the bench never fails a build."""
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {e}"}
    print("    " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in results[name].items()
                             if k != "profile") if isinstance(results[name], dict) else results[name], flush=True)
    return results[name]


def median_run(fn: Callable[[], dict[str, Any]], repeat: int) -> dict[str, Any]:
    """The run with the median wall time of `repeat` runs, with every run's wall time beside it: these
    machines are small and noisy."""
    runs = [fn() for _ in range(repeat)]
    timed = sorted((r for r in runs if "wall_s" in r), key=lambda r: r["wall_s"])
    if not timed:
        return runs[-1]
    middle = dict(timed[(len(timed) - 1) // 2])
    middle["runs_wall_s"] = [round(r["wall_s"], 2) for r in runs if "wall_s" in r]
    return middle


def median(values: list[float]) -> float:
    return statistics.median(values)


def trim_profile(text: str) -> str:
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    kept = [re.sub(r"\S*site-packages/", "", line.replace(str(REPO) + "/", "")) for line in lines[first:]]
    return "\n".join(line for line in kept if line.strip())
