"""The hypergradient with the lower level solved (hypergrad.py): the eval_hypergrad metric and the
curvature estimate behind x's derived step, against the quadratic's closed forms."""
import sys
from pathlib import Path

import pytest
import torch

import distbo
from distbo.defaults import resolve_hyper
from distbo.hypergrad import HypergradMetric, Objective, conjugate_gradient, fixed_batches, phi_curvature, solve_lower
from distbo.problems.quadratic import Quadratic
from distbo.runner import resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def quad():
    return Quadratic(workers=4, d_x=3, d_y=5, heterogeneity=1.0, dtype=torch.float64, seed=1)


def test_metric_equals_the_closed_form(quad):
    metric = HypergradMetric(quad, seed=0)
    for x in (torch.zeros(3, dtype=torch.float64), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)):
        got = metric(x, torch.zeros(5, dtype=torch.float64))
        assert got["hypergrad_norm"] == pytest.approx(float(quad.hypergrad(x).norm()), rel=1e-6)
        assert got["hypergrad_s"] >= 0


def test_lower_level_and_cg_solve(quad):
    obj = Objective(quad, fixed_batches(quad, "f", torch.tensor(1), 1), fixed_batches(quad, "g", torch.tensor(2), 1))
    x = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    y, calls = solve_lower(obj, x, torch.zeros(5, dtype=torch.float64), tol=1e-10)
    assert float(obj.grad_y_g(x, y).norm()) < 1e-8 and calls > 0
    A = torch.stack([obj.hvp(x, y, e)[1] for e in torch.eye(5, dtype=torch.float64)])
    b = torch.arange(1.0, 6.0, dtype=torch.float64)
    v, k = conjugate_gradient(lambda u: obj.hvp(x, y, u)[1], b, tol=1e-12)
    assert torch.allclose(v, torch.linalg.solve(A, b), atol=1e-9) and k <= 5 + 1


def test_curvature_estimate_converges_to_the_closed_form(quad):
    exact = quad.constants()["L_phi"]
    est = phi_curvature(quad, seed=0, steps=30)
    assert est["L_phi"] <= exact * (1 + 1e-4)
    assert est["L_phi"] >= 0.99 * exact
    assert est["lower_grad_calls"] > 0 and est["seconds"] >= 0


def test_a_ridge_flattens_phi(quad):
    assert phi_curvature(quad, seed=0, ridge=10.0, steps=10)["L_phi"] < phi_curvature(quad, seed=0, steps=10)["L_phi"]


def _weight_decay():
    sys.path.insert(0, str(ROOT / "examples"))
    import weight_decay
    return weight_decay.make_problem()


def test_x_step_derived_from_phi_is_recorded_and_user_value_wins():
    problem = _weight_decay()
    res, _ = resolve({"task": {"name": "user"}, "algorithm": {"name": "soba"}, "rounds": 200}, problem)
    d = res.derived
    assert d["L_phi"] > 0 and "power-iteration" in d["L_phi_source"] and d["L_phi_seconds"] >= 0
    old = 0.5 / max(d["L_g"], d["L_f_xx"])
    assert res.algorithm.alpha == pytest.approx(0.1 / d["L_phi"], rel=1e-3) and res.algorithm.alpha > 50 * old
    mine, _ = resolve({"task": {"name": "user"}, "algorithm": {"name": "soba", "alpha": 0.01}, "rounds": 200}, problem)
    assert mine.algorithm.alpha == 0.01 and "L_phi" not in (mine.derived or {})


def test_the_estimate_never_lowers_the_former_rule():
    # a problem whose estimate says Phi is more curved than g keeps 0.5 / max(L_g, L_f_xx)
    q = Quadratic(workers=4, d_x=3, d_y=5, heterogeneity=1.0, dtype=torch.float64, seed=1)
    q.constants = lambda: None  # as if unknown: estimated
    hp = distbo.algorithms.ALGORITHMS.get("soba").params()
    out, info = resolve_hyper("soba", hp, q, "identity", 0, {}, horizon=1000)
    assert out.alpha >= 0.5 / max(info["L_g"], info["L_f_xx"]) * (1 - 1e-3)


def test_eval_hypergrad_reports_progress_in_x_for_a_module_problem():
    r = distbo.run(_weight_decay(), algorithm="soba", rounds=20, eval_every=10, eval_hypergrad=True)
    assert all(row["hypergrad_norm"] > 0 and row["hypergrad_s"] >= 0 for row in r.metrics)
    plain = distbo.run(_weight_decay(), algorithm="soba", rounds=20, eval_every=10)
    assert "hypergrad_norm" not in plain.metrics[-1]
    assert [row["upper_loss"] for row in r.metrics] == [row["upper_loss"] for row in plain.metrics]
