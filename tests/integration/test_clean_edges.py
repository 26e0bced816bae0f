"""The edges a user meets first, as real processes: a configuration mistake or a broker that does not
answer is one line naming what to fix and a non-zero exit, within seconds, for run, tail and export."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
FLOWATTR = [sys.executable, "-m", "dataflow.cli"]
NO_MESSAGES = dict(messages_in=0, answered=0, forwarded=0, dead_lettered=0, lost=0, repeats_disagreeing=0)


def flowattr(*args, env=None, timeout=120):
    started = time.monotonic()
    run = subprocess.run([*FLOWATTR, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return run, time.monotonic() - started


@pytest.mark.parametrize("args, env, says", [
    (["run", "--brokers", "127.0.0.1:9"], {}, "no regions are configured"),
    (["run", "--brokers", "127.0.0.1:9", "--region", "mars", "--regions", "us=10.0.0.0/16"], {},
     "region 'mars' is not in [regions] (us)"),
    (["run", "--embedded"], {"FLOWATTR_ATTRIBUTION__RETENTION_S": "-5"}, "attribution.retention_s is -5: set it between"),
    (["run", "--embedded"], {"FLOWATTR_ATTRIBUTION__MAX_FUTURE_S": "-1"}, "attribution.max_future_s is -1"),
    (["run", "--embedded"], {"FLOWATTR_ATTRIBUTION__DELAY_S": "-2"}, "attribution.delay_s is -2"),
    (["run", "--embedded"], {"FLOWATTR_LIMITS__DEPTH": "300"}, "limits.depth is 300"),
], ids=["no configuration", "region not in regions", "negative retention", "negative max_future", "negative delay",
        "depth beyond what can be encoded"])
def test_a_configuration_mistake_is_one_line_and_a_non_zero_exit(args, env, says, figures, request):
    run, _ = flowattr(*args, env=env)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and says in run.stderr, run.stderr
    figures.record(request.node.name, f"configuration: {request.node.callspec.id}",
                   f"exit 2, one line: {says}", **NO_MESSAGES)


@pytest.mark.parametrize("command", [["run", "--region", "us", "--regions", "us=10.0.0.0/16"], ["tail", "flows.attributed"]])
def test_a_broker_that_does_not_answer_is_one_line_within_the_timeout(command, figures, request):
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    run, elapsed = flowattr(*command, "--brokers", dead, env={"FLOWATTR_KAFKA__TIMEOUT_S": "2"})
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and f"cannot reach Kafka at {dead} within 2 s" in run.stderr, run.stderr
    assert elapsed < 30  # librdkafka's own retries used to print for 30 s first
    figures.record(request.node.name, f"no broker: flowattr {command[0]}",
                   f"exit 2, one line, after {elapsed:.1f} s with kafka.timeout_s = 2", **NO_MESSAGES)


@pytest.mark.ebpf
@pytest.mark.skipif(os.geteuid() != 0, reason="the exporter loads BPF programs: root only")
def test_the_exporter_says_in_one_line_that_the_broker_does_not_answer_and_keeps_capturing(figures):
    # An exporter that exited would lose the connections it sees meanwhile: it says so once and buffers.
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    export = subprocess.Popen([*FLOWATTR, "export"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "FLOWATTR_KAFKA__BROKERS": dead,
                                              "FLOWATTR_KAFKA__TIMEOUT_S": "2",
                                              "FLOWATTR_EXPORTER__PIN_DIR": "/sys/fs/bpf/flowattr-edge-test"})
    try:
        first = export.stderr.readline()
        elapsed = time.monotonic() - started
    finally:
        export.send_signal(signal.SIGTERM)
        rest = export.communicate(timeout=60)[1]
    assert first == (f"flowattr export: cannot reach Kafka at {dead} within 2 s (kafka.timeout_s): Failed to get"
                     " metadata: Local: Broker transport failure; buffering up to 1000000 records until it answers\n")
    assert elapsed < 30 and export.returncode == 0, rest
    assert "Traceback" not in rest and "stopped;" in rest
    figures.record("test_the_exporter_says_in_one_line_that_the_broker_does_not_answer_and_keeps_capturing",
                   "no broker: flowattr export", f"one line after {elapsed:.1f} s with kafka.timeout_s = 2, then"
                   " captures and buffers; exit 0 on SIGTERM", **NO_MESSAGES)
