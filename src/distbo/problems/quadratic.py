"""Random quadratic bilevel problems with closed-form solutions (the correctness task).

Worker i holds
  g_i(x, y) = 1/2 y'A_i y + y'B_i x + c_i'y              (A_i symmetric positive definite)
  f_i(x, y) = 1/2 (y - t_i)'P_i (y - t_i) + y'R_i x + 1/2 x'S_i x + s_i'x
Each matrix is a shared base plus ``heterogeneity`` times a worker-specific perturbation, so
heterogeneity = 0 makes all workers identical. With A, B, ... the worker means,
  y*(x) = -A^{-1}(B x + c),  v*(x) = A^{-1} grad_y f(x, y*),  grad Phi(x) = grad_x f - B'v*,
and Phi is a strongly convex quadratic (S is shifted to make sure), so x* solves a linear system.
``noise`` adds Gaussian linear terms z'(x, y) to each sampled loss, i.e. unbiased gradient noise
of that standard deviation (the Hessians stay exact).
"""
from __future__ import annotations

import torch

from .. import rng
from .base import Problem, take


def _spd(base: torch.Tensor, pert: torch.Tensor, h: float, mu: float) -> torch.Tensor:
    m = base + h * pert
    return m @ m.transpose(-1, -2) / m.shape[-1] + mu * torch.eye(m.shape[-1], dtype=m.dtype)


