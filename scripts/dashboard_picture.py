"""Draws k8s/components/monitoring/flowattr-dashboard.json as a picture from a real run's metrics:
`record` runs the real parts for a few minutes (the local Kafka broker, `flowattr run` fed a simulated
fleet live, `flowattr export` on two test hosts that keep connecting) and scrapes both /metrics every
few seconds; `draw` evaluates each panel's query over the recording and plots it (PNG).

    sudo .venv/bin/python scripts/dashboard_picture.py record out/dashboard/recording.ndjson --minutes 4
    .venv/bin/python scripts/dashboard_picture.py draw out/dashboard/recording.ndjson docs/images/dashboard.png

The queries are evaluated here, not by Prometheus: only the forms the dashboard uses are understood
(`sum|max [by (labels)] (...)` over `rate(metric{...}[window])`, a metric, or metric / metric), and
rate() is the increase over the window divided by the time it spans; any other form is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "k8s/components/monitoring/flowattr-dashboard.json"
sys.path.insert(0, str(ROOT))

SCRAPE_EVERY_S = 5.0
NODE = "dash-node"
HOSTS = {"10.234.0.1": "shop/frontend", "10.234.0.2": "shop/cart"}


# ------------------------------------------------------------------ record

def record(path: Path, minutes: float) -> None:
    from confluent_kafka import Producer
    from prometheus_client.parser import text_string_to_metric_families

    from broker.launch import Broker
    from dataflow import simulate as sim
    from dataflow.config import load_config
    from dataflow.kafka_io import ensure_topics
    from tests.ports import free_ports

    work = Path(tempfile.mkdtemp(prefix="flowattr-dashboard-"))
    job_port, exporter_port = free_ports(2)
    regions = sim.regions_config()
    regions[sim.HOME] = [*regions[sim.HOME], "10.234.0.0/24"]  # the test hosts are in this job's region
    config_path = work / "flowattr.toml"
    config_path.write_text(
        f'region = "{sim.HOME}"\n[regions]\n'
        + "".join(f"{r} = {json.dumps(c)}\n" for r, c in regions.items())
        + "[kafka]\npartitions = 3\n[attribution]\ndelay_s = 12\nmax_wait_s = 30\n"
        + f"[metrics]\nport = {job_port}\n"
    )
    namespaces = []
    pins = Path(f"/sys/fs/bpf/flowattr-dashboard-{uuid.uuid4().hex[:6]}")
    broker = Broker().start()
    processes = []
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWATTR_KAFKA__BROKERS": broker.bootstrap}
        config = load_config(config_path, environ={"FLOWATTR_KAFKA__BROKERS": broker.bootstrap})
        ensure_topics(config)
        start_ms = int(time.time() * 1000)
        fleet = sim.simulate(sim.Scenario(seed=11, start_ms=start_ms, duration_s=int(minutes * 60), interval_s=10,
                                          mean_delay_s=1.0, late_delay_s=15.0))
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
        lab = {"v": 2, "kind": "entitlement", "exporter": NODE, "cidrs": ["10.234.0.0/24"]}
        for e in [*(orjson.loads(m.value) for m in fleet.entitlement_messages), lab]:
            producer.produce(config.kafka.exporters_topic, orjson.dumps(e), e["exporter"].encode())
        producer.flush(30)

        processes.append(subprocess.Popen([sys.executable, "-m", "dataflow.cli", "--config", str(config_path), "run"],
                                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        namespaces = _test_hosts()
        exporter_env = {**env, "FLOWATTR_EXPORTER__PIN_DIR": str(pins), "FLOWATTR_EXPORTER__EXPORTER_ID": NODE,
                        "FLOWATTR_EXPORTER__INTERVAL_S": "10", "FLOWATTR_METRICS__PORT": str(exporter_port),
                        "FLOWATTR_EXPORTER__IDENTITY_FILE": str(work / "no-identity"), "FLOWATTR_REGION": sim.HOME}
        for ip, workload in HOSTS.items():
            subprocess.run([sys.executable, "-m", "exporter.cli", "ipman", "add", ip, workload], env=exporter_env,
                           cwd=ROOT, check=True, capture_output=True)
        processes.append(subprocess.Popen([sys.executable, "-m", "exporter.cli", "export"], cwd=ROOT,
                                          env=exporter_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        server = subprocess.Popen(["ip", "netns", "exec", namespaces[1], sys.executable, "-c", SERVER],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(server)

        sources = {"job": job_port, "exporter": exporter_port}
        messages = sorted(
            [(m.arrival_ms, config.kafka.raw_topic, m.value, m.key) for m in fleet.flow_messages]
            + [(m.arrival_ms, config.forward_topic(sim.HOME), m.value, None) for m in fleet.forwarded_messages]
            + [(m.arrival_ms, config.kafka.ip_events_topic, m.value, None) for m in fleet.ip_event_messages]
            + [(start_ms + 60_000 * i + 5_000, config.kafka.raw_topic, b"not json", b"lab") for i in range(int(minutes))]
        )
        end = time.time() + minutes * 60 + 60
        next_scrape = time.time()
        clients: list[subprocess.Popen] = []
        with open(path, "w") as out:
            while time.time() < end:
                now_ms = int(time.time() * 1000)
                while messages and messages[0][0] <= now_ms:
                    _, topic, value, key = messages.pop(0)
                    producer.produce(topic, value, key)
                producer.poll(0)
                clients = [c for c in clients if c.poll() is None]
                clients.append(subprocess.Popen(["ip", "netns", "exec", namespaces[0], sys.executable, "-c", CLIENT],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                if time.time() >= next_scrape:
                    next_scrape += SCRAPE_EVERY_S
                    for instance, port in sources.items():
                        try:
                            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                        except OSError:
                            continue
                        samples = [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text)
                                   for s in f.samples]
                        out.write(json.dumps({"t": time.time(), "instance": instance, "samples": samples}) + "\n")
                        out.flush()
                time.sleep(0.5)
        producer.flush(30)
        del producer  # before the broker goes
    finally:
        for p in reversed(processes):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for pinned in pins.glob("*"):
            pinned.unlink()
        if pins.exists():
            pins.rmdir()
        broker.stop()


SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.234.0.2", 7500)); s.listen(64)
while True:
    c, _ = s.accept(); c.recv(65536); c.sendall(b"r" * 100); c.close()
"""
CLIENT = """
import socket
c = socket.create_connection(("10.234.0.2", 7500), source_address=("10.234.0.1", 0)); c.sendall(b"s" * 1000)
c.shutdown(socket.SHUT_WR); c.recv(65536); c.close()
"""


