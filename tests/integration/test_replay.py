"""`flowattr replay` on the real broker: a live job attributes a fleet whose batches arrive in real time;
a replay of a time range then gives exactly the flows that started in it, each answered as the live job
answered it, into its own topic, leaving the live topics as they were."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from dataflow import simulate as sim
from dataflow.config import load_config
from dataflow.publish import publish
from dataflow.kafka_io import ensure_topics
from kafka_io import consume_all, read_records, timestamped
from tests.integration.test_local_scale import flows_of, is_away, write_config

ROOT = Path(__file__).resolve().parents[2]
FLOWATTR = [sys.executable, "-m", "dataflow.cli"]
pytestmark = pytest.mark.kafka
# The job reads FLOWATTR_* settings: none of the test session's own (FLOWATTR_KAFKA_BOOTSTRAP).
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("FLOWATTR_")}, "PYTHONPATH": str(ROOT)}


def on_a_terminal(command, timeout_s=300):
    """What the command writes to a terminal (a pseudo-terminal 110 columns wide), both streams."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 110, 0, 0))
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdin=side, stdout=side, stderr=side, close_fds=True)
    os.close(side)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the command closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=timeout_s) == 0, out.decode(errors="replace")
    return out.decode()


def outcome(a):
    return a["outcome"], a["remote_workload"], a["reason"], a["source"], a["match"]


def test_replay_of_a_range_answers_its_flows_as_the_live_job_did(kafka_bootstrap, tmp_path):
    start = int(time.time() * 1000) + 5_000
    fleet = sim.simulate(sim.Scenario(seed=31, start_ms=start, duration_s=100, interval_s=10, mean_delay_s=1.0,
                                      late_delay_s=15.0))
    config_path = write_config(tmp_path / "flowattr.toml", kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}.")
    config = load_config(config_path, environ={})
    ensure_topics(config)
    k = config.kafka
    expected = {f["flow_id"] for f in flows_of(fleet.flow_messages) if not is_away(f)}
    expected |= {f["flow_id"] for f in flows_of(fleet.forwarded_messages)}

    job = subprocess.Popen([*FLOWATTR, "--config", str(config_path), "run"], cwd=ROOT, env=ENV,
                           stdout=open(tmp_path / "job.out", "w"), stderr=open(tmp_path / "job.err", "w"))
    try:
        publish(config, fleet, say=lambda line: None)  # each batch at its arrival time, as hosts send them
        live = read_records(kafka_bootstrap, [k.attributed_topic], timeout_s=180, settle_s=3,
                            until=lambda r: {a["flow_id"] for a in r[k.attributed_topic]} >= expected)
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
    live = {a["flow_id"]: a for a in live[k.attributed_topic]}
    assert set(live) == expected, (tmp_path / "job.err").read_text()[-2000:]

    live_topics = [k.attributed_topic, k.dlq_topic, config.forward_topic(sim.AWAY)]
    before = {t: len(consume_all(kafka_bootstrap, t)) for t in live_topics}
    lo, hi = start + 30_000, start + 70_000
    sink = f"{k.attributed_topic}.replay-test"
    until = hi + 30_000  # the default: max_wait after --to
    while time.time() * 1000 < until + 31_000:  # then max_wait and a second of decisions behind the wall clock
        time.sleep(0.5)
    replay = subprocess.run([*FLOWATTR, "--config", str(config_path), "replay", "--from", str(lo), "--to", str(hi),
                             "--sink", sink], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr

    replayed = [r for m in consume_all(kafka_bootstrap, sink) for r in orjson.loads(m.value)]
    # A connection is reported when it closes: a long one of the range arrives after --until, and is left out.
    arrived = {r["flow_id"]: at for topic in (k.raw_topic, config.forward_topic(sim.HOME))
               for at, *_, value in timestamped(kafka_bootstrap, topic) for r in orjson.loads(value) if r["kind"] == "flow"}
    in_range = {fid for fid, a in live.items() if lo <= a["start_ms"] < hi and arrived[fid] <= until}
    read_later = {fid for fid, a in live.items() if lo <= a["start_ms"] < hi and until < arrived[fid] < until + 31_000}
    assert len(in_range) > 500
    assert sorted(a["flow_id"] for a in replayed) == sorted(in_range), replay.stdout  # each once, none outside
    # The live job's last summary line (its `late` count among it) says whether the live run read
    # evidence after its clock had passed, the one way a replay may answer differently.
    assert {a["flow_id"]: outcome(a) for a in replayed} == {fid: outcome(live[fid]) for fid in in_range}, (
        (tmp_path / "job.out").read_text()[-2000:])
    assert {t: len(consume_all(kafka_bootstrap, t)) for t in live_topics} == before

    rows = {line[2:18].strip(): int(line[18:28]) for line in replay.stdout.splitlines() if line.startswith("  ")}
    assert rows["written"] == rows["flows answered"] == len(in_range)
    assert rows["undecided"] == 0
    assert rows["arrived later"] == len(read_later)
    assert rows["not re-forwarded"] > 0  # cross-region flows were read, and not sent again

    # On a terminal, a progress bar: its last state has read every message, at a rate, none left.
    shown = on_a_terminal([*FLOWATTR, "--config", str(config_path), "replay", "--from", str(lo), "--to", str(hi),
                           "--sink", sink + "-2"])
    bar = [part for part in shown.replace("\r\n", "\n").split("\r") if part.startswith("replay:")][-1]
    read = rows["messages read"]
    assert f"{read}/{read} [" in bar and "msg/s" in bar and "0 left" in bar, bar


def test_replay_refuses_bad_ranges_and_live_topics_in_one_line(kafka_bootstrap, tmp_path):
    config_path = write_config(tmp_path / "flowattr.toml", kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}.")
    for args, words in (
        (["--from", "10m", "--to", "20m"], "--to (20"),
        (["--from", "2m", "--to", "50s"], "--to must be at least 2 x attribution.max_wait_s + 1 s (61 s) before now"),
        (["--from", "5m", "--to", "3m", "--until", "20s"],
         "--until must be at least attribution.max_wait_s + 1 s (31 s) before now"),
        (["--from", "5m", "--to", "3m", "--until", "6m"], "must be after --from"),
        (["--from", "never", "--to", "1m"], "bad time 'never'"),
        (["--from", "20m", "--to", "10m", "--sink", load_config(config_path, environ={}).kafka.attributed_topic],
         "is one of the live job's topics"),
    ):
        out = subprocess.run([*FLOWATTR, "--config", str(config_path), "replay", *args], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and words in out.stderr, (args, out.stderr)
