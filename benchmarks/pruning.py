"""Resource-limited clients: RABO / RAFBO sub-models vs full-model SOBA and AggITD on hyperrep.

    python benchmarks/pruning.py                 # both tables (about 15 min on a busy 2-core box)
    python benchmarks/pruning.py --rounds 60     # a quicker look
    python benchmarks/pruning.py --part compose  # RABO with compression and client sampling (docs/composition.md)

Task: hyper-representation on mnist5k (MLP 784-200-10: hidden layer = x, head = y), 8 iid clients,
batch 64, task-default steps (alpha 0.1, beta 0.3, gamma 0.3) for every single-loop method. Every
method gets the same number of communication rounds (AggITD N = 5, tau = 5: 11 rounds per outer
iteration, local step 0.1). Resource mixes: all 1; [1, 0.5, 0.25, 0.125] cycled over the clients
(rolling windows, and static HeteroFL-like widths); all 0.25 with rolling windows.

Client FLOPs per communication round (forward F = 2 B sum_l s_l s_{l+1} of the client's
(sub-)network; a gradient 3F; an exact Hessian-vector product together with its gradient 9F, as
three gradients of finite differences): RABO / RAFBO report them (metrics ``client_flops_*``);
for SOBA (3F_f + 9F_g per round) and AggITD (N tau (3F_g + 9F_g) + 3F_f per outer iteration,
spread over its 2N + 1 rounds) they are computed here with the same convention. Time per round is
the median over rounds of the wall time of one whole simulated round (all 8 clients in one
process; AggITD: an outer iteration / 11), still noisy on a shared machine; the second table
isolates the compute of each resource level. The third table (``--part compose``) runs RABO on
the mixed levels with an up-link compressor (top-K 10% with per-client error feedback, sign),
client sampling (fraction 0.5), both, and a compressed down-link, with MB up and down per round.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import distbo
from distbo.algorithms import ALGORITHMS
from distbo.algorithms.submodels import keep_count
from distbo.models import DenseNet
from distbo.runner import build, resolve

torch.set_num_threads(1)

TASK = {"name": "hyperrep", "dataset": "mnist5k", "hidden": [200], "batch_size": 64}
WORKERS = 8
MIXED = [1.0, 0.5, 0.25, 0.125]
AGGITD = {"name": "aggitd", "beta": 0.1, "inner_rounds": 5, "local_steps": 5}

METHODS = [  # label, algorithm, resources, policy
    ("SOBA (full model)", "soba", None, None),
    ("AggITD N=5 tau=5 (full model)", AGGITD, None, None),
    ("RABO", "rabo", [1.0], "rolling"),
    ("RABO", "rabo", MIXED, "rolling"),
    ("RABO", "rabo", MIXED, "static"),
    ("RABO", "rabo", [0.25], "rolling"),
    ("RABO exact products", {"name": "rabo", "products": "exact"}, MIXED, "rolling"),
    ("RAFBO T=5", {"name": "rafbo", "local_steps": 5}, MIXED, "rolling"),
]


def name_of(alg) -> str:
    return alg if isinstance(alg, str) else alg["name"]


def full_model_flops(alg, net: DenseNet, batch: int) -> float:
    """Per-client FLOPs per communication round of the full-model baselines (docstring convention)."""
    F = net.flops(batch)
    if name_of(alg) == "soba":
        return 3 * F + 9 * F
    steps = alg["inner_rounds"] * alg["local_steps"]
    return (steps * (3 * F + 9 * F) + 3 * F) / (2 * alg["inner_rounds"] + 1)


def timed_run(alg, resources, policy, iters: int, evals: int = 4, fraction: float = 1.0, **links: str):
    """Run with every outer iteration timed on its own (the median is robust to a busy machine).
    ``links``: compressor / downlink specs. Returns (final metrics row, best test accuracy, median
    seconds per outer iteration, algorithm)."""
    clients = {} if resources is None else {"resources": resources, "policy": policy}
    if fraction != 1.0:
        clients["fraction"] = fraction
    res, problem = resolve({"task": dict(TASK), "algorithm": alg, "workers": WORKERS, "rounds": iters,
                            "seed": 0, "clients": clients, **links})
    algorithm, comm = build(res, problem)
    state, times, accs = algorithm.init(), [], []
    for t in range(iters):
        tic = time.perf_counter()
        state = algorithm.step(state, t)
        times.append(time.perf_counter() - tic)
        if (t + 1) % max(1, iters // evals) == 0 or t + 1 == iters:
            accs.append(problem.evaluate(*algorithm.point(state))["test_acc"])
    row = {**comm.stats.as_dict(), "test_acc": accs[-1], **algorithm.metrics(state)}
    return row, max(accs), statistics.median(times[1:] or times), algorithm


def methods_table(budget: int) -> None:
    net = DenseNet((784, *TASK["hidden"], 10), split=1)
    print(f"## hyperrep mnist5k, MLP 784-200-10, {WORKERS} iid clients, {budget} communication rounds\n")
    print("| method | resources | policy | test acc (best) | C_x* | client GFLOP/round mean | max "
          "| MB up/round | s/round (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, alg, res, policy in METHODS:
        if name_of(alg) not in ALGORITHMS.names():
            print(f"| {label} | - | - | not registered | | | | | |")
            continue
        per_iter = 2 * alg["inner_rounds"] + 1 if name_of(alg) == "aggitd" else 1
        last, best, sec, _ = timed_run(alg, res, policy, budget // per_iter)
        rounds = last["comm_rounds"]
        if "client_flops_mean" in last:
            fm, fx = last["client_flops_mean"], last["client_flops_max"]
        else:
            fm = fx = full_model_flops(alg, net, TASK["batch_size"])
        shown = "all 1" if res is None else str(res)
        print(f"| {label} | {shown} | {policy or '-'} | {last['test_acc']:.4f} ({best:.4f}) "
              f"| {last.get('C_x', '-')} | {fm / 1e9:.3f} | {fx / 1e9:.3f} "
              f"| {last['bits_up'] / rounds / 8e6:.2f} | {sec / per_iter:.3f} |", flush=True)


def levels_table(rounds: int) -> None:
    """One resource level for every client: the per-client compute of that level. Each round is
    timed on its own; the median and the minimum over rounds are less noisy than a run's total."""
    print(f"\n## one level for all {WORKERS} clients (rolling windows), {rounds} timed rounds of RABO\n")
    print("| level | hidden units kept | client floats (x, y, v) | client GFLOP/round "
          "| s/round, 8 clients: median | min | test acc |")
    print("|---|---|---|---|---|---|---|")
    net = DenseNet((784, *TASK["hidden"], 10), split=1)
    for level in (1.0, 0.5, 0.25, 0.125):
        res, problem = resolve({"task": dict(TASK), "algorithm": "rabo", "workers": WORKERS, "rounds": rounds,
                                "clients": {"resources": [level], "policy": "rolling"}})
        alg, _ = build(res, problem)
        state, times = alg.step(alg.init(), 0), []  # round 0 warms up
        for t in range(1, rounds + 1):
            tic = time.perf_counter()
            state = alg.step(state, t)
            times.append(time.perf_counter() - tic)
        k = keep_count(level, TASK["hidden"][0])
        sub = net.sub_sizes([k])
        floats = net.numel("x", sub) + 2 * net.numel("y", sub)
        acc = problem.evaluate(*alg.point(state))["test_acc"]
        print(f"| {level} | {k} | {floats} | {alg.metrics(state)['client_flops_mean'] / 1e9:.3f} "
              f"| {statistics.median(times):.3f} | {min(times):.3f} | {acc:.4f} |", flush=True)


