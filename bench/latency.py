"""How soon an attributed answer comes after it could first exist, on a paced live run through the real
broker: a simulated fleet's batches produced at their delivery time on the wall clock, keyed by exporter,
the job (one process) reading as they come. Figures in out/bench/latency.json, a histogram beside them.

    .venv/bin/python -m bench.latency            # compressed fleet and the real defaults; updates
                                                 # docs/BENCHMARKS.md's latency section
    .venv/bin/python -m bench.latency --quick    # the compressed fleet only, shorter

An answer could first exist once its flow's batch is in and `delay_s` has passed since the flow's start
(`event_settle_s` for an answer from assignment events, which the job must not give sooner): latency =
the answer's Kafka timestamp - max(batch delivered, start + that wait). Measured over every attributed
answer (first tries and retries alike) whose batch was delivered in the steady window, 30 s after the
first batch to 30 s before the last. "From delay" counts event answers from start + delay_s too.
"After evidence" also waits for the evidence the answer rests on to be delivered (the other end's report
of the connection, the first claim covering the start): what is left is the job's own lag.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataflow import simulate as sim  # noqa: E402

FIGURES = REPO / "out" / "bench"
PICTURE = REPO / "docs" / "images" / "latency.png"
DOCUMENT = REPO / "docs" / "BENCHMARKS.md"
SECTION = "## Attribution latency (paced live run)"
STEADY_MARGIN_S = 30
KINDS = ("connection", "range", "event")
GOAL_S = 5.0


class Setup:
    """One paced run's fleet and job settings."""

    def __init__(self, name: str, duration_s: int, interval_s: int, delay_s: float, max_wait_s: float,
                 event_settle_s: float, partitions: int = 6, mean_delay_s: float = 1.0, late_delay_s: float = 4.0,
                 rate: float = 0.6):
        self.name, self.duration_s, self.interval_s = name, duration_s, interval_s
        self.delay_s, self.max_wait_s, self.event_settle_s = delay_s, max_wait_s, event_settle_s
        self.partitions, self.mean_delay_s, self.late_delay_s, self.rate = partitions, mean_delay_s, late_delay_s, rate

    def describe(self) -> dict[str, Any]:
        return dict(vars(self))


def compressed(duration_s: int = 200) -> Setup:
    return Setup("compressed", duration_s, interval_s=5, delay_s=5, max_wait_s=25, event_settle_s=10)


def defaults(duration_s: int = 240) -> Setup:
    # The job's own defaults (delay 60 s, max wait 300 s, events settle 120 s) on a fleet reporting
    # every minute, its reports as late as the compressed fleet's.
    return Setup("defaults", duration_s, interval_s=60, delay_s=60, max_wait_s=300, event_settle_s=120)


def write_config(path: Path, bootstrap: str, prefix: str, setup: Setup) -> Path:
    regions = "\n".join(f"{r} = {orjson.dumps(c).decode()}" for r, c in sim.regions_config().items())
    path.write_text(
        f'region = "{sim.HOME}"\n[regions]\n{regions}\n'
        f'[kafka]\nbrokers = "{bootstrap}"\npartitions = {setup.partitions}\nraw_topic = "{prefix}flows.raw"\n'
        f'ip_events_topic = "{prefix}ip-events"\nattributed_topic = "{prefix}attributed"\n'
        f'dlq_topic = "{prefix}flows.dlq"\nforward_prefix = "{prefix}flows.forward."\n'
        f'exporters_topic = "{prefix}exporters"\n'
        f"[attribution]\ndelay_s = {setup.delay_s}\nmax_wait_s = {setup.max_wait_s}\n"
        f"event_settle_s = {setup.event_settle_s}\n"
    )
    return path


