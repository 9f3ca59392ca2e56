"""The server's optimizer of x (``algorithm.upper_opt``; docs/algorithms.md, "Server optimizers").

Every algorithm ends its outer iteration with one server-side update of x from an aggregated
direction g_t: the hypergradient estimate (SOBA family, AggITD, FedNest's global FedOut, LFedNest),
or, where x moved by clients' local steps (RABO / RAFBO's coverage average, FedNest's
``outer = "local-svrg"``), the pseudo-gradient g_t = (x_t - x_new) / lr_t of that SGD move. The
optimizer runs on the server after aggregation: nothing more is sent (bits unchanged), and its
state is a server quantity, replicated in every process and part of the algorithm's state
(checkpoints, --resume, Flower's replicas carry it). lr_t = c_t alpha, c_t the ``schedule``
factor (1 for the federated methods, which have no schedule):

- ``sgd``      x <- x - lr_t g_t (what every algorithm did before; bit-identical).
- ``momentum`` heavy ball with a (1 - b1)-normalized buffer, b1 = 0.9:
               m_t = b1 m_{t-1} + (1 - b1) g_t,  x <- x - lr_t m_t.
               Normalized, m is an average of directions, so alpha keeps its meaning (the step per
               unit of hypergradient) and x keeps its time scale relative to y and v; the
               unnormalized buffer (1/(1 - b1) = 10x SGD's step) diverged SOBA on the default
               quadratic (measured, docs/defaults.md "Server optimizers").
- ``adam``     server Adam (FedOpt, Reddi et al. 2021), b1 = 0.9, b2 = 0.99, bias-corrected:
               x <- x - lr_t s mhat_t / (sqrt(vhat_t) + eps s),  s = max_k rms(g_k), the largest root
               mean square of the directions so far (not g_0's: SOBA's first D_x is 0 where f does
               not depend on x). Its first step has the RMS of SGD's first step at alpha, so the
               learning rate is derived from alpha and the directions, not a constant to tune;
               eps = EPS_ADAM relative to s (an absolute eps would mean another thing on every problem).
- ``dog``      DoG, distance over gradients (Ivgi et al. 2023), no constant at all:
               eta_t = rbar_t / sqrt(sum_{k<=t} ||g_k||^2),  rbar_t = max(r_eps, max_{k<=t} ||x_k - x_0||),
               x <- x - c_t eta_t g_t, with r_eps = lr_t ||g_t|| at the first non-zero direction (that step
               is SGD's step at the derived alpha; the step then grows with the distance travelled).

Each optimizer is ``init(x) -> state`` and ``update(state, t, x, grad=None, step=None) ->
(state, step to subtract from x)`` (and ``metrics(state)``: adam's lr ``adam_lr``, dog's eta
``dog_step``, in the metric rows): ``grad`` an aggregated direction, or ``step`` the SGD move a
local-step method already made (SGD returns it as it is, so its bits do not change; the others
take g_t = step / lr_t).
"""
from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple

import torch
from pydantic import Field

Tensor = torch.Tensor
UpperOptName = Literal["sgd", "momentum", "adam", "dog"]
B1, B2 = 0.9, 0.99  # momentum and Adam's averaging weights
EPS_ADAM = 1e-3  # Adam's eps, relative to the largest direction RMS (Reddi et al.'s adaptivity tau)


def upper_opt_field(default: str = "sgd"):
    """The ``upper_opt`` hyper-parameter (every algorithm's schema; AggITD defaults to dog:
    docs/defaults.md, "Server optimizers")."""
    return Field(default, description="server optimizer of x on the aggregated (pseudo-)hypergradient g: "
                 "sgd (x -= alpha g), momentum (heavy ball, b1 0.9, normalized), adam (server Adam, b1 0.9, "
                 "b2 0.99, lr = alpha x the largest rms(g) so far), dog (distance over gradients, no constant; "
                 "its first step is sgd's); docs/algorithms.md")


