"""Gradients and Hessian-vector products of f and g, vectorised over the worker axis.

Every function takes ``x``, ``y`` (and ``v``) either shared by all local workers (1-D) or one row
per worker (2-D, leading worker axis), and a batch whose leading axis is the worker. By default it
returns one row per worker. With ``reduce=True`` it returns the SUM over the local workers; when
the point is shared this is computed as the derivative of the summed loss (one backward pass
instead of n per-worker vectors), which is what a server that only needs the mean wants.

Notation (docs/algorithms.md): H_yy v = d/dy <grad_y g, v> in R^{d_y} and H_xy v = d/dx <grad_y g, v>
in R^{d_x}; both come from ONE vector-Jacobian product of grad_y g.

Worker chunks (config key ``worker_chunk``): ``Oracles(problem, chunk=k)`` evaluates every oracle
k local workers at a time and stitches the results (rows written into one output, sums added up
chunk after chunk), so the autograd graphs, activations and per-worker intermediates of one call
are O(k d) instead of O(n d). Rows are the same computation per worker; sums differ from the
unchunked ones only by the order of floating-point additions.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad, vjp, vmap
from torch.utils._pytree import tree_leaves, tree_map

from .problems.base import Batch, Problem

Tensor = torch.Tensor
Loss = Callable[[Tensor, Tensor, Batch], Tensor]


def _dims(*ts: Tensor) -> tuple[int | None, ...]:
    return tuple(0 if t.dim() == 2 else None for t in ts)


def _shared(*ts: Tensor) -> bool:
    return all(t.dim() == 1 for t in ts)


def _summed(loss: Loss, batch: Batch) -> Callable[[Tensor, Tensor], Tensor]:
    """(x, y) -> sum over the local workers of loss(x, y, batch_i), at a shared point."""
    batched = vmap(loss, in_dims=(None, None, 0))
    return lambda x, y: batched(x, y, batch).sum()


def loss_values(loss: Loss, x: Tensor, y: Tensor, batch: Batch) -> Tensor:
    """Per-worker loss values [n_local]."""
    return vmap(loss, in_dims=(*_dims(x, y), 0))(x, y, batch)


def grad_xy(loss: Loss, x: Tensor, y: Tensor, batch: Batch, reduce: bool = False) -> tuple[Tensor, Tensor]:
    """(grad_x loss_i, grad_y loss_i) per worker, or their sums with ``reduce``."""
    if reduce and _shared(x, y):
        return grad(_summed(loss, batch), argnums=(0, 1))(x, y)
    gx, gy = vmap(grad(loss, argnums=(0, 1)), in_dims=(*_dims(x, y), 0))(x, y, batch)
    return (gx.sum(0), gy.sum(0)) if reduce else (gx, gy)


def grad_y(loss: Loss, x: Tensor, y: Tensor, batch: Batch, reduce: bool = False) -> Tensor:
    """grad_y loss_i per worker, or the sum with ``reduce``."""
    if reduce and _shared(x, y):
        return grad(_summed(loss, batch), argnums=1)(x, y)
    gy = vmap(grad(loss, argnums=1), in_dims=(*_dims(x, y), 0))(x, y, batch)
    return gy.sum(0) if reduce else gy


def _grad_hvp_one(loss: Loss) -> Callable[[Tensor, Tensor, Tensor, Batch], tuple[Tensor, Tensor, Tensor]]:
    def fn(x, y, v, b):
        gy, pull = vjp(lambda x_, y_: grad(loss, argnums=1)(x_, y_, b), x, y)
        return (gy, *pull(v))
    return fn


def grad_y_hvp(loss: Loss, x: Tensor, y: Tensor, v: Tensor, batch: Batch,
               reduce: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_y loss_i, H_xy,i v, H_yy,i v) from one pass: the HVP is the vjp of grad_y, whose
    value comes for free. Per worker, or summed over local workers with ``reduce``."""
    if reduce and _shared(x, y, v):
        gy, pull = vjp(grad(_summed(loss, batch), argnums=1), x, y)
        return (gy, *pull(v))
    out = vmap(_grad_hvp_one(loss), in_dims=(*_dims(x, y, v), 0))(x, y, v, batch)
    return tuple(o.sum(0) for o in out) if reduce else out


def hvp(loss: Loss, x: Tensor, y: Tensor, v: Tensor, batch: Batch,
        reduce: bool = False) -> tuple[Tensor, Tensor]:
    """(H_xy,i v, H_yy,i v) of ``loss`` per worker, or their sums with ``reduce``."""
    return grad_y_hvp(loss, x, y, v, batch, reduce)[1:]


