"""The main algorithms on CUDA and on the CPU: same metrics (to a tolerance) and ms per round.

For every case (task x algorithm) it runs the same configuration with ``device="cpu"`` and
``device="cuda"``: once in float64 for the comparison (final upper_loss and the distance between
the two x, relative; tolerance ``--tol``), then in float32 for the time per round (``wall_s``,
training only, after ``--warmup`` rounds). Prints one Markdown table; exits 1 if a case differs.
Without a CUDA GPU it prints why it skips and exits 0 (CI has none).

    python benchmarks/gpu.py                  # all cases
    python benchmarks/gpu.py --quick          # fewer rounds
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import distbo

CASES = [  # (label, task, algorithm, top-level settings)
    ("hyperrep mlp", {"name": "hyperrep", "dataset": "mnist5k"}, "soba", {}),
    ("hyperrep mlp", {"name": "hyperrep", "dataset": "mnist5k"}, "ef-soba", {"compressor": "topk:0.1"}),
    ("hyperrep mlp", {"name": "hyperrep", "dataset": "mnist5k"}, "aggitd", {}),
    ("hyperrep mlp", {"name": "hyperrep", "dataset": "mnist5k"}, "rabo",
     {"clients": {"resources": [1, 0.5, 0.25]}}),
    ("hyperrep cnn", {"name": "hyperrep", "dataset": "mnist5k", "model": "cnn", "channels": [32, 64]}, "soba", {}),
    ("hyperrep cnn", {"name": "hyperrep", "dataset": "mnist5k", "model": "cnn", "channels": [32, 64]}, "ef-soba",
     {"compressor": "topk:0.1"}),
    ("quadratic", {"name": "quadratic", "d_x": 100, "d_y": 200}, "c-soba", {"compressor": "randk:0.1"}),
]
STEPS = {"soba": {"alpha": 0.05, "beta": 0.1, "gamma": 0.1}, "ef-soba": {"alpha": 0.05, "beta": 0.1, "gamma": 0.1},
         "aggitd": {"alpha": 0.05, "beta": 0.02}, "rabo": {"alpha": 0.05, "beta": 0.1, "gamma": 0.1},
         "c-soba": {}}


def one(task, algorithm, top, device, dtype, rounds, workers):
    r = distbo.run(dict(task), algorithm={"name": algorithm, **STEPS[algorithm]}, device=device, dtype=dtype,
                   rounds=rounds, eval_every=rounds, workers=workers, **top)
    return r.metrics[-1], r.x.detach().double().cpu()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-6, help="relative tolerance of the float64 comparison")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: skipped, torch {torch.__version__} sees no CUDA GPU on this machine "
              "(run it where one is; nothing to compare here)")
        return 0
    rounds = 5 if a.quick else 20
    print(f"{time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"{a.workers} workers, {rounds} rounds, {torch.get_num_threads()} CPU threads")
    print("| task | algorithm | rel. diff upper_loss | rel. diff x | cpu ms/round | cuda ms/round | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    one(CASES[0][1], CASES[0][2], CASES[0][3], "cuda", "float32", 2, a.workers)  # CUDA context, kernels
    failed = False
    for label, task, alg, top in CASES:
        (mc, xc), (mg, xg) = (one(task, alg, top, dev, "float64", rounds, a.workers) for dev in ("cpu", "cuda"))
        d_loss = abs(mc["upper_loss"] - mg["upper_loss"]) / max(abs(mc["upper_loss"]), 1e-30)
        d_x = float((xc - xg).norm() / xc.norm().clamp_min(1e-30))
        ms = [1000 * one(task, alg, top, dev, "float32", rounds, a.workers)[0]["wall_s"] / rounds
              for dev in ("cpu", "cuda")]
        bad = not (d_loss <= a.tol and d_x <= a.tol)
        failed |= bad
        print(f"| {label} | {alg} {top.get('compressor', '')} | {d_loss:.1e} | {d_x:.1e}{' FAIL' if bad else ''} | "
              f"{ms[0]:.1f} | {ms[1]:.1f} | {ms[0] / ms[1]:.1f}x |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