def run(bootstrap: str, workdir: Path, setup: Setup) -> dict[str, Any]:
    """One paced live run; returns its figures and every measured answer's latency."""
    from confluent_kafka import Producer

    from dataflow.config import load_config
    from dataflow.kafka_io import ensure_topics

    prefix = f"lat{uuid.uuid4().hex[:6]}."
    toml = write_config(workdir / f"{setup.name}.toml", bootstrap, prefix, setup)
    config = load_config(toml, environ={})
    ensure_topics(config)
    lead_s = 15  # the job starts and reads the entitlements before the fleet's first moment
    start_ms = (int(time.time()) + lead_s) * 1000
    scenario = sim.Scenario(
        seed=17, start_ms=start_ms, duration_s=setup.duration_s, services=20, instances_per_service=10,
        connections_per_instance_s=setup.rate, interval_s=setup.interval_s, mean_delay_s=setup.mean_delay_s,
        late_delay_s=setup.late_delay_s, mean_lifetime_s=max(40.0, setup.duration_s / 4),
        reuse_gap_s=setup.interval_s / 2, event_delay_max_s=setup.interval_s, event_very_late_s=setup.interval_s * 4,
    )
    fleet = sim.simulate(scenario)
    _publish_entitlements(bootstrap, config.kafka.exporters_topic, fleet)
    k = config.kafka
    schedule = [(m.arrival_ms, k.raw_topic, m.key, m.value) for m in fleet.flow_messages]
    schedule += [(m.arrival_ms, k.ip_events_topic, None, m.value) for m in fleet.ip_event_messages]
    schedule += [(m.arrival_ms, config.forward_topic(sim.HOME), None, m.value) for m in fleet.forwarded_messages]
    schedule.sort(key=lambda m: m[0])

    job = subprocess.Popen(
        [sys.executable, "-m", "dataflow.cli", "--config", str(toml), "run", "--summary-every", "3600"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=open(workdir / f"{setup.name}.stdout", "wb"),
        stderr=open(workdir / f"{setup.name}.stderr", "wb"),
    )
    delivered: dict[int, int] = {}  # index in schedule -> the broker's arrival time
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    lateness = []
    try:
        for i, (arrival, topic, key, value) in enumerate(schedule):
            wait = arrival / 1000 - time.time()
            if wait > 0:
                producer.flush(30)
                time.sleep(wait)
            lateness.append(time.time() * 1000 - arrival)
            producer.produce(topic, value=value, key=key,
                             on_delivery=lambda err, msg, i=i: err is None and delivered.__setitem__(i, msg.timestamp()[1]))
            producer.poll(0)
        if producer.flush(30):
            raise RuntimeError("the paced producer could not deliver every batch")
        if job.poll() is not None:
            raise RuntimeError(f"the job exited with {job.returncode}: {_tail(workdir / f'{setup.name}.stderr')}")
        expected = _expected(fleet)
        # Every flow of the steady window has its final answer by the window's end + max_wait_s.
        steady, window_end = _steady_flows(schedule, delivered)
        answers = _read_answers(bootstrap, k.attributed_topic, steady,
                                deadline_s=window_end / 1000 + setup.max_wait_s + 15)
    finally:
        _stop(job)
    figures = measure(setup, fleet, schedule, delivered, answers, expected, lateness)
    figures["setup"]["caught_up_margin_ms"] = k.caught_up_margin_ms
    figures["setup"]["instances"] = scenario.services * scenario.instances_per_service
    figures["job_counts"] = _final_counts(workdir / f"{setup.name}.stdout")
    return figures


def _final_counts(stdout: Path) -> dict[str, int]:
    """The job's counts from its last summary line (`late`: evidence read after the clock had passed it)."""
    lines = [line for line in stdout.read_text(errors="replace").splitlines() if "=" in line]
    if not lines:
        return {}
    return {k: int(v) for k, v in (w.split("=", 1) for w in lines[-1].split(";")[-1].split() if "=" in w)}


def measure(setup: Setup, fleet, schedule, delivered: dict[int, int], answers: dict[str, tuple[int, dict]],
            expected: int, lateness: list[float]) -> dict[str, Any]:
    delay_ms = int(setup.delay_s * 1000)
    settle_ms = int(min(setup.event_settle_s, setup.max_wait_s) * 1000)
    sent_at: dict[str, int] = {}  # flow_id -> its batch's arrival
    heard: dict[tuple, int] = {}  # (ip, port, peer ip, peer port) -> when that end's report arrived
    claimed: dict[str, list[tuple[int, int, int]]] = {}  # ip -> (start, end, arrival) of heartbeats
    for i, (_, _, _, value) in enumerate(schedule):
        at = delivered.get(i)
        if at is None:
            continue
        batch = orjson.loads(value)
        for r in batch if isinstance(batch, list) else [batch]:
            if r.get("kind") == "flow":
                sent_at[r["flow_id"]] = at
                key = (r["local_ip"], r["local_port"], r["remote_ip"], r["remote_port"])
                heard[key] = min(heard.get(key, at), at)
                if r.get("local_workload"):
                    claimed.setdefault(r["local_ip"], []).append((r["start_ms"], r["end_ms"], at))
            elif r.get("kind") == "heartbeat":
                claimed.setdefault(r["ip"], []).append((r["start_ms"], r["end_ms"], at))
    arrivals = sorted(delivered.values())
    lo, hi = arrivals[0] + STEADY_MARGIN_S * 1000, arrivals[-1] - STEADY_MARGIN_S * 1000
    rows = []
    outcomes: dict[str, int] = {}
    for flow_id, (stamp, a) in answers.items():
        sent = sent_at.get(flow_id)
        if sent is None or not lo <= sent <= hi:
            continue
        label = a["outcome"] if a["reason"] is None else f"unattributed.{a['reason']}"
        outcomes[label] = outcomes.get(label, 0) + 1
        if a["outcome"] != "attributed":
            continue
        # An answer from assignment events may not come before they have settled.
        earliest = max(sent, a["start_ms"] + (settle_ms if a["match"] == "event" else delay_ms))
        evidence = _evidence_at(a, heard, claimed)
        rows.append({"match": a["match"], "latency_s": (stamp - earliest) / 1000,
                     "from_delay_s": (stamp - max(sent, a["start_ms"] + delay_ms)) / 1000,
                     "after_evidence_s": (stamp - max(earliest, evidence or 0)) / 1000,
                     "remote_ip": a["remote_ip"], "answered_ms": stamp})
    figures: dict[str, Any] = {
        "setup": setup.describe(), "flows_expected": expected, "answers": len(answers),
        "steady_outcomes": outcomes, "produce_lateness_p99_ms": _pct(lateness, 99),
        "attributed": _spread([r["latency_s"] for r in rows]),
        "from_delay": _spread([r["from_delay_s"] for r in rows]),
        "after_evidence": _spread([r["after_evidence_s"] for r in rows]),
        "by_match": {m: _spread([r["latency_s"] for r in rows if r["match"] == m]) for m in KINDS},
        "histogram": _histogram([r["latency_s"] for r in rows]),
        "slowest": sorted(rows, key=lambda r: -r["latency_s"])[:10],
    }
    return figures


def _evidence_at(a: dict, heard: dict, claimed: dict) -> int | None:
    """When the evidence the answer rests on was delivered: the other end's report of the connection,
    or the first claim (heartbeat or the owner's own flow) covering the flow's start; None for assignment events (already waited for)."""
    if a["match"] == "connection":
        return heard.get((a["remote_ip"], a["remote_port"], a["local_ip"], a["local_port"]))
    if a["match"] == "range":
        covering = [at for s, e, at in claimed.get(a["remote_ip"], ()) if s <= a["start_ms"] <= e]
        return min(covering) if covering else None
    return None


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": _pct(values, 50), "p90": _pct(values, 90), "p99": _pct(values, 99),
            "max": max(values), "over_goal": sum(v > GOAL_S for v in values)}


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else 0.0


