"""The gateway's dependencies as reconstructed from attributed flows, and a picture of them against
its routing configuration: right edges green, wrong edges red, missed edges grey."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from dataflow.deps import Arrow, NodeStyle, circle, draw
from dataflow.simulate import GATEWAY


def gateway_dependencies(answers: Iterable[dict[str, Any]]) -> set[str]:
    """Workloads the gateway called, by the attributed flows it reported itself."""
    return {
        a["remote_workload"]
        for a in answers
        if a["outcome"] == "attributed" and a["local_workload"] == GATEWAY and a["direction"] == "outbound"
    }


def render(routing: Mapping[str, str], found: Mapping[str, set[str]], folder: Path) -> list[Path]:
    """One panel per attributor, drawn as `flowattr deps` draws; returns the SVG and PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = set(routing.values())
    fig, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 6))
    for ax, (name, deps) in zip(axes, found.items()):
        nodes = sorted(routes | deps)
        where = {n: (0.82 * x, 0.82 * y) for n, (x, y) in circle(nodes).items()} | {GATEWAY: (0.0, 0.0)}
        arrows, styles = [], {GATEWAY: NodeStyle(fill="lightyellow", bold=True)}
        for node in nodes:
            if node in deps and node in routes:
                color, style, note = "tab:green", "-", None
            elif node in deps:
                color, style, note = "tab:red", "--", "wrong"
            else:
                color, style, note = "0.6", ":", "missed"
            arrows.append(Arrow(GATEWAY, node, width=2, color=color, style=style, bend=0.0))
            styles[node] = NodeStyle(color=color, note=note)
        draw(ax, where, arrows, styles)
        wrong = len(deps - routes)
        ax.set_title(f"{name}: {len(deps)} edges, {wrong} wrong, {len(routes - deps)} missed")
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "gateway-dependencies.svg", folder / "gateway-dependencies.png"]
    for path in paths:
        fig.savefig(path, dpi=90, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths
