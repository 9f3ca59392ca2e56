"""SOBA: the single-loop stochastic bilevel method, uncompressed (ALGORITHMS.md section 1).

Every worker evaluates at the broadcast (x, y, v), on independent f- and g-batches:
  D_y^i = grad_y G_i(x, y)
  D_v^i = H_yy,i(x, y) v - grad_y F_i(x, y)
  D_x^i = grad_x F_i(x, y) - H_xy,i(x, y) v
and the server steps  y -= beta mean D_y,  v -= gamma mean D_v (then projects v if asked),
x -= alpha mean D_x, and broadcasts (x, y, v). Dagreou et al., NeurIPS 2022.

The compressed variants (C-SOBA, CM-SOBA, EF-SOBA, MSC) are this same loop with another uplink
and server filter (algorithms/pieces.py).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .base import ALGORITHMS, Algorithm, Context, StepSizes, project_ball, schedule_factor
from .pieces import ExactUplink, NoFilter

Tensor = torch.Tensor
VARS = ("x", "y", "v")


class SOBAState(NamedTuple):
    x: Tensor
    y: Tensor
    v: Tensor
    up: Any = ()  # the uplink's state (e.g. error-feedback shifts)
    srv: Any = ()  # the server filter's state (e.g. moving averages)


def soba_directions(oracles, x: Tensor, y: Tensor, v: Tensor, batch_f, batch_g,
                    reduce: bool) -> dict[str, Tensor]:
    """(D_x, D_y, D_v) per worker [n, d], or summed over local workers with ``reduce``."""
    gx_f, gy_f = oracles.grad_f(x, y, batch_f, reduce)
    d_y, hxy_v, hyy_v = oracles.grad_y_hvp_g(x, y, v, batch_g, reduce)
    return {"x": gx_f - hxy_v, "y": d_y, "v": hyy_v - gy_f}


class SOBA(Algorithm):
    Hyper = StepSizes

    def __init__(self, ctx: Context, hp: StepSizes, uplink=None, server=None):
        super().__init__(ctx, hp)
        self.uplink = uplink or ExactUplink()
        self.server = server or NoFilter()
        self.dims = {"x": self.problem.d_x, "y": self.problem.d_y, "v": self.problem.d_y}

    def init(self) -> SOBAState:
        x, y = self.x0y0()
        return SOBAState(x, y, torch.zeros_like(y), self.uplink.init(self.dims, self.comm.n_local),
                         self.server.init(self.dims))

    def step(self, s: SOBAState, t: int) -> SOBAState:
        batch_f, batch_g = self.batches(t)
        D = soba_directions(self.oracles, s.x, s.y, s.v, batch_f, batch_g,
                            reduce=not self.uplink.per_worker)
        keys = {k: self.compress_keys(t, i) for i, k in enumerate(VARS)}
        up, est = self.uplink.send(s.up, D, self.comm, keys)
        srv, est = self.server.update(s.srv, est)
        c = schedule_factor(self.hp.schedule, t)
        y = s.y - c * self.hp.beta * est["y"]
        v = project_ball(s.v - c * self.hp.gamma * est["v"], self.hp.radius)
        x = s.x - c * self.hp.alpha * est["x"]
        self.comm.broadcast({"x": x, "y": y, "v": v})
        return SOBAState(x, y, v, up, srv)


@ALGORITHMS.register("soba", StepSizes, "SOBA, uncompressed single-loop baseline (Dagreou et al. 2022)")
def _soba(ctx: Context, hp: StepSizes) -> SOBA:
    return SOBA(ctx, hp)
