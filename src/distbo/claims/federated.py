"""Claim 2 (Xiao & Ji, ICML 2023): AggITD needs far fewer communication rounds than FedNest, in
particular under heterogeneous clients.

A regime map: for each task, heterogeneity level and number of local steps tau (a cell), the
communication rounds (and up-link bits) each method spends until the task's target is first met,
and the cell's winner (fewest rounds; bits break ties). Runs are tagged task, heterogeneity,
method and (except SOBA, which has no local steps and counts in every tau column) steps. A target
``FIELD<=P%`` is relative to the run's first evaluation (round 0). The verdict counts the cells in
which AggITD reaches the target in at least ``far`` (default 2) times fewer rounds than FedNest,
over all cells and over the heterogeneous ones (heterogeneity not in ``identical``).
"""
from __future__ import annotations

import math
from typing import Any

from ..tables import Target, first_reach, parse_target
from . import Report, Table, register

METHODS = ("aggitd", "fednest", "lfednest", "soba")
RUN_HEADER = ["task", "heterogeneity", "tau", "method", "status", "target", "rounds to target",
              "bits_up to target", "comm_rounds run", "final value"]


def target_for(spec: str, run) -> Target:
    """``FIELD<=VALUE``, or ``FIELD<=P%``: P percent of the field's value at the run's first row."""
    if spec.strip().endswith("%"):
        t = parse_target(spec.strip()[:-1])
        start = run.series(t.field)[0][0] if run.series(t.field) else math.nan
        return Target(t.field, t.op, start * t.value / 100)
    return parse_target(spec)


def run_table(runs: list, dirs: list, targets: dict[str, str]) -> Table:
    rows = []
    for r, d in zip(runs, dirs):
        task = r.tags["task"]
        tgt = target_for(targets[task], d)
        hit = first_reach(d, tgt)
        last = d.rows[-1] if d.rows else {}
        rows.append([task, r.tags["heterogeneity"], r.tags.get("steps", "-"), r.tags["method"], d.status, str(tgt),
                     hit.get("comm_rounds") if hit else None, hit.get("bits_up") if hit else None,
                     last.get("comm_rounds"), last.get(tgt.field)])
    return Table("claim2-runs", "Claim 2, every run: communication rounds and up-link bits to the target",
                 RUN_HEADER, rows)


def regime_table(runs_t: Table, identical: list[str], reference: str = "aggitd", rival: str = "fednest") -> Table:
    """One row per (task, heterogeneity, tau): rounds to target per method, winner, rival/reference."""
    recs = runs_t.records()
    methods = [m for m in METHODS if any(r["method"] == m for r in recs)]
    methods += [m for m in dict.fromkeys(r["method"] for r in recs) if m not in methods]
    cells = list(dict.fromkeys((r["task"], r["heterogeneity"], r["tau"]) for r in recs if r["tau"] != "-"))
    header = ["task", "heterogeneity", "tau", "heterogeneous", *(f"{m} rounds" for m in methods),
              *(f"{m} bits" for m in methods), "winner", f"{rival} / {reference} rounds"]
    rows = []
    for task, h, tau in cells:
        here = {r["method"]: r for r in recs if r["task"] == task and r["heterogeneity"] == h
                and r["tau"] in (tau, "-")}
        rounds = [here[m]["rounds to target"] if m in here else None for m in methods]
        bits = [here[m]["bits_up to target"] if m in here else None for m in methods]
        done = [(rd, b if b is not None else math.inf, m) for m, rd, b in zip(methods, rounds, bits) if rd is not None]
        winner = min(done)[2] if done else "none"
        ref, riv = (here.get(m, {}).get("rounds to target") for m in (reference, rival))
        ratio = (riv / ref if riv is not None else math.inf) if ref else None
        rows.append([task, h, tau, h not in identical, *rounds, *bits, winner, ratio])
    return Table("claim2", f"Claim 2, regime map: communication rounds to the target per method, the cell's winner "
                 f"(fewest rounds), and {rival}'s rounds / {reference}'s (inf: {rival} never reaches it)", header, rows)


def _cell(r: dict[str, Any]) -> str:
    return f"{r['task']} h={r['heterogeneity']} tau={r['tau']}"


