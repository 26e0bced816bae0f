"""make eval: the heartbeat dataflow and the event-based baselines over a grid of simulated fleets
(churn x report delay x batch loss x clock skew) and over hostile fleets (lying hosts, forged reports,
shared addresses, broken clocks, stale peers), side by side, with the gateway's dependencies checked
against its routing configuration. Writes docs/ACCURACY.md and the dependency graph images."""

from __future__ import annotations

import argparse
import itertools
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from bytewax.testing import run_main

from bench.baseline import attribute_by_events
from bench.dependency_graph import gateway_dependencies, render
from dataflow import simulate as sim
from dataflow.config import FilesConfig, load_config
from dataflow.file_io import read_outputs
from dataflow.flow import build
from dataflow.regions import RegionMap
from dataflow.routing import Tally

HOLDBACK_MS = 15 * 60_000
GRID = {
    "mean_lifetime_s": (300.0, 60.0),  # churn: instances live 5 min, or 1 min
    "mean_delay_s": (3.0, 45.0),  # mean report delay after each 1-minute batch (exponential)
    "batch_loss": (0.01, 0.05),
    "skew_ms": (0, 300),
}
# Hostile fleets, each the default scenario with one thing gone wrong, and then all of them at once.
HOSTILE = {
    "liars": {"liars": 2, "lie_s": 300.0},
    "forged": {"forged_reports": 20},
    "shared": {"shared_addresses": 3, "workloads_per_shared_address": 3},
    "fast": {"fast_clock_s": 1200.0},
    "future": {"future_end_s": 3000.0},
    "skew": {"skew_ms": 5000},
    "stale": {"stale_peer_share": 0.05},
}
HOSTILE["all"] = {k: v for overrides in HOSTILE.values() for k, v in overrides.items()}
ATTRIBUTORS = {
    "flowattr": "flowattr",
    "events": "events (owner now)",
    "events+15min": f"events+{HOLDBACK_MS // 60_000} min (owner now)",
    "events@start+15min": f"events+{HOLDBACK_MS // 60_000} min (owner at start)",
}


@dataclass
class Score:
    flows: int
    misattributed: int
    unattributed: int
    dependencies: set[str]
    wrong_dependencies: set[str]

    def row(self) -> list[str]:
        deps = len(self.dependencies)
        wrong = 100 * len(self.wrong_dependencies) / deps if deps else 0.0
        return [
            f"{100 * self.misattributed / self.flows:.2f}",
            f"{100 * self.unattributed / self.flows:.2f}",
            f"{wrong:.0f} ({len(self.wrong_dependencies)}/{deps})",
        ]


@dataclass
class Result:
    label: str
    fleet: sim.Fleet
    scores: dict[str, Score]


def score(answers: Iterable[dict[str, Any]], truth: Mapping[str, str | None], routes: set[str]) -> Score:
    """Over the flows whose remote address is this region's and that have a truth (an owner or nobody)."""
    flows = misattributed = unattributed = 0
    kept = []
    for a in answers:
        if a["outcome"] == "external" or a["flow_id"] not in truth:
            continue
        kept.append(a)
        flows += 1
        owner = truth[a["flow_id"]]
        if a["outcome"] == "attributed":
            misattributed += a["remote_workload"] != owner
        elif owner is not None:
            unattributed += 1
    dependencies = gateway_dependencies(kept)
    return Score(flows, misattributed, unattributed, dependencies, dependencies - routes)