def fd_grad_y_hvp(loss: Loss, x: Tensor, y: Tensor, v: Tensor, batch: Batch, delta: float,
                  reduce: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_y loss_i, H_xy,i v, H_yy,i v) second-order free, by central differences of the
    gradient (docs/algorithms.md, RABO):
      H_yy v ~ (grad_y g(x, y + delta v) - grad_y g(x, y - delta v)) / (2 delta), H_xy v alike,
    with error O(delta^2). Three gradient passes, no graph of a graph."""
    gx_p, gy_p = grad_xy(loss, x, y + delta * v, batch, reduce)
    gx_m, gy_m = grad_xy(loss, x, y - delta * v, batch, reduce)
    return grad_y(loss, x, y, batch, reduce), (gx_p - gx_m) / (2 * delta), (gy_p - gy_m) / (2 * delta)


def _workers(batch: Batch) -> int:
    return int(tree_leaves(batch)[0].shape[0])


def in_chunks(fn: Callable[..., Tensor | tuple[Tensor, ...]], chunk: int | None, vectors: tuple[Tensor, ...],
              batch: Batch, reduce: bool) -> Tensor | tuple[Tensor, ...]:
    """``fn(*vectors, batch, reduce)`` computed ``chunk`` workers at a time (see module doc).

    Per-worker (2-D) vectors and the batch are cut along the worker axis; rows of the result are
    written into one preallocated output, summed results (``reduce``) are added chunk by chunk."""
    n = _workers(batch)
    if chunk is None or n <= chunk:
        return fn(*vectors, batch, reduce)
    out: list[Tensor] | None = None
    single = False
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        part = fn(*(t[a:b] if t.dim() == 2 else t for t in vectors), tree_map(lambda t: t[a:b], batch), reduce)
        single = isinstance(part, Tensor)
        parts = (part,) if single else tuple(part)
        if out is None:
            out = [p.clone() if reduce else p.new_empty((n, *p.shape[1:])) for p in parts]
            if reduce:
                continue
        for o, p in zip(out, parts):
            if reduce:
                o.add_(p)
            else:
                o[a:b] = p
    return out[0] if single else tuple(out)


class Oracles:
    """The oracles of one problem: f- and g-derivatives with the worker axis handled.

    ``chunk``: evaluate at most that many workers at once (None: all local workers together)."""

    def __init__(self, problem: Problem, chunk: int | None = None):
        self.problem, self.chunk = problem, chunk

    def _run(self, fn, loss: Loss, vectors: tuple[Tensor, ...], batch: Batch, reduce: bool):
        return in_chunks(lambda *a: fn(loss, *a), self.chunk, vectors, batch, reduce)

    def grad_f(self, x, y, batch, reduce=False):
        return self._run(grad_xy, self.problem.f, (x, y), batch, reduce)

    def grad_g(self, x, y, batch, reduce=False):
        return self._run(grad_xy, self.problem.g, (x, y), batch, reduce)

    def grad_g_y(self, x, y, batch, reduce=False):
        return self._run(grad_y, self.problem.g, (x, y), batch, reduce)

    def hvp_g(self, x, y, v, batch, reduce=False):
        return self.grad_y_hvp_g(x, y, v, batch, reduce)[1:]

    def grad_y_hvp_g(self, x, y, v, batch, reduce=False):
        return self._run(grad_y_hvp, self.problem.g, (x, y, v), batch, reduce)

    def _values(self, loss: Loss, x, y, batch):
        return self._run(lambda l, x_, y_, b, _: loss_values(l, x_, y_, b), loss, (x, y), batch, False)

    def f_values(self, x, y, batch):
        return self._values(self.problem.f, x, y, batch)

    def g_values(self, x, y, batch):
        return self._values(self.problem.g, x, y, batch)


class FiniteDifferenceOracles(Oracles):
    """The same oracles with the products H_xy v, H_yy v of g by central finite differences."""

    def __init__(self, problem: Problem, delta: float, chunk: int | None = None):
        super().__init__(problem, chunk)
        self.delta = delta

    def grad_y_hvp_g(self, x, y, v, batch, reduce=False):
        fd = lambda loss, x_, y_, v_, b, r: fd_grad_y_hvp(loss, x_, y_, v_, b, self.delta, r)  # noqa: E731
        return self._run(fd, self.problem.g, (x, y, v), batch, reduce)
