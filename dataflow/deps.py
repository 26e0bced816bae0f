"""`flowattr deps`: the workload dependency graph (who calls whom, with flows and bytes per edge) from
the attributed topic, as a table, Graphviz dot, or a picture (SVG, PNG)."""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from dataflow.config import Config, ConfigError
from dataflow.records import ATTRIBUTED_OUTCOME, iter_records
from dataflow.tail import format_bytes
from dataflow.times import HELP as TIME_HELP
from dataflow.times import parse_time
from dataflow.topic_reader import BEGINNING, TopicReader, consumer

EXAMPLES = """examples:
  flowattr deps                                   # every edge in flows.attributed, as a table
  flowattr deps --since 1h --workload gateway     # what gateway called and what called it, last hour
  flowattr deps --format svg -O deps.svg          # the picture
  flowattr deps --format dot | dot -Tpng > deps.png
"""
FORMATS = ("table", "dot", "svg", "png")


def register(sub) -> None:
    deps = sub.add_parser(
        "deps", help="the workload dependency graph from the attributed topic: table, dot, svg or png",
        epilog=EXAMPLES + f"\nTIME is {TIME_HELP}. A connection reported by both of its ends counts once.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deps.add_argument("topic", nargs="?", help="the attributed topic (default: kafka.attributed_topic)")
    deps.add_argument("--brokers", help="Kafka bootstrap servers")
    deps.add_argument("--since", metavar="TIME", help="answers that arrived at TIME or later (default: all)")
    deps.add_argument("--workload", action="append", metavar="W", help="only edges to or from W (repeatable)")
    deps.add_argument("--format", choices=FORMATS, default="table")
    deps.add_argument("-O", "--output", metavar="FILE", help="where svg/png go (default: flowattr-deps.FORMAT)")
    deps.set_defaults(handler=deps_command)


@dataclass(frozen=True, slots=True)
class Edge:
    caller: str
    callee: str
    flows: int
    bytes: int


@dataclass
class _Reports:
    """One client-server address pair's reports, from each end: each end reports every connection once."""

    outbound: int = 0
    inbound: int = 0
    outbound_bytes: int = 0
    inbound_bytes: int = 0


@dataclass
class Dependencies:
    """Edges built from attributed flows; what could not be placed on an edge is counted, not dropped."""

    pairs: dict[tuple, _Reports] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    left_out: Counter[str] = field(default_factory=Counter)
    answers: int = 0

    def add(self, answer: dict[str, Any]) -> None:
        self.answers += 1
        if answer.get("flow_id") in self.seen:
            self.left_out["repeated answer"] += 1
            return
        self.seen.add(answer.get("flow_id"))
        if answer.get("outcome") != ATTRIBUTED_OUTCOME:
            self.left_out[answer.get("reason") or answer.get("outcome") or "not an answer"] += 1
            return
        local, remote = answer.get("local_workload"), answer["remote_workload"]
        if local is None:
            self.left_out["local end unknown"] += 1
            return
        ends = ((answer["local_ip"], answer["local_port"]), (answer["remote_ip"], answer["remote_port"]))
        outbound = answer["direction"] == "outbound"
        caller, callee = (local, remote) if outbound else (remote, local)
        client, server = ends if outbound else ends[::-1]
        reports = self.pairs.setdefault((caller, callee, client, server), _Reports())
        size = answer["bytes_sent"] + answer["bytes_received"]
        if outbound:
            reports.outbound += 1
            reports.outbound_bytes += size
        else:
            reports.inbound += 1
            reports.inbound_bytes += size

    def edges(self, workloads: Iterable[str] = ()) -> list[Edge]:
        """Heaviest first. Both ends report a connection: per address pair, the end that reported more."""
        only = set(workloads)
        flows: Counter[tuple[str, str]] = Counter()
        size: Counter[tuple[str, str]] = Counter()
        for (caller, callee, _, _), r in self.pairs.items():
            if only and caller not in only and callee not in only:
                continue
            n, b = (r.outbound, r.outbound_bytes) if r.outbound >= r.inbound else (r.inbound, r.inbound_bytes)
            flows[caller, callee] += n
            size[caller, callee] += b
        return sorted((Edge(a, b, n, size[a, b]) for (a, b), n in flows.items()),
                      key=lambda e: (-e.flows, e.caller, e.callee))


def deps_command(args, config: Config) -> int:
    topic = args.topic or config.kafka.attributed_topic
    at = parse_time(args.since) if args.since else BEGINNING
    if args.format in ("svg", "png"):
        _check_matplotlib()
    found = Dependencies()
    client = consumer(config)
    try:
        reader = TopicReader(client, topic)
        reader.start(at)
        for message in reader.messages():
            if message is not None and message.value() is not None:
                for record in iter_records(message.value()):
                    if isinstance(record, dict) and record.get("kind") == "attributed":
                        found.add(record)
    finally:
        client.close()
    edges = found.edges(args.workload or ())
    if args.format == "table":
        print(table(edges))
    elif args.format == "dot":
        print(dot(edges))
    else:
        path = Path(args.output or f"flowattr-deps.{args.format}")
        title = f"{topic}: {len(edges)} edges, {sum(e.flows for e in edges)} flows"
        draw_dependencies(edges, path, title)
        print(f"flowattr deps: {path}")
    print(summary(found, edges), file=sys.stderr)
    return 0


def summary(found: Dependencies, edges: list[Edge]) -> str:
    workloads = {e.caller for e in edges} | {e.callee for e in edges}
    line = f"{len(edges)} edges between {len(workloads)} workloads, {sum(e.flows for e in edges)} connections"
    line += f" from {found.answers} answers"
    if found.left_out:
        line += "; not on an edge: " + ", ".join(f"{k} {v}" for k, v in sorted(found.left_out.items()))
    return line


def table(edges: list[Edge]) -> str:
    width = max([len(e.caller) for e in edges] + [len(e.callee) for e in edges] + [6])
    lines = [f"{'CALLER':<{width}}  {'CALLEE':<{width}}  {'FLOWS':>8}  {'BYTES':>10}"]
    lines += [f"{e.caller:<{width}}  {e.callee:<{width}}  {e.flows:>8}  {format_bytes(e.bytes):>10}" for e in edges]
    return "\n".join(lines)


def dot(edges: list[Edge]) -> str:
    heaviest = max([e.flows for e in edges] + [1])
    lines = ["digraph flowattr {", "  rankdir=LR;", '  node [shape=box, style=rounded, fontname="Helvetica"];']
    for e in edges:
        width = 1 + 4 * math.log1p(e.flows) / math.log1p(heaviest)
        label = f"{e.flows} flows\\n{format_bytes(e.bytes)}"
        lines.append(f'  "{_quoted(e.caller)}" -> "{_quoted(e.callee)}" [label="{label}", penwidth={width:.1f}];')
    lines.append("}")
    return "\n".join(lines)


def _quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("svg and png need matplotlib: pip install matplotlib (or use --format dot)") from None


def draw_dependencies(edges: list[Edge], path: Path, title: str) -> Path:
    """Two panels: the graph (workloads on a circle, an arrow from caller to callee in the caller's colour,
    as thick as its connection count) and the same edges as a caller x callee matrix with the counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    nodes = sorted({e.caller for e in edges} | {e.callee for e in edges})
    callers = sorted({e.caller for e in edges})
    callees = sorted({e.callee for e in edges})
    side = max(6.0, 0.45 * len(nodes) + 2)
    fig, (graph, matrix) = plt.subplots(1, 2, figsize=(2 * side + 1, side), gridspec_kw={"width_ratios": [1, 1]})
    # Strong colours only (tab20's pale halves vanish on white): tab10, then Dark2.
    palette = [matplotlib.colors.to_hex(c) for name in ("tab10", "Dark2") for c in plt.get_cmap(name).colors]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(callers)}
    heaviest = max([e.flows for e in edges] + [1])
    weight = {e: math.log1p(e.flows) / math.log1p(heaviest) for e in edges}
    arrows = [Arrow(e.caller, e.callee, width=0.6 + 3.5 * weight[e], color=colour[e.caller], alpha=0.3 + 0.6 * weight[e])
              for e in edges]
    styles = {n: NodeStyle(color=colour.get(n, "black")) for n in nodes}
    draw(graph, circle(nodes), arrows, styles)
    graph.set_title("caller -> callee (arrow in the caller's colour, width: connections)", fontsize=10)

    counts = [[0] * len(callees) for _ in callers]
    for e in edges:
        counts[callers.index(e.caller)][callees.index(e.callee)] = e.flows
    shown = [[n if n else float("nan") for n in row] for row in counts]
    matrix.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=heaviest), aspect="auto")
    for r, row in enumerate(counts):
        for c, n in enumerate(row):
            if n:
                matrix.text(c, r, str(n), ha="center", va="center", fontsize=7,
                            color="white" if n > heaviest ** 0.6 else "black")
    matrix.set_xticks(range(len(callees)), callees, rotation=60, ha="right", fontsize=8)
    matrix.set_yticks(range(len(callers)), callers, fontsize=8)
    for label in matrix.get_yticklabels():
        label.set_color(colour[label.get_text()])
    matrix.set_xlabel("callee")
    matrix.set_ylabel("caller")
    matrix.set_title("connections per edge", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return path


def circle(nodes: list[str]) -> dict[str, tuple[float, float]]:
    n = max(len(nodes), 1)
    return {name: (math.cos(math.pi / 2 - 2 * math.pi * i / n), math.sin(math.pi / 2 - 2 * math.pi * i / n))
            for i, name in enumerate(nodes)}


@dataclass(frozen=True)
class NodeStyle:
    color: str = "black"
    fill: str = "white"
    bold: bool = False
    note: str | None = None


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    width: float = 1.5
    color: str = "tab:blue"
    style: str = "-"
    label: str | None = None
    alpha: float = 0.8
    bend: float = 0.12  # curved, so that a -> b and b -> a do not lie on one another


def draw(ax, where: Mapping[str, tuple[float, float]], arrows: list[Arrow], nodes: Mapping[str, NodeStyle]) -> None:
    """Labelled boxes at `where` and arrows between them, on one matplotlib axis."""
    for a in arrows:
        (x0, y0), (x1, y1) = where[a.source], where[a.target]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "-|>", "color": a.color, "linestyle": a.style, "lw": a.width,
                                "alpha": a.alpha, "shrinkA": 18, "shrinkB": 18, "mutation_scale": 12,
                                "connectionstyle": f"arc3,rad={a.bend}"})
        if a.label:
            # The curve's middle: the chord's middle pushed sideways by the bend.
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            lx, ly = mx + a.bend * (y1 - y0) / 2, my - a.bend * (x1 - x0) / 2
            ax.text(lx, ly, a.label, fontsize=7, color=a.color, ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    for name, style in nodes.items():
        x, y = where[name]
        ax.text(x, y, name + (f"\n({style.note})" if style.note else ""), ha="center", va="center",
                fontsize=11 if style.bold else 9, weight="bold" if style.bold else "normal", color=style.color,
                bbox={"boxstyle": "round", "fc": style.fill, "ec": style.color})
    xs = [x for x, _ in where.values()] or [0.0]
    ys = [y for _, y in where.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.4, max(xs) + 0.4)
    ax.set_ylim(min(ys) - 0.3, max(ys) + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