def _test_hosts() -> list[str]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"fd-a-{tag}", f"fd-b-{tag}"
    commands = [["ip", "netns", "add", a], ["ip", "netns", "add", b],
                ["ip", "link", "add", f"fd{tag}a", "netns", a, "type", "veth", "peer", "name", f"fd{tag}b", "netns", b]]
    for ns, dev, ip in ((a, f"fd{tag}a", "10.234.0.1"), (b, f"fd{tag}b", "10.234.0.2")):
        commands += [["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev], ["ip", "-n", ns, "link", "set", dev, "up"],
                     ["ip", "-n", ns, "link", "set", "lo", "up"]]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True)
    return [a, b]


# ------------------------------------------------------------------ evaluate

AGGREGATE = re.compile(r"^(sum|max)(?:\s+by\s*\(([\w,\s]*)\))?\s*\((.*)\)$", re.S)
RATE = re.compile(r"^rate\((\w+)(\{[^}]*\})?\[(\d+)([sm])\]\)$")
SELECTOR = re.compile(r"^(\w+)(\{[^}]*\})?$")
RATIO = re.compile(r"^(\w+)\s*/\s*(\w+)$")


def _key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


def _matchers(text: str | None) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', text or ""))


class Recording:
    def __init__(self, path: Path):
        # series (name, frozenset(labels incl. instance)) -> [(t, value)]
        self.series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
        times = set()
        for line in path.read_text().splitlines():
            scrape = json.loads(line)
            times.add(round(scrape["t"]))
            for name, labels, value in scrape["samples"]:
                key = (name, frozenset({**labels, "instance": scrape["instance"]}.items()))
                self.series[key].append((scrape["t"], value))
        self.times = sorted(times)

    def select(self, name: str, matchers: dict[str, str]):
        for (n, labels), points in self.series.items():
            if n == name and matchers.items() <= dict(labels).items():
                yield dict(labels), points

    def instant(self, name, matchers, t) -> list[tuple[dict, float]]:
        found = []
        for labels, points in self.select(name, matchers):
            before = [v for at, v in points if at <= t + 1]
            if before and t - max(at for at, _ in points if at <= t + 1) < 3 * SCRAPE_EVERY_S:
                found.append((labels, before[-1]))
        return found

    def rate(self, name, matchers, window_s, t) -> list[tuple[dict, float]]:
        found = []
        for labels, points in self.select(name, matchers):
            inside = [(at, v) for at, v in points if t - window_s < at <= t + 1]
            if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
                found.append((labels, max(0.0, inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])))
        return found

    def evaluate(self, expr: str, t: float) -> dict[tuple, float]:
        """Legend labels (as a sorted tuple) -> value, for one query at time t."""
        m = AGGREGATE.match(expr.strip())
        if not m:
            raise ValueError(f"not an expression this drawing understands: {expr}")
        how, by, inner = m.group(1), [b.strip() for b in (m.group(2) or "").split(",") if b.strip()], m.group(3).strip()
        if r := RATE.match(inner):
            window = int(r.group(3)) * (60 if r.group(4) == "m" else 1)
            vector = self.rate(r.group(1), _matchers(r.group(2)), window, t)
        elif r := RATIO.match(inner):
            denominators = {_key(labels): v for labels, v in self.instant(r.group(2), {}, t)}
            vector = [(labels, v / denominators[_key(labels)]) for labels, v in self.instant(r.group(1), {}, t)
                      if denominators.get(_key(labels))]
        elif r := SELECTOR.match(inner):
            vector = self.instant(r.group(1), _matchers(r.group(2)), t)
        else:
            raise ValueError(f"not an expression this drawing understands: {expr}")
        groups: dict[tuple, list[float]] = defaultdict(list)
        for labels, value in vector:
            groups[tuple((b, labels.get(b, "")) for b in by)].append(value)
        return {k: (sum(v) if how == "sum" else max(v)) for k, v in groups.items()}


