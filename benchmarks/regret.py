"""The regret of the defaults (issue 26): each method at its derived defaults against the same run
with x's step scaled by 1/4, 4, 16 and 64 (everything else at its default), and with x frozen.

    python benchmarks/regret.py                                  # every task and method below
    python benchmarks/regret.py --tasks hyperrep,weight-decay --only soba,ef-soba:topk:0.1
    python benchmarks/regret.py --write docs/defaults.md         # replace the table there

Tasks: the three built-in ones and two ModuleProblems of examples/: a per-feature weight decay
learned for a linear classifier (weight-decay) and a CNN representation on digits (cnn). Metric:
test accuracy on the image tasks and the CNN (higher is better), the validation loss Phi on
weight-decay, the exact hypergradient norm on the quadratic (lower is better). Columns: the end
metric at the defaults, the best scale and its end, the defaults' regret (accuracy: points below
the best; losses: the share of the best scale's decrease below the frozen-x run that the defaults
reach, so that y's own fitting is not counted), the frozen-x baseline, and how
many scaled runs diverged. One torch thread; every run at the same budget.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

import torch

import distbo
from distbo.errors import ConfigError, DivergenceError

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
SCALES = (0.25, 4.0, 16.0, 64.0)
FROZEN = 1e-12
METHODS = ["soba", "ef-soba:topk:0.1", "cm-soba:randk:0.1", "aggitd", "fednest", "rafbo"]
FEDERATED = {"aggitd", "fednest", "lfednest"}
BEGIN, END = "<!-- regret:begin -->", "<!-- regret:end -->"


def weight_decay():
    import weight_decay as wd
    return wd.make_problem()


def cnn():
    import module_problem as mp
    return mp.make_problem()


# name -> (task, metric, higher is better, rounds, federated outer iterations)
TASKS = {
    "quadratic": ("quadratic", "hypergrad_norm", False, 1000, 100),
    "hyperclean": ("hyperclean", "test_acc", True, 100, 10),
    "hyperrep": ("hyperrep", "test_acc", True, 100, 10),
    "weight-decay": (weight_decay, "upper_loss", False, 200, 20),
    "cnn": (cnn, "test_acc", True, 200, 20),
}


def run_one(task, algorithm: dict, compressor: str, rounds: int) -> dict:
    problem = task() if callable(task) else task
    tic = time.perf_counter()
    try:
        r = distbo.run(problem, algorithm=algorithm, compressor=compressor, rounds=rounds,
                       eval_every=max(1, rounds // 10))
    except (DivergenceError, ConfigError) as exc:  # a scaled step past a field's range counts as failed
        return {"diverged": str(exc).split(";")[0], "seconds": time.perf_counter() - tic}
    return {"rows": r.metrics, "config": r.config, "seconds": time.perf_counter() - tic}


def end(res: dict, metric: str) -> float | None:
    return None if "rows" not in res else float(res["rows"][-1][metric])


def cell(task_name: str, method: str) -> list[str] | None:
    task, metric, higher, rounds, fed_rounds = TASKS[task_name]
    name, _, comp = method.partition(":")
    comp = comp or "identity"
    budget = fed_rounds if name in FEDERATED else rounds
    base = run_one(task, {"name": name}, comp, budget)
    if "rows" not in base and "diverged at" not in base["diverged"]:
        print(f"  {task_name} {method}: refused ({base['diverged']})", file=sys.stderr)
        return None
    if "rows" not in base:
        return [task_name, method, "diverged", "", "", "", "", "", f"{base['seconds']:.0f}"]
    alpha = base["config"]["algorithm"]["alpha"]
    start = float(base["rows"][0][metric])
    ends = {1.0: end(base, metric)}
    diverged = 0
    for s in SCALES:
        r = run_one(task, {"name": name, "alpha": alpha * s}, comp, budget)
        ends[s] = end(r, metric)
        diverged += ends[s] is None
    frozen = end(run_one(task, {"name": name, "alpha": alpha * FROZEN}, comp, budget), metric)
    done = {s: v for s, v in ends.items() if v is not None}
    best = (max if higher else min)(done, key=done.get)
    d = ends[1.0]
    if higher:
        regret = f"{100 * (done[best] - d):.1f} pt below"
    else:  # the share of the best scale's decrease below the frozen-x run (y's own fitting left out)
        ref = frozen if frozen is not None else start
        gain = ref - done[best]
        regret = f"{100 * (ref - d) / gain:.0f}% of the best decrease" if gain > 0 else "-"
    derived = base["config"].get("derived") or {}
    est = derived.get("L_phi_seconds")
    fmt = (lambda v: f"{v:.3f}") if higher else (lambda v: f"{v:.3g}")
    return [task_name, method, f"{alpha:.4g}", fmt(d), f"{best:g}x: {fmt(done[best])}", regret,
            "-" if frozen is None else fmt(frozen), f"{diverged} of {len(SCALES)}",
            f"{base['seconds']:.0f}" + (f" ({est:.1f} estimate)" if est is not None else "")]


HEADER = ["task", "method", "derived alpha", "at defaults", "best scale", "defaults' regret", "x frozen",
          "scaled runs diverged", "seconds (of which x-step estimate)"]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--only", default=",".join(METHODS), help="methods, ALGORITHM[:COMPRESSOR], comma-separated")
    ap.add_argument("--write", help="replace the table between the regret markers of this markdown file")
    a = ap.parse_args()
    rows = []
    for t in a.tasks.split(","):
        for m in a.only.split(","):
            r = cell(t, m)
            if r is not None:
                rows.append(r)
                print(" | ".join(r), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    text = f"{table(rows)}\n\n{datetime.date.today()}, commit {commit}, `python benchmarks/regret.py --tasks {a.tasks} --only {a.only}`"
    print(text)
    if a.write:
        path = Path(a.write)
        doc = path.read_text()
        i, j = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        path.write_text(doc[:i] + "\n" + text + "\n" + doc[j:])


if __name__ == "__main__":
    main()
