"""Sustained runs at the default delay (60 s) and max wait (300 s): a paced producer sends a fleet's
batches at a fixed rate for several minutes, one `flowattr run` process answers them, and the job's RSS
is sampled over time and drawn (docs/images/sustained-rss.png). Once the delay and the reports'
retention are full, RSS must stay flat. The same run at two rates, side by side, splits its height over
the idle job into what each pending lookup adds (the slope: its reports, its share of every object and
buffer that grows with the rate) and what does not grow with the rate (the intercept: the exporters'
clocks, which grow with exporters x shards, and the runtime's own). The job's metrics say, at each
sample, how many lookups and reports it holds and the bytes of its packed state by kind, which says
where each part goes. Figures: out/bench/sustained.json."""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from bench.harness import REPO, cpu_seconds, free_port, new_consumer, rss_bytes, save, start_jobs, stop_jobs
from dataflow.clock import PeerClocks
from dataflow.config import AttributionConfig, load_config

PICTURE = REPO / "docs" / "images" / "sustained-rss.png"
HOSTS = 200
WORKLOADS = 40
SAMPLE_S = 5.0
# Both fast enough that nearly every exporter's clock differences in every shard are full (32 within the
# max wait; at 2,000 flows/s they were measured still filling), so that the clocks are about
# the same height in both runs and the slope is what pending lookups cost; and slow enough that the
# job keeps up on two cores shared with the broker and this producer (at 8,000 flows/s its output
# stalled for seconds at a time and RSS swung by 40 MiB with the backlog).
RATES = (3000, 6000)
# The slope of one pair of runs moves by several bytes from one pair to the next on the same code: each
# round gives its own, and the verdict takes the worst.
ROUNDS = 2
# RSS is read once the window is full, over the run's last minute, and only if it has settled there:
# moving by at most this share of itself a minute. A run whose last minute is not flat yet (a backlog
# or the allocator's slack still draining) goes on, up to EXTRA_S more seconds, until it is.
FLAT_SHARE = 0.02
EXTRA_S = 240


# Each host's boot id, for flow_ids in the exporter's own form ("{exporter}:{boot id}:{socket cookie}").
BOOT_IDS = [str(uuid.UUID(int=random.Random(h).getrandbits(128), version=4)) for h in range(HOSTS)]


def host_ip(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}"