class UpperOptimizer:
    """Base: the step size lr_t = c_t alpha (``factor(t)`` = c_t) and the direction of a round."""

    def __init__(self, alpha: float, factor: Callable[[int], float] = lambda t: 1.0):
        self.alpha, self.factor = alpha, factor

    def lr(self, t: int) -> float:
        return self.factor(t) * self.alpha

    def direction(self, t: int, grad: Tensor | None, step: Tensor | None) -> Tensor:
        return grad if grad is not None else step / self.lr(t)

    def init(self, x: Tensor) -> Any:
        return ()

    def update(self, state: Any, t: int, x: Tensor, grad: Tensor | None = None,
               step: Tensor | None = None) -> tuple[Any, Tensor]:
        raise NotImplementedError

    def metrics(self, state: Any) -> dict[str, float]:
        """Metric fields of the step it has derived so far (none for sgd and momentum)."""
        return {}


class SGD(UpperOptimizer):
    def update(self, state, t, x, grad=None, step=None):
        return state, (self.lr(t) * grad if grad is not None else step)


class Momentum(UpperOptimizer):
    def init(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def update(self, m, t, x, grad=None, step=None):
        m = B1 * m + (1 - B1) * self.direction(t, grad, step)
        return m, self.lr(t) * m


class AdamState(NamedTuple):
    m: Tensor
    v: Tensor
    scale: Tensor  # [1]: the largest rms(g_k) so far (0 before a non-zero direction)


class Adam(UpperOptimizer):
    def init(self, x: Tensor) -> AdamState:
        return AdamState(torch.zeros_like(x), torch.zeros_like(x), torch.zeros(1, dtype=x.dtype))

    def update(self, s: AdamState, t, x, grad=None, step=None):
        g = self.direction(t, grad, step)
        scale = torch.maximum(s.scale, g.pow(2).mean().sqrt())  # the largest direction's RMS so far
        m = B1 * s.m + (1 - B1) * g
        v = B2 * s.v + (1 - B2) * g * g
        mhat, vhat = m / (1 - B1 ** (t + 1)), v / (1 - B2 ** (t + 1))
        step = self.lr(t) * scale * mhat / (vhat.sqrt() + EPS_ADAM * scale)
        return AdamState(m, v, scale), torch.where(scale > 0, step, 0.0)  # no move before a direction

    def metrics(self, s: AdamState) -> dict[str, float]:
        return {"adam_lr": float(self.alpha * s.scale)}  # the per-coordinate step before the schedule


class DoGState(NamedTuple):
    x0: Tensor
    r: Tensor  # [1]: rbar, the largest distance from x0 so far (at least r_eps; 0 before a direction)
    G: Tensor  # [1]: sum of ||g_k||^2


class DoG(UpperOptimizer):
    def init(self, x: Tensor) -> DoGState:
        return DoGState(x.clone(), torch.zeros(1, dtype=x.dtype), torch.zeros(1, dtype=x.dtype))

    def update(self, s: DoGState, t, x, grad=None, step=None):
        g = self.direction(t, grad, step)
        sq = g.pow(2).sum().reshape(1)
        r_eps = torch.where(s.r > 0, s.r, self.lr(t) * sq.sqrt())  # SGD's first non-zero step
        r = torch.maximum(r_eps, (x - s.x0).norm().reshape(1))
        G = s.G + sq
        eta = r / G.sqrt().clamp_min(torch.finfo(G.dtype).tiny)
        return DoGState(s.x0, r, G), self.factor(t) * eta * g

    def metrics(self, s: DoGState) -> dict[str, float]:
        return {"dog_step": float(s.r / s.G.sqrt()) if float(s.G) > 0 else 0.0}  # eta, before the schedule


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam, "dog": DoG}


def upper_note(name: str, on: str, hp: Any) -> str | None:
    """The one line a run with a server optimizer other than sgd starts with: what it is applied
    to (``on``) and what of the derived steps it does not follow (None for sgd)."""
    if name == "sgd":
        return None
    what = {"momentum": "heavy ball (b1 0.9) at alpha", "adam": "server Adam, lr = alpha x the largest direction RMS",
            "dog": "DoG, distance over gradients: alpha sets its first step only, not its later steps "
                   "(they do not shrink with the compressor)"}[name]
    theta = getattr(hp, "theta", 1.0)
    twice = f"; x's direction is then averaged twice (theta = {theta:g} already)" if (
        name != "dog" and theta < 1) else ""
    return f"upper_opt = '{name}': {what}, on {on}{twice}"
