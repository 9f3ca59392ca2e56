"""RABO and RAFBO: bilevel optimization with dual pruning for resource-limited clients.

ALGORITHMS.md section 4 (Li et al., "Distributed Bilevel Optimization with Dual Pruning for
Resource-limited Clients"). Each round the server hands client i sub-models of x and y (masks
m_x^i, m_y^i keeping about r_i of the units, algorithms/submodels.py) and the client runs T local
steps on its kept coordinates only (RABO: T = 1; RAFBO: T = ``local_steps``), evaluating the SOBA
directions (algorithms/soba.py ``soba_directions``) at its current local point:
  y <- y - beta m_y (.) grad_y G_i(x, y)
  v <- Proj_{||v|| <= radius}( v - gamma m_y (.) (H_yy v - grad_y F_i(x, y)) )
  x <- x - alpha m_x (.) (grad_x F_i(x, y) - H_xy v)
The products are second-order free by default, central finite differences of grad g with step
``delta`` (SWITCH ``products``: 'finite-difference' | 'exact' autograd, oracles.py). Clients send
only their kept coordinates' changes; the server adds, per coordinate, their sum divided by the
number of clients that covered it (coverage average; an uncovered coordinate keeps its value) and
records the minimum coverage so far, C_x* and C_y* (metrics ``C_x``, ``C_y``), which governs the
rate O(1/sqrt(C_x* Q)), and ``hypergrad_proxy``, the norm of the full-model hypergradient estimate at
the server's (x, y, v) on a fixed evaluation minibatch (``RABO.hypergrad_proxy``). Clients of one resource level share sub-network sizes and run as one
vmapped group, so a client's FLOPs, memory and time fall with its level (``client_flops_*``);
a task opts in with ``units()`` and ``sizes=`` on its losses (see algorithms/submodels.py).
With every resource 1, exact products and T = 1, one round equals a SOBA round.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import Field

from .. import rng
from ..comm.messages import float_bits
from ..errors import ConfigError
from ..oracles import FiniteDifferenceOracles, Oracles
from .base import STREAM_F, STREAM_G, ALGORITHMS, Algorithm, Context, StepSizes, project_ball, schedule_factor
from .soba import soba_directions
from .submodels import SPACE, VARS, Kept, PerReceiver, coverage_average, make_layout

Tensor = torch.Tensor


class RABOParams(StepSizes):
    """Step sizes plus the hypergradient products."""

    products: Literal["finite-difference", "exact"] = Field(
        "finite-difference", description="H v products: central finite differences or exact autograd")
    delta: float = Field(1e-3, gt=0, description="finite-difference step")


class RAFBOParams(RABOParams):
    local_steps: int = Field(5, ge=1, description="local steps T per round")


class RABOState(NamedTuple):
    x: Tensor
    y: Tensor
    v: Tensor
    cover: Tensor  # int64 [2]: minimum coverage so far of x and y (-1 before the first round)


class RABO(Algorithm):
    Hyper = RABOParams

    def __init__(self, ctx: Context, hp: RABOParams, local_steps: int = 1):
        super().__init__(ctx, hp)
        if ctx.clients.fraction != 1.0:
            raise ConfigError("clients.fraction", "rabo/rafbo use every client each round; allowed: 1.0")
        if ctx.compressor.kind != "exact" or ctx.downlink is not None:
            raise ConfigError("compressor", "rabo/rafbo send uncompressed sub-models; allowed: identity")
        self.steps = local_steps
        self.layout = make_layout(self.problem, ctx.clients, self.comm.n_workers)
        self.layout.check(ctx.rounds, self.round_key)
        n_levels = len(self.layout.levels)
        self.level_oracles = [self._oracles(self.layout.losses(L)) for L in range(n_levels)]
        level_of = self.layout.level_of
        width = float_bits(torch.zeros((), dtype=self.problem.dtype))
        self.down = PerReceiver(torch.tensor([self.layout.down_floats(int(L)) for L in level_of]), width)
        bf, bg = self.batches(0, self.workers[:1], sub=-1)  # one client's batches: their sizes, for FLOPs
        per_level = [self.layout.flops(L, bf, bg, self.steps) for L in range(n_levels)]
        self.flops = None if None in per_level else torch.tensor(per_level, dtype=torch.float64)[level_of]

    def _oracles(self, losses) -> Oracles:
        if self.hp.products == "exact":
            return Oracles(losses)
        return FiniteDifferenceOracles(losses, self.hp.delta)

    def init(self) -> RABOState:
        x, y = self.x0y0()
        return RABOState(x, y, torch.zeros_like(y), torch.full((2,), -1, dtype=torch.int64))

    def step(self, s: RABOState, t: int) -> RABOState:
        plan = self.layout.plan(t, self.round_key(t), self.workers)
        c = schedule_factor(self.hp.schedule, t)
        lr = {"x": c * self.hp.alpha, "y": c * self.hp.beta, "v": c * self.hp.gamma}
        parts: dict[str, list] = {k: [] for k in VARS}
        for grp in plan.groups:
            start = self.layout.view(grp, s.x, s.y, s.v)
            cur = dict(zip(VARS, start))
            for k in range(self.steps):
                bf, bg = self.batches(t, grp.workers, sub=k)
                D = soba_directions(self.level_oracles[grp.level], cur["x"], cur["y"], cur["v"], bf, bg,
                                    reduce=False)
                cur = {n: cur[n] - lr[n] * self.layout.masked(grp, n, D[n]) for n in VARS}
                cur["v"] = project_ball(cur["v"], self.hp.radius)
            for n, old in zip(VARS, start):
                parts[n].append(self.layout.kept(grp, n, cur[n] - old))
        dims = {"x": self.problem.d_x, "y": self.problem.d_y, "v": self.problem.d_y}
        sums = self.comm.exchange({n: Kept(dims[n], parts[n], self.comm.n_local, s.x.dtype) for n in VARS},
                                  mean=False)
        new = {n: coverage_average(getattr(s, n), sums[n], plan.coverage[SPACE[n]]) for n in VARS}
        self.comm.broadcast({"sub-models": self.down}, receivers=1)
        now = torch.stack([plan.coverage["x"].min(), plan.coverage["y"].min()]).round().to(torch.int64)
        cover = torch.where(s.cover < 0, now, torch.minimum(s.cover, now))
        return RABOState(new["x"], new["y"], new["v"], cover)

    def metrics(self, state: RABOState) -> dict[str, float | int | None]:
        cx, cy = (int(c) if c >= 0 else None for c in state.cover)
        out = {"C_x": cx, "C_y": cy, "hypergrad_proxy": self.hypergrad_proxy(state)}
        if self.flops is not None:
            out.update(client_flops_mean=float(self.flops.mean()), client_flops_max=float(self.flops.max()))
        return out

    def hypergrad_proxy(self, s: RABOState) -> float:
        """||mean_i (grad_x F_i(x, y) - H_xy,i(x, y) v)|| at the server's (x, y, v): the method's
        hypergradient estimate with the full model and exact products, on one evaluation minibatch
        per client that is the same at every evaluation (a stationarity proxy where the task has no
        closed-form hypergradient). Bookkeeping: not counted as communication."""
        key = rng.key(self.ctx.seed, 0xE7A1)
        bf = self.problem.sample("f", self.workers, rng.key(key, STREAM_F))
        bg = self.problem.sample("g", self.workers, rng.key(key, STREAM_G))
        d_x = soba_directions(self.oracles, s.x, s.y, s.v, bf, bg, reduce=True)["x"]
        return float((self.comm.all_sum(d_x) / self.comm.n_workers).double().norm())


@ALGORITHMS.register("rabo", RABOParams,
                     "RABO: one local step on pruned sub-models, coverage-averaged (Li et al.)")
def _rabo(ctx: Context, hp: RABOParams) -> RABO:
    return RABO(ctx, hp)


@ALGORITHMS.register("rafbo", RAFBOParams,
                     "RAFBO: T local steps on pruned sub-models, coverage-averaged (Li et al.)")
def _rafbo(ctx: Context, hp: RAFBOParams) -> RABO:
    return RABO(ctx, hp, local_steps=hp.local_steps)