def second_of_traffic(rng: random.Random, now_ms: int, flows: int, serial: int) -> dict[int, list[dict]]:
    """flows/2 connections between random hosts that started in the last second, both halves, with
    each host's heartbeat; per host, the batch it sends now."""
    batches: dict[int, list[dict]] = {h: [{"v": 2, "kind": "heartbeat", "exporter": f"h{h}", "region": "us-east",
                                            "ip": host_ip(h), "workload": f"shop/w{h % WORKLOADS}",
                                            "start_ms": now_ms - 1000, "end_ms": now_ms}] for h in range(HOSTS)}
    for c in range(flows // 2):
        a, b = rng.sample(range(HOSTS), 2)
        start = now_ms - 1000 + rng.randrange(900)
        end = start + rng.randrange(1, 100)
        port = 32768 + (serial + c) % 28000
        for me, peer, lport, rport, direction in ((a, b, port, 443, "outbound"), (b, a, 443, port, "inbound")):
            batches[me].append({
                "v": 2, "kind": "flow", "flow_id": f"h{me}:{BOOT_IDS[me]}:{2 * (serial + c) + (direction == 'inbound')}",
                "exporter": f"h{me}",
                "region": "us-east", "local_ip": host_ip(me), "local_port": lport, "remote_ip": host_ip(peer),
                "remote_port": rport, "direction": direction, "start_ms": start, "end_ms": end,
                "bytes_sent": rng.randrange(100_000), "bytes_received": rng.randrange(100_000),
                "local_workload": f"shop/w{me % WORKLOADS}"})
    return batches


def run(bootstrap: str, workdir: Path, seconds: int, rate: int) -> dict[str, Any]:
    from confluent_kafka import Producer

    from dataflow.kafka_io import ensure_topics
    from tests.integration.kafka_io import produce

    prefix = f"sustained{os.urandom(3).hex()}."
    config = load_config(environ={}, overrides={"region": "us-east", "regions": "us-east=10.0.0.0/16;eu-west=10.1.0.0/16"})
    k = config.kafka
    config = replace(config, kafka=replace(
        k, brokers=bootstrap, raw_topic=f"{prefix}flows.raw", ip_events_topic=f"{prefix}ip-events",
        exporters_topic=f"{prefix}exporters", attributed_topic=f"{prefix}flows.attributed",
        dlq_topic=f"{prefix}flows.dlq", forward_prefix=f"{prefix}flows.forward."))
    k = config.kafka
    ensure_topics(config)
    produce(bootstrap, k.exporters_topic,
            [orjson.dumps({"v": 2, "kind": "entitlement", "exporter": f"h{h}", "cidrs": [f"{host_ip(h)}/32"]})
             for h in range(HOSTS)], keys=[f"h{h}".encode() for h in range(HOSTS)])
    port = free_port()
    toml = workdir / "sustained.toml"
    toml.write_text(
        f'region = "us-east"\n[regions]\nus-east = ["10.0.0.0/16"]\neu-west = ["10.1.0.0/16"]\n[kafka]\n'
        f'brokers = "{bootstrap}"\nraw_topic = "{k.raw_topic}"\nip_events_topic = "{k.ip_events_topic}"\n'
        f'exporters_topic = "{k.exporters_topic}"\nattributed_topic = "{k.attributed_topic}"\n'
        f'dlq_topic = "{k.dlq_topic}"\nforward_prefix = "{k.forward_prefix}"\n'
        f'[metrics]\nport = {port}\nhost = "127.0.0.1"\n')
    [job] = start_jobs(toml, 1)
    consumer = new_consumer(bootstrap, [k.attributed_topic])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "20", "compression.type": "lz4"})
    rng = random.Random(17)
    a = AttributionConfig()
    samples: list[dict[str, float]] = []
    produced = answered = 0
    try:
        time.sleep(10)  # the job started and idle: the baseline
        base_rss, cpu0 = rss_bytes(job.pid), cpu_seconds(job.pid)
        began = time.time()
        next_sample = began
        # Only a run long enough to read a full window can be carried on until it is flat.
        extra = EXTRA_S if seconds - 60 >= a.delay_s + a.max_wait_s else 0
        second = 0
        while second < seconds or (second < seconds + extra and not flat(last_minute(samples, second))):
            tick = began + second
            second += 1
            time.sleep(max(0.0, tick - time.time()))
            now_ms = int(time.time() * 1000)
            for host, batch in second_of_traffic(rng, now_ms, rate, (second - 1) * rate).items():
                producer.produce(k.raw_topic, orjson.dumps(batch), key=f"h{host}".encode())
                produced += len(batch) - 1
            producer.poll(0)
            for msg in consumer.consume(10_000, 0):
                if msg.error() is None:
                    answered += msg.value().count(b'"flow_id"')
            if time.time() >= next_sample:
                if job.poll() is not None:
                    raise RuntimeError(f"the job exited {job.returncode}: {job.stderr.read()[-800:]}")
                samples.append({"s": time.time() - began, "rss": rss_bytes(job.pid), "cpu": cpu_seconds(job.pid) - cpu0,
                                "produced": produced, "answered": answered, **held(port)})
                next_sample += SAMPLE_S
        producer.flush(30)
    finally:
        errors = stop_jobs([job])
        consumer.close()
    return {"seconds": second, "planned_s": seconds, "rate": rate, "hosts": HOSTS, "delay_s": a.delay_s, "max_wait_s": a.max_wait_s,
            "base_rss": base_rss, "samples": samples, "error": errors or None}


def run_rates(bootstrap: str, workdir: Path, seconds: int, rates: tuple[int, ...], rounds: int = ROUNDS) -> dict[str, Any]:
    """The sustained run at each rate, each with its own topics and job process, one after the other, and
    the whole `rounds` times over (the rates in turn, so that a slow spell of the machine falls on one
    round rather than on one rate)."""
    return {"runs": [{**run(bootstrap, workdir, seconds, rate), "round": r} for r in range(1, rounds + 1) for rate in rates]}


