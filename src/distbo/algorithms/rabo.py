"""RABO and RAFBO: bilevel optimization with dual pruning for resource-limited clients.

docs/algorithms.md, RABO (Li et al., "Distributed Bilevel Optimization with Dual Pruning for
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
rate O(1/sqrt(C_x* Q)). x's coverage-averaged move goes through the server optimizer ``upper_opt``
(algorithms/upper.py) as the pseudo-gradient (x - x_new) / (c_t alpha). Metrics: C_x, C_y and
``hypergrad_proxy``, the norm of the full-model hypergradient estimate at the server's (x, y, v) on a fixed evaluation minibatch (``RABO.hypergrad_proxy``). Clients of one
resource level share sub-network sizes and run as one vmapped group, so a client's FLOPs, memory and time fall with its level (``client_flops_*``);
a task opts in with ``units()`` and ``sizes=`` on its losses (see algorithms/submodels.py).
With every resource 1, exact products and T = 1, one round equals a SOBA round.

Composition (docs/composition.md). ``compressor``: the up-link compressor acts on each client's
sub-model vector, with per-client error feedback for a contractive one; ``downlink``: each client
receives its sub-model compressed, with server-side error feedback per client (both in
algorithms/submodel_links.py). ``clients.fraction``: each round only a sample of the clients
(``federated.sample_clients``, the same draw as the federated methods) receives, trains and
sends; coverage counts, C_x* and C_y* count the sampled clients only, and the pre-run check
refuses a run in which the sampled clients never cover some coordinate.
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field

from .. import rng
from ..defaults import derived
from ..oracles import FiniteDifferenceOracles, Oracles
from .base import (ALGORITHMS, STREAM_CLIENTS, STREAM_F, STREAM_G, Algorithm, Context, StepSizes, project_ball,
                   schedule_factor)
from .federated import sample_clients
from .soba import soba_directions
from .submodel_links import make_downlink, make_uplink
from .submodels import SPACE, VARS, coverage_average, coverage_change, make_layout

Tensor = torch.Tensor


class RABOParams(StepSizes):
    """Step sizes plus the hypergradient products."""

    products: Literal["finite-difference", "exact"] = Field(
        "finite-difference", description="H v products: central finite differences or exact autograd")
    delta: float = Field(1e-3, gt=0, description="finite-difference step")


class RAFBOParams(RABOParams):
    local_steps: int = Field(5, ge=1, description="local steps T per round")
    schedule: Literal["constant", "sqrt"] | None = Field(
        None, description="constant or 1/sqrt(k+1) decay",
        json_schema_extra=derived("sqrt for T > 1 (a constant step leaves a client-drift neighbourhood), else constant"))


class RABOState(NamedTuple):
    x: Tensor
    y: Tensor
    v: Tensor
    cover: Tensor  # int64 [2]: minimum coverage so far of x and y (-1 before the first round)
    up: Any = ()  # the up-link's state (every client's error-feedback shifts)
    down: Any = ()  # the down-link's state (every client's copies of x, y, v when compressed)
    opt: Any = ()  # the server optimizer's state of x (algorithms/upper.py; () for sgd)


class RABO(Algorithm):
    Hyper = RABOParams
    client_settings = ("fraction", "resources", "policy")
    x_update = "the pseudo-gradient (x - x_new) / (c_t alpha) of the clients' coverage-averaged local x steps"

    def __init__(self, ctx: Context, hp: RABOParams, local_steps: int = 1):
        super().__init__(ctx, hp)
        self.steps = local_steps
        self.layout = make_layout(self.problem, ctx.clients, self.comm.n_workers)
        self.sampled = ctx.clients.fraction < 1.0
        self.layout.check(ctx.rounds, self.round_key, self.participants if self.sampled else None)
        n_levels = len(self.layout.levels)
        self.level_oracles = [self._oracles(self.layout.losses(L)) for L in range(n_levels)]
        level_of = self.layout.level_of
        self.dims = {"x": self.problem.d_x, "y": self.problem.d_y, "v": self.problem.d_y}
        self.uplink = make_uplink(self.layout, self.dims, self.problem.dtype, ctx.compressor)
        self.downlink = make_downlink(self.layout, self.problem.dtype, ctx.downlink)
        bf, bg = self.batches(0, self.workers[:1], sub=-1)  # one client's batches: their sizes, for FLOPs
        per_level = [self.layout.flops(L, bf, bg, self.steps) for L in range(n_levels)]
        self.flops = None if None in per_level else torch.tensor(per_level, dtype=torch.float64)[level_of]

    def _oracles(self, losses) -> Oracles:
        if self.hp.products == "exact":
            return Oracles(losses, self.ctx.worker_chunk)
        return FiniteDifferenceOracles(losses, self.hp.delta, self.ctx.worker_chunk)

    def participants(self, t: int) -> Tensor:
        """Global ids of round t's clients (all, or the sample of ``clients.fraction``)."""
        n = self.comm.n_workers
        return sample_clients(rng.key(self.round_key(t), STREAM_CLIENTS), n, self.ctx.clients.fraction,
                              torch.arange(n))[0]

    def init(self) -> RABOState:
        x, y = self.x0y0()
        v, n = torch.zeros_like(y), self.comm.n_workers
        return RABOState(x, y, v, torch.full((2,), -1, dtype=torch.int64), self.uplink.init(n),
                         self.downlink.init({"x": x, "y": y, "v": v}, n), self.upper.init(x))

    def step(self, s: RABOState, t: int) -> RABOState:
        key = self.round_key(t)
        active = self.participants(t)
        every = self.layout.plan(t, key, active, active if self.sampled else None)  # the server's view
        plan = every.restrict(self.workers)  # this process's clients
        z = {"x": s.x, "y": s.y, "v": s.v}
        down = self.downlink.send(s.down, z, every, self.comm, key)
        c = schedule_factor(self.hp.schedule, t)
        lr = {"x": c * self.hp.alpha, "y": c * self.hp.beta, "v": c * self.hp.gamma}
        parts: dict[str, list] = {k: [] for k in VARS}
        for grp in plan.groups:
            start = self.downlink.start(down, z, grp)
            cur = dict(zip(VARS, start))
            for k in range(self.steps):
                bf, bg = self.batches(t, grp.workers, sub=k)
                D = soba_directions(self.level_oracles[grp.level], cur["x"], cur["y"], cur["v"], bf, bg,
                                    reduce=False)
                cur = {n: cur[n] - lr[n] * self.layout.masked(grp, n, D[n]) for n in VARS}
                cur["v"] = project_ball(cur["v"], self.hp.radius)
            for n, old in zip(VARS, start):
                parts[n].append(cur[n] - old)
        up, sums = self.uplink.send(s.up, plan, every, parts, self.comm, key)
        new = {n: coverage_average(z[n], sums[n], every.coverage[SPACE[n]]) for n in ("y", "v")}
        moved = -coverage_change(sums["x"], every.coverage[SPACE["x"]])  # x's SGD move: x - new x
        x, opt = self.move_x(s.opt, s.x, t, step=moved)
        now = torch.stack([every.coverage["x"].min(), every.coverage["y"].min()]).round().to(torch.int64)
        cover = torch.where(s.cover < 0, now, torch.minimum(s.cover, now))
        return RABOState(x, new["y"], new["v"], cover, up, down, opt)

    def metrics(self, state: RABOState) -> dict[str, float | int | None]:
        cx, cy = (int(c) if c >= 0 else None for c in state.cover)
        out = {"C_x": cx, "C_y": cy, "hypergrad_proxy": self.hypergrad_proxy(state), **super().metrics(state)}
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
