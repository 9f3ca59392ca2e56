"""Multi-process runs: time per round with 1 and P processes, and what the collectives really carry.

    python benchmarks/procs.py [--procs 2] [--rounds 20] [--warmup 5]

For each model (the quadratic with a small and a large lower level, hyper-representation on
MNIST if that task is registered) and each up-link (uncompressed SOBA; EF-SOBA with top-K 10%),
prints the training time per round (``wall_s``, evaluation excluded, after ``warmup`` rounds) in
the simulator (1 process, with torch's default threads and with 1 thread) and with P processes
(launch.spawn, cores // P threads each, as ``--procs`` uses), then the bits the run counts (``bits_up``, all workers) next to the bytes handed to
all_gather / all_reduce (comm.torch_dist.WireStats, summed over ranks). Dense messages are summed
inside each process before the all_reduce, so they carry P local sums instead of n vectors;
payloads travel row by row (sizes first, then one byte buffer; integer fields in the smallest
standard dtype holding their declared width). Timings on a shared machine are noisy; bits and
bytes are exact.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from distbo import launch
from distbo.algorithms import ALGORITHMS
from distbo.comm.torch_dist import TorchDistComm
from distbo.problems import TASKS
from distbo.runner import execute, resolve

MODELS = [
    ("quadratic d_y=20", {"name": "quadratic", "d_x": 10, "d_y": 20}),
    ("quadratic d_y=1000", {"name": "quadratic", "d_x": 10, "d_y": 1000}),
    ("hyperrep mnist5k [64]", {"name": "hyperrep", "dataset": "mnist5k", "hidden": [64], "batch_size": 16}),
]
UPLINKS = [("soba", "identity"), ("ef-soba", "topk:0.1")]


def cases(rounds: int, warmup: int, workers: int):
    for label, task in MODELS:
        if task["name"] not in TASKS.names():
            continue
        for alg, comp in UPLINKS:
            if alg in ALGORITHMS.names():
                yield label, alg, comp, {"task": task, "algorithm": alg, "compressor": comp, "workers": workers,
                                         "rounds": warmup + rounds, "eval_every": warmup, "seed": 0}


def per_round_ms(rows: list[dict], warmup: int) -> float:
    start = next(r for r in rows if r["round"] == warmup)
    return 1e3 * (rows[-1]["wall_s"] - start["wall_s"]) / (rows[-1]["round"] - warmup)


def _job(all_cases: list, warmup: int):
    """Every rank: run each case on a TorchDistComm, return times, bits and wire bytes (summed over ranks)."""
    out = []
    for label, alg, comp, raw in all_cases:
        res, problem = resolve(raw)
        comm = TorchDistComm(res.run.workers)
        r = execute(res, problem, comm=comm)
        wire = torch.tensor([comm.wire.bytes, comm.wire.collectives, comm.wire.other_bytes], dtype=torch.float64)
        dist.all_reduce(wire)
        out.append({"ms": per_round_ms(r.metrics, warmup), "bits_up": r.metrics[-1]["bits_up"],
                    "exchanges": r.metrics[-1]["comm_rounds"], "wire": wire.tolist()})
    return out if dist.get_rank() == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args()
    all_cases = list(cases(a.rounds, a.warmup, a.workers))

    default_threads, single = torch.get_num_threads(), []
    for label, alg, comp, raw in all_cases:
        res, problem = resolve(raw)
        times = []
        for threads in (default_threads, 1):
            torch.set_num_threads(threads)
            times.append(per_round_ms(execute(res, problem).metrics, a.warmup))
        single.append(times)
    torch.set_num_threads(default_threads)
    tic = time.time()
    multi = launch.spawn(_job, (all_cases, a.warmup), a.procs, timeout=300)[0]
    print(f"# {a.workers} workers, {a.rounds} timed rounds after {a.warmup} warm-up rounds; "
          f"{a.procs}-process job took {time.time() - tic:.1f} s including start-up")
    each = launch.threads_per_process(a.procs)
    head = ["model", "up-link", f"ms/round 1 proc x {default_threads} threads", "ms/round 1 proc x 1 thread",
            f"ms/round {a.procs} procs x {each} thread{'s' if each > 1 else ''}", "bytes counted/exchange",
            "bytes on the wire/exchange", "wire/counted", "collectives/exchange"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (label, alg, comp, _), (ms1, ms1t), m in zip(all_cases, single, multi):
        counted = m["bits_up"] / 8 / m["exchanges"]
        wire = m["wire"][0] / m["exchanges"]
        colls = m["wire"][1] / a.procs / m["exchanges"]
        print(f"| {label} | {alg} {comp} | {ms1:.1f} | {ms1t:.1f} | {m['ms']:.1f} | {counted:,.0f} | {wire:,.0f} | "
              f"{wire / counted:.3f} | {colls:.0f} |")


if __name__ == "__main__":
    main()
