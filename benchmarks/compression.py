"""Up-link bits to a target: SOBA against its compressed variants (He et al., ICML 2024).

    python benchmarks/compression.py                     # both parts (~25 min on a busy 2-core box)
    python benchmarks/compression.py --part quadratic    # the quadratic only
    python benchmarks/compression.py --part hyperclean   # data hyper-cleaning only (if registered)
    python benchmarks/compression.py --part hyperclean --defaults --rounds 400   # derived defaults

quadratic: 8 workers, heterogeneity 1, d_x = 20, d_y = 40, deterministic oracles, float32. Cost
  until ||grad Phi(x)|| <= 1e-3 ||grad Phi(x_0)|| (the exact hypergradient), and the relative
  norm after the budget. Every method gets the same small grid, and the table shows its best
  entry (fewest bits to the target, else smallest final norm): steps (alpha, beta, gamma) =
  s (0.1, 0.3, 0.3) for s in {0.5, 0.25, 0.125} (s = 1 diverges for SOBA here) and, for the
  moving-average methods, theta in {0.5, 1} (theta = 1 turns the average off; for CM-SOBA that is
  C-SOBA, so CM-SOBA gets theta in {0.2, 0.5}).
hyperclean: data hyper-cleaning of 5,000 MNIST digits with half the labels corrupted, 10 workers,
  Dirichlet(0.1) label skew, linear classifier: configs/hyperclean_mnist5k.toml, its step sizes
  for every method, other hyper-parameters at their defaults (theta = 0.1, R = 2), no tuning.
  Target: SOBA's final test accuracy minus 1 point; the table gives the bits until the test
  accuracy first reaches it, and the final accuracy after the same number of rounds.
"vs SOBA" = SOBA's up-link bits to the target / the method's (how many times fewer bits).
Bits are summed over workers, counted from the real payloads (32-bit floats, as in docs/algorithms.md
section 5; float32 also floors the quadratic's final norm near 1e-7). Wall times are not
reported: the machine is shared, and bits and accuracies do not depend on it.
"""
from __future__ import annotations

import argparse
import itertools
import math
from pathlib import Path

import torch

import distbo
from distbo.config import load_toml
from distbo.problems import TASKS

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

QUAD = {"workers": 8, "rounds": 600, "eval_every": 5, "dtype": "float32",
        "task": {"name": "quadratic", "heterogeneity": 1.0, "d_x": 20, "d_y": 40}}
QUAD_EPS = 1e-3
QUAD_METHODS = [  # algorithm, compressors
    ("soba", ["identity"]),
    ("c-soba", ["randk:0.1", "qsgd:2"]),
    ("cm-soba", ["randk:0.1", "qsgd:2"]),
    ("ef-soba", ["topk:0.1", "sign", "randk:0.1", "qsgd:2"]),
    ("cm-soba-msc", ["randk:0.1", "topk:0.1"]),
    ("ef-soba-msc", ["topk:0.1", "sign"]),
]
HC_METHODS = [
    ("soba", ["identity"]),
    ("c-soba", ["qsgd:4", "qsgd:2"]),
    ("cm-soba", ["qsgd:4", "qsgd:2"]),
    ("ef-soba", ["topk:0.05", "sign", "qsgd:2"]),
    ("cm-soba-msc", ["qsgd:2", "topk:0.05"]),
    ("ef-soba-msc", ["topk:0.05", "sign"]),
]


HC_DEFAULTS = [  # --defaults: every hyper-parameter derived (docs/defaults.md)
    ("soba", ["identity"]),
    ("cm-soba", ["qsgd:4"]),
    ("ef-soba", ["topk:0.05", "topk:0.1"]),
]


def first(rows, ok):
    return next((r for r in rows if ok(r)), None)


def reached(hit, soba_bits):
    """Table cells: rounds and bits to the target, and SOBA's bits over these."""
    if hit is None:
        return "never", "never", "-"
    return str(hit["round"]), f"{hit['bits_up']:.3g}", f"{soba_bits / hit['bits_up']:.1f}x"


def grid(alg: str):
    thetas = {"soba": [None], "c-soba": [None], "cm-soba": [0.2, 0.5]}.get(alg, [0.5, 1.0])
    for s, th in itertools.product([0.5, 0.25, 0.125], thetas):
        hp = {"alpha": 0.1 * s, "beta": 0.3 * s, "gamma": 0.3 * s}
        yield (f"s={s}" + (f" theta={th}" if th else "")), (hp if th is None else {**hp, "theta": th})


def bits_per_round(rows, workers):
    r = rows[-1]
    return r["bits_up"] / max(r["round"], 1) / workers


