"""The hypergradient of Phi(x) = f(x, y*(x)) at a point, with the lower level solved to a tolerance.

Two users (docs/defaults.md, docs/running.md):
- the derived x step: ``phi_curvature`` estimates Phi's curvature at x0 by a power iteration on
  finite differences of these hypergradients, and alpha0 = C_X / that (defaults.py);
- the ``eval_hypergrad`` metric: ``HypergradMetric`` reports ||grad Phi(x)|| at every evaluation
  of any problem (the built-in quadratic has it in closed form), so a run shows progress in x.

The objective is deterministic: the mean over workers of f_i, g_i on a fixed set of batches
(``fixed_batches``: ``count`` draws per worker from one key, stacked on the worker axis; with
``batch_size="full"`` or large counts this is the workers' whole data). On it:

    y*  = argmin_y mean g          L-BFGS (strong Wolfe) from a warm start, to ||grad_y g|| <= tol
    v   = H_yy^-1 grad_y f         conjugate gradients on the mean H_yy, to a relative tol
    grad Phi = grad_x f - H_xy v   one vector-Jacobian product of grad_y g

Everything runs in float64 where the problem's losses accept it, with one torch thread (the same
numbers in every process).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

from . import oracles, rng
from .problems.base import Batch, Problem

Tensor = torch.Tensor
_KEY = 0x4E6A  # random stream of the fixed batches and the start vector

TOL = 1e-5  # ||grad_y g|| <= TOL (1 + ||grad_y g at the start||); CG: ||r|| <= TOL ||b||
MAX_LOWER = 300  # L-BFGS iterations at most
MAX_CG = 300  # conjugate-gradient iterations at most


def fixed_batches(problem: Problem, level: str, key: Tensor, count: int) -> Batch:
    """``count`` batches per worker, all workers, stacked along the worker axis ([count n, ...]):
    the mean of a loss over the rows is the mean over workers of each worker's mean over draws."""
    workers = torch.arange(problem.n_workers)
    draws = [problem.sample(level, workers, rng.key(key, k)) for k in range(count)]
    return tree_map(lambda *ts: torch.cat(ts), *draws)


def _rows(batch: Batch) -> int:
    return int(tree_leaves(batch)[0].shape[0])


def _cast(batch: Batch, dtype: torch.dtype) -> Batch:
    return tree_map(lambda t: t.to(dtype) if t.is_floating_point() else t, batch)


