"""Small problems for tests: a non-quadratic g whose Hessian depends on y and on the batch."""
from __future__ import annotations

import torch

from distbo import Problem, rng


class SoftplusProblem(Problem):
    """g_i(x, y; a) = mean_b softplus(a_b'y + x_0) + 0.5 (1 + x_1^2)||y||^2 + y'M x; f_i = ||y - t_i||^2 + sin(x)'x."""

    def __init__(self, workers=3, d_x=2, d_y=4, batch=5, dtype=torch.float64, seed=0):
        self.n_workers, self.d_x, self.d_y, self.dtype, self.bs = workers, d_x, d_y, dtype, batch
        gen = torch.Generator().manual_seed(seed)
        self.feats = torch.randn(workers, 20, d_y, generator=gen, dtype=dtype)
        self.M = torch.randn(workers, d_y, d_x, generator=gen, dtype=dtype)
        self.t = torch.randn(workers, d_y, generator=gen, dtype=dtype)

    def g(self, x, y, b):
        z = b["a"] @ y + x[0]
        return torch.nn.functional.softplus(z).mean() + 0.5 * (1 + x[1] ** 2) * (y @ y) + y @ (b["M"] @ x)

    def f(self, x, y, b):
        return ((y - b["t"]) ** 2).sum() + torch.sin(x) @ x + (b["a"] @ y).mean() * x[0]

    def sample(self, level, workers, key):
        idx = rng.randint(rng.key(key, workers), 20, (self.bs,))
        a = torch.stack([self.feats[w][i] for w, i in zip(workers.tolist(), idx)])
        return {"a": a, "M": self.M[workers], "t": self.t[workers]}

    def evaluate(self, x, y):
        return {"upper_loss": 0.0}


def without_time(rows):
    """Metric rows without ``wall_s`` (the one field a rerun or a resume may change)."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def stop_at(round_, how):
    """A replacement for ``runner.build`` whose algorithm calls ``how()`` at the start of round ``round_``."""
    from distbo import runner

    orig = runner.build

    def build(*args, **kwargs):
        algorithm, comm = orig(*args, **kwargs)
        step = algorithm.step

        def stepping(state, t):
            if t == round_:
                how()
            return step(state, t)

        algorithm.step = stepping
        return algorithm, comm

    return build
