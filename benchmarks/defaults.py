"""The defaults matrix (issue 12): every algorithm x every compressor it accepts x task, defaults only.

    python benchmarks/defaults.py                              # all three tasks
    python benchmarks/defaults.py --task quadratic             # one task
    python benchmarks/defaults.py --task quadratic --only ef-soba,cm-soba   # some algorithms
    python benchmarks/defaults.py --only ef-soba:topk:0.1      # one pair
    python benchmarks/defaults.py --write docs/defaults.md     # replace the table there

Every run uses the task's defaults and the derived hyper-parameters (distbo/defaults.py); only the
compressor, the rounds and one torch thread are set. Compressors: identity, randk:0.1, topk:0.1,
qsgd:4, sign; a pair the algorithm refuses (ConfigError) is listed as refused.
- quadratic (the default task: 8 heterogeneous workers, float32): 2000 rounds for the single-loop
  methods, 200 outer iterations for the federated ones; metric hypergrad_norm (exact), target
  <= 1e-2 of its start.
- hyperclean / hyperrep (mnist5k, 8 workers, iid): 100 rounds (10 outer
  iterations); metric test_acc, target: start + TARGET_GAIN (absolute).
Columns: start -> end of the metric, its worst value at any later evaluation, the status (ok /
worse than start / diverged at round k: NaN or the growth stop), the round and the up-link bits at
the first evaluation meeting the target.
"""
from __future__ import annotations

import argparse
import datetime
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import distbo
from distbo.errors import ConfigError, DivergenceError

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
COMPRESSORS = ["identity", "randk:0.1", "topk:0.1", "qsgd:4", "sign"]
ALGORITHMS = ["soba", "c-soba", "cm-soba", "ef-soba", "cm-soba-msc", "ef-soba-msc", "rabo", "rafbo",
              "aggitd", "fednest", "lfednest"]
FEDERATED = {"aggitd", "fednest", "lfednest"}
TASKS = {
    "quadratic": {"metric": "hypergrad_norm", "rounds": 2000, "fed_rounds": 200, "eval_every": 10},
    "hyperclean": {"metric": "test_acc", "rounds": 100, "fed_rounds": 10, "eval_every": 10},
    "hyperrep": {"metric": "test_acc", "rounds": 100, "fed_rounds": 10, "eval_every": 10},
}
QUAD_TARGET = 1e-2  # relative to the start
TARGET_GAIN = 0.3  # test accuracy: start + this
BEGIN, END = "<!-- defaults-matrix:begin -->", "<!-- defaults-matrix:end -->"


def pairs(only: list[str] | None):
    for alg in ALGORITHMS:
        for comp in COMPRESSORS:
            name = f"{alg}:{comp}"
            if only is None or any(o in (alg, name) for o in only):
                yield alg, comp


def run_one(task: str, alg: str, comp: str) -> dict:
    spec = TASKS[task]
    fed = alg in FEDERATED
    rounds = spec["fed_rounds"] if fed else spec["rounds"]
    every = max(1, spec["eval_every"] * rounds // spec["rounds"])
    metric = spec["metric"]
    tic = time.perf_counter()
    try:
        res = distbo.run(task, alg, compressor=comp, rounds=rounds, eval_every=every, threads=1)
    except ConfigError:
        return {"status": "refused"}
    except DivergenceError as exc:
        m = re.search(r"round (\d+)", str(exc))
        return {"status": f"diverged at round {m.group(1) if m else '?'}", "rounds": rounds,
                "wall": time.perf_counter() - tic}
    rows = res.metrics
    start, end = rows[0][metric], rows[-1][metric]
    if metric == "hypergrad_norm":
        ok = lambda r: r[metric] <= QUAD_TARGET * start  # noqa: E731
        better = math.isfinite(end) and end < start
    else:
        ok = lambda r: r[metric] >= start + TARGET_GAIN  # noqa: E731
        better = math.isfinite(end) and end > start
    hit = next((r for r in rows if ok(r)), None)
    later = [r[metric] for r in rows[1:]]
    worst = (max(later) if metric == "hypergrad_norm" else min(later)) if later else start
    alg_hp = {k: v for k, v in res.config["algorithm"].items()
              if k in ("alpha", "beta", "gamma", "eta", "rho", "theta", "local_steps", "inner_rounds",
                       "neumann_terms") and v is not None}
    return {"status": "ok" if better else "worse than start", "start": start, "end": end, "worst": worst,
            "rounds": rounds,
            "hit_round": hit["round"] if hit else None, "hit_bits": hit["bits_up"] if hit else None,
            "hp": alg_hp, "wall": time.perf_counter() - tic}


def fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def row(task: str, alg: str, comp: str, r: dict) -> str:
    if r["status"] == "refused":
        return f"| {alg} | {comp} | refused | | | | | |"
    se = f"{fmt(r['start'])} -> {fmt(r['end'])}" if "start" in r else "-"
    worst = fmt(r["worst"]) if "worst" in r else "-"
    hit = (str(r["hit_round"]), f"{r['hit_bits']:.3g}") if r.get("hit_round") is not None else ("never", "-")
    hp = ", ".join(f"{k}={v:.3g}" for k, v in r.get("hp", {}).items())
    return f"| {alg} | {comp} | {se} | {worst} | {r['status']} | {hit[0]} / {r['rounds']} | {hit[1]} | {hp} |"


def table(task: str, only: list[str] | None, log) -> list[str]:
    spec = TASKS[task]
    target = (f"hypergrad_norm <= {QUAD_TARGET:g} x start" if task == "quadratic"
              else f"test_acc >= start + {TARGET_GAIN:g}")
    lines = [f"### {task}: {spec['metric']}, {spec['rounds']} rounds ({spec['fed_rounds']} outer "
             f"iterations for the federated methods); target {target}", "",
             "| algorithm | compressor | start -> end | worst after start | status | rounds to target "
             "| bits to target | derived hyper-parameters |", "|---|---|---|---|---|---|---|---|"]
    for alg, comp in pairs(only):
        r = run_one(task, alg, comp)
        lines.append(row(task, alg, comp, r))
        log(lines[-1] + (f"  ({r['wall']:.0f} s)" if "wall" in r else ""))
    return lines + [""]


def write(path: Path, text: str) -> None:
    doc = path.read_text() if path.exists() else ""
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + BEGIN + "\n" + text + END + doc[doc.index(END) + len(END):]
    else:
        doc += f"\n{BEGIN}\n{text}{END}\n"
    path.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", action="append", choices=list(TASKS), help="task(s) to run (default: all)")
    ap.add_argument("--only", help="comma-separated algorithms or algorithm:compressor pairs")
    ap.add_argument("--write", type=Path, help="Markdown file whose matrix block to replace")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    head = [f"Measured {datetime.date.today()} at commit {commit}, 1 torch thread: "
            f"`python benchmarks/defaults.py {' '.join(sys.argv[1:])}`", ""]
    out = list(head)
    for task in args.task or list(TASKS):
        out += table(task, only, lambda s: print(s, flush=True))
    if args.write:
        write(args.write, "\n".join(out) + "\n")


if __name__ == "__main__":
    main()
