"""Bring your own bilevel problem: tune per-feature ridge penalties across 4 workers.

Each worker holds its own linear-regression data. The lower level fits weights y on the worker's
training split with a penalty exp(x_j) per feature; the upper level is the validation error of
those weights. distbo supplies the gradients, Hessian-vector products, the worker axis and the
communication: the problem only says what its losses and batches are.

    python examples/custom_problem.py
"""
from __future__ import annotations

import torch

import distbo
from distbo import rng


class RidgePenalties(distbo.Problem):
    def __init__(self, workers: int = 4, features: int = 10, samples: int = 200, batch: int = 32):
        self.n_workers, self.d_x, self.d_y, self.batch = workers, features, features, batch
        gen = torch.Generator().manual_seed(0)
        w_true = torch.randn(features, generator=gen) * (torch.arange(features) < 3)  # 3 useful features
        self.a = torch.randn(workers, samples, features, generator=gen)
        self.b = self.a @ w_true + 0.5 * torch.randn(workers, samples, generator=gen)
        self.split = samples // 2  # first half trains (g), second half validates (f)

    def g(self, x, y, batch):  # one worker's lower-level loss
        a, b = batch
        return ((a @ y - b) ** 2).mean() + (torch.exp(x) * y**2).sum() / 2

    def f(self, x, y, batch):  # one worker's upper-level loss
        a, b = batch
        return ((a @ y - b) ** 2).mean()

    def sample(self, level, workers, key):
        """A minibatch per worker, a pure function of (workers, key): [n_local, B, ...]."""
        low = 0 if level == "g" else self.split
        idx = low + rng.randint(rng.key(key, workers), self.split, (self.batch,))
        rows = workers[:, None]
        return self.a[rows, idx], self.b[rows, idx]

    def evaluate(self, x, y):
        val = ((self.a[:, self.split:] @ y - self.b[:, self.split:]) ** 2).mean()
        return {"upper_loss": float(val), "penalty_min": float(x.min()), "penalty_max": float(x.max())}


if __name__ == "__main__":
    result = distbo.run(RidgePenalties(), algorithm={"name": "soba", "alpha": 0.5, "beta": 0.05, "gamma": 0.05},
                        rounds=400, eval_every=100)
    for row in result.metrics:
        print(f"round {row['round']:4d}  bits_up {row['bits_up']:>10,}  validation MSE {row['upper_loss']:.4f}")
    print("learned log-penalties:", [round(v, 2) for v in result.x.tolist()])