def _histogram(values: list[float], width_s: float = 0.5) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        edge = int(max(v, 0) // width_s) * width_s
        counts[f"{edge:g}"] = counts.get(f"{edge:g}", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: float(kv[0])))


def _expected(fleet) -> int:
    away = ("10.1.", "fd00:0:1:")  # flows to the other region are forwarded there, not answered here
    n = sum(1 for *_, v in fleet.flow_messages for r in orjson.loads(v)
            if r["kind"] == "flow" and not r["remote_ip"].startswith(away))
    return n + sum(len(orjson.loads(v)) for *_, v in fleet.forwarded_messages)


def _publish_entitlements(bootstrap: str, topic: str, fleet) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for e in [orjson.loads(m.value) for m in fleet.entitlement_messages]:
        producer.produce(topic, orjson.dumps(e), key=e["exporter"].encode())
    if producer.flush(30):
        raise RuntimeError("could not publish the entitlements")


def _steady_flows(schedule, delivered: dict[int, int]) -> tuple[set[str], int]:
    """The flows whose batch was delivered in the steady window, and the window's end."""
    arrivals = sorted(delivered.values())
    lo, hi = arrivals[0] + STEADY_MARGIN_S * 1000, arrivals[-1] - STEADY_MARGIN_S * 1000
    flows = set()
    for i, (_, _, _, value) in enumerate(schedule):
        if lo <= delivered.get(i, -1) <= hi:
            batch = orjson.loads(value)
            flows.update(r["flow_id"] for r in (batch if isinstance(batch, list) else [batch]) if r.get("kind") == "flow")
    return flows, hi