def held(port: int) -> dict[str, Any]:
    """What the job says it holds: lookups, reports, and the bytes of its packed state by kind."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    got: dict[str, Any] = {"held_bytes": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "flowattr_pending_lookups":
                got["pending"] = int(sample.value)
            elif sample.name == "flowattr_connection_reports":
                got["reports"] = int(sample.value)
            elif sample.name == "flowattr_buffered_evidence":
                got["buffered"] = int(sample.value)
            elif sample.name == "flowattr_held_bytes":
                got["held_bytes"][sample.labels["kind"]] = int(sample.value)
    return got


def last_minute(samples: list[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """The samples of the last minute of a run `seconds` long."""
    return [s for s in samples if s["s"] >= seconds - 60]


def drift_per_min(late: list[dict[str, Any]]) -> float:
    """How far RSS moved a minute from the first of `late` to its last (bytes)."""
    first, last = late[0], late[-1]
    return (last["rss"] - first["rss"]) / max(last["s"] - first["s"], 1e-9) * 60


def flat(late: list[dict[str, Any]]) -> bool:
    """Whether RSS over these samples moved by at most FLAT_SHARE of its median a minute."""
    if len(late) < 2:
        return False
    return abs(drift_per_min(late)) <= FLAT_SHARE * sorted(s["rss"] for s in late)[len(late) // 2]


def plateau(figures: dict[str, Any]) -> dict[str, float] | None:
    """RSS once the window is full (the last minute of the run) and how much it still moved then."""
    full_at = figures["delay_s"] + figures["max_wait_s"]
    late = [s for s in last_minute(figures["samples"], figures["seconds"]) if s["s"] >= full_at]
    if len(late) < 2:
        return None
    rss = sorted(s["rss"] for s in late)[len(late) // 2]
    window = [s for s in figures["samples"] if s["s"] >= 60]
    cpu_rate = (window[-1]["cpu"] - window[0]["cpu"]) / max(window[-1]["s"] - window[0]["s"], 1e-9) if len(window) > 1 else 0
    flows_rate = (window[-1]["answered"] - window[0]["answered"]) / max(window[-1]["s"] - window[0]["s"], 1e-9) if len(window) > 1 else 0
    counted = [s for s in late if "pending" in s]
    kinds = sorted({kind for s in counted for kind in s["held_bytes"]})
    expected = figures["rate"] * figures["delay_s"]
    held_pending = _median([s["pending"] for s in counted])
    return {"rss": rss, "drift_per_min": drift_per_min(late), "flat": flat(late),
            "growth": rss - figures["base_rss"], "expected_pending": expected,
            # What the job says it holds, else what the rate and the delay make it hold.
            "pending": held_pending or expected,
            "reports": figures["rate"] * (figures["delay_s"] + figures["max_wait_s"]),
            "cpu_per_s": cpu_rate, "answered_per_s": flows_rate,
            # The job's own count over the same samples (medians), when its metrics answered.
            "held_pending": held_pending,
            "held_reports": _median([s.get("reports", 0) for s in counted]),
            "buffered": _median([s["buffered"] for s in counted if "buffered" in s]),
            "held_bytes": {kind: _median([s["held_bytes"].get(kind, 0) for s in counted]) for kind in kinds}}


def marginal(figures: dict[str, Any]) -> dict[str, Any] | None:
    """The round whose pending lookups cost the most: the verdict and the planning figures take the worst
    of the repeats."""
    every = splits(figures)
    return max(every, key=lambda x: x["per_pending"]["growth"]) if every else None


def splits(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each round's split (`split`), in round order."""
    rounds: dict[int, list[dict[str, Any]]] = {}
    for f in figures["runs"]:
        rounds.setdefault(f.get("round", 1), []).append(f)
    every = [(r, split(runs)) for r, runs in sorted(rounds.items())]
    return [{**x, "round": r} for r, x in every if x]


