"""The lower level at a fixed x from a Representation (algorithms/fixed_x.py) equals g's oracles.

y-derivatives are hyperrep's linear softmax head in closed form (problems/softmax_head.py), so they
equal differentiating g as a whole to rounding (float64); the deferred H_xy products reorder one sum
(equal to rounding too). Whole federated runs
with and without the representation agree to rounding too, and the light g-batches are the same
draw as the full ones.
"""
from __future__ import annotations

import pytest
import torch

import distbo
from distbo import rng
from distbo.algorithms.federated import ClientOracles
from distbo.algorithms.fixed_x import AtX, Features, fixed_x
from distbo.oracles import Oracles
from distbo.problems.hyperrep import Hyperrep

REP = {"name": "hyperrep", "dataset": "digits", "hidden": [16], "batch_size": 8, "max_samples": 400,
       "max_test": 200, "partition": "dirichlet:0.5"}  # unequal shards: the pool is padded


@pytest.fixture(scope="module")
def setup():
    problem = Hyperrep(workers=5, seed=1, dtype=torch.float64, dataset="digits", hidden=[16], batch_size=8,
                       max_samples=400, partition="dirichlet:0.5")
    clients = ClientOracles(Oracles(problem))
    ids = torch.tensor([0, 2, 3])
    x0, _ = problem.init(0)
    gen = torch.Generator().manual_seed(0)
    x = x0 + 0.1 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    return problem, clients, ids, x, gen


def draws(problem, ids, count):
    return [problem.sample("g", ids, rng.key(7, k)) for k in range(count)]


def test_hyperrep_declares_a_representation_and_fixed_x_uses_it(setup):
    problem, clients, ids, x, _ = setup
    assert isinstance(fixed_x(clients, x, ids), Features)
    assert type(fixed_x(clients, x.expand(3, -1), ids)) is AtX  # per-client x: g as a whole
    assert type(fixed_x(clients, x, ids[:0])) is AtX  # no participants here


def test_light_batches_are_the_same_draw(setup):
    problem, _, ids, _, _ = setup
    key = rng.key(11, 2)
    full, light = problem.sample("g", ids, key), problem.representation().sample(ids, key)
    assert light.keys() == {"labels", "index"}
    assert torch.equal(full["index"], light["index"]) and torch.equal(full["labels"], light["labels"])
    assert torch.equal(full["inputs"], problem.data.train.inputs[full["index"]])


@pytest.mark.parametrize("reduce", [False, True])
def test_y_derivatives_equal_g_as_a_whole(setup, reduce):
    problem, clients, ids, x, gen = setup
    whole, feat = AtX(clients, x), Features(clients, x, ids, problem.representation())
    y = 0.1 * torch.randn(problem.d_y, generator=gen, dtype=torch.float64)
    Y = y + 0.05 * torch.randn(3, problem.d_y, generator=gen, dtype=torch.float64)
    for b in draws(problem, ids, 3):
        for point in (y, Y):
            if reduce and point.dim() == 2:
                continue
            torch.testing.assert_close(feat.grad_y(point, b, reduce), whole.grad_y(point, b, reduce),
                                       rtol=1e-13, atol=1e-15)
            u = torch.randn(problem.d_y, generator=gen, dtype=torch.float64)
            torch.testing.assert_close(feat.hvp_yy(point, u, b, reduce), whole.hvp_yy(point, u, b, reduce),
                                       rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("reduce", [False, True])
def test_deferred_hxy_products_equal_the_sum_of_products(setup, reduce):
    """acc + sum_m s_m H_xy(y_m) u_m over several steps, settled once, as AggITD's sweep uses it."""
    problem, clients, ids, x, gen = setup
    whole, feat = AtX(clients, x), Features(clients, x, ids, problem.representation())
    acc0 = torch.randn(problem.d_x if reduce else (3, problem.d_x), generator=gen, dtype=torch.float64)
    a, b_ = acc0, acc0
    for m, batch in enumerate(draws(problem, ids, 4)):
        y = 0.1 * torch.randn(problem.d_y if reduce else (3, problem.d_y), generator=gen, dtype=torch.float64)
        u = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        a, hy_whole = whole.hvp_onto(a, -0.3 * (m + 1), y, u, batch, reduce)
        b_, hy_feat = feat.hvp_onto(b_, -0.3 * (m + 1), y, u, batch, reduce)
        torch.testing.assert_close(hy_feat, hy_whole, rtol=1e-13, atol=1e-15)
    assert torch.equal(whole.settle(a), a)
    torch.testing.assert_close(feat.settle(b_), a, rtol=1e-12, atol=1e-13)
    assert torch.equal(feat.settle(acc0), acc0)  # settled: nothing is left deferred


@pytest.mark.parametrize("name, extra", [("aggitd", {}), ("fednest", {"neumann_terms": 3}),
                                         ("lfednest", {"neumann_terms": 3}),
                                         ("fednest", {"neumann_terms": 2, "outer": "local-svrg"})])
@pytest.mark.parametrize("compressor", ["identity", "randk:0.3"])
def test_runs_with_the_representation_equal_runs_without(monkeypatch, name, extra, compressor):
    """rand-K, not top-K: at y = 0 the first upload holds exact ties at top-K's K-th magnitude
    (measured: relative gap 0.0), so a difference in the last bit picks other coordinates and the
    runs part (2e-4 in upper_loss) though both are right; rand-K's choice does not depend on values."""
    kw = dict(workers=5, rounds=12, eval_every=4, seed=2, dtype="float64", threads=1, compressor=compressor,
              clients={"fraction": 0.6})
    alg = {"name": name, "alpha": 0.1, "beta": 0.1, "inner_rounds": 2, "local_steps": 2, **extra}
    if "neumann_terms" in extra:
        alg["eta"] = 0.2
    fast = distbo.run(dict(REP), dict(alg), **kw)
    monkeypatch.setattr(Hyperrep, "representation", lambda self: None)
    slow = distbo.run(dict(REP), dict(alg), **kw)
    for a, b in zip(fast.metrics, slow.metrics):
        assert a["bits_up"] == b["bits_up"] and a["comm_rounds"] == b["comm_rounds"]
        assert a["upper_loss"] == pytest.approx(b["upper_loss"], rel=1e-10)
    torch.testing.assert_close(fast.x, slow.x, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(fast.y, slow.y, rtol=1e-9, atol=1e-11)


def test_cnn_runs_with_the_representation_equal_runs_without(monkeypatch):
    """The CNN representation: conv features, the same closed-form softmax head."""
    from distbo.problems.hyperrep import HyperrepCNN
    task = {"name": "hyperrep", "model": "cnn", "channels": [4], "dataset": "digits", "batch_size": 8,
            "max_samples": 200, "max_test": 100}
    kw = dict(workers=4, rounds=4, eval_every=2, seed=2, dtype="float64", threads=1, clients={"fraction": 0.5})
    alg = {"name": "fednest", "alpha": 0.1, "beta": 0.1, "inner_rounds": 2, "local_steps": 2,
           "neumann_terms": 2, "eta": 0.2}
    fast = distbo.run(dict(task), dict(alg), **kw)
    monkeypatch.setattr(HyperrepCNN, "representation", lambda self: None)
    slow = distbo.run(dict(task), dict(alg), **kw)
    assert [r["upper_loss"] for r in fast.metrics] == pytest.approx([r["upper_loss"] for r in slow.metrics],
                                                                     rel=1e-12)
    torch.testing.assert_close(fast.x, slow.x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.y, slow.y, rtol=1e-10, atol=1e-12)
