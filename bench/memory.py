"""Bytes of RAM per pending flow at the default delay and max wait: a fleet whose flows all start within
one minute, so that none can be decided before the input ends, held by one process at N and at 10N
flows; the difference of the two RSS figures over the difference of the flows is the cost of one."""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import random
import subprocess
import sys
import time
import uuid

import orjson

from bench.harness import REPO, save
from dataflow.attribution import Progress, Shard
from dataflow.config import AttributionConfig, Config, load_config
from dataflow.entitlements import Entitlements
from dataflow.packed import CARRIED
from dataflow.records import Origin
from dataflow.routing import Message, Router, Tally

TARGET_BYTES = 200
NOT_SHARDS = ("forward", "answered", "dead")

HOSTS = 500
WORKLOADS = 50
WINDOW_MS = 55_000  # every flow starts and arrives within the delay: nothing is due before the end
T0 = int(time.time() * 1000) - 3_600_000
# Each host's boot id, for flow_ids in the exporter's own form ("{exporter}:{boot id}:{socket cookie}").
BOOT_IDS = [str(uuid.UUID(int=random.Random(h).getrandbits(128), version=4)) for h in range(HOSTS)]


def host_ip(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}"


def fleet_messages(flows: int, reports: bool = True, seed: int = 5) -> tuple[list[tuple[int, bytes, bytes]], list[dict], Config]:
    """Both halves of flows/2 connections between HOSTS hosts, shipped once a second per host, with a
    heartbeat per host per batch; (arrival ms, key, value) in arrival order, the entitlements, the config."""
    rng = random.Random(seed)
    per_host: dict[int, list[dict]] = {}
    for c in range(flows // 2):
        a, b = rng.sample(range(HOSTS), 2)
        start = T0 + rng.randrange(WINDOW_MS - 2000)
        end = start + rng.randrange(1, 1500)
        port = 32768 + c % 28000
        for me, peer, lport, rport, direction in ((a, b, port, 443, "outbound"), (b, a, 443, port, "inbound")):
            per_host.setdefault(me, []).append({
                "v": 2, "kind": "flow", "flow_id": f"h{me}:{BOOT_IDS[me]}:{2 * c + (direction == 'inbound')}", "exporter": f"h{me}",
                "region": "us-east", "local_ip": host_ip(me), "local_port": lport, "remote_ip": host_ip(peer),
                "remote_port": rport, "direction": direction, "start_ms": start, "end_ms": end,
                "bytes_sent": rng.randrange(100_000), "bytes_received": rng.randrange(100_000),
                "local_workload": f"shop/w{me % WORKLOADS}" if reports else None,
            })
    messages = []
    for host, records in per_host.items():
        records.sort(key=lambda r: r["end_ms"])
        batches: dict[int, list] = {}
        for r in records:
            batches.setdefault((r["end_ms"] - T0) // 1000 + 1, []).append(r)
        for second, batch in batches.items():
            sent = T0 + second * 1000
            beat = {"v": 2, "kind": "heartbeat", "exporter": f"h{host}", "region": "us-east", "ip": host_ip(host),
                    "workload": f"shop/w{host % WORKLOADS}", "start_ms": T0, "end_ms": sent}
            messages.append((sent + rng.randrange(100), f"h{host}".encode(), orjson.dumps([beat, *batch])))
    messages.sort(key=lambda m: m[0])
    entitlements = [{"v": 2, "kind": "entitlement", "exporter": f"h{i}", "cidrs": [f"{host_ip(i)}/32"]}
                    for i in range(HOSTS)]
    config = load_config(overrides={"region": "us-east",
                                    "regions": {"us-east": ["10.0.0.0/16"], "eu-west": ["10.1.0.0/16"]}}, environ={})
    return messages, entitlements, config


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def hold(flows: int, reports: bool) -> dict:
    """In this process: route and apply every message as the job does (one Router, a Shard per shard
    key, the default settings), then the process's RSS over what it had before the first message."""
    messages, entitlement_records, config = fleet_messages(flows, reports)
    entitlements = Entitlements(True, {e["exporter"]: tuple(e["cidrs"]) for e in entitlement_records})
    origin = Origin("flows.raw", 0, 0, "raw")
    router = Router(config, Tally(), entitlements)
    partitions = frozenset({("raw", 0)})
    # Every shard already knows the fleet's names (exporters, their boot ids, workloads), as a job that has
    # run a while does: the names a shard keeps once grow with the hosts, not with the pending flows, and
    # N flows are too few to have shown every host's names to every shard.
    shards = {key: Shard(config.attribution, partitions) for key in router.shard_keys}
    for shard in shards.values():
        for name in ["us-east", *(f"h{h}" for h in range(HOSTS)), *BOOT_IDS, *(f"shop/w{w}" for w in range(WORKLOADS))]:
            shard.names.number(name)
    gc.collect()
    before = _rss_bytes()
    cpu = time.process_time()
    for arrival, key, value in messages:
        for shard_key, item in router.route([Message(value, origin, key=key, arrival_ms=arrival)]):
            if shard_key in NOT_SHARDS:
                continue
            shards[shard_key].absorb(item)
    cpu = time.process_time() - cpu
    messages.clear()
    gc.collect()
    rss = _rss_bytes() - before
    # What a recovery snapshot of these shards writes: each pickled as ShardLogic.snapshot pickles it.
    snapshot = sum(len(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)) for s in shards.values())
    return {"flows": flows, "pending": sum(s.pending() for s in shards.values()),
            "reports": sum(s.report_count for s in shards.values()),
            "rss_bytes": rss, "snapshot_bytes": snapshot, "cpu_s": cpu}


def hold_addresses(addresses: int) -> dict:
    """In this process: one heartbeat for each of `addresses` addresses (a range each), routed and applied
    as the job does; the process's RSS over what it had before, per tracked address."""
    config = load_config(overrides={"region": "us-east", "regions": {"us-east": ["10.0.0.0/8"]}}, environ={})
    router = Router(config, Tally(), Entitlements(False, {}))
    shards: dict[str, Shard] = {}
    partitions = frozenset({("raw", 0)})
    origin = Origin("flows.raw", 0, 0, "raw")
    gc.collect()
    before = _rss_bytes()
    for lo in range(0, addresses, 1000):
        batch = [{"v": 2, "kind": "heartbeat", "exporter": f"h{n // 1000}", "region": "us-east",
                  "ip": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "workload": f"svc-{n % 2000}",
                  "start_ms": T0 + n % 997, "end_ms": T0 + 50_000} for n in range(lo, min(addresses, lo + 1000))]
        message = Message(orjson.dumps(batch), origin, key=f"h{lo // 1000}".encode(), arrival_ms=T0 + 60_000 + lo // 1000)
        for shard_key, item in router.route([message]):
            if shard_key not in NOT_SHARDS:
                shard = shards.get(shard_key)
                if shard is None:
                    shard = shards[shard_key] = Shard(config.attribution, partitions)
                shard.absorb(item)
    # The input has been read past every heartbeat's arrival: each claim is applied, none left waiting.
    read = Progress({("raw", 0): T0 + 120_000})
    for shard in shards.values():
        shard.absorb(read)
    gc.collect()
    tracked = sum(len(s.ranges) for s in shards.values())
    assert all(not s.inbox for s in shards.values()), "heartbeats left unapplied"
    return {"addresses": tracked, "rss_bytes": _rss_bytes() - before}


def _child(args: list[str]) -> dict:
    return json.loads(subprocess.run([sys.executable, "-m", "bench.memory", *args], cwd=REPO, check=True,
                                     capture_output=True, text=True).stdout)


REPEATS = 3  # RSS moves by a few bytes a flow from one fresh process to the next: the median of these


def measure(n: int) -> dict:
    """N and 10N flows, each size in a fresh process; with and without a connection report per flow."""
    figures = {}
    for reports in (True, False):
        repeats = []
        for _ in range(REPEATS):
            small, large = (_child(["--child", str(size)] + ([] if reports else ["--no-reports"])) for size in (n, 10 * n))
            pending = large["pending"] - small["pending"]
            repeats.append({"runs": [small, large], "bytes_per_pending_flow": (large["rss_bytes"] - small["rss_bytes"]) / pending,
                            "snapshot_bytes_per_pending_flow": (large["snapshot_bytes"] - small["snapshot_bytes"]) / pending})
        repeats.sort(key=lambda r: r["bytes_per_pending_flow"])
        figures["with_reports" if reports else "lookups_only"] = {
            **repeats[len(repeats) // 2], "repeats": [r["bytes_per_pending_flow"] for r in repeats]}
    small, large = (_child(["--addresses", str(size)]) for size in (5 * n, 50 * n))
    figures["addresses"] = {"runs": [small, large], "bytes_per_address":
                            (large["rss_bytes"] - small["rss_bytes"]) / (large["addresses"] - small["addresses"])}
    return figures


def render(record: dict) -> str:
    figures = record["figures"]
    both, lookups = figures["with_reports"], figures["lookups_only"]
    lines = ["## Memory per pending flow (default delay 60 s, max wait 300 s)", "",
             "Flows that all start and arrive within 55 s, so that none is due before the input ends, routed and",
             "applied by one process as the job does; RSS after the last message over RSS before the first,",
             "each size in a fresh process, the cost of one flow = the difference between N and 10N flows.",
             f"{HOSTS} hosts, every flow_id in the exporter's form (`exporter:boot id:socket cookie`); every shard",
             "knows the fleet's names (exporters, boot ids, workloads) before the first message, as in a job that has",
             "run a while.", "",
             "| flows | pending | connection reports | RSS MB | recovery snapshot MB | CPU s |", "|---|---|---|---|---|---|"]
    for name in ("with_reports", "lookups_only"):
        for r in figures[name]["runs"]:
            lines.append(f"| {r['flows']:,} | {r['pending']:,} | {r['reports']:,} | {r['rss_bytes'] / 1e6:.1f} "
                         f"| {r['snapshot_bytes'] / 1e6:.1f} | {r['cpu_s']:.1f} |")
    report = both["bytes_per_pending_flow"] - lookups["bytes_per_pending_flow"]
    a = AttributionConfig()
    kept_s = a.delay_s + a.max_wait_s
    verdict = "meets" if both["bytes_per_pending_flow"] <= TARGET_BYTES else "misses"
    alone = "meets" if lookups["bytes_per_pending_flow"] <= TARGET_BYTES else "misses"
    # The goal is no growth at all with the pending flows.
    snapshot_verdict = "met" if max(both["snapshot_bytes_per_pending_flow"], lookups["snapshot_bytes_per_pending_flow"]) <= 0 else "missed"
    lines += ["",
              f"- a pending lookup with the connection report its flow leaves: **{both['bytes_per_pending_flow']:.0f} B**"
              f" ({verdict} the goal of {TARGET_BYTES} B);",
              f"- a pending lookup alone (flows without a local workload leave no report): "
              f"**{lookups['bytes_per_pending_flow']:.0f} B** ({alone} the goal); so a connection report costs about "
              f"**{report:.0f} B** more.",
              *(f"- {name}: the median of {len(figures[key]['repeats'])} measurements, "
                f"{', '.join(f'{b:.0f}' for b in figures[key]['repeats'])} B (the table shows the median one's runs);"
                for name, key in (("with its report", "with_reports"), ("alone", "lookups_only"))
                if "repeats" in figures[key]),
              "- A connection report that came before its other end's lookup goes along with the lookup"
              f" ({CARRIED.size} B in it);",
              "  one that came after waits in the shard's table until that lookup is answered from it. Reports no",
              f"  lookup used are kept delay + max wait after their arrival ({kept_s:g} s at the defaults), at most",
              "  `max_connections_per_shard` a shard; a lookup waits delay after its start"
              f" ({a.delay_s:g} s), longer only while no evidence answers it. The sustained run below shows what a",
              "  steady stream holds.",
              f"- A recovery snapshot (every shard pickled as the job snapshots it at each epoch when recovery is on)"
              f" grows by **{both['snapshot_bytes_per_pending_flow']:.0f} B** per pending lookup with its report,"
              f" **{lookups['snapshot_bytes_per_pending_flow']:.0f} B** alone: it holds the packed waiting lookups and"
              " reports, the ranges, and the input the clock has not reached (the goal is a snapshot that does not grow"
              f" with the pending flows: **{snapshot_verdict}**; keeping them out would take re-reading the raw topic on"
              " restart, which is not built).",
              ""]
    addresses = figures.get("addresses")
    if addresses:
        small, large = addresses["runs"]
        lines += ["### Per tracked address", "",
                  f"One heartbeat each for {small['addresses']:,} and for {large['addresses']:,} addresses (one ownership range",
                  "each), routed and applied the same way, each in a fresh process: "
                  f"**{addresses['bytes_per_address']:.0f} B per tracked address** "
                  f"(RSS {small['rss_bytes'] / 1e6:.1f} and {large['rss_bytes'] / 1e6:.1f} MB).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=20_000, help="N: the runs hold N and 10N flows")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-reports", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--addresses", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.addresses:
        print(json.dumps(hold_addresses(args.addresses)))
        return 0
    if args.child:
        print(json.dumps(hold(args.child, not args.no_reports)))
        return 0
    started = time.monotonic()
    figures = measure(args.flows)
    save("memory", figures, started)
    print(render({"figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
