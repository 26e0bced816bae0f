"""docs/BENCHMARKS.md from this run's figures only (out/bench/*.json, which `make bench` empties first):
each benchmark renders its own section, verdicts computed from its figures; the planning figures and
the worked example combine them. A benchmark that did not run leaves its section out and says so."""

from __future__ import annotations

import json
import sys
from typing import Any

from bench import ceilings, exporter_bench, memory, scale_out, sustained, throughput
from bench.harness import FIGURES, REPO

DOCUMENT = REPO / "docs" / "BENCHMARKS.md"
FLEET_RATE = 5_000_000  # the worked example: a fleet of this many flows/s


def load(name: str) -> dict[str, Any] | None:
    path = FIGURES / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def planning(tput: dict | None, mem: dict | None, sus: dict | None) -> str:
    """Per-process figures a fleet-size deployment plans with, and what they give for FLEET_RATE."""
    per_core = throughput.per_core(tput["figures"]) if tput else None
    split = sustained.marginal(sus["figures"]) if sus else None
    lines = ["## Planning figures, per process (one worker, one core)", ""]
    if not (per_core and split and mem):
        return "\n".join(lines + ["Not all of throughput, memory and the sustained runs were measured in this run.", ""])
    high = split["high"]
    per_address = mem["figures"]["addresses"]["bytes_per_address"]
    per_pending = split["per_pending"]["growth"]
    fixed = split["fixed"]["growth"]
    # Lookups held per 1k flows/s, as the faster run held them (about the delay's worth).
    window_per_1k = per_pending * high["pending"] / (high["rate"] / 1000)
    base = min(f["base_rss"] for f in sus["figures"]["runs"])
    cores = FLEET_RATE / per_core
    processes = int(-(-cores // 1))
    per_process_rate = FLEET_RATE / processes
    ram_process = base + fixed + window_per_1k * per_process_rate / 1000
    return "\n".join(lines + [
        "| figure | value | from |", "|---|---:|---|",
        f"| flows per CPU second | {per_core:,.0f} | throughput, Kafka, 1 process |",
        f"| RAM of an idle job process | {base / 2**20:,.0f} MiB | sustained runs, before the stream |",
        f"| RAM that does not grow with the rate | {fixed / 2**20:,.1f} MiB with {sus['figures']['runs'][0]['hosts']} "
        f"exporters and 128 shards ({split['fixed']['clocks'] / 2**20:,.1f} MiB of it packed clock differences, which grow with "
        "exporters x shards) | sustained runs, intercept |",
        f"| per pending flow (its reports included) | {per_pending:,.0f} B | sustained runs, slope |",
        f"| RAM per 1k flows/s sustained (delay 60 s, max wait 300 s) | {window_per_1k / 2**20:,.1f} MiB | slope x lookups held per 1k flows/s |",
        f"| per tracked address (one ownership range) | {per_address:,.0f} B | memory |", "",
        f"Worked example, {FLEET_RATE:,} flows/s: at {per_core:,.0f} flows per CPU second that is {cores:,.0f} cores, so "
        f"{processes:,} single-worker processes at {per_process_rate:,.0f} flows/s each (with `attribution.shards` at least "
        f"{processes:,}, so that every process holds some), each holding about {ram_process / 2**30:,.2f} GiB "
        f"({base / 2**20:,.0f} MiB idle + {fixed / 2**20:,.1f} MiB + {window_per_1k / 2**20:,.1f} MiB per 1k flows/s), "
        f"{processes * ram_process / 2**40:,.2f} TiB in all, plus {per_address:,.0f} B for every address the fleet uses "
        "(kept for retention_s after its last heartbeat), spread over the processes by shard, and the clocks of",
        "every exporter each process hears of. Cores shared with Kafka clients and the runtime are included in the",
        "per-core figure (it counts every CPU second of the job).", ""])


def document() -> str:
    runs = {name: load(name) for name in ("throughput", "ceilings", "scale_out", "at_rest", "memory", "sustained",
                                          "latency", "exporter_bench")}
    tput = runs["throughput"]
    parts = ["# Benchmarks", "",
             "Written by `make bench` from the figures of its benchmarks (out/bench/*.json); nothing here is typed by",
             "hand. It never fails on timing. Each section names the command that measured it and the code it ran."]
    machine = next((r["machine"] for r in runs.values() if r), None)
    if machine:
        parts += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".",
                  "Two cores shared by the broker, the job and the bench's own producers and consumers."]
    parts += ["", "| benchmark | command | code | seconds |", "|---|---|---|---:|"]
    parts += [f"| {name} | `{r['command']}` | {r.get('machine', {}).get('code', '-')} | {r['seconds']:.0f} |" for name, r in runs.items() if r]
    missing = [name for name, r in runs.items() if not r]
    if missing:
        parts += ["", f"Not measured in this run: {', '.join(missing)}."]
    parts.append("")
    if tput:
        parts.append(throughput.render(tput, runs["at_rest"]))
    if runs["ceilings"]:
        parts.append(ceilings.render(runs["ceilings"], throughput.per_core(tput["figures"]) if tput else None))
    if runs["scale_out"]:
        parts.append(scale_out.render(runs["scale_out"], runs["at_rest"]))
    if runs["memory"]:
        parts.append(memory.render(runs["memory"]))
    if runs["sustained"]:
        parts.append(sustained.render(runs["sustained"]))
    parts.append(planning(tput, runs["memory"], runs["sustained"]))
    if runs["latency"]:
        from bench import latency

        parts.append(latency.render(runs["latency"]))
    if runs["exporter_bench"]:
        parts.append(exporter_bench.render(runs["exporter_bench"]))
    errors = [f"- {name} / {section}: {x['error']}" for name, r in runs.items() if r
              for section, x in r["figures"].items() if isinstance(x, dict) and x.get("error")]
    if errors:
        parts += ["## Errors", "", *errors, ""]
    return "\n".join(parts)


def main() -> int:
    DOCUMENT.write_text(document())
    print(f"wrote {DOCUMENT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
