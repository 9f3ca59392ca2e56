"""The linear softmax head's closed-form y-derivatives (problems/softmax_head.py) equal autograd's
of the same loss, for every shape the fixed-x oracles use (shared or per-participant y and u,
per participant or summed), on hyper-representation's MLP and CNN heads."""
from __future__ import annotations

import pytest
import torch
from torch.func import grad, vjp, vmap

from distbo.problems.hyperrep import Hyperrep, HyperrepCNN

N, B = 3, 7


def tasks():
    kw = dict(workers=3, seed=0, dtype=torch.float64, dataset="digits", max_samples=200, l2=0.3)
    return {"mlp": Hyperrep(hidden=[12], **kw), "cnn": HyperrepCNN(channels=[2], **kw)}


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def case(request):
    problem = tasks()[request.param]
    rep = problem.representation()
    gen = torch.Generator().manual_seed(5)
    k, d = rep.softmax.features, problem.d_y
    z = torch.relu(torch.randn(N, B, k, generator=gen, dtype=torch.float64))
    labels = torch.randint(0, problem.data.classes, (N, B), generator=gen)
    y = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    Y = y + 0.2 * torch.randn(N, d, generator=gen, dtype=torch.float64)
    U = torch.randn(N, d, generator=gen, dtype=torch.float64)
    return rep, z, labels, y, Y, U


def test_the_declared_head_is_the_task_head(case):
    rep, z, labels, y, *_ = case
    soft = rep.softmax
    assert soft.classes * (soft.features + 1) == y.numel() and soft.l2 == 0.3
    logits = soft._logits(z, y)
    ce = torch.nn.functional.cross_entropy(logits[0], labels[0]) + 0.5 * soft.l2 * (y @ y)
    torch.testing.assert_close(ce, rep.head(z[0], y, {"labels": labels[0]}), rtol=1e-15, atol=0)


def autograd(rep, z, labels, y, u):
    """Per-participant (grad_y, d/dz <grad_y, u>, H_yy u) by autograd of ``rep.head``."""
    def one(z_, y_, u_, l_):
        gy = lambda a, c: grad(rep.head, argnums=1)(a, c, {"labels": l_})
        g, pull = vjp(gy, z_, y_)
        cz, hy = pull(u_)
        return g, cz, hy
    dims = tuple(0 if t.dim() == 2 else None for t in (y, u))
    return vmap(one, in_dims=(0, *dims, 0))(z, y, u, labels)


@pytest.mark.parametrize("shared_y", [True, False])
@pytest.mark.parametrize("shared_u", [True, False])
@pytest.mark.parametrize("reduce", [False, True])
def test_closed_form_equals_autograd(case, shared_y, shared_u, reduce):
    rep, z, labels, y, Y, U = case
    point, u = (y if shared_y else Y), (U[0] if shared_u else U)
    g, cz, hy = autograd(rep, z, labels, point, u)
    if reduce:
        g, hy = g.sum(0), hy.sum(0)
    soft = rep.softmax
    torch.testing.assert_close(soft.grad_y(z, point, labels, reduce), g, rtol=1e-12, atol=1e-14)
    got_cz, got_hy = soft.pullback(z, point, u, labels, reduce)
    torch.testing.assert_close(got_cz, cz, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_hy, hy, rtol=1e-12, atol=1e-14)


def test_hvp_is_the_finite_difference_of_the_gradient(case):
    """Independent of autograd: H_yy u = (grad(y + h u) - grad(y - h u)) / 2h, to O(h^2)."""
    rep, z, labels, _, Y, U = case
    soft, h = rep.softmax, 1e-5
    fd = (soft.grad_y(z, Y + h * U, labels) - soft.grad_y(z, Y - h * U, labels)) / (2 * h)
    torch.testing.assert_close(soft.pullback(z, Y, U, labels)[1], fd, rtol=1e-7, atol=1e-9)
