"""Communication rounds and bits to a target: AggITD vs FedNest, LFedNest and SOBA.

    python benchmarks/federated.py                    # both parts (1-2 hours on a busy 2-core box)
    python benchmarks/federated.py --part quadratic   # heterogeneity sweep only
    python benchmarks/federated.py --part hyperrep    # hyper-representation only (if registered)
    python benchmarks/federated.py --defaults         # every step size derived (docs/defaults.md)

quadratic: task.heterogeneity in {0, 0.5, 1, 2}, 8 workers, d_x = 10, d_y = 20, deterministic
  oracles, float64. Cost until ||grad Phi(x)|| <= eps ||grad Phi(x_0)|| (eps = 1e-1, 1e-2; the
  exact hypergradient of the quadratic), and the floor = the smallest relative norm reached within
  the budget. Step sizes follow ONE rule for every method and every h, fixed in advance, not tuned
  per h: steps that multiply the global g (SOBA's beta, gamma; FedNest's eta) are 0.1 ~ 1/L of
  g at h = 2; clients' local steps on their own g_i (beta of FedAvg / FedInn, LFedNest's local
  eta) are 0.05 ~ 1/max_i L_i at h = 2; alpha = 0.1 < 1/L of Phi for all h. The unrolled / Neumann
  "length" is 5 for every hypergradient method (AggITD N tau beta = 5, FedNest eta N = 5,
  LFedNest eta N = 5), so the truncation bias is the same at h = 0. One extra row breaks the rule
  on purpose: AggITD with beta = 0.01 (tau = 25 for the same length and the same beta tau per
  round), to see whether a smaller local step alone lowers the client-drift floor (it does not:
  the floor follows beta tau). EF-SOBA runs with theta = 1 (no moving average).
hyperrep: hyper-representation (MLP 784-64-10, hidden layer = x, head = y) on mnist5k split over
  10 clients by shards:2 (two labels per client); cost until the test accuracy first reaches each
  target. Task defaults for SOBA; local / Neumann steps 0.1 for the federated methods.
--defaults drops every step size (alpha, beta, gamma, eta) from the methods above, so each runs
at its derived defaults; the structure (N, T, tau, theta) stays.
Bits are the up-link bits summed over clients; rounds are worker->server exchanges.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from pathlib import Path

import torch

import distbo
from distbo.algorithms import ALGORITHMS
from distbo.problems import TASKS

torch.set_num_threads(1)

QUAD_METHODS = [  # label, algorithm, compressor
    ("AggITD N=20 tau=5", {"name": "aggitd", "beta": 0.05, "inner_rounds": 20, "local_steps": 5}, "identity"),
    ("AggITD N=5 tau=20", {"name": "aggitd", "beta": 0.05, "inner_rounds": 5, "local_steps": 20}, "identity"),
    ("AggITD N=20 tau=25 beta=0.01", {"name": "aggitd", "beta": 0.01, "inner_rounds": 20, "local_steps": 25},
     "identity"),
    ("FedNest T=2 tau=5 N=50", {"name": "fednest", "beta": 0.05, "inner_rounds": 2, "local_steps": 5,
                                "neumann_terms": 50, "eta": 0.1}, "identity"),
    ("LFedNest T=2 tau=5 N=100", {"name": "lfednest", "beta": 0.05, "inner_rounds": 2, "local_steps": 5,
                                  "neumann_terms": 100, "eta": 0.05}, "identity"),
    ("SOBA", {"name": "soba", "beta": 0.1, "gamma": 0.1}, "identity"),
    ("EF-SOBA top-K 20%", {"name": "ef-soba", "beta": 0.1, "gamma": 0.1, "theta": 1.0}, "topk:0.2"),
]

REP_METHODS = [
    ("AggITD N=5 tau=5", {"name": "aggitd", "beta": 0.1, "inner_rounds": 5, "local_steps": 5}, "identity"),
    ("FedNest T=2 tau=5 N=5", {"name": "fednest", "beta": 0.1, "inner_rounds": 2, "local_steps": 5,
                               "neumann_terms": 5, "eta": 0.1}, "identity"),
    ("LFedNest T=2 tau=5 N=5", {"name": "lfednest", "beta": 0.1, "inner_rounds": 2, "local_steps": 5,
                                "neumann_terms": 5, "eta": 0.1}, "identity"),
    ("SOBA", {"name": "soba"}, "identity"),
    ("EF-SOBA top-K 10%", {"name": "ef-soba", "theta": 1.0}, "topk:0.1"),
]


def rounds_per_iteration(task, algorithm, compressor, workers) -> int:
    r = distbo.run(task, dict(algorithm), compressor=compressor, workers=workers, rounds=1, eval_every=1)
    return r.metrics[-1]["comm_rounds"]


def run_rows(task, algorithm, compressor, **kw) -> tuple[list[dict], int | None]:
    """Metric rows of one run, and the outer iteration where it diverged (None if it did not);
    a diverged run keeps the rows it wrote before."""
    with tempfile.TemporaryDirectory() as out:
        try:
            return distbo.run(task, dict(algorithm), compressor=compressor, out=out, **kw).metrics, None
        except distbo.DivergenceError as exc:
            rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
            return rows, int(re.search(r"round (\d+)", str(exc)).group(1))


def first(rows, ok):
    return next((r for r in rows if ok(r)), None)


def fmt_cost(row) -> tuple[str, str]:
    if row is None:
        return "not reached", "-"
    return str(row["comm_rounds"]), f"{row['bits_up'] / 8e6:.3g}"


STEPS = ("alpha", "beta", "gamma", "eta")
DEFAULTS = False  # --defaults: every step size derived


def available(methods, only: list[str] | None = None):
    """The registered methods (whose label contains one of ``only``, if given); with --defaults,
    without their step sizes."""
    picked = [m for m in methods if m[1]["name"] in ALGORITHMS.names()
              and (not only or any(o.lower() in m[0].lower() for o in only))]
    if DEFAULTS:
        picked = [(label, {k: v for k, v in alg.items() if k not in STEPS}, comp) for label, alg, comp in picked]
    return picked


def quadratic(budget: int, max_iters: int, levels: list[float], only: list[str] | None) -> None:
    task = lambda h: {"name": "quadratic", "heterogeneity": h}
    print(f"## quadratic heterogeneity sweep (budget {budget} comm rounds or {max_iters} outer iterations)\n")
    print("| h | method | rounds/iter | rounds to 1e-1 | MB up to 1e-1 | rounds to 1e-2 | MB up to 1e-2 "
          "| floor (min rel. norm) | at round | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for h in levels:
        for label, alg, comp in available(QUAD_METHODS, only):
            per = rounds_per_iteration(task(h), alg, comp, 8)
            # double-loop methods move x once per outer iteration: max_iters x steps are far more
            # than x needs here; single-loop methods get the whole round budget
            iters = budget // per if per == 1 else min(max_iters, budget // per)
            tic = time.perf_counter()
            rows, div = run_rows(task(h), alg, comp, workers=8, rounds=iters, eval_every=1, dtype="float64")
            note = f" (diverged at iteration {div})" if div is not None else ""
            secs = time.perf_counter() - tic
            g0 = rows[0]["hypergrad_norm"]
            rel = lambda row: row["hypergrad_norm"] / g0
            c1, c2 = (fmt_cost(first(rows, lambda row, e=e: rel(row) <= e)) for e in (1e-1, 1e-2))
            best = min(rows, key=rel)
            print(f"| {h} | {label} | {per} | {c1[0]} | {c1[1]} | {c2[0]} | {c2[1]} | {rel(best):.2e}{note} "
                  f"| {best['comm_rounds']} | {secs:.0f} |", flush=True)


def hyperrep(budget: int, targets: list[float], seeds: list[int], only: list[str] | None) -> None:
    if "hyperrep" not in TASKS.names():
        print("hyperrep is not registered: skipped")
        return
    task = {"name": "hyperrep", "partition": "shards:2", "hidden": [64]}
    print(f"\n## hyperrep, mnist5k, 10 clients, shards:2 (budget {budget} comm rounds; seeds {seeds})\n")
    head = " | ".join(f"rounds to {t:.0%} | MB up to {t:.0%}" for t in targets)
    print(f"| method | seed | rounds/iter | {head} | best test acc | final test acc | train s |")
    print("|---|---|---|" + "---|---|" * len(targets) + "---|---|---|")
    for label, alg, comp in available(REP_METHODS, only):
        per = rounds_per_iteration(task, alg, comp, 10)
        iters = budget // per
        for seed in seeds:
            rows, div = run_rows(task, alg, comp, workers=10, rounds=iters, seed=seed,
                                 eval_every=max(1, math.ceil(5 / per)))
            note = f" (diverged at iteration {div})" if div is not None else ""
            cells = " | ".join(" | ".join(fmt_cost(first(rows, lambda row, t=t: row["test_acc"] >= t)))
                               for t in targets)
            best = max(row["test_acc"] for row in rows)
            print(f"| {label} | {seed} | {per} | {cells} | {best:.3f} | {rows[-1]['test_acc']:.3f}{note} "
                  f"| {rows[-1]['wall_s']:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["quadratic", "hyperrep", "all"], default="all")
    ap.add_argument("--only", nargs="+", help="methods whose label contains one of these")
    ap.add_argument("--budget", type=int, default=8000, help="comm rounds per quadratic run")
    ap.add_argument("--max-iters", type=int, default=300, help="outer iterations per quadratic run")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--rep-budget", type=int, default=1100, help="comm rounds per hyperrep run")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.85, 0.9])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--defaults", action="store_true", help="every step size derived (none set)")
    a = ap.parse_args()
    global DEFAULTS
    DEFAULTS = a.defaults
    if a.part in ("quadratic", "all"):
        quadratic(a.budget, a.max_iters, a.levels, a.only)
    if a.part in ("hyperrep", "all"):
        hyperrep(a.rep_budget, a.targets, a.seeds, a.only)


if __name__ == "__main__":
    main()