def run_quadratic() -> None:
    print(f"## quadratic: 8 workers, h = 1, d_x = 20, d_y = 40, {QUAD['rounds']} rounds; "
          f"target ||grad Phi|| <= {QUAD_EPS:g} x start\n")
    results = []
    for alg, comps in QUAD_METHODS:
        for comp in comps:
            best = None
            for label, hp in grid(alg):
                try:
                    r = distbo.run(dict(QUAD["task"]), {"name": alg, **hp}, compressor=comp,
                                   **{k: v for k, v in QUAD.items() if k != "task"})
                except distbo.DivergenceError:
                    continue
                h0 = r.metrics[0]["hypergrad_norm"]
                hit = first(r.metrics, lambda m: m["hypergrad_norm"] <= QUAD_EPS * h0)
                final = r.metrics[-1]["hypergrad_norm"] / h0
                key = (hit["bits_up"] if hit else math.inf, final)
                if best is None or key < best[0]:
                    best = (key, label, hit, final, bits_per_round(r.metrics, QUAD["workers"]))
            results.append((alg, comp, best))
            print(f"  done {alg} {comp}: {best[1] if best else 'all diverged'}", flush=True)
    soba_bits = results[0][2][2]["bits_up"]
    print("\n| method | compressor | best of grid | bits/round/worker | rounds to target | bits up to target "
          "| vs SOBA | final rel. norm |\n|---|---|---|---:|---:|---:|---:|---:|")
    for alg, comp, best in results:
        if best is None:
            print(f"| {alg} | {comp} | diverged | | | | | |")
            continue
        _, label, hit, final, bpr = best
        to = reached(hit, soba_bits)
        print(f"| {alg} | {comp} | {label} | {bpr:.0f} | {to[0]} | {to[1]} | {to[2]} | {final:.1e} |")
    print()


def run_hyperclean(defaults: bool = False, rounds: int | None = None) -> None:
    if "hyperclean" not in TASKS.names():
        print("## hyperclean: task not registered, skipped\n")
        return
    cfg = load_toml(ROOT / "configs" / "hyperclean_mnist5k.toml")
    cfg["eval_every"] = 25
    cfg["rounds"] = rounds or cfg["rounds"]
    steps = {} if defaults else {k: v for k, v in cfg["algorithm"].items() if k != "name"}
    methods = HC_DEFAULTS if defaults else HC_METHODS
    top = {k: v for k, v in cfg.items() if k not in ("task", "algorithm")}
    print(f"## hyperclean: {cfg['task']['dataset']}, {cfg['workers']} workers, {cfg['task']['partition']}, "
          f"label noise {cfg['task']['noise']}, {cfg['rounds']} rounds, steps {steps}\n")
    runs = []
    for alg, comps in methods:
        for comp in comps:
            r = distbo.run(dict(cfg["task"]), {"name": alg, **steps}, compressor=comp, **top)
            runs.append((alg, comp, r.metrics))
            print(f"  done {alg} {comp}: final test_acc {r.metrics[-1]['test_acc']:.4f}", flush=True)
    soba = runs[0][2]
    target = soba[-1]["test_acc"] - 0.01
    soba_hit = first(soba, lambda m: m["test_acc"] >= target)
    print(f"\ntarget: test accuracy >= {target:.4f} (SOBA's final {soba[-1]['test_acc']:.4f} minus 1 point)\n")
    print("| method | compressor | bits/round/worker | rounds to target | bits up to target | vs SOBA "
          "| final test acc | change (points) | total bits vs SOBA |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for alg, comp, rows in runs:
        hit = first(rows, lambda m: m["test_acc"] >= target)
        to = reached(hit, soba_hit["bits_up"])
        final = rows[-1]["test_acc"]
        print(f"| {alg} | {comp} | {bits_per_round(rows, cfg['workers']):.0f} | {to[0]} | {to[1]} | {to[2]} "
              f"| {final:.4f} | {100 * (final - soba[-1]['test_acc']):+.1f} | "
              f"{soba[-1]['bits_up'] / rows[-1]['bits_up']:.1f}x |")
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["all", "quadratic", "hyperclean"], default="all")
    p.add_argument("--defaults", action="store_true",
                   help="hyperclean at the derived defaults (no step sizes from the config; docs/defaults.md)")
    p.add_argument("--rounds", type=int, help="hyperclean rounds (default: the config's)")
    a = p.parse_args()
    if a.part in ("all", "quadratic"):
        run_quadratic()
    if a.part in ("all", "hyperclean"):
        run_hyperclean(a.defaults, a.rounds)


if __name__ == "__main__":
    main()