def evaluate(scenario: sim.Scenario, workdir: Path) -> tuple[sim.Fleet, dict[str, Score]]:
    """One scenario: simulate it, run the dataflow and the baselines over it, score them all."""
    fleet = sim.simulate(scenario)
    folder = sim.write(fleet, workdir / "input")
    # The scenarios start at a fixed moment, so the same seed gives the same table on any day.
    config = load_config(environ={}, overrides={"attribution.max_age_s": 3650 * 86400})
    config = replace(
        config,
        region=sim.HOME,
        regions=sim.regions_config(),
        files=FilesConfig(input_dir=str(folder), output_dir=str(workdir / "output")),
    )
    run_main(build(config, Tally()))
    routes = set(fleet.routing.values())
    heartbeats = read_outputs(workdir / "output", "attributed")
    regions = RegionMap(config.regions)
    scores = {"flowattr": score(heartbeats, fleet.truth, routes)}
    for name, holdback, at_start in (("events", 0, False), ("events+15min", HOLDBACK_MS, False),
                                     ("events@start+15min", HOLDBACK_MS, True)):
        answers = attribute_by_events(fleet.flow_messages, fleet.forwarded_messages, fleet.assignment_messages,
                                      regions, sim.HOME, holdback, at_start)
        scores[name] = score(answers, fleet.truth, routes)
    return fleet, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/ACCURACY.md")
    parser.add_argument("--images", default="docs/images")
    parser.add_argument("--seed", type=int, default=sim.Scenario.seed)
    args = parser.parse_args(argv)
    command = "make eval  # " + shlex.join([Path(sys.executable).name, "-m", "bench.accuracy", *(argv or sys.argv[1:])])
    default = sim.Scenario(seed=args.seed, start_ms=1_780_000_000_000)
    grid, hostile = [], []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        names = list(GRID)
        for i, values in enumerate(itertools.product(*GRID.values())):
            scenario = replace(default, **dict(zip(names, values)))
            is_default = scenario == default
            label = " ".join(_label(n, v) for n, v in zip(names, values)) + (" **(default)**" if is_default else "")
            grid.append(_run(label, scenario, Path(tmp) / f"g{i}"))
            if is_default:
                scores = grid[-1].scores
                images = render(grid[-1].fleet.routing, {ATTRIBUTORS[k]: s.dependencies for k, s in scores.items()},
                                Path(args.images))
        for i, (name, overrides) in enumerate(HOSTILE.items()):
            scenario = replace(default, **overrides)
            hostile.append(_run(_hostile(name, scenario)[0], scenario, Path(tmp) / f"h{i}"))
    elapsed = time.monotonic() - started
    Path(args.out).write_text(_document(command, grid, hostile, images, default, elapsed))
    print(f"wrote {args.out} and {', '.join(str(p) for p in images)} in {elapsed:.0f} s")
    wrong = [r for r in grid + hostile if r.scores["flowattr"].misattributed]
    for r in wrong:
        print(f"MISATTRIBUTED: flowattr named the wrong workload for {r.scores['flowattr'].misattributed} flows"
              f" in scenario {r.label}", file=sys.stderr)
    return 1 if wrong else 0


def _run(label: str, scenario: sim.Scenario, workdir: Path) -> Result:
    fleet, scores = evaluate(scenario, workdir)
    print(f"{label:<60} " + "  ".join(f"{k}: {' '.join(s.row())}" for k, s in scores.items()), flush=True)
    return Result(label, fleet, scores)


def _label(name: str, value: Any) -> str:
    return {
        "mean_lifetime_s": f"life {value:.0f}s",
        "mean_delay_s": f"delay {value:.0f}s",
        "batch_loss": f"loss {100 * value:.0f}%",
        "skew_ms": f"skew ±{value}ms",
    }[name]


