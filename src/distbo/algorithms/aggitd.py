"""AggITD: federated hypergradient by aggregated iterative differentiation (docs/algorithms.md, AggITD).

Xiao & Ji, "Communication-Efficient Federated Hypergradient Computation via Aggregated Iterative
Differentiation", ICML 2023. Per outer iteration t, with the sampled participants:

  forward, FedAvg (N rounds):   y_i^{r,0} = y^r;  y_i^{r,m+1} = y_i^{r,m} - beta grad_y G_i(x, y_i^{r,m}; zeta_i^{r,m})
                                y^{r+1} = mean_i y_i^{r,tau}          (clients send y^r - y_i^{r,tau})
  (1 round)                     v^N = mean_i grad_y F_i(x, y^N)   (client i keeps grad_x F_i(x, y^N), same sample)
  backward (N rounds), r = N-1 .. 0, client i, reusing the forward's iterates and minibatches:
                                u = v^{r+1};  for m = tau-1 .. 0:
                                  r_i += -beta H_xy,i(x, y_i^{r,m}) u;  u <- u - beta H_yy,i(x, y_i^{r,m}) u
                                server: v^r = mean_i u
  grad_hat = mean_i (grad_x F_i + sum_r r_i);  x <- x - alpha grad_hat (``upper_opt``);  y^0 <- y^N next.

Each client keeps grad_x F_i plus its running sum of r_i and sends that one d_x-vector with the
last backward round, which does not send v^0 (not needed): 2N + 1 rounds per outer iteration.
(docs/algorithms.md sends grad_x F_i in the v^N round; by linearity sending it with the last round
gives the same grad_hat and saves one d_x-vector per client, the dominant cost when d_x >> d_y.) With fixed samples
grad_hat is exactly the derivative of x -> F(x, y^N(x)) through the aggregated trajectory (the
warm start carries no gradient); see tests/test_aggitd.py. With a compressed down-link the
clients use their copies of x, y and each v^r (algorithms/federated.py).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from pydantic import Field

from ..defaults import derived
from ..problems.base import Batch
from .base import ALGORITHMS, Context
from .federated import FederatedAlgorithm, FederatedParams, FedRound, fedavg_round
from .upper import UpperOptName, upper_opt_field

Tensor = torch.Tensor


class AggITDParams(FederatedParams):
    """alpha, beta; inner_rounds = N (FedAvg rounds), local_steps = tau."""

    inner_rounds: int | None = Field(None, ge=1, le=10_000, description="N: FedAvg rounds per outer iteration",
                                     json_schema_extra=derived("the smallest N whose N tau backward steps of beta "
                                                               "miss at most 1% of the start hypergradient (<= 50; "
                                                               "5 where that does not pay)"))
    # dog: ahead of sgd at the derived alpha on the quadratic, the weight decay, hyperrep and the digits
    # CNN; FedNest and LFedNest keep sgd: dog collapsed both on the CNN (docs/defaults.md)
    upper_opt: UpperOptName = upper_opt_field("dog")


class AggITDState(NamedTuple):
    x: Tensor
    y: Tensor  # the server's (averaged) lower-level variable, the warm start y^0
    down: Any = ()  # the clients' public copies of x and y (compressed down-link)
    up: Any = ()  # the clients' up-link error-feedback residuals (contractive compressor)
    opt: Any = ()  # the server optimizer's state of x (algorithms/upper.py; () for sgd)


class AggITD(FederatedAlgorithm):
    Hyper = AggITDParams
    hp: AggITDParams

    def init(self) -> AggITDState:
        x, y = self.x0y0()
        return AggITDState(x, y, self.copies(x, y), self.residuals(), self.upper.init(x))

    def channels(self) -> dict[str, int]:
        return {f"v/{r}": self.problem.d_y for r in range(self.hp.inner_rounds)}

    def uplink_channels(self) -> dict[str, int]:
        N, d = self.hp.inner_rounds, self.problem.d_y
        return {**{f"dy/{r}": d for r in range(N)}, **{f"v/{r}": d for r in range(N)}, "h/0": self.problem.d_x}

    def step(self, s: AggITDState, t: int) -> AggITDState:
        fr = self.begin(t, s.down, s.up, x=s.x, y=s.y)
        low = fr.at_x(fr.seen("x", s.x))  # the batches need only what its oracles read
        g = [fr.batches("g", self.hp.local_steps, low) for _ in range(self.hp.inner_rounds)]
        grad, y = self.hypergradient(fr, s.x, s.y, g, fr.batch("f"))
        x, opt = self.move_x(s.opt, s.x, t, grad)
        return AggITDState(x, y, self.copies_after(fr), self.residuals_after(fr), opt)

    def hypergradient(self, fr: FedRound, x: Tensor, y: Tensor, g: list[list[Batch | None]],
                      f: Batch | None) -> tuple[Tensor, Tensor]:
        """(grad_hat, y^N) from y^0 = ``y`` on the given minibatches: ``g[r][m]`` is the local
        step m of FedAvg round r, ``f`` the upper-level sample (2N + 1 exchanges)."""
        beta, c, x = self.hp.beta, self.clients, fr.seen("x", x)
        low = fr.at_x(x)
        iterates = []  # iterates[r][m] = y_i^{r,m} (per participant)
        for batches in g:
            y, starts = fedavg_round(fr, low, y, batches, beta, keep=True)
            iterates.append(starts)
        acc, v = c.grad_f(x, fr.seen("y", y), f)  # each client keeps grad_x F_i and adds its r_i to it
        v = fr.exchange({"v": v})["v"]
        for r in reversed(range(len(g))):
            v = fr.broadcast({"v": v})["v"]
            u = v.unsqueeze(0).expand(fr.n, -1)
            for m in reversed(range(len(g[r]))):
                acc, hy = low.hvp_onto(acc, -beta, iterates[r][m], u, g[r][m])  # acc - beta H_xy u
                u = u - beta * hy
            if r > 0:
                v = fr.exchange({"v": u})["v"]
        return fr.exchange({"h": low.settle(acc)})["h"], y


@ALGORITHMS.register("aggitd", AggITDParams,
                     "AggITD: FedAvg lower level + aggregated iterative differentiation (Xiao & Ji 2023)")
def _aggitd(ctx: Context, hp: AggITDParams) -> AggITD:
    return AggITD(ctx, hp)