def split(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What one more pending lookup costs (the slope of the growth over the idle job against the lookups
    held, between the lowest and the highest rate of `runs`) and what the growth holds whatever the rate
    (the intercept), in all and by kind: the packed lookups, reports and clocks the job counts, and the rest."""
    points = [(f, plateau(f)) for f in runs if not f.get("error")]
    points = [(f, p) for f, p in points if p and p["held_pending"]]
    if len(points) < 2:
        return None
    (slow, low), (fast, high) = min(points, key=lambda x: x[1]["pending"]), max(points, key=lambda x: x[1]["pending"])
    span = high["pending"] - low["pending"]
    if span <= 0:
        return None

    def parts(p: dict[str, Any]) -> dict[str, float]:
        packed = {kind: float(p["held_bytes"].get(kind, 0)) for kind in ("lookups", "reports", "clocks")}
        return {**packed, "rest": p["growth"] - sum(packed.values()), "growth": float(p["growth"])}

    a, b = parts(low), parts(high)
    slope = {kind: (b[kind] - a[kind]) / span for kind in a}
    return {"per_pending": slope, "fixed": {kind: a[kind] - slope[kind] * low["pending"] for kind in a},
            "low": {**low, "rate": slow["rate"]}, "high": {**high, "rate": fast["rate"]}}


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _median(values: list[int]) -> int | None:
    return sorted(values)[len(values) // 2] if values else None


def draw(figures: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    runs = [f for f in figures["runs"] if f.get("samples")]
    for f in runs:
        line, = ax.plot([s["s"] for s in f["samples"]], [s["rss"] / 2**20 for s in f["samples"]],
                        label=f"job RSS, {f['rate']:,} flows/s, round {f.get('round', 1)}")
        ax.axhline(f["base_rss"] / 2**20, color=line.get_color(), linestyle=":", label="idle job before its stream")
    first = runs[0]
    for x, label in ((first["delay_s"], "delay"), (first["delay_s"] + first["max_wait_s"], "delay + max wait")):
        ax.axvline(x, color="grey", linestyle="--")
        ax.text(x, ax.get_ylim()[1] * 0.98, f" {label}", va="top", fontsize=8)
    ax.set_xlabel("seconds since the stream started")
    ax.set_ylabel("MiB")
    ax.set_title(f"flowattr run, delay {first['delay_s']:g} s, max wait {first['max_wait_s']:g} s")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PICTURE, dpi=100)
    plt.close(fig)


def render(record: dict[str, Any]) -> str:
    f = record["figures"]
    runs = f["runs"]
    one = runs[0]
    rates = " and ".join(f"{r:,}" for r in dict.fromkeys(run["rate"] for run in runs))
    rounds = max(run.get("round", 1) for run in runs)
    head = ["## Sustained runs at the defaults", "",
            f"A paced producer sends {rates} flows/s ({one['hosts']} hosts, each shipping one batch a second with a",
            f"heartbeat; every connection reported by both ends) for {one.get('planned_s', one['seconds'])} s, and on for up to "
            f"{EXTRA_S} s more while RSS over the last minute is not flat, to one `flowattr run` process at",
            f"delay_s {one['delay_s']:g} and max_wait_s {one['max_wait_s']:g}, one rate after the other, each on its own",
            f"topics and in a fresh job process, in {rounds} round{'s' if rounds > 1 else ''} (every rate once a round); "
            f"its RSS is sampled every {SAMPLE_S:g} s and its metrics scraped with it.", "",
            f"![RSS over time]({PICTURE.relative_to(REPO / 'docs')})", "",
            "| round | flows/s | length | RSS once the window was full | over the idle job | drift over the last minute | lookups held "
            "| reports held | works waiting for the clock | growth per lookup held | CPU s a second | flows per CPU second |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        p = plateau(run) if run.get("samples") else None
        if p is None:
            head.append(f"| {run.get('round', 1)} | {run['rate']:,} | {run['seconds']} s "
                        f"| {run.get('error') or 'too short to fill the window'} | | | | | | | | |")
            continue
        settled = "flat" if p["flat"] else "**not flat**"
        head.append(f"| {run.get('round', 1)} | {run['rate']:,} | {run['seconds']} s | {p['rss'] / 2**20:,.0f} MiB "
                    f"| {p['growth'] / 2**20:,.0f} MiB "
                    f"| {p['drift_per_min'] / 2**20:+.1f} MiB a minute ({settled}) | {p['pending']:,.0f} "
                    f"| {p['held_reports'] or 0:,} | {_count(p.get('buffered'))} | {p['growth'] / p['pending']:,.0f} B "
                    f"| {p['cpu_per_s']:.2f} "
                    f"| {p['answered_per_s'] / max(p['cpu_per_s'], 1e-9):,.0f} |")
    head += ["", "*Lookups held* are those waiting for their first try (about rate x delay); *reports held* the "
             "connection reports kept for the other end's lookup; *works waiting for the clock* the input, one "
             "work per message and shard (its lookups packed), that the arrival clock has not reached yet (`flowattr_buffered_evidence`). "
             f"*Drift* within {FLAT_SHARE:.0%} of RSS a minute is flat.", ""]
    every, worst = splits(f), marginal(f)
    if worst is None:
        return "\n".join(head + ["No round filled the window at two rates: the growth is not split.", ""])
    rows = [("packed lookups", "lookups"), ("packed connection reports", "reports"),
            ("packed clock differences (each shard's, of each exporter it hears of)", "clocks"),
            ("the rest: object headers, dicts and heaps, the allocator's slack, the works waiting for the "
             "clock, the runtime's and the Kafka clients' buffers", "rest"), ("**RSS over the idle job**", "growth")]
    slope = worst["per_pending"]["growth"]
    verdict = "met" if slope <= 200 else "missed"
    if not (worst["low"]["flat"] and worst["high"]["flat"]):
        verdict += ", from a run whose RSS was still moving: not settled"
    each = "; ".join(f"round {x['round']}: {x['per_pending']['growth']:,.0f} B between {x['low']['pending']:,.0f} and "
                     f"{x['high']['pending']:,.0f} lookups held, {x['fixed']['growth'] / 2**20:,.1f} MiB whatever the rate"
                     for x in every)
    return "\n".join(head + [
        f"What each pending lookup added to RSS, its share of the reports included (the slope of the growth between "
        f"the two rates of a round), and what did not grow with the rate (the intercept): {each}. The worst round: "
        f"**{slope:,.0f} B** per pending flow (goal <= 200 B: **{verdict}**). By kind, from the job's own count over",
        "the same samples (`flowattr_held_bytes`: the packed bytes of each kind, before Python's object headers and",
        "the allocator's slack):", "",
        "| held | " + " | ".join(f"round {x['round']}: B per pending lookup (slope) | MiB whatever the rate (intercept)"
                               for x in every) + " |",
        "|---|" + "---:|---:|" * len(every),
        *[f"| {name} | " + " | ".join(f"{x['per_pending'][kind]:,.0f} | {x['fixed'][kind] / 2**20:,.1f}" for x in every) + " |"
          for name, kind in rows], "",
        f"The clocks keep up to {PeerClocks.SAMPLES} differences per exporter and shard, each for the max wait: their packed",
        f"bytes were {worst['low']['held_bytes'].get('clocks', 0) / 2**20:,.1f} MiB at {worst['low']['rate']:,} flows/s and "
        f"{worst['high']['held_bytes'].get('clocks', 0) / 2**20:,.1f} MiB at {worst['high']['rate']:,} in round "
        f"{worst['round']} ({one['hosts']} exporters, 128 shards).",
        ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=480, help="length of the paced stream")
    parser.add_argument("--rates", type=lambda text: tuple(int(r) for r in text.split(",")), default=RATES,
                        help="flows per second of each run, comma-separated")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="how many times to run every rate")
    args = parser.parse_args(argv)
    import tempfile

    from broker.launch import Broker

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flowattr-bench-") as tmp, Broker() as broker:
        figures = run_rates(broker.bootstrap, Path(tmp), args.seconds, args.rates, args.rounds)
    draw(figures)
    save("sustained", figures, started)
    print(render({"figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