def _table(results: list[Result], hostile: bool) -> str:
    header = ["scenario", "flows"] + (["false claims", "made-up flows"] if hostile else []) + ["flowattr mis (flows)"]
    for name in ATTRIBUTORS:
        header += [f"{ATTRIBUTORS[name]} {column}" for column in ("mis %", "unattr %", "wrong deps %")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        flowattr = r.scores["flowattr"]
        cells = [r.label, str(flowattr.flows)]
        if hostile:
            cells += [str(r.fleet.lies), str(len(r.fleet.made_up))]
        cells.append(str(flowattr.misattributed) if not flowattr.misattributed else f"**{flowattr.misattributed}**")
        for name in ATTRIBUTORS:
            cells.extend(r.scores[name].row())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(results: list[Result]) -> str:
    wrong = [r for r in results if r.scores["flowattr"].misattributed]
    total = sum(r.scores["flowattr"].flows for r in results)
    if not wrong:
        verdict = f"**flowattr misattributed no flow in any of the {len(results)} scenarios ({total} flows scored).**"
    else:
        listed = "; ".join(f"{r.label}: {r.scores['flowattr'].misattributed}" for r in wrong)
        verdict = f"**flowattr misattributed flows in {len(wrong)} of the {len(results)} scenarios** ({listed})."
    totals = []
    for name, title in ATTRIBUTORS.items():
        flows = sum(r.scores[name].misattributed for r in results)
        scenarios = sum(1 for r in results if r.scores[name].misattributed)
        totals.append(f"| {title} | {flows} | {scenarios} of {len(results)} |")
    return "\n".join([verdict, "", "| attributor | misattributed flows, all scenarios | scenarios with any |",
                      "|---|---|---|", *totals])


def _document(command: str, grid: list[Result], hostile: list[Result], images, default: sim.Scenario,
              elapsed: float) -> str:
    image = Path(images[1]).relative_to("docs") if str(images[1]).startswith("docs") else images[1]
    settings = load_config(environ={})
    described = "\n".join(f"- **{label}**: {text}" for label, text in
                          (_hostile(n, replace(default, **HOSTILE[n])) for n in HOSTILE if n != "all"))
    return f"""# Accuracy

Regenerate with `make eval` ({elapsed:.0f} s on this machine). Command:

    {command}

Machine: {platform.node()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}.

{_verdict(grid + hostile)}

Each scenario is a simulated fleet (`dataflow/simulate.py`, seed {default.seed}) of {default.services}
workloads x {default.instances_per_service} instances over {default.duration_s // 60} minutes, addresses
reused 0-{default.reuse_gap_s:.0f} s after release, exporters reporting {default.interval_s} s batches
({100 * default.late_share:.0f}% of them {default.late_delay_s:.0f} s late), load balancers known only from
events, {100 * default.cross_region_share:.0f}% of flows to a second region, {100 * default.ipv6_share:.0f}%
IPv6. Every input message carries the time the broker would have stamped on it and its exporter's key;
the job reads the exporters' entitlements (each host may claim the addresses its workloads were given).

- **flowattr**: the dataflow of this repository, in file mode, default settings (delay
  {settings.attribution.delay_s:.0f} s, max wait {settings.attribution.max_wait_s:.0f} s, skew guard
  {settings.attribution.skew_guard_ms} ms, clock bound {settings.trust.clock_bound_s:.0f} s, entitlements required).
- **events (owner now)**: the design heartbeats replace: address -> workload from every assignment and
  unassignment event as it arrives (1-{default.event_delay_max_s:.0f} s late,
  {100 * default.event_very_late_share:.0f}% {default.event_very_late_s / 60:.0f} min late), each flow named by
  the owner when it arrives.
- **{ATTRIBUTORS["events+15min"]}**: the same with a {HOLDBACK_MS // 60_000}-minute holdback before the lookup.
- **{ATTRIBUTORS["events@start+15min"]}**: the strongest honest form of the event-based design: after a
  {HOLDBACK_MS // 60_000}-minute holdback, the events that have arrived by then, ordered by their time, name the owner at the
  flow's start (as the flow's record states it). On shared addresses the events carry the port range,
  and the lookup uses the flow's remote port. Its answers come {HOLDBACK_MS // 60_000} minutes after each flow arrives; and
  here the platform's events are complete and stamped with the true time of each assignment, which is
  what it rests on (the simulation loses no event and gives none a wrong time).

**flows**: flows whose remote address is in this region and that have a truth: the workload that owned
the remote address (on a shared address: the remote port) at the flow's true start, or nobody.
**flowattr mis (flows)**: how many of them flowattr attributed to a workload that was not that owner.
**mis %**: the same as a share of flows. **unattr %**: left unattributed although an owner existed.
**wrong deps %**: of the gateway dependencies reconstructed from the attributed flows, the share its
routing configuration does not contain (wrong edges / edges).

## The grid

Instance lifetime (churn), mean report delay, share of batches lost, and host clock skew (uniform
within ±).

{_table(grid, hostile=False)}

The gateway's dependency graph for the default scenario, wrong edges in red:

![gateway dependencies]({image})

## Hostile fleets

The default scenario with one thing gone wrong, then all of them at once:

{described}

**false claims**: records shipped (heartbeats and flows) whose local address is not one their exporter
is entitled to. **made-up flows**: flows reporting no real connection (the liars' and the forged ones,
scored like every other flow by the true owner of their remote address).

{_table(hostile, hostile=True)}
"""


def _hostile(name: str, s: sim.Scenario) -> tuple[str, str]:
    """A hostile scenario's label and what it does, from its settings."""
    return {
        "liars": (f"liars: {s.liars} hosts claim another workload's address for {s.lie_s / 60:.0f} min",
                  "a live host heartbeats an address another live workload owns and reports made-up connections"
                  " from it to live servers, naming its own workload."),
        "forged": (f"forged mirrored reports: {s.forged_reports}",
                   "a host reports one end of a real connection between two other workloads as its own (the"
                   " mirror that would answer the other end's lookup), naming its own workload."),
        "shared": (f"shared IPv4: {s.shared_addresses} addresses x {s.workloads_per_shared_address} workloads"
                   " by port range",
                   f"workloads behind one IPv4 address each hold a port range; when one leaves, another workload"
                   f" takes the same range 0-{s.reuse_gap_s:.0f} s later; peers call the port of the workload"
                   " they want."),
        "fast": (f"one exporter's clock {s.fast_clock_s / 60:.0f} min fast",
                 "the exporter of a longest-lived host stamps every record that far ahead (its batches still"
                 " arrive on time)."),
        "future": (f"one flow ending {s.future_end_s / 60:.0f} min ahead",
                   "one valid flow to an outside address carries an end_ms that far beyond its true end."),
        "skew": (f"skew ±{s.skew_ms / 1000:.0f} s between hosts", "every host's clock is off by up to that much"
                 " (uniform)."),
        "stale": (f"stale peers: {100 * s.stale_peer_share:.0f}% of calls to an address its owner left",
                  f"calls go to an address of the callee that left up to {sim.STALE_WINDOW_MS // 60_000} min"
                  " earlier: nobody answers (truth: nobody), or the address's new owner does (truth: the new"
                  " owner)."),
        "all": ("all of the above at once", ""),
    }[name]


if __name__ == "__main__":
    sys.exit(main())