def _read_answers(bootstrap: str, topic: str, wanted: set[str], deadline_s: float) -> dict[str, tuple[int, dict]]:
    """flow_id -> (the first answer's Kafka timestamp, the answer), once every wanted flow is answered
    or at the deadline (wall clock, s)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    answers: dict[str, tuple[int, dict]] = {}
    missing = set(wanted)
    try:
        while missing and time.time() < deadline_s:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                stamp = msg.timestamp()[1]
                for a in orjson.loads(msg.value()):
                    missing.discard(a["flow_id"])
                    if a["flow_id"] not in answers or stamp < answers[a["flow_id"]][0]:
                        answers[a["flow_id"]] = (stamp, a)
    finally:
        consumer.close()
    return answers


def _stop(job: subprocess.Popen) -> None:
    job.send_signal(signal.SIGINT)
    try:
        job.wait(timeout=30)
    except subprocess.TimeoutExpired:
        job.kill()
        job.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-800:] if path.exists() else ""


def draw(runs: dict[str, Any], path: Path) -> Path | None:
    """A histogram per run of attributed answers' latency, the goal marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], runs.items()):
        bins = r["histogram"]
        edges = [float(e) for e in bins]
        ax.bar(edges, list(bins.values()), width=0.5, align="edge", color="#4477aa")
        ax.axvline(GOAL_S, color="#cc3311", linestyle="--", label=f"goal {GOAL_S:g} s")
        ax.set_yscale("log")
        ax.set_xlabel("seconds after the answer could first exist")
        ax.set_ylabel("attributed answers")
        s = r["setup"]
        ax.set_title(f"{name}: interval {s['interval_s']} s, delay {s['delay_s']:g} s, "
                     f"p99 {r['attributed']['p99']:.1f} s")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def render(record: dict[str, Any]) -> str:
    """The latency section of docs/BENCHMARKS.md, from out/bench/latency.json alone."""
    runs = record["figures"]
    instances = next((r["setup"].get("instances") for r in runs.values() if r["setup"].get("instances")), "?")
    lines = [SECTION, "",
             f"`{record['command']}`. Each run: a simulated fleet ({instances} instances) whose batches are produced at "
             "their delivery time on the wall clock, keyed by exporter, entitlements published first, one job "
             "process reading 6 raw partitions as they come. Latency = the answer's Kafka timestamp - max(its "
             "batch delivered, flow start + delay_s), for every attributed answer (retries included) whose batch "
             f"was delivered from {STEADY_MARGIN_S} s after the first batch to {STEADY_MARGIN_S} s before the last; "
             "an answer from assignment events counts from start + event_settle_s, as the job may not give it "
             "sooner (*p99 from delay* counts it from start + delay_s). *After evidence* also waits until the "
             "evidence the answer rests on was delivered (the other end's report of the connection, or the first "
             "claim covering the start): what is left is the job's own lag. *Late*: evidence the job read after "
             "its clock had passed it (0: a replay answers as the live run did).", "",
             "| run | fleet | answers measured | p50 | p90 | p99 | max | over 5 s | p99 from delay | "
             "p99 after evidence | late |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | | | | | | | |")
            continue
        s, a, e = r["setup"], r["attributed"], r["after_evidence"]
        fleet = (f"{s['duration_s']} s, report every {s['interval_s']} s, delay_s {s['delay_s']:g}, "
                 f"max_wait_s {s['max_wait_s']:g}, event_settle_s {s['event_settle_s']:g}")
        lines.append(f"| {name} | {fleet} | {a['n']:,} | {a['p50']:.2f} s | {a['p90']:.2f} s | {a['p99']:.2f} s | "
                     f"{a['max']:.2f} s | {a['over_goal']:,} | {r['from_delay']['p99']:.2f} s | {e['p99']:.2f} s | "
                 f"{r.get('job_counts', {}).get('late', 0):,} |")
    lines += ["", "By answer kind (attributed answers, match):", "",
              "| run | match | answers | p50 | p90 | p99 | max |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        for m, x in r.get("by_match", {}).items():
            if x["n"]:
                lines.append(f"| {name} | {m} | {x['n']:,} | {x['p50']:.2f} s | {x['p90']:.2f} s | "
                             f"{x['p99']:.2f} s | {x['max']:.2f} s |")
    lines += ["", "Where the time goes:", ""]
    for name, r in runs.items():
        if "attributed" not in r:
            continue
        a, e, s = r["attributed"], r["after_evidence"], r["setup"]
        late_kinds = ", ".join(f"{m} {x['over_goal']:,}" for m, x in r["by_match"].items() if x["n"] and x["over_goal"])
        lines.append(
            f"- {name}: every answer waits for the arrival clock, which trails the wall clock by the caught-up "
            f"margin ({s.get('caught_up_margin_ms', 0) / 1000:g} s) and the readers' check of it: p50 "
            f"{a['p50']:.2f} s. Once the evidence an answer rests on was delivered, the job answered within "
            f"{e['p99']:.2f} s at p99 and {e['max']:.2f} s at most. Of the {a['over_goal']:,} answers beyond {GOAL_S:g} s "
            f"({100 * a['over_goal'] / a['n']:.2f}%; {late_kinds or 'none'}), {a['over_goal'] - e['over_goal']:,} came "
            f"within {GOAL_S:g} s of evidence delivered later: "
            "the other end's report of the connection came in a later or late batch (connection), or a lost "
            "batch left the address uncovered until a later claim, such as a long connection's report, covered "
            "the start (range). Measured from start + delay_s, event answers add event_settle_s - delay_s "
            f"({s['event_settle_s'] - s['delay_s']:g} s), the wait for a late unassignment, by design: p99 from delay "
            f"{r['from_delay']['p99']:.2f} s.")
    verdicts = [f"{name}: p99 {r['attributed']['p99']:.2f} s, goal p99 <= {GOAL_S:g} s "
                f"{'met' if r['attributed']['p99'] <= GOAL_S else 'not met'}"
                for name, r in runs.items() if "attributed" in r]
    lines += ["", "Verdict: " + "; ".join(verdicts) + ".", ""]
    outcomes = "; ".join(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r["steady_outcomes"].items()))
                         for name, r in runs.items() if "steady_outcomes" in r)
    lines += [f"Every answer in the steady window, by outcome: {outcomes}.", ""]
    if record.get("picture"):
        lines += [f"![latency histogram]({record['picture']})", ""]
    return "\n".join(lines)


