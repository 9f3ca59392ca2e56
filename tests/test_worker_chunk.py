"""worker_chunk (oracles.py): oracles k workers at a time give the unchunked rows and sums."""
import pytest
import torch

import distbo
from distbo import rng, tasks
from distbo.oracles import FiniteDifferenceOracles, Oracles


@pytest.fixture(scope="module")
def rep():
    return tasks.make("hyperrep", workers=5, dtype=torch.float64, dataset="digits", max_samples=200,
                      batch_size=4, hidden=[6])


@pytest.mark.parametrize("cls", [Oracles, FiniteDifferenceOracles])
@pytest.mark.parametrize("per_worker_point", [False, True])
def test_chunked_oracles_equal_unchunked(rep, cls, per_worker_point):
    x, y = rep.init(0)
    y = y + 0.1 * rng.normal(rng.key(1), (rep.d_y,), torch.float64)
    v = rng.normal(rng.key(2), (rep.d_y,), torch.float64)
    if per_worker_point:
        y, v = y.expand(5, -1) + torch.arange(5.0, dtype=torch.float64)[:, None] * 0.01, v.expand(5, -1)
    batch = rep.sample("g", torch.arange(5), rng.key(3))
    args = (rep, 1e-3) if cls is FiniteDifferenceOracles else (rep,)
    full, parts = cls(*args), cls(*args, chunk=2)
    for reduce in (False, True):
        for name, call in (("grad_f", lambda o: o.grad_f(x, y, batch, reduce)),
                           ("grad_y_hvp_g", lambda o: o.grad_y_hvp_g(x, y, v, batch, reduce)),
                           ("grad_g_y", lambda o: (o.grad_g_y(x, y, batch, reduce),))):
            for a, b in zip(call(full), call(parts)):
                assert a.shape == b.shape, name
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
    torch.testing.assert_close(full.f_values(x, y, batch), parts.f_values(x, y, batch), rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm,extra", [("ef-soba", {"compressor": "topk:0.3"}), ("soba", {}),
                                             ("rabo", {"clients": {"resources": [1, 0.5]}}),
                                             ({"name": "aggitd", "inner_rounds": 2, "local_steps": 2}, {})])
def test_chunked_runs_equal_unchunked(rep, algorithm, extra):
    kw = dict(algorithm=algorithm, rounds=3, eval_every=3, **extra)
    a = distbo.run(rep, **kw)
    b = distbo.run(rep, worker_chunk=2, **kw)
    assert b.config["worker_chunk"] == 2
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-12)
    assert a.metrics[-1]["upper_loss"] == pytest.approx(b.metrics[-1]["upper_loss"], rel=1e-12)
    assert a.metrics[-1]["bits_up"] == b.metrics[-1]["bits_up"]
