"""Claim 1 (He et al., ICML 2024): compressed SOBA needs about 10x less communication than SOBA
without severe performance loss.

Per task and seed, SOBA's final test accuracy a sets the target a - ``drop`` (default 1 point);
every compressed variant is measured by the up-link bits it sends until its test accuracy first
reaches that target (reduction = SOBA's bits to the same target / the variant's) and by its final
accuracy minus a, in points. The table gives mean and spread over seeds; the verdict counts the
(variant, task) pairs that reach the target with every seed, send at least ``min_factor`` times
fewer bits (default 5: "about 10x" within a factor of two) and end within ``severe`` points of
SOBA (default 1).
"""
from __future__ import annotations

from typing import Any

from ..tables import Target, first_reach
from . import Report, Table, register
from .stats import hi, lo, mean, std

HEADER = ["task", "variant", "seeds", "reached", "diverged", "bits_up to target (mean)",
          "reduction (mean)", "reduction (min)", "reduction (max)", "final test_acc (mean)",
          "acc change pt (mean)", "acc change pt (std)"]


def _final_acc(run) -> float | None:
    vals = [v for v, _ in run.series("test_acc")]
    return vals[-1] if vals else None


def table(runs: list, dirs: list, reference: str = "soba", drop: float = 0.01) -> Table:
    """One row per (task, variant), the reference first, from runs tagged task, variant, seed."""
    found = {(r.tags["task"], r.tags["variant"], r.tags["seed"]): d for r, d in zip(runs, dirs)}
    tasks = list(dict.fromkeys(k[0] for k in found))
    variants = list(dict.fromkeys(k[1] for k in found))
    variants = [reference] + [v for v in variants if v != reference]
    rows = []
    for task in tasks:
        seeds = [s for (t, v, s) in found if t == task and v == reference]
        for var in variants:
            bits, red, acc, change, reached, diverged, n = [], [], [], [], 0, 0, 0
            for s in seeds:
                ref, run = found[(task, reference, s)], found.get((task, var, s))
                a_ref = _final_acc(ref)
                if run is None or a_ref is None:
                    continue
                n += 1
                diverged += run.status == "diverged"
                target = Target("test_acc", ">=", a_ref - drop)
                hit, hit_ref = first_reach(run, target), first_reach(ref, target)
                if hit is not None:
                    reached += 1
                    bits.append(hit["bits_up"])
                    red.append(hit_ref["bits_up"] / hit["bits_up"] if hit["bits_up"] else None)
                a = _final_acc(run)
                acc.append(a)
                change.append(None if a is None else 100 * (a - a_ref))
            if n:
                rows.append([task, var, n, reached, diverged, mean(bits), mean(red), lo(red), hi(red),
                             mean(acc), mean(change), std(change)])
    return Table("claim1", f"Claim 1: up-link bits to SOBA's final test accuracy - {100 * drop:g} pt "
                 "(reduction = SOBA's bits / the variant's), final accuracy change", HEADER, rows)


def supports(row: dict[str, Any], min_factor: float, severe: float) -> bool:
    return (row["reached"] == row["seeds"] and not row["diverged"] and row["reduction (mean)"] is not None
            and row["reduction (mean)"] >= min_factor and row["acc change pt (mean)"] is not None
            and row["acc change pt (mean)"] >= -severe)


def verdict(t: Table, reference: str = "soba", min_factor: float = 5.0, severe: float = 1.0) -> str:
    """The claim-1 verdict line, computed from the claim-1 table."""
    rows = [r for r in t.records() if r["variant"] != reference]
    if not rows:
        return "Claim 1 (He et al.): no compressed variant was measured."
    good = [r for r in rows if supports(r, min_factor, severe)]
    never = [r for r in rows if r["reached"] == 0]

    def name(r):
        return f"{r['variant']} on {r['task']}"

    def cite(r):
        red, ch = r["reduction (mean)"], r["acc change pt (mean)"]
        return f"{name(r)} {red:.1f}x ({ch:+.1f} pt)"

    measured = [r for r in rows if r["reduction (mean)"] is not None]
    best = max(measured, key=lambda r: r["reduction (mean)"]) if measured else None
    status = "holds" if good else "does not hold"
    if good and len(good) < len(rows):
        status = "holds in part"
    line = (f"Claim 1 (He et al.: about 10x less up-link communication without severe loss) {status}: "
            f"{len(good)} of {len(rows)} (variant, task) pairs reach SOBA's accuracy - 1 pt with every seed "
            f"using >= {min_factor:g}x fewer bits and end within {severe:g} pt of SOBA")
    if good:
        line += " (" + "; ".join(cite(r) for r in sorted(good, key=lambda r: -r["reduction (mean)"])) + ")"
    if best is not None and best not in good:
        line += f"; largest reduction {cite(best)}"
    if never:
        line += "; never reach the target: " + ", ".join(name(r) for r in never)
    return line + "."


def figure(t: Table, min_factor: float = 5.0, severe: float = 1.0, reference: str = "soba"):
    """Accuracy change against bit reduction, one panel per task, one point per variant (mean, with
    the seeds' range of the reduction and the std of the accuracy change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = [r for r in t.records() if r["variant"] != reference]
    tasks = list(dict.fromkeys(r["task"] for r in recs)) or ["-"]
    fig = Figure(figsize=(4.2 * len(tasks), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        missing = []
        for r in (r for r in recs if r["task"] == task):
            x, y = r["reduction (mean)"], r["acc change pt (mean)"]
            if x is None or y is None:
                missing.append(r["variant"])
                continue
            xerr = [[x - r["reduction (min)"]], [r["reduction (max)"] - x]]
            ax.errorbar([x], [y], xerr=xerr, yerr=[r["acc change pt (std)"] or 0], fmt="o", capsize=2,
                        label=r["variant"])
        ax.axvline(10, color="k", lw=0.8, ls="--")
        ax.axvline(min_factor, color="gray", lw=0.8, ls=":")
        ax.axhline(-severe, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("up-link bit reduction vs SOBA (to SOBA acc - 1 pt)")
        ax.set_ylabel("final test accuracy change (pt)")
        ax.set_title(task + (f"\nnot reached: {', '.join(missing)}" if missing else ""), fontsize="small")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    return fig


@register("compression")
def analyse(runs: list, dirs: list, options: dict[str, Any]) -> Report:
    ref = options.get("reference", "soba")
    min_factor, severe = float(options.get("min_factor", 5.0)), float(options.get("severe", 1.0))
    t = table(runs, dirs, ref, float(options.get("drop", 0.01)))
    seeds = sorted({r.tags["seed"] for r in runs})
    notes = (f"Seeds {', '.join(seeds)}; every run at the algorithms' default hyper-parameters (no per-method "
             "tuning). 'reached' counts the seeds whose run reaches the target; 'reduction' is SOBA's up-link "
             "bits to the target divided by the variant's (per seed, then min / mean / max).")
    return Report([t], [verdict(t, ref, min_factor, severe)], {"claim1": figure(t, min_factor, severe, ref)}, notes)