def update_document(record: dict[str, Any]) -> None:
    """Replace docs/BENCHMARKS.md's latency section (up to the next section) with this run's."""
    text = DOCUMENT.read_text() if DOCUMENT.exists() else "# Benchmarks\n"
    section = render(record).rstrip("\n") + "\n\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    DOCUMENT.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the compressed fleet only, 120 s")
    parser.add_argument("--seconds", type=int, default=200, help="length of the compressed run")
    parser.add_argument("--defaults-seconds", type=int, default=240, help="length of the run at the defaults")
    parser.add_argument("--no-document", action="store_true", help="leave docs/BENCHMARKS.md alone")
    parser.add_argument("--render", action="store_true", help="only render the section from out/bench/latency.json")
    args = parser.parse_args(argv)
    if args.render:
        update_document(json.loads((FIGURES / "latency.json").read_text()))
        return 0
    import tempfile

    from broker.launch import Broker

    setups = [compressed(120 if args.quick else args.seconds)]
    if not args.quick:
        setups.append(defaults(args.defaults_seconds))
    started = time.monotonic()
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="flowattr-latency-") as tmp, Broker() as broker:
        for setup in setups:
            try:
                runs[setup.name] = run(broker.bootstrap, Path(tmp), setup)
            except Exception as e:  # noqa: BLE001 - one failed run is reported, the other still measured
                runs[setup.name] = {"setup": setup.describe(), "error": f"{type(e).__name__}: {e}"}
            r = runs[setup.name]
            if "attributed" in r:
                a = r["attributed"]
                print(f"{setup.name}: {a['n']} attributed answers, p50 {a['p50']:.2f} s, p90 {a['p90']:.2f} s, "
                      f"p99 {a['p99']:.2f} s, max {a['max']:.2f} s; from delay p99 {r['from_delay']['p99']:.2f} s; "
                      f"late {r['job_counts'].get('late', 0)}; after evidence p99 "
                      f"{r['after_evidence']['p99']:.2f} s; by match "
                      + ", ".join(f"{m} p99 {x['p99']:.2f} s (n {x['n']})" for m, x in r["by_match"].items() if x["n"]),
                      flush=True)
            else:
                print(f"{setup.name}: {r.get('error')}", flush=True)
    measured = {name: r for name, r in runs.items() if "histogram" in r}
    picture = draw(measured, PICTURE) if measured else None
    record = {"command": shlex.join([".venv/bin/python", "-m", "bench.latency", *(argv or sys.argv[1:])]),
              "machine": _machine(), "seconds": time.monotonic() - started, "figures": runs}
    if picture is not None:
        record["picture"] = "images/latency.png"
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "latency.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {(FIGURES / 'latency.json').relative_to(REPO)}")
    if not args.no_document:
        update_document(record)
        print(f"updated the latency section of {DOCUMENT.relative_to(REPO)}")
    return 0


def _machine() -> dict[str, str]:
    import platform

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "dataflow"], cwd=REPO, capture_output=True, text=True).stdout
    return {"code": commit.strip() + (" with uncommitted changes in dataflow/" if dirty.strip() else ""),
            "nproc": str(os.cpu_count()), "kernel": platform.release(), "python": platform.python_version()}


if __name__ == "__main__":
    sys.exit(main())
