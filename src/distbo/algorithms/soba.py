"""SOBA: the single-loop stochastic bilevel method, uncompressed (docs/algorithms.md, SOBA).

Every worker evaluates at the broadcast (x, y, v), on independent f- and g-batches:
  D_y^i = grad_y G_i(x, y)
  D_v^i = H_yy,i(x, y) v - grad_y F_i(x, y)
  D_x^i = grad_x F_i(x, y) - H_xy,i(x, y) v
and the server steps  y -= beta mean D_y,  v -= gamma mean D_v (then projects v if asked),
x -= alpha mean D_x (the server optimizer ``upper_opt``, algorithms/upper.py), and broadcasts (x, y, v). Dagreou et al., NeurIPS 2022.

The compressed variants (C-SOBA, CM-SOBA, EF-SOBA and the MSC ones, registered at the end) are
this same loop with another uplink and server filter (algorithms/compression.py). A compressed
down-link (``ctx.downlink``, config key ``downlink``) applies to every member: the server
broadcasts compressed model updates with server-side error feedback and workers evaluate at their
(identical) copies; see ``CompressedDownlink``.

Compressor kinds: C-SOBA and CM-SOBA average compressed directions and need an unbiased
compressor (a contractive one is a one-line ConfigError on 'compressor' suggesting ef-soba).
EF-SOBA takes any. The MSC variants take any too: multi-step compression turns every compressor
into a contractive one (C' = C/(1+omega) for an unbiased C), and neither the moving average nor
error feedback relies on unbiasedness of what it is fed; CM-SOBA-MSC, without error feedback,
keeps a heterogeneity bias of order (1 - delta)^(R/2). SOBA itself is uncompressed: given a
compressor other than identity it refuses (one-line ConfigError on 'compressor') and points to
c-soba / cm-soba / ef-soba, rather than silently ignoring the compressor or becoming C-SOBA.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from pydantic import Field

from ..compressors import multi_step
from ..defaults import derived
from ..errors import ConfigError
from ..registry import Params
from .base import ALGORITHMS, Algorithm, Context, StepSizes, project_ball, schedule_factor
from .compression import (CompressedUplink, ErrorFeedbackUplink, MovingAverage, downlink_keys, make_downlink,
                          require_unbiased)
from .pieces import ExactUplink, NoFilter

Tensor = torch.Tensor
VARS = ("x", "y", "v")


class SOBAState(NamedTuple):
    x: Tensor
    y: Tensor
    v: Tensor
    up: Any = ()  # the uplink's state (e.g. error-feedback shifts)
    srv: Any = ()  # the server filter's state (e.g. moving averages)
    down: Any = ()  # the down-link's state (the workers' copies of x, y, v when it is compressed)
    opt: Any = ()  # the server optimizer's state of x (algorithms/upper.py; () for sgd)


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
        self.downlink = make_downlink(ctx.downlink)
        self.dims = {"x": self.problem.d_x, "y": self.problem.d_y, "v": self.problem.d_y}

    def init(self) -> SOBAState:
        x, y = self.x0y0()
        v = torch.zeros_like(y)
        return SOBAState(x, y, v, self.uplink.init(self.dims, self.comm.n_local), self.server.init(self.dims),
                         self.downlink.init({"x": x, "y": y, "v": v}), self.upper.init(x))

    def step(self, s: SOBAState, t: int) -> SOBAState:
        batch_f, batch_g = self.batches(t)
        z = self.downlink.view(s.down, {"x": s.x, "y": s.y, "v": s.v})  # the workers' copies
        D = soba_directions(self.oracles, z["x"], z["y"], z["v"], batch_f, batch_g,
                            reduce=not self.uplink.per_worker)
        keys = {k: self.compress_keys(t, i) for i, k in enumerate(VARS)}
        up, est = self.uplink.send(s.up, D, self.comm, keys)
        srv, est = self.server.update(s.srv, est)
        c = schedule_factor(self.hp.schedule, t)
        y = s.y - c * self.hp.beta * est["y"]
        v = project_ball(s.v - c * self.hp.gamma * est["v"], self.hp.radius)
        x, opt = self.move_x(s.opt, s.x, t, est["x"])
        down = self.downlink.send(s.down, {"x": x, "y": y, "v": v}, self.comm,
                                  lambda: downlink_keys(self, t, VARS))
        return SOBAState(x, y, v, up, srv, down, opt)


@ALGORITHMS.register("soba", StepSizes, "SOBA, uncompressed single-loop baseline (Dagreou et al. 2022)")
def _soba(ctx: Context, hp: StepSizes) -> SOBA:
    if ctx.compressor.kind != "exact":
        raise ConfigError("compressor", f"soba is uncompressed and would ignore '{ctx.compressor.spec}'; use "
                          "c-soba or cm-soba (unbiased: randk, qsgd) or ef-soba (any compressor)")
    return SOBA(ctx, hp)


# ----- the compressed variants (He et al., ICML 2024): hyper-parameters and compositions -----
class MovingAverageSteps(StepSizes):
    theta: float = Field(0.1, gt=0, le=1, description="moving-average weight (1 = no averaging)")
    average_yv: bool = Field(False, description="also average the y and v estimates (h_y, h_v)")


class ErrorFeedbackSteps(MovingAverageSteps):
    theta: float = Field(1.0, gt=0, le=1, description="moving-average weight (1 = no averaging: the default, "
                         "measured 3x faster to 1e-2 than 0.1 with top-K on the quadratic; docs/defaults.md)")
    rho: float | None = Field(None, gt=0, le=1, description="error-feedback shift step",
                              json_schema_extra=derived("1 for an exact or contractive C (EF21), "
                                                        "min over variables of 1/(1+omega) for an unbiased C (DIANA)"))


class MultiStepCompression(Params):
    msc_steps: int = Field(2, ge=1, description="compression rounds R on the residual")


class MovingAverageMSC(MultiStepCompression, MovingAverageSteps):
    pass


class ErrorFeedbackMSC(MultiStepCompression, ErrorFeedbackSteps):
    pass


def _average(hp: MovingAverageSteps, ctx: Context) -> MovingAverage:
    return MovingAverage(hp.theta, VARS if hp.average_yv else ("x",), ctx.problem.dtype)


@ALGORITHMS.register("c-soba", StepSizes, "C-SOBA: SOBA with unbiased compression of the three directions")
def _c_soba(ctx: Context, hp: StepSizes) -> SOBA:
    require_unbiased("c-soba", ctx.compressor)
    return SOBA(ctx, hp, uplink=CompressedUplink(ctx.compressor))


@ALGORITHMS.register("cm-soba", MovingAverageSteps, "CM-SOBA: C-SOBA with a server moving average (theta)")
def _cm_soba(ctx: Context, hp: MovingAverageSteps) -> SOBA:
    require_unbiased("cm-soba", ctx.compressor)
    return SOBA(ctx, hp, uplink=CompressedUplink(ctx.compressor), server=_average(hp, ctx))


@ALGORITHMS.register("ef-soba", ErrorFeedbackSteps,
                     "EF-SOBA: error-feedback shifts + moving average; any compressor, exact under heterogeneity")
def _ef_soba(ctx: Context, hp: ErrorFeedbackSteps) -> SOBA:
    uplink = ErrorFeedbackUplink(ctx.compressor, hp.rho, ctx.problem.dtype)
    return SOBA(ctx, hp, uplink=uplink, server=_average(hp, ctx))


@ALGORITHMS.register("cm-soba-msc", MovingAverageMSC, "CM-SOBA with multi-step compression (R rounds on the residual)")
def _cm_soba_msc(ctx: Context, hp: MovingAverageMSC) -> SOBA:
    uplink = CompressedUplink(multi_step(ctx.compressor, hp.msc_steps))
    return SOBA(ctx, hp, uplink=uplink, server=_average(hp, ctx))


@ALGORITHMS.register("ef-soba-msc", ErrorFeedbackMSC, "EF-SOBA with multi-step compression (R rounds on the residual)")
def _ef_soba_msc(ctx: Context, hp: ErrorFeedbackMSC) -> SOBA:
    uplink = ErrorFeedbackUplink(multi_step(ctx.compressor, hp.msc_steps), hp.rho, ctx.problem.dtype)
    return SOBA(ctx, hp, uplink=uplink, server=_average(hp, ctx))