def draw(recording_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    recording = Recording(recording_path)
    start = recording.times[0]
    columns = 2
    rows = -(-len(panels) // columns)
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, columns, figsize=(16, 3.1 * rows), squeeze=False)
    fig.suptitle(f"{dashboard['title']}: a {round((recording.times[-1] - start) / 60)}-minute local run, "
                 "drawn from its scraped metrics", fontsize=14)
    for ax, panel in zip(axes.flat, panels):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        for target in panel["targets"]:
            lines: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
            for t in recording.times:
                for key, value in recording.evaluate(target["expr"], t).items():
                    lines[key].append(((t - start) / 60, value * (100 if unit == "percentunit" else 1)))
            for key, points in sorted(lines.items()):
                legend = target.get("legendFormat", "")
                for label, value in key:
                    legend = legend.replace("{{" + label + "}}", value)
                ax.plot(*zip(*points), label=legend or target["expr"], linewidth=1.4)
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel({"ops": "per second", "s": "seconds", "percentunit": "%"}.get(unit, ""), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.2)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("minutes", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    print(f"{png}: {len(panels)} panels from {len(recording.times)} scrapes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the real parts and scrape them (root: eBPF, network namespaces)")
    rec.add_argument("recording", type=Path)
    rec.add_argument("--minutes", type=float, default=4.0)
    dr = sub.add_parser("draw", help="draw the dashboard's panels from a recording")
    dr.add_argument("recording", type=Path)
    dr.add_argument("png", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        args.recording.parent.mkdir(parents=True, exist_ok=True)
        record(args.recording, args.minutes)
        print(f"{args.recording}: {len(args.recording.read_text().splitlines())} scrapes")
    else:
        draw(args.recording, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