class Quadratic(Problem):
    def __init__(self, workers: int = 8, d_x: int = 10, d_y: int = 20, heterogeneity: float = 1.0,
                 noise: float = 0.0, mu: float = 1.0, seed: int = 0, dtype=torch.float32):
        self.n_workers, self.d_x, self.d_y, self.dtype = workers, d_x, d_y, dtype
        self.noise = noise
        gen = torch.Generator().manual_seed(10_007 + seed)
        dt = torch.float64

        def draw(*shape):
            base = torch.randn(*shape, generator=gen, dtype=dt)
            pert = torch.randn(workers, *shape, generator=gen, dtype=dt)
            return base, pert

        h = heterogeneity
        A = _spd(*draw(d_y, d_y), h, mu)
        P = _spd(*draw(d_y, d_y), h, 0.1)
        B0, Bp = draw(d_y, d_x)
        R0, Rp = draw(d_y, d_x)
        S = _spd(*draw(d_x, d_x), h, 0.1)
        vecs = {k: draw(n) for k, n in (("c", d_y), ("t", d_y), ("s", d_x))}
        data = {"A": A, "P": P, "B": (B0 + h * Bp) / d_x**0.5, "R": 0.3 * (R0 + h * Rp) / d_x**0.5,
                "S": S, **{k: b + h * p for k, (b, p) in vecs.items()}}
        # make Phi strongly convex: shift every S_i by the same multiple of I if needed
        M = self._phi_hessian({k: v.mean(0) for k, v in data.items()})
        lam = torch.linalg.eigvalsh(M).min()
        data["S"] = data["S"] + max(0.0, 0.5 - float(lam)) * torch.eye(d_x, dtype=dt)
        self._data64 = data
        self.mean64 = {k: v.mean(0) for k, v in data.items()}
        self.mean64["Pt"] = torch.einsum("nij,nj->i", data["P"], data["t"]) / workers
        self.data = {k: v.to(dtype) for k, v in data.items()}
        self.x_star = self._solve_x_star().to(dtype)

    # ----- per-worker losses (one worker) -----
    def g(self, x, y, batch):
        val = 0.5 * y @ (batch["A"] @ y) + y @ (batch["B"] @ x) + batch["c"] @ y
        if "zg" in batch:
            val = val + batch["zg"] @ y
        return val

    def f(self, x, y, batch):
        r = y - batch["t"]
        val = 0.5 * r @ (batch["P"] @ r) + y @ (batch["R"] @ x) + 0.5 * x @ (batch["S"] @ x) + batch["s"] @ x
        if "zx" in batch:
            val = val + batch["zx"] @ x + batch["zy"] @ y
        return val

    def sample(self, level, workers, key):
        names = ("A", "B", "c") if level == "g" else ("P", "R", "S", "s", "t")
        batch = {k: take(self.data[k], workers) for k in names}
        if self.noise > 0:
            wk = rng.key(key, workers)
            if level == "g":
                batch["zg"] = self.noise * rng.normal(wk, (self.d_y,), self.dtype)
            else:
                batch["zx"] = self.noise * rng.normal(rng.key(wk, 1), (self.d_x,), self.dtype)
                batch["zy"] = self.noise * rng.normal(rng.key(wk, 2), (self.d_y,), self.dtype)
        return batch

    # ----- closed forms (float64, on the worker means) -----
    @staticmethod
    def _phi_hessian(m):
        J = -torch.linalg.solve(m["A"], m["B"])
        return J.T @ m["P"] @ J + J.T @ m["R"] + m["R"].T @ J + m["S"]

    def y_star(self, x: torch.Tensor) -> torch.Tensor:
        m, x = self.mean64, x.to(torch.float64)
        return -torch.linalg.solve(m["A"], m["B"] @ x + m["c"])

    def _grads_f(self, x, y):
        m = self.mean64
        gx = m["R"].T @ y + m["S"] @ x + m["s"]
        gy = m["P"] @ y - m["Pt"] + m["R"] @ x
        return gx, gy

    def v_star(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        _, gy = self._grads_f(x, self.y_star(x))
        return torch.linalg.solve(self.mean64["A"], gy)

    def hypergrad(self, x: torch.Tensor) -> torch.Tensor:
        """Exact grad Phi(x) = grad_x f - B' A^{-1} grad_y f at y*(x) (float64)."""
        x = x.to(torch.float64)
        gx, _ = self._grads_f(x, self.y_star(x))
        return gx - self.mean64["B"].T @ self.v_star(x)

    def phi(self, x: torch.Tensor) -> float:
        x = x.to(torch.float64)
        return float(self._f_mean(x, self.y_star(x)))

    def _f_mean(self, x, y):
        m = self.mean64
        d = self._data64
        r = y - d["t"]  # [n, d_y]
        quad = 0.5 * torch.einsum("ni,nij,nj->n", r, d["P"], r).mean()
        return quad + y @ m["R"] @ x + 0.5 * x @ m["S"] @ x + m["s"] @ x

    def _solve_x_star(self):
        x0 = torch.zeros(self.d_x, dtype=torch.float64)
        H = self._phi_hessian(self.mean64)
        return x0 - torch.linalg.solve(H, self.hypergrad(x0))

    def evaluate(self, x, y):
        x64, y64 = x.to(torch.float64), y.to(torch.float64)
        return {
            "upper_loss": float(self._f_mean(x64, y64)),
            "phi": self.phi(x64),
            "hypergrad_norm": float(self.hypergrad(x64).norm()),
            "x_err": float((x64 - self.x_star.to(torch.float64)).norm()),
            "y_err": float((y64 - self.y_star(x64)).norm()),
        }

    def constants(self):
        """Closed form: the spectrum of the mean A (L_g, mu_g), of each A_i (L_g,max) and of Phi's
        Hessian (L_phi), all constant in (x, y)."""
        ev = torch.linalg.eigvalsh(self.mean64["A"])
        return {"L_g": float(ev.max()), "mu_g": float(ev.min()),
                "L_g_max": float(torch.linalg.eigvalsh(self._data64["A"]).max()),
                "L_phi": float(torch.linalg.eigvalsh(self._phi_hessian(self.mean64)).max()), "source": "closed form"}

    def describe(self):
        A = self.mean64["A"]
        ev = torch.linalg.eigvalsh(A)
        return {"lower_mu": float(ev.min()), "lower_L": float(ev.max()),
                "hypergrad_norm_at_start": float(self.hypergrad(torch.zeros(self.d_x)).norm())}
