"""Server optimizers of x (``algorithm.upper_opt``, issue 26 item 2): sgd at the derived alpha
against momentum, adam and dog, every method at its other defaults, on the three tasks and on a
user-style ModuleProblem (per-feature weight decay of a linear classifier, 30 features, 4 workers).

    python benchmarks/upper_opt.py                      # the table of docs/defaults.md, "Server optimizers"
    python benchmarks/upper_opt.py --tasks quadratic --opts sgd,dog

End metric: hypergrad_norm on the quadratic, test_acc on hyperclean / hyperrep, and on the
weight-decay problem Phi(x) = f(x, y*(x)) (y* by L-BFGS on the full training data, f on the full
validation data) with max_j |x_j - x0_j|. One torch thread; a diverged run is "div".
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import distbo
from distbo.errors import DivergenceError

OPTS = ("sgd", "momentum", "adam", "dog")
METHODS = {  # label -> (algorithm, compressor)
    "soba": ("soba", "identity"), "ef-soba topk:0.1": ("ef-soba", "topk:0.1"), "aggitd": ("aggitd", "identity"),
    "fednest": ("fednest", "identity"), "lfednest": ("lfednest", "identity"), "rafbo": ("rafbo", "identity")}
FEDERATED = ("aggitd", "fednest", "lfednest")
TASKS = {"quadratic": ("quadratic", 300), "hyperclean": ("hyperclean", 100), "hyperrep": ("hyperrep", 100),
         "weight-decay": (None, 200)}  # rounds (federated: a tenth, in outer iterations)


# ----- the user-style problem -----
FEATURES, WORKERS, TRAIN, VAL, DECAY0 = 30, 4, 60, 60, 1.0


def _data():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(FEATURES, generator=gen) * (torch.arange(FEATURES) < 8)  # 8 useful features of 30
    out = []
    for i in range(WORKERS):
        shift = 0.5 * torch.randn(FEATURES, generator=gen)  # heterogeneous feature means per worker
        a = torch.randn(TRAIN + VAL, FEATURES, generator=gen, dtype=torch.float64) + shift.double()
        b = (a @ w.double() + 0.5 * torch.randn(TRAIN + VAL, generator=gen, dtype=torch.float64) > 0).long()
        out.append((a, b))
    return out


def _loss_f(up, low, batch):
    a, b = batch
    return F.cross_entropy(low(a), b)


def _loss_g(up, low, batch):
    """Training loss + per-feature weight decay exp(x_j) w_j^2 / 2 (x: log-decay, one per feature)."""
    return _loss_f(up, low, batch) + 0.5 * (torch.exp(up) * low.params["weight"].pow(2)).sum(0).sum()


def weight_decay_problem() -> distbo.ModuleProblem:
    data = _data()
    head = nn.Linear(FEATURES, 2).double()
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    x0 = torch.full((FEATURES,), float(torch.log(torch.tensor(DECAY0))), dtype=torch.float64)
    return distbo.ModuleProblem(upper=x0, lower=head, f=_loss_f, g=_loss_g, batch_size=16,
                                train=[(a[:TRAIN], b[:TRAIN]) for a, b in data],
                                val=[(a[TRAIN:], b[TRAIN:]) for a, b in data])


def phi(x: torch.Tensor) -> float:
    """f(x, y*(x)) on the full data: y* by L-BFGS on the mean of the workers' g."""
    data = _data()
    W = torch.zeros(2, FEATURES, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, c], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def g():
        opt.zero_grad()
        loss = sum(F.cross_entropy(a[:TRAIN] @ W.T + c, b[:TRAIN]) for a, b in data) / WORKERS
        loss = loss + 0.5 * (torch.exp(x.detach()) * W.pow(2)).sum(0).sum()
        loss.backward()
        return loss
    opt.step(g)
    with torch.no_grad():
        return float(sum(F.cross_entropy(a[TRAIN:] @ W.T + c, b[TRAIN:]) for a, b in data) / WORKERS)


# ----- the matrix -----
def one(task: str, method: str, opt: str, seed: int = 0) -> dict:
    name, rounds = TASKS[task]
    alg, comp = METHODS[method]
    rounds = rounds // 10 if alg in FEDERATED else rounds
    problem = weight_decay_problem() if name is None else name
    tic = time.perf_counter()
    try:
        r = distbo.run(problem, algorithm={"name": alg, "upper_opt": opt}, compressor=comp, rounds=rounds,
                       eval_every=rounds, seed=seed)
    except DivergenceError as exc:
        return {"task": task, "method": method, "opt": opt, "seed": seed, "end": "div", "why": str(exc)[:60]}
    row = {"task": task, "method": method, "opt": opt, "seed": seed, "rounds": rounds,
           "s": round(time.perf_counter() - tic, 1),
           "alpha": r.config["algorithm"]["alpha"]}
    first, last = r.metrics[0], r.metrics[-1]
    if task == "quadratic":
        row.update(start=first["hypergrad_norm"], end=last["hypergrad_norm"])
    elif name is None:
        x0 = problem.x0
        row.update(start=phi(x0), end=phi(r.x), moved=float((r.x - x0).abs().max()))
    else:
        row.update(start=first["test_acc"], end=last["test_acc"])
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--opts", default=",".join(OPTS))
    ap.add_argument("--seeds", default="0", help="comma-separated run seeds (the weight-decay data stay the same)")
    ap.add_argument("--jsonl", help="append one JSON row per run to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for task in a.tasks.split(","):
        for method in a.methods.split(","):
            for opt, seed in ((o, int(s)) for o in a.opts.split(",") for s in a.seeds.split(",")):
                row = one(task, method, opt, seed)
                print(json.dumps(row), flush=True)
                if a.jsonl:
                    with open(a.jsonl, "a") as fh:
                        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