@dataclass
class Objective:
    """The deterministic mean f and g of a problem on fixed batches."""

    problem: Problem
    bf: Batch
    bg: Batch
    ridge: float = 0.0  # + ridge / 2 ||y - anchor||^2 on g: the lower level at a horizon (phi_curvature)
    anchor: Tensor | None = None

    def __post_init__(self):
        self.nf, self.ng = _rows(self.bf), _rows(self.bg)

    def g(self, x: Tensor, y: Tensor) -> Tensor:
        value = oracles.loss_values(self.problem.g, x, y, self.bg).mean()
        return value + 0.5 * self.ridge * ((y - self.anchor) ** 2).sum() if self.ridge else value

    def grad_y_g(self, x: Tensor, y: Tensor) -> Tensor:
        gy = oracles.grad_y(self.problem.g, x, y, self.bg, reduce=True) / self.ng
        return gy + self.ridge * (y - self.anchor) if self.ridge else gy

    def grad_f(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        gx, gy = oracles.grad_xy(self.problem.f, x, y, self.bf, reduce=True)
        return gx / self.nf, gy / self.nf

    def at(self, x: Tensor) -> "LowerAt":
        """g's y-derivatives at a fixed x (from the features once, where g declares them)."""
        return LowerAt(self, x)

    def hvp(self, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(H_xy v, H_yy v) of the mean g."""
        hxy, hyy = oracles.hvp(self.problem.g, x, y, v, self.bg, reduce=True)
        return hxy / self.ng, hyy / self.ng + self.ridge * v


class LowerAt:
    """The mean g at a fixed x as a function of y: ``value``, ``grad`` and ``hvp`` (H_yy u). Where
    the problem declares a ``Representation`` (g = head(features(x, inputs), y)), the features of
    the fixed batches are computed once and every call costs the head's arithmetic only."""

    def __init__(self, obj: Objective, x: Tensor):
        self.obj, self.x = obj, x
        rep = obj.problem.representation()
        self.loss = None
        if rep is not None and isinstance(obj.bg, dict) and "inputs" in obj.bg:
            with torch.no_grad():
                z = torch.func.vmap(rep.features, in_dims=(None, 0))(x, obj.bg["inputs"])
            rest = {k: v for k, v in obj.bg.items() if k != "inputs"}
            summed = torch.func.vmap(rep.head, in_dims=(0, None, 0))
            self.loss = lambda y: summed(z, y, rest).mean()

    def value(self, y: Tensor) -> Tensor:
        if self.loss is None:
            return self.obj.g(self.x, y)
        o = self.obj
        return self.loss(y) + (0.5 * o.ridge * ((y - o.anchor) ** 2).sum() if o.ridge else 0.0)

    def grad(self, y: Tensor) -> Tensor:
        if self.loss is None:
            return self.obj.grad_y_g(self.x, y)
        o = self.obj
        gy = torch.func.grad(self.loss)(y)
        return gy + o.ridge * (y - o.anchor) if o.ridge else gy

    def hvp(self, y: Tensor, u: Tensor) -> Tensor:
        if self.loss is None:
            return self.obj.hvp(self.x, y, u)[1]
        return torch.func.jvp(torch.func.grad(self.loss), (y,), (u,))[1] + self.obj.ridge * u


def solve_lower(obj: Objective, x: Tensor, y: Tensor, tol: float = TOL,
                max_iter: int = MAX_LOWER) -> tuple[Tensor, int]:
    """argmin_y of the mean g at x by L-BFGS from ``y``; (y*, gradient evaluations)."""
    low = obj.at(x)
    start = float(low.grad(y).norm())
    goal = tol * (1.0 + start)
    p = y.detach().clone().requires_grad_(True)
    calls = [0]
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=goal / math.sqrt(p.numel()), tolerance_change=0.0)

    def closure():
        calls[0] += 1
        with torch.no_grad():
            q = p.detach()
        p.grad = low.grad(q)
        return low.value(q)

    opt.step(closure)
    return p.detach(), calls[0]


def conjugate_gradient(matvec, b: Tensor, tol: float = TOL, max_iter: int = MAX_CG) -> tuple[Tensor, int]:
    """Solve A v = b for a symmetric positive definite A given as ``matvec``; (v, products)."""
    v = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr, goal = float(r @ r), (tol * float(b.norm())) ** 2
    k = 0
    while k < max_iter and rr > goal:
        Ap = matvec(p)
        k += 1
        curv = float(p @ Ap)
        if curv <= 0:  # not positive definite along p: stop with what is solved so far
            break
        a = rr / curv
        v = v + a * p
        r = r - a * Ap
        rr, prev = float(r @ r), rr
        p = r + (rr / prev) * p
    return v, k


def hypergradient(obj: Objective, x: Tensor, y: Tensor, tol: float = TOL) -> tuple[Tensor, Tensor, dict[str, int]]:
    """(grad Phi(x), y*(x), counts) with y* solved from the warm start ``y``."""
    y_star, calls = solve_lower(obj, x, y, tol)
    gx, gy = obj.grad_f(x, y_star)
    low = obj.at(x)
    v, cg = conjugate_gradient(lambda u: low.hvp(y_star, u), gy, tol)
    return gx - obj.hvp(x, y_star, v)[0], y_star, {"lower": calls, "cg": cg}


def float64_if_accepted(problem: Problem, fn):
    """``fn(dtype)`` in float64, or in the problem's dtype where its losses hold other data."""
    try:
        return fn(torch.float64)
    except (RuntimeError, TypeError):
        return fn(problem.dtype)


# ----- the curvature of Phi at x0 (defaults.py) -----
FD_STEP = 1e-2  # the finite-difference step, times max(1, ||x0||)
POWER = 2  # power-iteration steps on the finite-difference Hessian of Phi
MAX_DRAWS = 8  # fixed batches per worker and level at most (Problem.draws_per_shard)


def draws(problem: Problem, level: str) -> int:
    return max(1, min(MAX_DRAWS, int(problem.draws_per_shard(level))))


def phi_curvature(problem: Problem, seed: int, ridge: float = 0.0, steps: int = POWER) -> dict[str, Any]:
    """Phi's curvature at x0: ``steps`` power-iteration steps on u -> (grad Phi(x0 + e u) -
    grad Phi(x0)) / e from u = grad Phi(x0) / ||.||, every hypergradient with the lower level
    solved (warm-started) on fixed batches covering each worker's shard (at most MAX_DRAWS
    draws), with ``ridge`` / 2 ||y - y0||^2 added to g (the horizon, defaults.py); the largest
    ||H u|| seen. Returns L_phi (0 when Phi is flat to rounding there) with its cost."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tic = time.perf_counter()
    try:
        out = float64_if_accepted(problem, lambda dt: _power(problem, seed, steps, dt, ridge))
    finally:
        torch.set_num_threads(before)
    out["seconds"] = time.perf_counter() - tic
    return out


def _power(problem: Problem, seed: int, steps: int, dtype: torch.dtype, ridge: float) -> dict[str, Any]:
    key = rng.key(seed, _KEY)
    x0, y0 = (t.to(dtype) for t in problem.init(seed))
    obj = Objective(problem, _cast(fixed_batches(problem, "f", rng.key(key, 1), draws(problem, "f")), dtype),
                    _cast(fixed_batches(problem, "g", rng.key(key, 2), draws(problem, "g")), dtype), ridge, y0)
    h0, y_star, n = hypergradient(obj, x0, y0)
    calls, cg = n["lower"], n["cg"]
    e = FD_STEP * max(1.0, float(x0.norm()))
    u = h0 if float(h0.norm()) > 0 else rng.normal(rng.key(key, 3), (problem.d_x,), dtype)
    u = u / u.norm()
    lam = 0.0
    for _ in range(steps):
        h, _, n = hypergradient(obj, x0 + e * u, y_star)
        calls, cg = calls + n["lower"], cg + n["cg"]
        Hu = (h - h0) / e
        norm = float(Hu.norm())
        if not math.isfinite(norm):
            break
        lam = max(lam, norm)
        if norm == 0.0:
            break
        u = Hu / norm
    return {"L_phi": lam, "hypergrad_norm_x0": float(h0.norm()), "fd_step": e, "power_steps": steps,
            "lower_grad_calls": calls, "cg_products": cg, "ridge": ridge,
            "draws_per_worker": [draws(problem, "f"), draws(problem, "g")]}


# ----- the eval_hypergrad metric -----
class HypergradMetric:
    """||grad Phi(x)|| at an evaluation point, the lower level solved from the run's own y, on
    fixed batches covering each worker's shard (``draws``; the same at every evaluation)."""

    def __init__(self, problem: Problem, seed: int):
        self.problem, self.seed = problem, seed
        self.objectives: dict[torch.dtype, Objective] = {}
        self.dtype: torch.dtype | None = None

    def _objective(self, dtype: torch.dtype) -> Objective:
        if dtype not in self.objectives:
            key = rng.key(self.seed, _KEY, 7)
            self.objectives[dtype] = Objective(
                self.problem, _cast(fixed_batches(self.problem, "f", rng.key(key, 1), draws(self.problem, "f")), dtype),
                _cast(fixed_batches(self.problem, "g", rng.key(key, 2), draws(self.problem, "g")), dtype))
        return self.objectives[dtype]

    def __call__(self, x: Tensor, y: Tensor) -> dict[str, float]:
        tic = time.perf_counter()

        def at(dtype):
            h, _, _ = hypergradient(self._objective(dtype), x.detach().to(dtype), y.detach().to(dtype))
            self.dtype = dtype  # the dtype the losses accept: the next evaluations go straight to it
            return h

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            h = at(self.dtype) if self.dtype is not None else float64_if_accepted(self.problem, at)
        finally:
            torch.set_num_threads(before)
        return {"hypergrad_norm": float(h.norm()), "hypergrad_s": round(time.perf_counter() - tic, 4)}
