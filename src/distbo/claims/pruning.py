"""Claim 3 (Li et al.): RABO / RAFBO reach stationarity at the rate O(1/sqrt(C_x* Q)), where C_x*
is the minimum coverage of x (the fewest clients that update any coordinate of x in any round,
metric ``C_x``) and Q the number of rounds.

Each run (tagged task, setting, method) is one resource mix; its measure after Q rounds is a
statistic of M^2 over the evaluations up to round Q, with M the task's stationarity measure
(``measure``: the exact ``hypergrad_norm`` on the quadratic, RABO's ``hypergrad_proxy``
elsewhere), read at ``q_points`` roughly geometric Q up to the run's length. The statistic
(``statistic``, per task) is 'min' (the minimum over rounds 1..Q) or 'tail' (the mean over rounds
Q/2 < t <= Q: for a proxy that starts near zero, as hyperrep's does with its zero-initialised head,
the minimum would stay at the first rounds). Per (task, setting, method) the points
(C_x* Q, measure) get a least-squares line on log-log axes, and a two-variable fit gives the
separate exponents of Q and C_x*. The claim is a bound, O(1/sqrt(C_x* Q)), governed by C_x*: a
setting supports it ('holds') when the measure falls at least as fast as (C_x* Q)^(-1/2) in Q and
in C_x* alike (both exponents <= -1/2 + ``tol``, default 0.15); the 'rate' column says whether the
slope against C_x* Q matches -1/2 (within ``tol``), is faster or is slower.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from . import Report, Table, register
from .stats import exponents, loglog_fit

POINT_HEADER = ["task", "setting", "method", "C_x*", "Q", "C_x* Q", "measure"]
FIT_HEADER = ["task", "setting", "method", "measure", "C_x* values", "points", "slope vs C_x* Q",
              "exponent of Q", "exponent of C_x*", "rate", "holds"]


def rate(slope: float, tol: float) -> str:
    return "as claimed" if abs(slope + 0.5) <= tol else ("faster" if slope < -0.5 else "slower")


def supports(slope: float | None, ex_q: float | None, ex_c: float | None, tol: float) -> bool | None:
    """At least the claimed rate in Q and in C_x* (the slope alone where the exponents are unknown)."""
    if slope is None:
        return None
    if ex_q is None or ex_c is None:
        return slope <= -0.5 + tol
    return ex_q <= -0.5 + tol and ex_c <= -0.5 + tol


def q_grid(rounds: list[int], points: int, q_min: int) -> list[int]:
    """About ``points`` geometrically spaced values among the evaluated ``rounds`` >= q_min."""
    avail = sorted(r for r in set(rounds) if r >= max(1, q_min))
    if not avail:
        return []
    if len(avail) <= points:
        return avail
    lo, hi = math.log(avail[0]), math.log(avail[-1])
    want = [math.exp(lo + (hi - lo) * i / (points - 1)) for i in range(points)]
    return sorted({min(avail, key=lambda r: abs(math.log(r) - math.log(w))) for w in want})


STATISTICS = ("min", "tail")


def summarise(series: list[tuple[int, float]], q: int, statistic: str) -> float:
    """The statistic of the squared values of (round, value) pairs up to round q."""
    if statistic == "min":
        return min(v for t, v in series if t <= q) ** 2
    tail = [v * v for t, v in series if q / 2 < t <= q]
    return sum(tail) / len(tail)


def points_table(runs: list, dirs: list, measure: dict[str, str], q_points: int = 6, q_min: int = 10,
                 statistic: dict[str, str] | None = None) -> Table:
    rows = []
    for r, d in zip(runs, dirs):
        field = measure.get(r.tags["task"], "hypergrad_norm")
        stat = (statistic or {}).get(r.tags["task"], "min")
        if stat not in STATISTICS:
            raise ConfigError("options.statistic", f"unknown statistic '{stat}'; allowed: {', '.join(STATISTICS)}")
        series = [(int(row["round"]), v) for v, row in d.series(field) if row["round"] >= 1]
        cover = [row.get("C_x") for row in d.rows if isinstance(row.get("C_x"), int)]
        if not series or not cover:
            continue
        c = cover[-1]  # the minimum coverage over the whole run
        for q in q_grid([t for t, _ in series], q_points, q_min):
            rows.append([r.tags["task"], r.tags["setting"], r.tags.get("method", "rabo"), c, q, c * q,
                         summarise(series, q, stat)])
    return Table("claim3-points", "Claim 3, every point: the statistic (min over rounds 1..Q, or tail mean over "
                 "Q/2..Q) of the squared stationarity measure", POINT_HEADER, rows)


def fit_table(points: Table, measure: dict[str, str], tol: float = 0.15, statistic: dict[str, str] | None = None) -> Table:
    recs = points.records()
    groups = list(dict.fromkeys((r["task"], r["setting"], r["method"]) for r in recs))
    rows = []
    for task, setting, method in groups:
        mine = [r for r in recs if (r["task"], r["setting"], r["method"]) == (task, setting, method)]
        fit = loglog_fit([r["C_x* Q"] for r in mine], [r["measure"] for r in mine])
        ex = exponents([r["Q"] for r in mine], [r["C_x*"] for r in mine], [r["measure"] for r in mine])
        slope = fit[0] if fit else None
        cs = "/".join(str(c) for c in sorted({r["C_x*"] for r in mine}))
        stat = (statistic or {}).get(task, "min")
        ex_q, ex_c = (ex[0], ex[1]) if ex else (None, None)
        rows.append([task, setting, method, f"{stat} {measure.get(task, 'hypergrad_norm')}^2", cs, len(mine), slope,
                     ex_q, ex_c, None if slope is None else rate(slope, tol), supports(slope, ex_q, ex_c, tol)])
    return Table("claim3", f"Claim 3, fitted log-log slopes (claim: O((C_x* Q)^-1/2); 'holds' = both exponents "
                 f"<= -1/2 + {tol:g}; 'rate' = the slope against -1/2 +- {tol:g})", FIT_HEADER, rows)


def verdict(t: Table, tol: float = 0.15) -> str:
    """The claim-3 verdict line, computed from the fit table."""
    recs = [r for r in t.records() if r["slope vs C_x* Q"] is not None]
    if not recs:
        return "Claim 3 (Li et al.): no setting had enough points for a fit."
    good = [r for r in recs if supports(r["slope vs C_x* Q"], r["exponent of Q"], r["exponent of C_x*"], tol)]
    status = "holds" if len(good) == len(recs) else ("does not hold" if not good else "holds in part")

    def one(r):
        s = f"{r['task']} {r['setting']} {r['method']} {r['slope vs C_x* Q']:.2f}"
        if r["exponent of Q"] is not None:
            s += f" (Q {r['exponent of Q']:.2f}, C_x* {r['exponent of C_x*']:.2f})"
        return s

    matched = sum(rate(r["slope vs C_x* Q"], tol) == "as claimed" for r in recs)
    line = (f"Claim 3 (Li et al.: stationarity O(1/sqrt(C_x* Q))) {status}: the measure falls at least as fast "
            f"as (C_x* Q)^-1/2 in both Q and C_x* in {len(good)} of {len(recs)} settings, and its slope "
            f"against C_x* Q is within {tol:g} of -1/2 in {matched}")
    if good:
        line += " [" + "; ".join(f"{one(r)} {rate(r['slope vs C_x* Q'], tol)}" for r in good) + "]"
    bad = [r for r in recs if r not in good]
    if bad:
        line += "; not in [" + "; ".join(one(r) for r in bad) + "]"
    return line + "."


def figure(points: Table, fits: Table):
    """Measure against C_x* Q on log-log axes, one panel per task, one colour per (setting,
    method), one marker per C_x*; the fitted line with its slope, and a -1/2 reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs, fit_recs = points.records(), fits.records()
    tasks = list(dict.fromkeys(r["task"] for r in recs)) or ["-"]
    fig = Figure(figsize=(4.6 * len(tasks), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    markers = {1: "v", 2: "s", 4: "D", 8: "o"}
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        for j, f in enumerate(r for r in fit_recs if r["task"] == task):
            colour = f"C{j}"
            mine = [r for r in recs if (r["task"], r["setting"], r["method"]) == (task, f["setting"], f["method"])]
            for c in sorted({r["C_x*"] for r in mine}):
                pts = [r for r in mine if r["C_x*"] == c]
                ax.scatter([r["C_x* Q"] for r in pts], [r["measure"] for r in pts], color=colour, s=14,
                           marker=markers.get(c, "x"))
            fit = loglog_fit([r["C_x* Q"] for r in mine], [r["measure"] for r in mine])
            if fit:
                xs = sorted(r["C_x* Q"] for r in mine)
                xs = [xs[0], xs[-1]]
                ax.plot(xs, [10 ** fit[1] * x ** fit[0] for x in xs], color=colour, lw=1.2,
                        label=f"{f['setting']} {f['method']}: slope {fit[0]:.2f}")
                mid = math.sqrt(xs[0] * xs[1])
                ref = 10 ** fit[1] * mid ** fit[0]
                ax.plot(xs, [ref * (x / mid) ** -0.5 for x in xs], color=colour, lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("C_x* Q (markers: C_x* = 1 v, 2 s, 4 D, 8 o)")
        ax.set_ylabel("measure^2 (min or tail mean up to Q)")
        ax.set_title(f"{task} (dotted: slope -1/2)", fontsize="small")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    return fig


@register("pruning")
def analyse(runs: list, dirs: list, options: dict[str, Any]) -> Report:
    measure = dict(options.get("measure", {}))
    tol = float(options.get("tol", 0.15))
    stat = dict(options.get("statistic", {}))
    pts = points_table(runs, dirs, measure, int(options.get("q_points", 6)), int(options.get("q_min", 10)), stat)
    fits = fit_table(pts, measure, tol, stat)
    notes = ("C_x* is the measured minimum coverage (metric C_x at the end of the run). Measure: "
             + ", ".join(f"{stat.get(k, 'min')} of the squared {v} ({k})" for k, v in measure.items())
             + " ('min': the minimum over the evaluations at rounds 1..Q; 'tail': the mean over rounds Q/2..Q); "
             "'exponent of Q' / 'of C_x*' come from one least-squares fit log m = a log Q + b log C_x* + c.")
    return Report([fits, pts], [verdict(fits, tol)], {"claim3": figure(pts, fits)}, notes)
