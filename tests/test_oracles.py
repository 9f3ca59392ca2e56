import torch

from distbo import oracles as O
from helpers import SoftplusProblem


def _per_worker(q, w):
    return {k: v[w] for k, v in q._data64.items()}


def test_closed_forms_on_quadratic(quad64):
    q = quad64
    gen = torch.Generator().manual_seed(0)
    x, y, v = (torch.randn(d, generator=gen, dtype=torch.float64) for d in (q.d_x, q.d_y, q.d_y))
    bg, bf = q.sample("g", q_workers(q), None), q.sample("f", q_workers(q), None)
    gy = O.grad_y(q.g, x, y, bg)
    hx, hy = O.hvp(q.g, x, y, v, bg)
    fx, fy = O.grad_xy(q.f, x, y, bf)
    for w in range(q.n_workers):
        d = _per_worker(q, w)
        torch.testing.assert_close(gy[w], d["A"] @ y + d["B"] @ x + d["c"])
        torch.testing.assert_close(hy[w], d["A"] @ v)
        torch.testing.assert_close(hx[w], d["B"].T @ v)
        torch.testing.assert_close(fy[w], d["P"] @ (y - d["t"]) + d["R"] @ x)
        torch.testing.assert_close(fx[w], d["R"].T @ y + d["S"] @ x + d["s"])


def q_workers(q):
    return torch.arange(q.n_workers)


def test_reduce_equals_sum_and_per_worker_points(quad64):
    q = quad64
    x, y, v = torch.ones(q.d_x, dtype=torch.float64), torch.arange(q.d_y, dtype=torch.float64), torch.ones(q.d_y, dtype=torch.float64)
    b = q.sample("g", q_workers(q), None)
    for fn, args in ((O.grad_y, (x, y)), (O.hvp, (x, y, v)), (O.grad_xy, (x, y))):
        full, summed = fn(q.g, *args, b), fn(q.g, *args, b, reduce=True)
        full = full if isinstance(full, tuple) else (full,)
        summed = summed if isinstance(summed, tuple) else (summed,)
        for a, s in zip(full, summed):
            torch.testing.assert_close(a.sum(0), s)
    # a per-worker point [n, d] gives each worker its own derivative
    Y = y + torch.arange(q.n_workers, dtype=torch.float64)[:, None]
    per = O.grad_y(q.g, x, Y, b)
    for w in range(q.n_workers):
        torch.testing.assert_close(per[w], O.grad_y(q.g, x, Y[w], b)[w])


def test_hvp_matches_finite_differences_and_autograd():
    p = SoftplusProblem()
    gen = torch.Generator().manual_seed(3)
    x, y, v = (torch.randn(d, generator=gen, dtype=torch.float64) for d in (p.d_x, p.d_y, p.d_y))
    b = p.sample("g", torch.arange(p.n_workers), torch.tensor(5))
    hx, hy = O.hvp(p.g, x, y, v, b)
    eps = 1e-5
    gp = O.grad_xy(p.g, x, y + eps * v, b)
    gm = O.grad_xy(p.g, x, y - eps * v, b)
    torch.testing.assert_close(hx, (gp[0] - gm[0]) / (2 * eps), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(hy, (gp[1] - gm[1]) / (2 * eps), rtol=1e-6, atol=1e-8)
    # dense Hessian reference from torch.autograd.functional for worker 0
    b0 = {k: t[0] for k, t in b.items()}
    H = torch.autograd.functional.hessian(lambda xy: p.g(xy[: p.d_x], xy[p.d_x:], b0), torch.cat([x, y]))
    torch.testing.assert_close(hy[0], H[p.d_x:, p.d_x:] @ v)
    torch.testing.assert_close(hx[0], H[: p.d_x, p.d_x:] @ v)


def test_gradients_match_finite_differences():
    p = SoftplusProblem()
    x, y = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.linspace(-1, 1, p.d_y, dtype=torch.float64)
    b = p.sample("f", torch.arange(p.n_workers), torch.tensor(1))
    gx, gy = O.grad_xy(p.f, x, y, b)
    eps = 1e-6
    for j in range(p.d_x):
        e = torch.zeros(p.d_x, dtype=torch.float64); e[j] = eps
        fd = (O.loss_values(p.f, x + e, y, b) - O.loss_values(p.f, x - e, y, b)) / (2 * eps)
        torch.testing.assert_close(gx[:, j], fd, rtol=1e-6, atol=1e-8)
    for j in range(p.d_y):
        e = torch.zeros(p.d_y, dtype=torch.float64); e[j] = eps
        fd = (O.loss_values(p.f, x, y + e, b) - O.loss_values(p.f, x, y - e, b)) / (2 * eps)
        torch.testing.assert_close(gy[:, j], fd, rtol=1e-6, atol=1e-8)
