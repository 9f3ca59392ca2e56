import torch

from distbo import oracles as O
from distbo.problems.quadratic import Quadratic


def test_y_star_is_the_lower_level_minimiser(quad64):
    q, x = quad64, torch.randn(quad64.d_x, dtype=torch.float64)
    b = q.sample("g", torch.arange(q.n_workers), None)
    g = O.grad_y(q.g, x, q.y_star(x), b, reduce=True)
    assert float(g.norm()) < 1e-10


def test_hypergradient_equals_autograd_of_phi(quad64):
    q = quad64
    x = torch.randn(q.d_x, dtype=torch.float64, requires_grad=True)
    b = q.sample("f", torch.arange(q.n_workers), None)
    phi = O.loss_values(q.f, x, q.y_star(x), b).mean()
    (auto,) = torch.autograd.grad(phi, x)
    torch.testing.assert_close(q.hypergrad(x.detach()), auto)
    torch.testing.assert_close(torch.tensor(q.phi(x.detach()), dtype=torch.float64), phi.detach())


def test_v_star_solves_the_linear_system(quad64):
    q, x = quad64, torch.randn(quad64.d_x, dtype=torch.float64)
    y = q.y_star(x)
    bg, bf = (q.sample(l, torch.arange(q.n_workers), None) for l in "gf")
    v = q.v_star(x)
    _, hy = O.hvp(q.g, x, y, v, bg, reduce=True)
    _, fy = O.grad_xy(q.f, x, y, bf, reduce=True)
    torch.testing.assert_close(hy, fy)


def test_x_star_is_stationary_and_phi_strongly_convex(quad64):
    q = quad64
    assert float(q.hypergrad(q.x_star).norm()) < 1e-9
    assert float(torch.linalg.eigvalsh(q._phi_hessian(q.mean64)).min()) > 0.1


def test_heterogeneity_zero_means_identical_workers():
    q = Quadratic(workers=3, heterogeneity=0.0, dtype=torch.float64)
    for v in q.data.values():
        torch.testing.assert_close(v, v[:1].expand_as(v))
    q1 = Quadratic(workers=3, heterogeneity=1.0, dtype=torch.float64)
    assert float((q1.data["A"][0] - q1.data["A"][1]).norm()) > 0.1


def test_noise_is_zero_mean_with_the_given_std():
    q = Quadratic(workers=2, d_x=3, d_y=4, noise=0.5, dtype=torch.float64)
    keys = torch.arange(4000)
    z = torch.stack([q.sample("g", torch.arange(2), k)["zg"] for k in keys])
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 0.5) < 0.02
    assert "zg" not in Quadratic(workers=2).sample("g", torch.arange(2), torch.tensor(0))
