"""A linear softmax head's y-derivatives in closed form, batched over participants.

For one participant with features z [B, k], labels l [B] and y = (W [C, k] row-major, b [C]):
    head(z, y) = mean_b CE(W z_b + b, l_b) + l2/2 ||y||^2
    grad_y     = (e^T z, sum_b e_b) + l2 y,                  e = (softmax(W z + b) - onehot(l)) / B
    H_yy u     = (d^T z, sum_b d_b) + l2 u,                  d = J (z U_W^T + U_b) / B
    d/dz <grad_y, u> = d W + e U_W                           (per sample: what vjp of grad_y gives)
with J = diag(p) - p p^T per sample. These are the numbers autograd gets from the same loss, in
other floating-point orders (equal to rounding: tests/test_softmax_head.py), and about 4x faster
than ``vmap(grad(head))`` for hyper-representation's 10 participants x 64 samples
(docs/speed.md): the head's gradients are most of a federated round once the features are shared.

``Y`` / ``U`` are [d] (shared by the participants) or [n, d] (one row each); z is [n, B, k] and
labels [n, B]. ``reduce`` sums over the participants.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class LinearSoftmaxHead:
    classes: int
    features: int
    l2: float

    def _wb(self, y: Tensor) -> tuple[Tensor, Tensor]:
        cut = self.classes * self.features
        return y[..., :cut].unflatten(-1, (self.classes, self.features)), y[..., cut:]

    def _logits(self, z: Tensor, y: Tensor) -> Tensor:
        w, b = self._wb(y)
        return z @ w.mT + b.unsqueeze(-2)  # [n, B, C]; a shared y broadcasts

    def _onto_y(self, z: Tensor, e: Tensor, reduce: bool) -> Tensor:
        """(e^T z, sum_b e_b) flattened like y: per participant [n, d], or their sum [d]."""
        if reduce:
            gw, gb = e.flatten(0, 1).T @ z.flatten(0, 1), e.sum((0, 1))
        else:
            gw, gb = e.mT @ z, e.sum(-2)
        return torch.cat([gw.flatten(-2), gb], -1)

    def _l2(self, y: Tensor, n: int, reduce: bool) -> Tensor:
        """The L2 term's share of the result: l2 y per participant, summed with ``reduce``."""
        if not reduce:
            return self.l2 * y
        return self.l2 * (y.sum(0) if y.dim() == 2 else n * y)

    def residual(self, z: Tensor, y: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(softmax probabilities p, e = (p - onehot) / B), both [n, B, C]."""
        p = torch.softmax(self._logits(z, y), -1)
        return p, (p - F.one_hot(labels, self.classes).to(p.dtype)) / z.shape[-2]

    def grad_y(self, z: Tensor, y: Tensor, labels: Tensor, reduce: bool = False) -> Tensor:
        _, e = self.residual(z, y, labels)
        return self._onto_y(z, e, reduce) + self._l2(y, z.shape[0], reduce)

    def pullback(self, z: Tensor, y: Tensor, u: Tensor, labels: Tensor,
                 reduce: bool = False) -> tuple[Tensor, Tensor]:
        """(d/dz <grad_y, u> per sample [n, B, k], H_yy u per participant or summed)."""
        p, e = self.residual(z, y, labels)
        uw, ub = self._wb(u)
        da = z @ uw.mT + ub.unsqueeze(-2)
        d = p * (da - (p * da).sum(-1, keepdim=True)) / z.shape[-2]
        w, _ = self._wb(y)
        cz = d @ w + e @ uw
        return cz, self._onto_y(z, d, reduce) + self._l2(u, z.shape[0], reduce)
