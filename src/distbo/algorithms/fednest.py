"""FedNest and LFedNest: the AID baselines of federated bilevel optimization (docs/algorithms.md, FedNest).

Tarzanagh et al., "FedNest: Federated Bilevel, Minimax, and Compositional Optimization", ICML
2022. One outer iteration t, with the sampled participants and clients' local copies:

FedInn (T inner iterations; SWITCH ``inner``):
  'svrg' (default, 2 rounds each): clients send grad_y G_i(x, y), the server averages to q; then
         tau local steps y_i <- y_i - beta (grad_y G_i(x, y_i) - grad_y G_i(x, y) + q) on one fresh
         minibatch per step, and the server averages the y_i (clients send y - y_i).
  'sgd'  (1 round each): tau plain local SGD steps, then averaging (FedAvg).
FedIHGP (1 + N rounds): clients send grad_y F_i(x, y), the server averages to b = p_0; then N
  rounds of the GLOBAL Neumann series p_{k+1} = b + (I - eta H_yy) p_k, with H_yy p_k the server's
  mean of the clients' H_yy,i p_k (fresh minibatch per term); v = eta p_N.
FedOut (SWITCH ``outer``):
  'global' (default, 1 round): clients send h_i = grad_x F_i - H_xy,i v (grad_x F_i from the
         FedIHGP sample), the server averages to h;  x <- x - alpha h (``upper_opt``: the server
         optimizer on h, algorithms/upper.py; with 'local-svrg' on the pseudo-gradient
         mean_i (x - x_i) / alpha).
  'local-svrg' (1 more round): after h, tau_x local SVRG steps
         x_i <- x_i - alpha (h_i(x_i) - h_i(x) + h), then the server averages the x_i.
Rounds per outer iteration: 2T + N + 2 ('svrg'), T + N + 2 ('sgd'), +1 with 'local-svrg'.

LFedNest: T rounds of FedAvg (plain local SGD), then each client forms its OWN Neumann series with
its own Hessian (v_i = eta p_N^i, no communication) and its own hypergradient
h_i = grad_x F_i - H_xy,i v_i; one round averages them: x <- x - alpha mean_i h_i (T + 1 rounds).

Clients compute with what they hold (``FedRound.seen`` / the values ``FedRound.broadcast``
returns): with a compressed down-link, the channels' copies (algorithms/federated.py).
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field

from ..defaults import derived
from ..problems.base import Batch
from .base import ALGORITHMS, Context
from .federated import FederatedAlgorithm, FederatedParams, FedRound, fedavg_round, neumann

Tensor = torch.Tensor


class LFedNestParams(FederatedParams):
    """alpha, beta; inner_rounds = T, local_steps = tau; neumann_terms = N with step eta."""

    inner_rounds: int = Field(5, ge=1, le=10_000, description="T: lower-level rounds per outer iteration")
    neumann_terms: int | None = Field(None, ge=0, le=10_000, description="N: Neumann series terms",
                                      json_schema_extra=derived("fednest: the smallest N whose N + 1 products of eta "
                                                                "miss at most 1% of the start hypergradient (10 where "
                                                                "that does not pay); lfednest: 10"))
    eta: float | None = Field(None, gt=0, le=100, description="Neumann series step (below 1/L of g)",
                              json_schema_extra=derived("fednest: 0.5/L_g x compressor factor on d_y; "
                                                        "lfednest (own Hessians): 0.5/L_g,max"))


class FedNestParams(LFedNestParams):
    inner: Literal["svrg", "sgd"] = Field("svrg", description="FedInn local steps: SVRG-corrected or plain SGD")
    outer: Literal["global", "local-svrg"] = Field(
        "global", description="FedOut: one global step, or local SVRG steps on x (one more round)")
    local_steps_x: int = Field(1, ge=1, le=10_000, description="tau_x: local x steps with outer='local-svrg'")


class FedNestState(NamedTuple):
    x: Tensor
    y: Tensor  # the server's lower-level variable (warm start of FedInn)
    down: Any = ()  # the clients' public copies of x and y (compressed down-link)
    up: Any = ()  # the clients' up-link error-feedback residuals (contractive compressor)
    opt: Any = ()  # the server optimizer's state of x (algorithms/upper.py; () for sgd)


class FedNest(FederatedAlgorithm):
    Hyper = FedNestParams
    svrg_inner = True
    x_update = ("the aggregated hypergradient estimate h (outer = 'local-svrg': the pseudo-gradient "
                "mean_i (x - x_i) / alpha of the clients' local x steps)")

    def init(self) -> FedNestState:
        x, y = self.x0y0()
        return FedNestState(x, y, self.copies(x, y), self.residuals(), self.upper.init(x))

    def uplink_channels(self) -> dict[str, int]:
        hp, d, dx = self.hp, self.problem.d_y, self.problem.d_x
        T = hp.inner_rounds
        out = {f"dy/{r}": d for r in range(T)}
        if self.svrg_inner:  # FedNest: FedInn's gradients, FedIHGP's b and products, FedOut's h
            if hp.inner == "svrg":
                out.update({f"q/{r}": d for r in range(T)})
            out.update({"b/0": d, **{f"hp/{k}": d for k in range(hp.neumann_terms)}})
            if hp.outer == "local-svrg":
                out["dx/0"] = dx
        out["h/0"] = dx
        return out

    def channels(self) -> dict[str, int]:
        hp, d = self.hp, self.problem.d_y
        out = {f"q/{r}": d for r in range(hp.inner_rounds)} if self.svrg_inner and hp.inner == "svrg" else {}
        if self.svrg_inner:  # FedNest: FedIHGP and FedOut broadcast too; LFedNest only x and y
            out.update({"b/0": d, **{f"hp/{k}": d for k in range(hp.neumann_terms)}})
            if hp.outer == "local-svrg":
                out["h/0"] = self.problem.d_x
        return out

    def step(self, s: FedNestState, t: int) -> FedNestState:
        fr = self.begin(t, s.down, s.up, x=s.x, y=s.y)
        y = self.fedinn(fr, s.x, s.y)
        x, opt = self.move_x(s.opt, s.x, t, **self.update_x(fr, s.x, y))
        return FedNestState(x, y, self.copies_after(fr), self.residuals_after(fr), opt)

    def update_x(self, fr: FedRound, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """FedIHGP then FedOut; x's move for ``move_x``: {"grad": h} or {"step": the local steps' move}."""
        v, gx = self.ihgp(fr, x, y)
        return self.fedout(fr, x, y, v, gx)

    # --- FedInn ---
    def fedinn(self, fr: FedRound, x: Tensor, y: Tensor) -> Tensor:
        """T inner iterations from the server's y; returns the server's new y."""
        svrg = self.svrg_inner and self.hp.inner == "svrg"
        low = fr.at_x(fr.seen("x", x))
        for _ in range(self.hp.inner_rounds):
            q = None
            if svrg:
                q = fr.exchange({"q": low.grad_y(fr.seen("y", y), fr.batch("g", low), reduce=fr.exact)})["q"]
                q = fr.broadcast({"q": q})["q"]
            y, _ = fedavg_round(fr, low, y, fr.batches("g", self.hp.local_steps, low), self.hp.beta, q)
        return y

    # --- FedIHGP ---
    def ihgp(self, fr: FedRound, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(v = eta p_N from the global Neumann series, the clients' grad_x F_i on the same sample).

        grad_x F_i is kept by each client (rows, or their local sum when uncompressed) for FedOut.
        """
        c, f = self.clients, fr.batch("f")
        x, y = fr.seen("x", x), fr.seen("y", y)
        low = fr.at_x(x)
        gx, gy = c.grad_f(x, y, f, reduce=fr.exact)
        b = fr.exchange({"b": gy})["b"]
        b = fr.broadcast({"b": b})["b"]

        def global_product(p: Tensor, k: int) -> Tensor:
            hp = fr.exchange({"hp": low.hvp_yy(y, p, fr.batch("g", low), reduce=fr.exact)})["hp"]
            return fr.broadcast({"hp": hp})["hp"]  # clients form p_{k+1} themselves

        return neumann(b, self.hp.eta, self.hp.neumann_terms, global_product), gx

    # --- FedOut ---
    def outer_direction(self, x: Tensor, y: Tensor, v: Tensor, f: Batch | None, g: Batch | None,
                        reduce: bool = False) -> Tensor:
        """h_i(x) = grad_x F_i(x, y) - H_xy,i(x, y) v (rows, or their sum with ``reduce``)."""
        gx, _ = self.clients.grad_f(x, y, f, reduce)
        return gx - self.clients.hvp_g(x, y, v, g, reduce)[0]

    def fedout(self, fr: FedRound, x: Tensor, y: Tensor, v: Tensor, gx: Tensor) -> dict[str, Tensor]:
        """x's move from v and the clients' grad_x F_i (``x``: the server's): the mean h, or with
        local x steps the server's SGD move mean_i (x - x_i)."""
        xc, y = fr.seen("x", x), fr.seen("y", y)
        low = fr.at_x(xc)
        h, _ = low.hvp_onto(gx, -1.0, y, v, fr.batch("g", low), reduce=fr.exact)  # gx - H_xy v
        h = fr.exchange({"h": low.settle(h)})["h"]
        if self.hp.outer == "global":
            return {"grad": h}
        h = fr.broadcast({"h": h})["h"]
        X = xc.unsqueeze(0).expand(fr.n, -1)
        for _ in range(self.hp.local_steps_x):
            f, g = fr.batch("f"), fr.batch("g")
            X = X - self.hp.alpha * (self.outer_direction(X, y, v, f, g)
                                     - self.outer_direction(xc, y, v, f, g) + h)
        return {"step": fr.exchange({"dx": xc - X})["dx"]}


