"""Benchmark (not a test): TCP connections per second on loopback that the exporter keeps up with
without losing an event, its agent's CPU seconds per 1,000 connections, and stock BCC tcplife on
the same load in the same run. Run as root: `.venv/bin/python bench/exporter_bench.py`."""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TCPLIFE = "/usr/sbin/tcplife-bpfcc"

# The load: WORKERS processes, each connecting to its own loopback listener, one byte each way,
# then both ends close. Bounded by a count and by a deadline.
LOAD_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

static int worker(long count, double deadline) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    if (bind(listener, (struct sockaddr *)&addr, len) || listen(listener, 128)) return 1;
    getsockname(listener, (struct sockaddr *)&addr, &len);
    long done = 0;
    char byte = 'x';
    while (done < count && now() < deadline) {
        int client = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(client, (struct sockaddr *)&addr, sizeof(addr))) { perror("connect"); return 1; }
        int server = accept(listener, NULL, NULL);
        if (write(client, &byte, 1) != 1 || read(server, &byte, 1) != 1) return 1;
        if (write(server, &byte, 1) != 1 || read(client, &byte, 1) != 1) return 1;
        close(client);
        close(server);
        done++;
    }
    printf("%ld\n", done);
    return 0;
}

int main(int argc, char **argv) {
    int workers = atoi(argv[1]);
    long count = atol(argv[2]);
    double deadline = now() + atof(argv[3]);
    for (int i = 0; i < workers; i++)
        if (fork() == 0) return worker(count / workers, deadline);
    int status, failed = 0;
    while (wait(&status) > 0) failed |= !WIFEXITED(status) || WEXITSTATUS(status);
    return failed;
}
"""


def build_load(directory: Path) -> Path:
    source, binary = directory / "load.c", directory / "load"
    source.write_text(LOAD_C)
    subprocess.run(["cc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def run_load(binary: Path, workers: int, count: int, limit_s: float) -> tuple[int, float, float]:
    """(connections made, wall seconds, load CPU seconds including the BPF programs it triggered)."""
    start = time.monotonic()
    process = subprocess.Popen([str(binary), str(workers), str(count), str(limit_s)], stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    # wait4 gives this process's own usage (with its workers'), not that of tracers we also reaped.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"load generator failed ({os.waitstatus_to_exitcode(status)})")
    return sum(int(line) for line in out.split()), wall, usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Tracer:
    """A tracer process (our agent or tcplife), started before the load and stopped after it."""

    def __init__(self, command: list[str], ready: str | None, env: dict | None = None):
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.stdout_lines = 0
        self.stderr: list[str] = []
        threading.Thread(target=self._count_stdout, daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        deadline = time.monotonic() + 120
        while ready and not any(ready in line for line in self.stderr):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("tracer did not start:\n" + "\n".join(self.stderr))
            time.sleep(0.05)

    def _count_stdout(self) -> None:
        for _ in self.process.stdout:
            self.stdout_lines += 1

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line.rstrip())

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr_reader.join(timeout=5)


def measure(mode: str, binary: Path, workers: int, count: int, limit_s: float, pin_dir: str) -> dict:
    tracer = None
    if mode == "flowattr":
        env = dict(os.environ, PYTHONPATH=str(REPO), FLOWATTR_EXPORTER__CAPTURE_LOOPBACK="1",
                   FLOWATTR_EXPORTER__INTERVAL_S="1", FLOWATTR_EXPORTER__PIN_DIR=pin_dir,
                   FLOWATTR_EXPORTER__IDENTITY_FILE="/nonexistent")
        tracer = Tracer([sys.executable, "-m", "exporter.cli", "export", "--out", "/dev/null"], "capturing", env)
    elif mode == "tcplife":
        # tcplife prints its header once attached.
        tracer = Tracer([TCPLIFE], None, dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 120
        while tracer.stdout_lines < 1:
            if tracer.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{TCPLIFE} did not start:\n" + "\n".join(tracer.stderr[-5:]))
            time.sleep(0.05)
    before = tracer.cpu() if tracer else 0.0
    made, wall, load_cpu = run_load(binary, workers, count, limit_s)
    result = {"connections": made, "per_s": made / wall, "load_cpu_per_1k": 1000 * load_cpu / made}
    if tracer:
        time.sleep(2.5)  # two intervals: the agent drains and reports everything
        result["tracer_cpu_per_1k"] = 1000 * (tracer.cpu() - before) / made
        tracer.stop()
    if mode == "flowattr":
        last = [line for line in tracer.stderr if "lost_events=" in line][-1]
        counts = dict(re.findall(r"(\w+)=(\d+)", last))
        result["reported"] = int(counts["flows"])
        result["lost"] = int(counts["lost_events"]) + int(counts["connections_full"])
    elif mode == "tcplife":
        result["reported"] = tracer.stdout_lines - 1  # minus the header
        lost = [line for line in tracer.stderr if "lost" in line.lower()]
        result["lost"] = sum(int(n) for line in lost for n in re.findall(r"\d+", line)) if lost else 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=40_000, help="per run")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit-s", type=float, default=20.0, help="deadline per run")
    args = parser.parse_args()
    started = time.monotonic()
    if os.geteuid() != 0:
        raise SystemExit("exporter_bench: run as root (it loads BPF programs)")

    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: nproc={os.cpu_count()} cpu={cpu_model!r} kernel={platform.release()}")
    print(f"load: {args.workers} processes, {args.connections} loopback connections per run "
          "(connect, 1 byte each way, close both ends), medians of "
          f"{args.runs} runs; each connection is 2 sockets, so 2 records\n")
    pin_dir = f"/sys/fs/bpf/flowattr-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_load(Path(tmp))
        results: dict[str, list[dict]] = {"none": [], "flowattr": [], "tcplife": []}
        try:
            for _ in range(args.runs):
                for mode in results:
                    results[mode].append(measure(mode, binary, args.workers, args.connections, args.limit_s, pin_dir))
        finally:
            shutil.rmtree(pin_dir, ignore_errors=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(f"{'tracer':10} {'conn/s':>9} {'load CPU s/1k':>14} {'tracer CPU s/1k':>16} {'reported/expected':>18} {'lost':>6}")
    for mode in results:
        expected = 2 * median(mode, "connections")
        row = f"{mode:10} {median(mode, 'per_s'):9.0f} {median(mode, 'load_cpu_per_1k'):14.3f}"
        if mode == "none":
            print(row)
            continue
        reported = f"{median(mode, 'reported'):.0f}/{expected:.0f}"
        print(f"{row} {median(mode, 'tracer_cpu_per_1k'):16.3f} {reported:>18} {max(r['lost'] for r in results[mode]):6d}")
    agent = median("flowattr", "tracer_cpu_per_1k")
    print(f"\nflowattr agent: {1000 / agent:,.0f} connections per agent-CPU-second "
          f"({agent:.3f} s per 1,000 connections); in-kernel cost shows as load CPU above 'none'.")
    sys.path.insert(0, str(REPO))
    from bench.harness import save

    save("exporter_bench", {"workers": args.workers, "connections": args.connections, "runs": results}, started)


def render(record: dict) -> str:
    """The section of docs/BENCHMARKS.md: medians of this run's figures."""
    f = record["figures"]
    results = f["runs"]

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    rows = ["| tracer | connections/s | load CPU s per 1k | tracer CPU s per 1k | reported / expected | lost |",
            "|---|---:|---:|---:|---:|---:|"]
    for mode in results:
        row = f"| {mode} | {median(mode, 'per_s'):,.0f} | {median(mode, 'load_cpu_per_1k'):.3f} |"
        if mode == "none":
            rows.append(row + " | | |")
            continue
        expected = 2 * median(mode, "connections")
        rows.append(f"{row} {median(mode, 'tracer_cpu_per_1k'):.3f} | {median(mode, 'reported'):,.0f} / {expected:,.0f} "
                    f"| {max(r['lost'] for r in results[mode])} |")
    agent = median("flowattr", "tracer_cpu_per_1k")
    return "\n".join([
        "## The exporter's capture", "",
        f"`{record['command']}` (root): {f['workers']} processes making {f['connections']:,} loopback connections per run",
        "(connect, 1 byte each way, close both ends: 2 sockets, so 2 records each), with no tracer, with the",
        f"flowattr agent, and with stock BCC tcplife; medians of {len(results['none'])} runs.", "", *rows, "",
        f"The flowattr agent: **{1000 / agent:,.0f} connections per agent CPU second** ({agent:.3f} s per 1,000); the",
        "in-kernel cost shows as load CPU above the *none* row.", ""])


if __name__ == "__main__":
    main()
