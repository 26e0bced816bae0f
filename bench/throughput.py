"""The job's flows per CPU second on the simulated fleet: in file mode (in-process, no Kafka) and end to
end through the real broker (one `flowattr run` process, Kafka to Kafka), medians of repeated runs,
with a cProfile of each saying where the time goes. Figures: out/bench/throughput.json."""

from __future__ import annotations

import cProfile
import gc
import io
import json
import os
import pstats
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import at_rest, fleet
from bench.harness import cpu_seconds, guarded, median_run, new_consumer, rss_bytes, start_jobs, stop_jobs, trim_profile
from dataflow import simulate as sim
from dataflow.config import FilesConfig

TARGET_PER_CORE = 100_000
PYTHON_SOURCE = "file mode, Python source (not compiled)"
SAMPLED = "file mode, sampled (py-spy)"
# Stacks read a hundred times a second: with native frames, each read stops the job for a few ms, and at
# more the sampler falls behind on two busy cores.
SAMPLE_HZ = 100
# Where the job's time goes, by the cumulative time of the function that does each stage (the largest, when
# a name is defined more than once in its module: the outermost). Nested stages are shown under theirs.
STAGES = (
    ("route: decode, place addresses, weigh trust, group by shard", "dataflow/routing.py", "route", 0),
    ("decode and check the records", "dataflow/records.py", "decode_message", 1),
    ("read input files", "dataflow/file_io.py", "next_batch", 0),
    ("pack each lookup as it comes, before the arrival clock reaches it", "dataflow/attribution.py", "_packed", 0),
    ("apply evidence to shards, hold lookups (retries it triggers included)", "dataflow/attribution.py", "_apply", 0),
    ("decide due lookups", "dataflow/attribution.py", "_decide_due", 0),
    ("compare the two ends' clocks", "dataflow/attribution.py", "_sample_clocks", 1),
    ("rebuild answered records", "dataflow/attribution.py", "_record", 1),
    ("encode answers into output messages", "dataflow/flow.py", "_messages", 0),
    ("write answers to files", "dataflow/file_io.py", "write_batch", 0),
)