COMPOSED = [  # label, up-link compressor, down-link compressor, client fraction
    ("RABO", "identity", "identity", 1.0),
    ("+ top-K 10% (EF)", "topk:0.1", "identity", 1.0),
    ("+ sign (EF)", "sign", "identity", 1.0),
    ("+ fraction 0.5", "identity", "identity", 0.5),
    ("+ top-K 10% (EF) + fraction 0.5", "topk:0.1", "identity", 0.5),
    ("+ top-K 10% (EF) + fraction 0.5 + down top-K 10%", "topk:0.1", "topk:0.1", 0.5),
]


def compose_table(rounds: int) -> None:
    """RABO on the mixed levels (rolling) composed with compressors and client sampling."""
    print(f"\n## RABO {MIXED} rolling, {WORKERS} clients, {rounds} rounds: compression and client sampling\n")
    print("| variant | up-link | down-link | fraction | test acc (best) | C_x* | client GFLOP/round mean "
          "| MB up/round | MB down/round | up-link vs RABO |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = None
    for label, up, down, fraction in COMPOSED:
        last, best, _, _ = timed_run("rabo", MIXED, "rolling", rounds, fraction=fraction, compressor=up,
                                     downlink=down)
        mb_up, mb_down = last["bits_up"] / rounds / 8e6, last["bits_down"] / rounds / 8e6
        base = base or mb_up
        print(f"| {label} | {up} | {down} | {fraction} | {last['test_acc']:.4f} ({best:.4f}) | {last['C_x']} "
              f"| {last['client_flops_mean'] / 1e9:.3f} | {mb_up:.3f} | {mb_down:.3f} | {base / mb_up:.1f}x smaller |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=300, help="communication rounds per method")
    ap.add_argument("--level-rounds", type=int, default=40, help="timed rounds per level in the second table")
    ap.add_argument("--part", choices=("all", "methods", "levels", "compose"), default="all")
    a = ap.parse_args()
    if a.part in ("all", "methods"):
        methods_table(a.rounds)
    if a.part in ("all", "levels"):
        levels_table(a.level_rounds)
    if a.part in ("all", "compose"):
        compose_table(a.rounds)


if __name__ == "__main__":
    main()
