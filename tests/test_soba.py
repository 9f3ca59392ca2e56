import torch

import distbo
from distbo.runner import CONTRACT_FIELDS


def test_soba_converges_on_heterogeneous_quadratic():
    r = distbo.run("quadratic", "soba", workers=8, rounds=600, eval_every=100, dtype="float64")
    start, end = r.metrics[0]["hypergrad_norm"], r.metrics[-1]["hypergrad_norm"]
    assert end < 1e-4 * start
    assert r.metrics[-1]["x_err"] < 1e-4


def test_metric_rows_follow_the_contract_and_count_bits():
    rounds, n = 30, 8
    r = distbo.run("quadratic", "soba", workers=n, rounds=rounds, eval_every=10,
                   overrides=["task.d_x=4", "task.d_y=6"])
    assert [m["round"] for m in r.metrics] == [0, 10, 20, 30]
    for m in r.metrics:
        assert set(CONTRACT_FIELDS) | {"hypergrad_norm", "x_err"} <= set(m)
    last = r.metrics[-1]
    per_round = (4 + 2 * 6) * 32
    assert last["bits_up"] == rounds * n * per_round
    assert last["bits_down"] == rounds * n * per_round
    assert last["comm_rounds"] == rounds


def test_same_seed_same_metrics_and_noise_changes_with_seed():
    kw = dict(workers=4, rounds=40, eval_every=10, overrides=["task.noise=0.3"])
    a, b = distbo.run("quadratic", "soba", seed=1, **kw), distbo.run("quadratic", "soba", seed=1, **kw)
    strip = lambda rows: [{k: v for k, v in m.items() if k != "wall_s"} for m in rows]
    assert strip(a.metrics) == strip(b.metrics)
    c = distbo.run("quadratic", "soba", seed=2, **kw)
    assert strip(a.metrics) != strip(c.metrics)


def test_user_problem_runs_through_the_api():
    from helpers import SoftplusProblem

    r = distbo.run(SoftplusProblem(workers=3), algorithm={"name": "soba", "alpha": 0.01}, rounds=5, eval_every=5)
    assert r.x.shape == (2,) and r.metrics[-1]["round"] == 5