def stages(stats: pstats.Stats) -> dict[str, Any]:
    """Each stage's share of the profiled time; what no stage holds is the runtime, Kafka and the rest."""
    cumulative: dict[tuple[str, str], float] = {}
    for (path, _, name), (_, _, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = (path.replace(str(fleet.REPO) + "/", ""), name)
        cumulative[key] = max(cumulative.get(key, 0.0), ct)
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    shares = [(label, depth, cumulative[(path, name)] / total) for label, path, name, depth in STAGES
              if (path, name) in cumulative]
    top = sum(share for _, depth, share in shares if depth == 0)
    return {"total_s": total, "shares": shares, "rest": max(0.0, 1 - top)}


def sampled_stages(raw: str, within: str = "file_mode") -> dict[str, Any]:
    """The stages' shares of a sampling profile (py-spy's raw stacks, `frame;frame;... count`): a stage's
    share is of the stacks with its function anywhere in them, each stack counted once, of all the stacks
    inside `within` (the job's run, without the process's start-up). A compiled function's frame is named
    by its class and name (`Shard__decide_due`), its Python one by its name alone; both are the stage's."""
    total = 0
    inside: dict[str, int] = {label: 0 for label, *_ in STAGES}
    own: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        if not any(name == within for name, _ in frames):
            continue
        n = int(count)
        total += n
        own[f"{frames[-1][0]} ({frames[-1][1]})"] += n
        for label, path, name, _ in STAGES:
            file = path.rsplit("/", 1)[-1]
            if any(where == file and _is_function(frame, name) for frame, where in frames):
                inside[label] += n
    if not total:
        return {}
    shares = [(label, depth, inside[label] / total) for label, _, _, depth in STAGES if inside[label]]
    top = sum(share for _, depth, share in shares if depth == 0)
    lines = [f"{'samples':>8} {'share':>6}  where the sampled stack was (its innermost frame)"]
    lines += [f"{n:>8} {100 * n / total:5.1f}%  {where}" for where, n in own.most_common(22)]
    return {"samples": total, "shares": shares, "rest": max(0.0, 1 - top), "profile": "\n".join(lines)}


def _frame(text: str) -> tuple[str, str]:
    """(function, file name) of one of py-spy's frames, `function (path:line)` or `function (library)`."""
    name, _, where = text.rpartition(" (")
    if not name:
        return text, ""
    where = where.rstrip(")").rsplit(":", 1)[0] if where[-2:-1].isdigit() else where.rstrip(")")
    return name, where.rsplit("/", 1)[-1]


def _is_function(frame: str, name: str) -> bool:
    return frame == name or (frame.endswith("_" + name) and frame[: -len(name) - 1].isidentifier()
                             and frame[:1].isupper())


def file_mode_sampled(records: fleet.Records, workdir: Path) -> dict[str, Any]:
    """The compiled file-mode run in a fresh process under a sampling profiler (py-spy, native frames
    included, so that the compiled modules' own functions show). It reads the stacks from outside, so a
    stage's share is what its time was, not what a hook at every call and return made it."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        raise RuntimeError(f"no {spy}: `make venv` installs it (pyproject.toml, the eval extra)")
    raw = workdir / "sampled.txt"
    run = subprocess.run([str(spy), "record", "--native", "--rate", str(SAMPLE_HZ), "--format", "raw", "--output", str(raw),
                          "--", sys.executable, "-m", "bench.throughput", str(records.folder), str(records.flows),
                          str(workdir)], env=os.environ | {"DATAFLOW_PURE": "0"}, cwd=fleet.REPO,
                         capture_output=True, text=True, timeout=1800)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if not lines or not raw.exists():
        raise RuntimeError(f"the sampled run left no figures (exit {run.returncode}): {run.stderr[-2000:]}")
    stages = sampled_stages(raw.read_text())
    return {**json.loads(lines[-1]), "stages": {k: stages[k] for k in ("samples", "shares", "rest") if k in stages},
            "profile": stages.get("profile", "")}


@dataclass
class Progress:
    """Flows seen in the output topics over time, with the job processes' CPU at each moment."""

    points: list[tuple[float, int, float]] = field(default_factory=list)  # (monotonic, flows, job cpu s)

    def crossing(self, flows: int) -> tuple[float, int, float] | None:
        return next((p for p in self.points if p[1] >= flows), None)

    def phases(self, started: float, flows: int) -> dict[str, dict[str, float]] | None:
        """The run cut where its first flow and where 99% of its flows were out: start-up, answering,
        and waiting (for the arrival clock to pass the last lookups' max wait), each in wall and CPU s."""
        first, most = self.crossing(1), self.crossing(-(-flows * 99 // 100))
        if not first or not most:
            return None
        last = self.points[-1]
        cuts = [("start-up", (started, 0, 0.0), first), ("answering", first, most), ("waiting", most, last)]
        return {name: {"wall_s": b[0] - a[0], "cpu_s": b[2] - a[2], "flows": b[1] - a[1]} for name, a, b in cuts}


def end_to_end(bootstrap: str, records: fleet.Records, workdir: Path, processes: int, timeout_s: float,
               profile: bool = False) -> dict[str, Any]:
    """The records pre-loaded; `flowattr run` in `processes` processes timed until every flow is in the
    attributed or the forward topic."""
    prefix = f"e2e{processes}{'p' if profile else ''}{os.urandom(3).hex()}."  # fresh topics for every run
    profile_path = workdir / f"{prefix}prof"
    config = fleet.prepare_run_topics(bootstrap, records, prefix)
    toml = fleet.write_toml(config, workdir / f"{prefix}toml")
    consumer = new_consumer(bootstrap, [config.kafka.attributed_topic, config.forward_topic(sim.AWAY)])
    started = time.monotonic()
    jobs = start_jobs(toml, processes, profile_path if profile else None)
    try:
        progress = Progress()
        flows, first_output = 0, None
        deadline = started + timeout_s
        while flows < records.flows and time.monotonic() < deadline and all(j.poll() is None for j in jobs):
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    flows += msg.value().count(b'"flow_id"')
            now = time.monotonic()
            if flows and first_output is None:
                first_output = now
            progress.points.append((now, flows, sum(cpu_seconds(j.pid) for j in jobs)))
        ended = time.monotonic()
        cpu = progress.points[-1][2] if progress.points else 0.0
        peak = max((rss_bytes(j.pid, "VmHWM") for j in jobs if j.poll() is None), default=0)
    finally:
        errors = stop_jobs(jobs)
        consumer.close()
    result: dict[str, Any] = {
        "processes": processes, "flows": flows, "expected": records.flows, "complete": flows >= records.flows,
        "wall_s": ended - started, "cpu_s": cpu, "first_output_s": (first_output - started) if first_output else None,
        "peak_rss": peak,
    }
    if not result["complete"]:
        result["error"] = f"{flows} of {records.flows} flows within {timeout_s:.0f} s; " + errors
    result["phases"] = progress.phases(started, records.flows)
    if profile and profile_path.exists():
        text = io.StringIO()
        stats = pstats.Stats(str(profile_path), stream=text)
        stats.sort_stats("tottime").print_stats(22)
        result["profile"] = trim_profile(text.getvalue())
        result["stages"] = stages(stats)
    return result


def file_mode(folder: Path, flows: int, workdir: Path, profile: bool) -> dict[str, Any]:
    """The same job on the file-mode folder, in this process (`bytewax.testing.run_main`), no Kafka."""
    from bytewax.testing import run_main

    from dataflow.flow import build
    from dataflow.routing import Tally

    out = workdir / ("file-profiled" if profile else "file")
    config = replace(fleet.job_config(), files=FilesConfig(input_dir=str(folder), output_dir=str(out)))
    tally = Tally()
    profiler = cProfile.Profile(time.process_time) if profile else None
    gc.collect()
    wall, cpu = time.monotonic(), time.process_time()
    if profiler:
        profiler.enable()
    run_main(build(config, tally))
    if profiler:
        profiler.disable()
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    counts = tally.snapshot()
    answered = sum(v for k, v in counts.items() if k.startswith(("out.", "forwarded.")))
    result = {"wall_s": wall, "cpu_s": cpu, "flows": answered, "complete": answered == flows}
    if profiler:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(22)
        result["profile"] = trim_profile(text.getvalue())
        result["stages"] = stages(stats)
    return result


def file_mode_process(records: fleet.Records, workdir: Path, source: bool) -> dict[str, Any]:
    """A file-mode run in a fresh process, on the compiled modules or (`source`) on their Python source
    (DATAFLOW_PURE=1): the two builds side by side, neither carrying the bench's own objects."""
    run = subprocess.run([sys.executable, "-m", "bench.throughput", str(records.folder), str(records.flows), str(workdir)],
                         env=os.environ | {"DATAFLOW_PURE": "1" if source else "0"}, cwd=fleet.REPO,
                         capture_output=True, text=True, timeout=1200)
    if run.returncode:
        raise RuntimeError(f"file mode exited {run.returncode}: {run.stderr[-2000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def run(records: fleet.Records, workdir: Path, bootstrap: str | None, repeat: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"records": records.describe()}
    guarded("file mode", lambda: median_run(lambda: file_mode_process(records, workdir, source=False), repeat), figures)
    guarded(PYTHON_SOURCE, lambda: median_run(lambda: file_mode_process(records, workdir, source=True), repeat), figures)
    guarded("file mode, cProfile", lambda: file_mode(records.folder, records.flows, workdir, profile=True), figures)
    guarded(SAMPLED, lambda: file_mode_sampled(records, workdir), figures)
    if bootstrap:
        guarded("kafka, 1 process", lambda: median_run(lambda: end_to_end(bootstrap, records, workdir, 1, 600), repeat),
                figures)
        guarded("kafka, 1 process, cProfile", lambda: end_to_end(bootstrap, records, workdir, 1, 600, profile=True), figures)
    return figures


def per_core(figures: dict[str, Any]) -> float | None:
    """Every flow over every CPU second of the job (1 process, Kafka to Kafka)."""
    one = figures.get("kafka, 1 process", {})
    return one["flows"] / one["cpu_s"] if one.get("cpu_s") and one.get("complete") else None


def answering(run: dict[str, Any]) -> dict[str, float] | None:
    """The run's answering phase: from its first flow out until 99% were out, with no start-up and no
    wait for the last lookups' max wait."""
    return (run.get("phases") or {}).get("answering")


def _per_s(n: float, s: float | None) -> str:
    return f"{n / s:,.0f}" if s else "-"


def table(figures: dict[str, Any]) -> list[str]:
    rows = ["| run | wall s | flows/s | CPU s | flows per CPU second | peak RSS | runs (wall s) |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for name in ("kafka, 1 process", "file mode", PYTHON_SOURCE, "file mode, cProfile", SAMPLED, "kafka, 1 process, cProfile"):
        x = figures.get(name)
        if not x or "wall_s" not in x:
            continue
        runs = ", ".join(f"{w:.1f}" for w in x.get("runs_wall_s", []))
        note = "" if x.get("complete") else " (INCOMPLETE)"
        peak = f"{x['peak_rss'] / 2**20:,.0f} MiB" if x.get("peak_rss") else "-"
        rows.append(f"| {name}{note} | {x['wall_s']:.1f} | {_per_s(x['flows'], x['wall_s'])} | {x['cpu_s']:.1f} "
                    f"| {_per_s(x['flows'], x['cpu_s'])} | {peak} | {runs} |")
        busy = answering(x)
        if busy and "cProfile" not in name and name != SAMPLED:
            rows.append(f"| {name}, answering (first flow out -> 99% out) | {busy['wall_s']:.1f} "
                        f"| {_per_s(busy['flows'], busy['wall_s'])} | {busy['cpu_s']:.1f} "
                        f"| {_per_s(busy['flows'], busy['cpu_s'])} | | |")
    return rows


def phase_table(figures: dict[str, Any], rest: dict[str, Any] | None) -> list[str]:
    """Where the Kafka run's CPU seconds went in time, against what Bytewax spends doing nothing."""
    run = figures.get("kafka, 1 process", {})
    phases = run.get("phases")
    if not phases or not run.get("cpu_s"):
        return []
    rows = ["| phase | wall s | CPU s | share of the CPU | CPU s a wall second | flows out |", "|---|---:|---:|---:|---:|---:|"]
    for name, x in phases.items():
        rate = x["cpu_s"] / x["wall_s"] if x["wall_s"] else 0.0
        rows.append(f"| {name} | {x['wall_s']:.1f} | {x['cpu_s']:.1f} | {100 * x['cpu_s'] / run['cpu_s']:.0f}% "
                    f"| {rate:.3f} | {x['flows']:,} |")
    floor = at_rest.cpu_per_s(rest, 1)
    waiting = phases["waiting"]
    lines = ["### Where the CPU seconds go in time", "",
             "The median Kafka run cut where its first flow and where 99% of its flows were out. In the waiting",
             "phase the job holds the last lookups until the arrival clock passes their max wait, with nothing",
             "to read.", "", *rows, ""]
    if floor and waiting["wall_s"]:
        share = floor * waiting["wall_s"] / run["cpu_s"]
        lines += [f"A Bytewax dataflow with nothing to do (`bench/at_rest.py`, see Scale out) spends "
                  f"{floor:.3f} CPU s a wall second in one process: its worker wakes every millisecond. Over the waiting "
                  f"phase that floor alone is {100 * share:.0f}% of the run's CPU. Without the waiting phase the run "
                  f"would have answered {_per_s(run['flows'] - waiting['flows'], run['cpu_s'] - waiting['cpu_s'])} "
                  "flows per CPU second.", ""]
    return lines


def stage_table(figures: dict[str, Any], core: float | None) -> list[str]:
    """The profiled runs' stages side by side, with what each costs a flow at the unprofiled rate."""
    runs = [(name, figures[name]["stages"]) for name in ("kafka, 1 process, cProfile", "file mode, cProfile", SAMPLED)
            if figures.get(name, {}).get("stages")]
    if not runs:
        return []
    per_flow = {"kafka, 1 process, cProfile": 1e6 / core if core else None}
    file_mode_run = figures.get("file mode", {})
    if file_mode_run.get("cpu_s"):
        per_flow["file mode, cProfile"] = per_flow[SAMPLED] = 1e6 * file_mode_run["cpu_s"] / file_mode_run["flows"]
    labels: list[tuple[str, int]] = []
    for _, st in runs:
        for label, depth, _ in st["shares"]:
            if (label, depth) not in labels:
                labels.append((label, depth))
    head = "| stage | " + " | ".join(f"{name}: share | µs a flow" for name, _ in runs) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(runs)]
    for label, depth in labels + [("the runtime (Bytewax), Kafka clients and the rest", 0)]:
        cells = []
        for name, st in runs:
            share = st["rest"] if label.startswith("the runtime") else next(
                (x for l, d, x in st["shares"] if l == label), None)
            us = per_flow.get(name)
            cells.append("- | -" if share is None else f"{100 * share:.0f}% | {share * us:.1f}" if us else f"{100 * share:.0f}% | -")
        rows.append(f"| {'&nbsp;&nbsp;of which: ' if depth else ''}{label} | " + " | ".join(cells) + " |")
    return ["### Where the time goes", "",
            "Shares of each profiled run's CPU time by stage (cProfile: the cumulative time of the function doing",
            "it; sampled: the share of the sampled stacks that have that function in them), and what that share is",
            "of one flow's cost in the unprofiled run of the same mode (the median above). The",
            f"goal allows {1e6 / TARGET_PER_CORE:.0f} µs a flow in all. The sampled run's stacks are read "
            f"{SAMPLE_HZ} times a second from outside the process and stop it for each read, which adds time",
            "evenly wherever the process is rather than at every call: its shares are the ones to plan with.", "",
            *rows, ""]


def profiling_cost(figures: dict[str, Any]) -> list[str]:
    """How much the profiler multiplied each mode's CPU seconds, from this run's figures."""
    pairs = [(mode, figures.get(plain, {}), figures.get(f"{plain}, cProfile", {}))
             for mode, plain in (("file mode", "file mode"), ("Kafka", "kafka, 1 process"))]
    cost = [f"{mode} {profiled['cpu_s'] / plain['cpu_s']:.1f}x" for mode, plain, profiled in pairs
            if plain.get("cpu_s") and profiled.get("cpu_s")]
    if not cost:
        return []
    return [f"The profiler multiplied the CPU seconds ({', '.join(cost)}): it reads the CPU clock at every call and",
            "return, so stages made of many small calls weigh more in its shares than in the unprofiled runs, and the",
            "runtime's own loop, which makes few, weighs less: the per-record stages' shares below are likely larger",
            "than their true ones.", ""]


def compiled_gain(figures: dict[str, Any]) -> list[str]:
    built, source = figures.get("file mode", {}), figures.get(PYTHON_SOURCE, {})
    if not built.get("cpu_s") or not source.get("cpu_s"):
        return []
    ratio = (built["flows"] / built["cpu_s"]) / (source["flows"] / source["cpu_s"])
    return [f"Compiled over Python source, file mode: **{ratio:.2f}x** the flows per CPU second "
            f"({1e6 * source['cpu_s'] / source['flows']:.0f} -> {1e6 * built['cpu_s'] / built['flows']:.0f} µs a flow).", ""]


def render(record: dict[str, Any], rest: dict[str, Any] | None = None) -> str:
    figures = record["figures"]
    r = figures["records"]
    core = per_core(figures)
    verdict = ("not measured" if core is None else f"**met**: {core:,.0f}" if core >= TARGET_PER_CORE
               else f"**missed** by {TARGET_PER_CORE / core:.1f}x: {core:,.0f} flows per CPU second, "
                    f"{1e6 / core:.0f} µs a flow against {1e6 / TARGET_PER_CORE:.0f}")
    profiles = phase_table(figures, rest) + stage_table(figures, core)
    if figures.get(SAMPLED, {}).get("profile"):
        profiles += [f"### Profile: {SAMPLED} (where the samples fell)", "",
                     "The innermost frame of each sampled stack: a function of a compiled module, or the interpreter's",
                     "own code (reference counting inlined into the compiled modules shows as object.h), or a library's.",
                     "", "```", figures[SAMPLED]["profile"], "```", ""]
    for name in ("file mode, cProfile", "kafka, 1 process, cProfile"):
        if figures.get(name, {}).get("profile"):
            profiles += [f"### Profile: {name} (top functions by own time)", "", "```", figures[name]["profile"], "```", ""]
    return "\n".join([
        "## Throughput", "",
        f"One simulated fleet (`dataflow/simulate.py`, seed {r['seed']}): {r['services']} workloads x "
        f"{r['instances_per_service']} instances over {r['minutes']} min, exporters reporting every {r['interval_s']} s "
        f"(the job with delay_s {r['delay_s']:g}, max_wait_s {r['max_wait_s']:g}); **{r['flows']:,} flows** "
        f"({r['raw_flows']:,} raw, {r['forwarded_flows']:,} forwarded in), {r['records']:,} records in {r['messages']:,} "
        f"messages ({r['raw_bytes'] / 1e6:.0f} MB of JSON), the raw topic in {r['raw_partitions']} partitions keyed by exporter.",
        "*kafka*: the records pre-loaded, `flowattr run` started and timed until every flow is out (start-up and the",
        "final wait for the arrival clock included; CPU = utime + stime of the job process from /proc; peak RSS:",
        "the most the job process held, VmHWM, read as it ends: a replay's memory, every partition read at once).",
        "*file mode*: the same job on the same batches as files, each run in a fresh process; *Python source*: the",
        "same with DATAFLOW_PURE=1, the per-record modules imported from their source instead of their compiled",
        "build (setup.py). The cProfile runs (file mode in the bench's process, Kafka in the job's) time by the",
        "process's CPU clock, every thread's, not the wall clock (`bench/cpu_profile.py`): a wait costs them",
        "nothing.", "",
        *table(figures), "",
        *profiling_cost(figures),
        *compiled_gain(figures),
        f"Goal: >= {TARGET_PER_CORE:,} flows per CPU second end to end (1 process, every flow over every CPU second): {verdict}.",
        "",
        *profiles,
    ])


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("run through `python -m bench.run` (it loads the topics once for every benchmark)")
    print(json.dumps(file_mode(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), profile=False)))
