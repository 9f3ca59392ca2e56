"""The federated methods' inner budgets, derived (issue 26, item 3; docs/defaults.md section 4).

AggITD's hypergradient differentiates through N rounds of tau FedAvg steps of size beta; FedNest's
and LFedNest's run N + 1 terms of a Neumann series with step eta. Either way the vector v that
solves H_yy v = b (b = grad_y f) is truncated: v_K = H^-1 (I - (I - s H)^K) b after K products
of step s (AggITD: K = N tau, s = beta; FedNest: K = N + 1, s = eta), and the hypergradient
grad_x f - H_xy v_K misses e_K = H_xy H^-1 (I - s H)^K b. x then settles where the truncated
hypergradient vanishes, at a true hypergradient of about ||e_K||: a floor (AggITD at N = 5,
tau = 5 on the default quadratic: 21% of its start, whatever alpha).

``SeriesProbe`` measures ||e_K|| / ||grad Phi|| at the start for every K at once: Lanczos on the
workers' mean H_yy started from b (m = min(d_y, LANCZOS) products H_yy q, each giving H_xy q from
the same vector-Jacobian product) gives H ~ Q T Q' on b's Krylov space, so with T = U diag(th) U'
  e_K ~ ||b|| (H_xy Q U) [(1 - s th)^K / th * U'e_1],  v* ~ ||b|| Q U [U'e_1 / th].
``terms(s)`` is the smallest K with ||e_K|| <= C_SERIES ||grad_x f - H_xy v*||, capped at K_MAX.

Local steps trade noise for drift: tau steps of beta average tau minibatches in one round's
"time" tau beta <= 1 / L_g,max, but heterogeneous clients drift to a FedAvg fixed point away from
y*. ``noise_and_drift`` splits the workers' start directions D_y,i = grad_y g_i on two batches
each into sampling noise sigma^2 (half the mean squared difference of a worker's two batches) and
heterogeneity zeta^2 (the spread of the workers' two-batch means about their mean, less the
noise's share), and tau = clamp(round(sigma^2 / zeta^2), 1, TAU_MAX): local steps only where the
noise they average outweighs the drift they add (a deterministic heterogeneous problem: tau = 1).
Everything runs on batches drawn from the seed, in float64 where the losses accept it, with one
torch thread: every process derives the same numbers.
"""
from __future__ import annotations

import torch

from . import rng
from .oracles import Oracles
from .problems.base import Problem

Tensor = torch.Tensor

C_SERIES = 0.01  # the truncated series may miss at most this share of the start hypergradient
K_MAX = 200  # products of the series at most (AggITD N tau, FedNest N + 1)
N_MAX = 50  # AggITD's rounds N at most (2N + 1 exchanges per outer iteration)
LANCZOS = 20  # Lanczos steps from b (d_y if smaller)
FALLBACK_ROUNDS, FALLBACK_TERMS = 5, 10  # the former fixed budgets, where the series cannot reach C_SERIES
TAU_MAX = 5  # local steps at most
_KEY = 0xB0D6  # random stream of the probe's batches