def verdict(t: Table, far: float = 2.0, reference: str = "aggitd", rival: str = "fednest") -> str:
    """The claim-2 verdict line, computed from the regime-map table."""
    recs = t.records()
    if not recs:
        return "Claim 2 (Xiao & Ji): no cell was measured."
    key = f"{rival} / {reference} rounds"
    ratio = {id(r): r[key] for r in recs}
    far_cells = [r for r in recs if ratio[id(r)] is not None and ratio[id(r)] >= far]
    fewer = [r for r in recs if ratio[id(r)] is not None and ratio[id(r)] > 1]
    het = [r for r in recs if r["heterogeneous"]]
    far_het = [r for r in far_cells if r["heterogeneous"]]
    wins: dict[str, int] = {}
    for r in recs:
        wins[r["winner"]] = wins.get(r["winner"], 0) + 1
    scope = het or recs
    hits = far_het if het else far_cells
    status = "holds" if len(hits) == len(scope) else ("does not hold" if not hits else "holds in part")
    line = (f"Claim 2 (Xiao & Ji: AggITD needs far fewer communication rounds than FedNest) {status}: "
            f"AggITD reaches the target in >= {far:g}x fewer rounds than FedNest in {len(far_cells)} of {len(recs)} "
            f"cells ({len(far_het)} of {len(het)} heterogeneous), in fewer rounds in {len(fewer)}")
    slower = [r for r in recs if r not in far_cells]
    if slower:
        def why(r):
            q = ratio[id(r)]
            return f"{_cell(r)} ({'AggITD never reaches it' if q is None else f'{q:.2g}x'})"
        line += "; not >= " + f"{far:g}x: " + ", ".join(why(r) for r in slower)
    line += "; fastest method per cell: " + ", ".join(f"{m} {n}" for m, n in sorted(wins.items(), key=lambda w: -w[1]))
    return line + "."


def figure(t: Table, reference: str = "aggitd", rival: str = "fednest"):
    """Per task, a heterogeneity x tau map coloured by log2(rival rounds / reference rounds), each
    cell annotated with its winner and both round counts."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = t.records()
    tasks = list(dict.fromkeys(r["task"] for r in recs)) or ["-"]
    fig = Figure(figsize=(4.4 * len(tasks), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    key = f"{rival} / {reference} rounds"
    im = None
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        mine = [r for r in recs if r["task"] == task]
        hs = list(dict.fromkeys(r["heterogeneity"] for r in mine))
        taus = list(dict.fromkeys(r["tau"] for r in mine))
        grid = np.full((len(hs), len(taus)), np.nan)
        for r in mine:
            q = r[key]
            a, b = hs.index(r["heterogeneity"]), taus.index(r["tau"])
            grid[a, b] = -3.0 if q is None else float(np.clip(np.log2(q), -3, 3)) if q > 0 else -3.0
            ref, riv = r.get(f"{reference} rounds"), r.get(f"{rival} rounds")
            ax.text(b, a, f"{r['winner']}\n{reference[:3]} {ref if ref is not None else '-'}\n"
                    f"{rival[:3]} {riv if riv is not None else '-'}", ha="center", va="center", fontsize=6.5)
        im = ax.imshow(grid, cmap="RdBu", vmin=-3, vmax=3, aspect="auto")
        ax.set_xticks(range(len(taus)), [str(x) for x in taus])
        ax.set_yticks(range(len(hs)), [str(h) for h in hs])
        ax.set_xlabel("local steps tau")
        ax.set_ylabel("heterogeneity")
        ax.set_title(f"{task}: rounds to target", fontsize="small")
    if im is not None:
        fig.colorbar(im, ax=fig.axes, label=f"log2({rival} / {reference} rounds)", shrink=0.8)
    return fig


@register("federated")
def analyse(runs: list, dirs: list, options: dict[str, Any]) -> Report:
    targets = dict(options.get("targets", {}))
    for r in runs:
        targets.setdefault(r.tags["task"], "hypergrad_norm<=1%")
    identical = [str(v) for v in options.get("identical", ["0", "iid"])]
    far = float(options.get("far", 2.0))
    per_run = run_table(runs, dirs, targets)
    regime = regime_table(per_run, identical)
    notes = ("Targets: " + ", ".join(f"{k} {v}" for k, v in targets.items()) + " (P% = P percent of the run's value "
             "at round 0). 'rounds' are communication rounds (worker -> server exchanges) at the first evaluation "
             "that meets the target; SOBA has no local steps and appears in every tau column.")
    return Report([regime, per_run], [verdict(regime, far)], {"claim2": figure(regime)}, notes)
