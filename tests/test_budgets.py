"""The federated inner budgets derived from the start (issue 26, item 3; distbo/budgets.py)."""
import pytest
import torch

from distbo import budgets
from distbo.runner import resolve
from distbo.problems.registry import make


def _quadratic(**kw):
    return make("quadratic", dtype=torch.float64, **kw)


def test_probe_equals_the_dense_truncation_error_on_the_quadratic():
    """d_y <= LANCZOS: Lanczos from b spans b's Krylov space, so the probe's ||e_K|| / ||grad Phi||
    equals ||B'A^-1 (I - sA)^K b|| / ||grad_x f - B'A^-1 b|| at (x0, y0) to rounding."""
    p = _quadratic()
    x, y = p.init(0)
    m = p.mean64
    A, B = m["A"], m["B"]  # g = y'Ay/2 + y'Bx + c'y: H_yy = A, H_xy v = B'v
    b = m["P"] @ y - m["Pt"] + m["R"] @ x
    h = m["R"].T @ y + m["S"] @ x + m["s"] - B.T @ torch.linalg.solve(A, b)
    probe = budgets.SeriesProbe(p, 0)
    assert probe.products == p.d_y
    for K, s in ((1, 0.1), (5, 0.1), (17, 0.11), (40, 0.05)):
        r = torch.linalg.matrix_power(torch.eye(p.d_y, dtype=torch.float64) - s * A, K) @ b
        exact = float((B.T @ torch.linalg.solve(A, r)).norm() / h.norm())
        assert probe.error(K, s) == pytest.approx(exact, rel=1e-8)
    K = probe.terms(0.11)
    assert probe.error(K, 0.11) <= budgets.C_SERIES < probe.error(K - 1, 0.11)


def test_local_steps_follow_noise_over_drift():
    # deterministic and heterogeneous: no noise to average, drift only -> one local step
    s2, z2 = budgets.noise_and_drift(_quadratic(), 0)
    assert s2 == 0 and z2 > 0.5 and budgets.local_steps(s2, z2) == 1
    # identical workers with gradient noise: all noise, no drift -> the most local steps
    s2, z2 = budgets.noise_and_drift(_quadratic(heterogeneity=0.0, noise=1.0), 0)
    assert s2 > 10 * z2 and budgets.local_steps(s2, z2) == budgets.TAU_MAX
    assert budgets.local_steps(1.0, 0.5) == 2 and budgets.local_steps(0.0, 0.0) == 1


def _resolved(alg, **top):
    res, _ = resolve({"algorithm": alg, "dtype": "float64", **top})
    return res.algorithm, res.derived


def test_derived_budgets_are_recorded_and_meet_the_series_target():
    hp, der = _resolved("aggitd")
    assert (hp.local_steps, der["noise_y"]) == (1, 0.0)
    assert der["series_error"] <= budgets.C_SERIES and der["series_target"] == budgets.C_SERIES
    assert {"local_steps", "inner_rounds"} <= set(der["derived"])
    probe = budgets.SeriesProbe(_quadratic(), 0)
    assert hp.inner_rounds == probe.terms(hp.beta)  # tau = 1: one product per round
    hp, der = _resolved("fednest")
    assert hp.neumann_terms + 1 == probe.terms(hp.eta) and der["series_error"] <= budgets.C_SERIES
    hp, der = _resolved("lfednest")  # its clients' own series: the fixed budget, said so
    assert hp.neumann_terms == budgets.FALLBACK_TERMS and "lfednest" in der["series_note"]
    hp, der = _resolved("aggitd", compressor="randk:0.1")  # omega 9 > n = 8: the fixed budget
    assert hp.inner_rounds == budgets.FALLBACK_ROUNDS and "omega" in der["series_note"]


def test_a_users_budget_wins_and_the_rules_after_it_use_it():
    hp, der = _resolved({"name": "aggitd", "local_steps": 4, "inner_rounds": 3})
    assert (hp.local_steps, hp.inner_rounds) == (4, 3) and "noise_y" not in der
    assert hp.beta == pytest.approx(min(1 / der["L_g"], 1 / (4 * der["L_g_max"])), rel=1e-3)
    hp, der = _resolved({"name": "aggitd", "beta": 0.05})  # N from the user's beta
    assert hp.inner_rounds == budgets.SeriesProbe(_quadratic(), 0).terms(0.05)
    hp, _ = _resolved({"name": "fednest", "neumann_terms": 2})
    assert hp.neumann_terms == 2


def test_an_ill_conditioned_series_keeps_the_fixed_budget():
    """hyperrep's head at y0 = 0: b lies along curvature ~ l2 = 1e-3, which no affordable series
    follows; the fixed budget is kept and config.json says why."""
    res, _ = resolve({"task": {"name": "hyperrep", "dataset": "digits", "hidden": [16], "max_samples": 400},
                      "workers": 4, "algorithm": "aggitd"})
    assert res.algorithm.inner_rounds == budgets.FALLBACK_ROUNDS
    assert "mu_g-limited" in res.derived["series_note"] and res.derived["series_error"] > budgets.C_SERIES
