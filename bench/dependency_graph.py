"""The gateway's dependencies as reconstructed from attributed flows, and a picture of them against
its routing configuration: right edges green, wrong edges red, missed edges grey."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from dataflow.simulate import GATEWAY


def gateway_dependencies(answers: Iterable[dict[str, Any]]) -> set[str]:
    """Workloads the gateway called, by the attributed flows it reported itself."""
    return {
        a["remote_workload"]
        for a in answers
        if a["outcome"] == "attributed" and a["local_workload"] == GATEWAY and a["direction"] == "outbound"
    }


def render(routing: Mapping[str, str], found: Mapping[str, set[str]], folder: Path) -> list[Path]:
    """One panel per attributor; returns the SVG and PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = set(routing.values())
    fig, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 6))
    for ax, (name, deps) in zip(axes, found.items()):
        nodes = sorted(routes | deps)
        where = {n: (math.cos(2 * math.pi * i / len(nodes)), math.sin(2 * math.pi * i / len(nodes)))
                 for i, n in enumerate(nodes)}
        for node in nodes:
            if node in deps and node in routes:
                color, style, label = "tab:green", "-", None
            elif node in deps:
                color, style, label = "tab:red", "--", "wrong"
            else:
                color, style, label = "0.6", ":", "missed"
            x, y = where[node]
            ax.annotate("", xy=(0.82 * x, 0.82 * y), xytext=(0, 0),
                        arrowprops={"arrowstyle": "->", "color": color, "linestyle": style, "lw": 2})
            ax.text(x, y, node + (f"\n({label})" if label else ""), ha="center", va="center", fontsize=9,
                    color=color, bbox={"boxstyle": "round", "fc": "white", "ec": color})
        ax.text(0, 0, GATEWAY, ha="center", va="center", fontsize=11, weight="bold",
                bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "black"})
        wrong = len(deps - routes)
        ax.set_title(f"{name}: {len(deps)} edges, {wrong} wrong, {len(routes - deps)} missed")
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.axis("off")
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "gateway-dependencies.svg", folder / "gateway-dependencies.png"]
    for path in paths:
        fig.savefig(path, dpi=90, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return paths