class LFedNest(FedNest):
    Hyper = LFedNestParams
    svrg_inner = False
    x_update = "the mean of the clients' own hypergradient estimates"

    def update_x(self, fr: FedRound, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Local Neumann series and hypergradient per client, one averaging round."""
        c, f = self.clients, fr.batch("f")
        xc, y = fr.seen("x", x), fr.seen("y", y)
        low = fr.at_x(xc)
        gx, gy = c.grad_f(xc, y, f)
        v = neumann(gy, self.hp.eta, self.hp.neumann_terms, lambda p, k: low.hvp_yy(y, p, fr.batch("g", low)))
        h, _ = low.hvp_onto(gx, -1.0, y, v, fr.batch("g", low))  # gx - H_xy v
        return {"grad": fr.exchange({"h": low.settle(h)})["h"]}


@ALGORITHMS.register("fednest", FedNestParams,
                     "FedNest: FedInn (SVRG) + global Neumann FedIHGP + FedOut (Tarzanagh et al. 2022)")
def _fednest(ctx: Context, hp: FedNestParams) -> FedNest:
    return FedNest(ctx, hp)


@ALGORITHMS.register("lfednest", LFedNestParams,
                     "LFedNest: local FedAvg inner, clients' own Neumann series, x averaging (T + 1 rounds)")
def _lfednest(ctx: Context, hp: LFedNestParams) -> LFedNest:
    return LFedNest(ctx, hp)
