"""One figure of several runs: a metric against a cost (bits, rounds, time), one line per run.

Built on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot: no display, no global
figure state, safe in tests and on servers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .rundirs import RunDir
from .safeio import writing

Scale = Literal["auto", "linear", "log"]
AXIS_LABELS = {
    "bits_up": "bits sent up (all workers)", "bits_down": "bits sent down (all workers)",
    "round": "rounds (outer iterations)", "comm_rounds": "communication rounds", "wall_s": "training time (s)",
    "hypergrad_norm": "||grad Phi(x)||", "test_acc": "test accuracy", "upper_loss": "upper-level loss",
}


def pick_scale(values: list[float], scale: Scale) -> str:
    """'log' when asked, or (auto) when the positive values span at least two decades and none is
    negative; zeros (the first row of a cost axis) are then left out of the plot."""
    if scale != "auto":
        return scale
    pos = [v for v in values if v > 0]
    if not pos or any(v < 0 for v in values):
        return "linear"
    return "log" if max(pos) / min(pos) >= 100 else "linear"


def figure(runs: list[RunDir], x: str, y: str, labels: list[str], xscale: Scale = "auto",
           yscale: Scale = "auto", title: str | None = None) -> Figure:
    """``y`` against ``x`` for every run (rows where both are finite numbers)."""
    series = []
    for run in runs:
        pts = [(float(r[x]), float(r[y])) for r in run.rows
               if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in (x, y))]
        series.append(pts)
    sx = pick_scale([p[0] for pts in series for p in pts], xscale)
    sy = pick_scale([p[1] for pts in series for p in pts], yscale)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for pts, label in zip(series, labels):
        pts = [(a, b) for a, b in pts if (sx != "log" or a > 0) and (sy != "log" or b > 0)]
        ax.plot([a for a, _ in pts], [b for _, b in pts], label=label, marker="o" if len(pts) <= 12 else None,
                markersize=3, linewidth=1.5)
    ax.set_xscale(sx)
    ax.set_yscale(sy)
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    return fig


def save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    with writing(path):  # a failed write (disk full, a name too long) is one line, exit 4
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return path