class SeriesProbe:
    """The start hypergradient's truncation error as a function of (K, step), from Lanczos on b."""

    def __init__(self, problem: Problem, seed: int):
        try:
            self._lanczos(problem, seed, torch.float64)
        except (RuntimeError, TypeError):  # losses hold data of the problem's dtype only
            self._lanczos(problem, seed, problem.dtype)

    def _lanczos(self, problem: Problem, seed: int, dtype: torch.dtype) -> None:
        o, n = Oracles(problem), problem.n_workers
        workers = torch.arange(n)
        x, y = (t.to(dtype) for t in problem.init(seed))
        bf = problem.sample("f", workers, rng.key(seed, _KEY, 1))
        bg = problem.sample("g", workers, rng.key(seed, _KEY, 2))
        gx, b = (t.double() / n for t in o.grad_f(x, y, bf, reduce=True))
        nb = float(b.norm())
        self.products, self.source = 0, f"Lanczos from b = grad_y f on the mean H_yy at (x0, y0), {dtype}"
        if not nb > 0:  # f does not see y at the start: no series to truncate
            self.theta, self.c, self.W, self.h = torch.ones(1), torch.zeros(1), torch.zeros(len(gx), 1), gx
            return
        Q, alphas, betas, Hx = [b / nb], [], [], []
        for _ in range(min(problem.d_y, LANCZOS)):
            hx, hy = (t.double() / n for t in o.hvp_g(x, y, Q[-1].to(dtype), bg, reduce=True))
            self.products += 1
            Hx.append(hx)
            a = float(Q[-1] @ hy)
            alphas.append(a)
            w = hy - a * Q[-1] - (betas[-1] * Q[-2] if betas else 0.0)
            for u in Q:  # full re-orthogonalisation
                w = w - (u @ w) * u
            nw = float(w.norm())
            if len(alphas) == min(problem.d_y, LANCZOS) or not nw > 1e-10 * max(abs(a), 1e-300):
                break
            betas.append(nw)
            Q.append(w / nw)
        m = len(alphas)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(betas[: m - 1], dtype=torch.float64)
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        theta, U = torch.linalg.eigh(T)
        self.theta = theta.clamp_min(1e-12)
        self.c = U[0]  # U'e_1
        self.W = nb * torch.stack(Hx, 1) @ U  # ||b|| H_xy Q U, [d_x, m]
        self.h = gx - self.W @ (self.c / self.theta)  # the start hypergradient with v = H^-1 b

    def error(self, K: int, step: float) -> float:
        """||e_K|| / ||grad Phi||: the share of the start hypergradient K products of ``step`` miss."""
        decay = (1.0 - step * self.theta).abs() ** K
        e = self.W @ (decay * self.c / self.theta)
        return float(e.norm() / self.h.norm().clamp_min(1e-300))

    def terms(self, step: float) -> int | None:
        """The smallest K <= K_MAX with error(K, step) <= C_SERIES; None if K_MAX products do not
        reach it (b lies along directions of curvature ~ mu_g, which a series cannot follow)."""
        lo, hi = 1, K_MAX
        if self.error(hi, step) > C_SERIES:
            return None
        while lo < hi:  # the error falls with K for step <= 1 / L_g (|1 - step theta| < 1)
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if self.error(mid, step) > C_SERIES else (lo, mid)
        return lo


def noise_and_drift(problem: Problem, seed: int) -> tuple[float, float]:
    """(sigma^2, zeta^2) / ||mean D_y||^2 of the workers' grad_y g_i at (x0, y0) on two g-batches
    each: the sampling noise and the heterogeneity of their lower-level gradients."""
    o, n = Oracles(problem), problem.n_workers
    workers = torch.arange(n)
    x, y = problem.init(seed)
    D1, D2 = (o.grad_g_y(x, y, problem.sample("g", workers, rng.key(seed, _KEY, 3 + k))).double()
              for k in range(2))
    mean_i = (D1 + D2) / 2
    mean = mean_i.mean(0)
    scale = float(mean @ mean)
    if not scale > 0:
        return 0.0, 0.0
    sigma2 = float(((D1 - D2) ** 2).sum(-1).mean()) / 2  # one batch's variance about its worker's mean
    zeta2 = max(0.0, float(((mean_i - mean) ** 2).sum(-1).mean()) - sigma2 / 2)
    return sigma2 / scale, zeta2 / scale


def local_steps(sigma2: float, zeta2: float) -> int:
    """tau: as many local steps as the noise they average outweighs the drift they add."""
    if sigma2 <= 0:
        return 1
    if zeta2 <= 0:
        return TAU_MAX
    return max(1, min(TAU_MAX, round(sigma2 / zeta2)))
