"""The lower level at one fixed x: the y-steps of FedInn / FedAvg, the Neumann series and AggITD's
backward sweep, which all hold x still for a whole outer iteration.

``fixed_x(clients, x, ids)`` returns the participants' lower-level oracles at x:
  ``grad_y(Y, batch)``            grad_y G_i(x, y_i) (rows, or their sum with ``reduce``)
  ``hvp_yy(Y, U, batch)``         H_yy,i u_i
  ``hvp_onto(acc, s, Y, U, b)``   (acc + s H_xy,i u_i, H_yy,i u_i); the x-part may be deferred:
  ``settle(acc)``                 acc with every deferred x-part added; call it before using acc.

``AtX`` is g differentiated as a whole at x (``ClientOracles``: the same numbers as calling them
directly). When the problem declares a ``Representation`` (g = head(features(x, sample), y),
problems/base.py), ``Features`` computes the features of the participants' training samples ONCE
per x and every y-derivative from them: a y-step costs the head's arithmetic, not the network's.
The x-parts of its Hessian products are linear in the features' cotangents, so ``hvp_onto`` adds
s dH/dz u of every sample into one table and ``settle`` pulls the table back through the features
once per participant: sum_m J_i^T c_m = J_i^T (sum_m c_m). This reorders a floating-point sum
(equal to rounding: tests/test_fixed_x.py); the y-derivatives are the same operations as g's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.func import grad, vjp, vmap

from ..oracles import _dims
from ..problems.base import Batch, Representation, rows

if TYPE_CHECKING:
    from .federated import ClientOracles

Tensor = torch.Tensor


class AtX:
    """g's oracles at a fixed x, computed by ``ClientOracles`` as a whole."""

    def __init__(self, clients: ClientOracles, x: Tensor):
        self.clients, self.x = clients, x

    def sample(self, ids: Tensor, key: Tensor) -> Batch:
        """A g-batch of the participants ``ids`` for these oracles (``Problem.sample``'s draw)."""
        return self.clients.o.problem.sample("g", ids, key)

    def grad_y(self, Y: Tensor, batch: Batch | None, reduce: bool = False) -> Tensor:
        return self.clients.grad_g_y(self.x, Y, batch, reduce)

    def hvp_yy(self, Y: Tensor, U: Tensor, batch: Batch | None, reduce: bool = False) -> Tensor:
        return self.clients.hvp_g(self.x, Y, U, batch, reduce)[1]

    def hvp_onto(self, acc: Tensor, scale: float, Y: Tensor, U: Tensor, batch: Batch | None,
                 reduce: bool = False) -> tuple[Tensor, Tensor]:
        hx, hy = self.clients.hvp_g(self.x, Y, U, batch, reduce)
        return acc + scale * hx, hy

    def settle(self, acc: Tensor) -> Tensor:
        return acc


def _summed(head, batch: Batch):
    """(z, y) -> sum over the participants of head(z_i, y, batch_i), at a shared y."""
    return lambda z, y: vmap(head, in_dims=(0, None, 0))(z, y, batch).sum()


class Features(AtX):
    """The same oracles from the features of the participants' training samples (module doc)."""

    def __init__(self, clients: ClientOracles, x: Tensor, ids: Tensor, rep: Representation):
        super().__init__(clients, x)
        self.rep, self.pool = rep, rep.pool(ids)
        z = vmap(rep.features, in_dims=(None, 0))(x, self.pool["inputs"])  # [n, S, k]
        mask = self.pool["mask"]
        self.table = z.new_zeros((rep.samples, z.shape[-1])).index_put((self.pool["index"][mask],), z[mask])
        self.cot: Tensor | None = None  # deferred s dH/dz u per training sample

    def sample(self, ids, key):
        light = self.rep.sample
        return super().sample(ids, key) if light is None else light(ids, key)

    def _z(self, batch: Batch) -> Tensor:
        return rows(self.table, batch["index"])

    def grad_y(self, Y, batch, reduce=False):
        head, z = self.rep.head, self._z(batch)
        if self.rep.softmax is not None:
            return self.rep.softmax.grad_y(z, Y, labels=batch["labels"], reduce=reduce)
        if reduce and Y.dim() == 1:
            return grad(_summed(head, batch), argnums=1)(z, Y)
        gy = vmap(grad(head, argnums=1), in_dims=(0, *_dims(Y), 0))(z, Y, batch)
        return gy.sum(0) if reduce else gy

    def _pullback(self, Y: Tensor, U: Tensor, batch: Batch, reduce: bool) -> tuple[Tensor, Tensor]:
        """(dH/dz u per sample [n, B, k], H_yy u rows or sum) from one vjp of the head's grad_y."""
        head, z = self.rep.head, self._z(batch)
        if self.rep.softmax is not None:
            return self.rep.softmax.pullback(z, Y, U, labels=batch["labels"], reduce=reduce)
        if reduce and Y.dim() == 1 and U.dim() == 1:
            return vjp(grad(_summed(head, batch), argnums=1), z, Y)[1](U)

        def one(z_, y, u, b):
            _, pull = vjp(lambda a, c: grad(head, argnums=1)(a, c, b), z_, y)
            return pull(u)
        cz, hy = vmap(one, in_dims=(0, *_dims(Y, U), 0))(z, Y, U, batch)
        return cz, (hy.sum(0) if reduce else hy)

    def hvp_yy(self, Y, U, batch, reduce=False):
        return self._pullback(Y, U, batch, reduce)[1]

    def hvp_onto(self, acc, scale, Y, U, batch, reduce=False):
        cz, hy = self._pullback(Y, U, batch, reduce)
        if self.cot is None:
            self.cot = torch.zeros_like(self.table)
        self.cot.index_add_(0, batch["index"].reshape(-1), (scale * cz).reshape(-1, cz.shape[-1]))
        return acc, hy

    def settle(self, acc):
        if self.cot is None:
            return acc
        inputs, mask = self.pool["inputs"], self.pool["mask"]
        c = rows(self.cot, self.pool["index"]) * mask.unsqueeze(-1).to(self.cot.dtype)
        self.cot = None
        feats = self.rep.features
        if acc.dim() == 1:  # the participants' sum: one pull-back of all their samples
            return acc + vjp(lambda x_: vmap(feats, in_dims=(None, 0))(x_, inputs), self.x)[1](c)[0]
        each = vmap(lambda a, ci: vjp(lambda x_: feats(x_, a), self.x)[1](ci)[0])(inputs, c)
        return acc + each


def fixed_x(clients: ClientOracles, x: Tensor, ids: Tensor) -> AtX:
    """The participants' (``ids``) lower-level oracles at x: from features when the problem has a
    ``Representation`` and x is the server's (one vector), else g as a whole."""
    rep = clients.o.problem.representation()
    if rep is None or x.dim() != 1 or ids.numel() == 0:
        return AtX(clients, x)
    return Features(clients, x, ids, rep)
