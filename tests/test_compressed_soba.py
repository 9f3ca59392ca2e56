"""C-SOBA, CM-SOBA, EF-SOBA and the MSC variants (docs/algorithms.md, SOBA) on the quadratic task:
reductions to SOBA, exactness and neighbourhoods, bits, the compressed down-link and errors."""
import math
import statistics

import pytest
import torch

import distbo
from distbo import ConfigError
from distbo.algorithms.soba import soba_directions
from distbo.oracles import Oracles
from distbo.problems.quadratic import Quadratic

VARIANTS = ["c-soba", "cm-soba", "ef-soba", "cm-soba-msc", "ef-soba-msc"]
N, DX, DY = 4, 4, 8


def quad(h=1.0):
    return Quadratic(workers=N, d_x=DX, d_y=DY, heterogeneity=h, dtype=torch.float64, seed=0)


def run(alg, compressor="identity", rounds=300, h=1.0, eval_every=10, downlink="identity", **hp):
    hp = {**scaled(1.0), **({"theta": 0.1} if alg.startswith("ef-") else {}), **hp}  # the settings these
    # tests were written for (the quadratic's former hand-set defaults), not the derived ones
    return distbo.run(quad(h), {"name": alg, **hp}, compressor=compressor, rounds=rounds,
                      eval_every=eval_every, downlink=downlink)


def rel(r):
    """Hypergradient norms relative to the start."""
    return [m["hypergrad_norm"] / r.metrics[0]["hypergrad_norm"] for m in r.metrics]


def plateau(r):
    """Median relative hypergradient norm over the last half of the run."""
    h = rel(r)
    return statistics.median(h[len(h) // 2:])


def scaled(s):
    return {"alpha": 0.1 * s, "beta": 0.3 * s, "gamma": 0.3 * s}


# ---------- with the identity compressor every variant is SOBA ----------
@pytest.mark.parametrize("schedule", ["constant", "sqrt"])
@pytest.mark.parametrize("alg", VARIANTS)
def test_identity_compressor_gives_soba_trajectory(alg, schedule):
    hp = {"schedule": schedule, **({"theta": 1.0} if alg != "c-soba" else {})}
    ref, r = run("soba", rounds=12, schedule=schedule), run(alg, rounds=12, **hp)
    for name in ("x", "y", "v"):
        torch.testing.assert_close(getattr(r.state, name), getattr(ref.state, name), rtol=1e-12, atol=1e-12)
    for key in ("bits_up", "bits_down", "comm_rounds"):
        assert r.metrics[-1][key] == ref.metrics[-1][key]


def test_moving_average_follows_its_recursion():
    """CM-SOBA (identity, theta = 0.4, averaging y and v too) against a hand-written loop
    (the noiseless quadratic's batches do not depend on the round)."""
    theta, rounds, p = 0.4, 8, quad()
    r = distbo.run(p, {"name": "cm-soba", "theta": theta, "average_yv": True, **scaled(1.0)}, rounds=rounds,
                   eval_every=rounds)
    workers, oracles = torch.arange(N), Oracles(p)
    bf, bg = p.sample("f", workers, torch.tensor(0)), p.sample("g", workers, torch.tensor(0))
    x, y = p.init(0)
    v, h = torch.zeros_like(y), {k: 0.0 for k in "xyv"}
    for _ in range(rounds):
        D = {k: d / N for k, d in soba_directions(oracles, x, y, v, bf, bg, reduce=True).items()}
        h = {k: (1 - theta) * h[k] + theta * D[k] for k in "xyv"}
        x, y, v = x - 0.1 * h["x"], y - 0.3 * h["y"], v - 0.3 * h["v"]
    for name, ref in (("x", x), ("y", y), ("v", v)):
        torch.testing.assert_close(getattr(r.state, name), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alg,comp", [("ef-soba", "randk:0.5"), ("ef-soba-msc", "topk:0.25")])
def test_error_feedback_server_shift_is_the_mean_of_worker_shifts(alg, comp):
    r = run(alg, comp, rounds=20, eval_every=20, **scaled(0.5))
    shifts = r.state.up
    for k in "xyv":
        assert shifts.worker[k].shape == (N, DX if k == "x" else DY)
        torch.testing.assert_close(shifts.server[k], shifts.worker[k].mean(0), rtol=1e-10, atol=1e-12)
        assert float(shifts.server[k].norm()) > 0


# ---------- C-SOBA and CM-SOBA: exact with identical workers, a neighbourhood otherwise ----------
@pytest.mark.parametrize("alg,comp,hp", [("c-soba", "randk:0.5", {}), ("c-soba", "qsgd:2", {}),
                                         ("cm-soba", "randk:0.5", {"theta": 0.5})])
def test_unbiased_variants_converge_exactly_with_identical_workers(alg, comp, hp):
    r = run(alg, comp, rounds=300, h=0.0, eval_every=50, **hp)
    assert rel(r)[-1] < 1e-8


@pytest.mark.parametrize("alg,hp", [("c-soba", {}), ("cm-soba", {"theta": 0.5})])
def test_unbiased_variants_stall_in_a_neighbourhood_that_shrinks_with_the_steps(alg, hp):
    big = plateau(run(alg, "randk:0.5", rounds=240, eval_every=5, **scaled(1.0), **hp))
    small = plateau(run(alg, "randk:0.5", rounds=240, eval_every=5, **scaled(0.25), **hp))
    assert 1e-2 < small < 0.6 * big  # not exact, and smaller steps give a smaller neighbourhood


def test_sqrt_schedule_shrinks_the_neighbourhood_over_time():
    const = plateau(run("c-soba", "randk:0.5", rounds=240, eval_every=5))
    decay = run("c-soba", "randk:0.5", rounds=240, eval_every=5, schedule="sqrt")
    assert plateau(decay) < 0.5 * const
    ef = rel(run("ef-soba", "topk:0.5", rounds=240, eval_every=80, schedule="sqrt", theta=1.0))
    # EF-SOBA with decaying steps keeps converging, well below C-SOBA's shrinking neighbourhood
    assert ef[-1] < ef[-2] < ef[-3] < ef[0] and ef[-1] < 0.1 * plateau(decay)


# ---------- EF-SOBA: exact under heterogeneity with contractive compressors ----------
@pytest.mark.parametrize("alg,comp,theta,tol", [("ef-soba", "topk:0.25", 1.0, 1e-9), ("ef-soba", "sign", 1.0, 1e-6),
                                                ("ef-soba-msc", "topk:0.25", 0.5, 1e-9),
                                                ("ef-soba-msc", "sign", 0.5, 1e-7)])
def test_error_feedback_converges_exactly_under_heterogeneity(alg, comp, theta, tol):
    r = run(alg, comp, rounds=300, eval_every=100, theta=theta)
    assert rel(r)[-1] < tol
    assert r.metrics[-1]["x_err"] < 1e-4


def test_two_top_k_steps_on_the_residual_are_one_top_2k_step():
    a = run("ef-soba-msc", "topk:0.25", rounds=10, eval_every=10, theta=1.0, msc_steps=2)
    b = run("ef-soba", "topk:0.5", rounds=10, eval_every=10, theta=1.0)
    torch.testing.assert_close(a.state.x, b.state.x, rtol=1e-12, atol=1e-12)


# ---------- bits ----------
def test_uplink_bits_come_from_the_payloads():
    """Section 5 formulas with this float64 run's 64-bit values (32-bit in float32 runs)."""
    rounds, fb, idx = 5, 64, lambda d: math.ceil(math.log2(d))
    r = run("c-soba", "randk:3", rounds=rounds, eval_every=rounds)
    assert r.metrics[-1]["bits_up"] == rounds * N * 3 * (fb * 3 + 32)  # values + 32-bit seed
    assert r.metrics[-1]["comm_rounds"] == rounds
    r = run("ef-soba", "topk:2", rounds=rounds, eval_every=rounds)
    one = rounds * N * 2 * ((fb + idx(DX)) + 2 * (fb + idx(DY)))
    assert r.metrics[-1]["bits_up"] == one
    r = run("ef-soba-msc", "topk:2", rounds=rounds, eval_every=rounds, msc_steps=3)
    assert r.metrics[-1]["bits_up"] == 3 * one and r.metrics[-1]["comm_rounds"] == rounds
    r = run("cm-soba", "qsgd:4", rounds=rounds, eval_every=rounds)
    assert r.metrics[-1]["bits_up"] == rounds * N * (3 * fb + (DX + 2 * DY) * 4)
    r = run("ef-soba", "sign", rounds=rounds, eval_every=rounds)
    assert r.metrics[-1]["bits_up"] == rounds * N * (3 * fb + DX + 2 * DY)
    assert r.metrics[-1]["bits_down"] == rounds * N * (DX + 2 * DY) * fb  # uncompressed


# ---------- the compressed down-link ----------
@pytest.mark.parametrize("alg,comp,down", [("soba", "identity", "sign"), ("ef-soba", "topk:0.5", "topk:0.5")])
def test_compressed_downlink_converges_and_counts_its_bits(alg, comp, down):
    rounds = 200
    r = run(alg, comp, rounds=rounds, eval_every=100, downlink=down, **({"theta": 1.0} if alg != "soba" else {}))
    assert rel(r)[-1] < 1e-6
    per_var = {"topk:0.5": lambda d: (d // 2) * (64 + math.ceil(math.log2(d))), "sign": lambda d: 64 + d}[down]
    assert r.metrics[-1]["bits_down"] == rounds * N * (per_var(DX) + 2 * per_var(DY))
    z = r.state.down  # the workers' copies have caught up with the server's values
    for k in "xyv":
        assert float((z[k] - getattr(r.state, k)).norm()) < 1e-4


def test_compressed_downlink_workers_see_the_public_copy():
    """Workers' directions are evaluated at z_hat, not at the server's z."""
    r = run("soba", rounds=3, eval_every=3, downlink="sign")
    assert not torch.allclose(r.state.down["x"], r.state.x)
    exact = run("soba", rounds=3, eval_every=3)
    assert not torch.allclose(r.state.x, exact.state.x)


# ---------- errors ----------
@pytest.mark.parametrize("alg,comp,says", [("c-soba", "topk:0.1", "ef-soba"), ("cm-soba", "sign", "ef-soba"),
                                           ("soba", "randk:0.1", "c-soba")])
def test_incompatible_compressors_are_one_line_errors(alg, comp, says):
    with pytest.raises(ConfigError) as e:
        run(alg, comp, rounds=1)
    assert e.value.field == "compressor" and says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("alg", ["ef-soba", "ef-soba-msc", "cm-soba-msc"])
def test_error_feedback_and_msc_variants_accept_contractive_compressors(alg):
    assert run(alg, "sign", rounds=2, eval_every=2).metrics[-1]["round"] == 2


def test_cli_reports_an_unbiased_only_algorithm_in_one_line(tmp_path, capsys):
    from distbo.cli import main

    code = main(["run", "--algorithm", "cm-soba", "--compressor", "topk:0.05", "--rounds", "1", "--quiet",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "compressor" in err and "ef-soba" in err
    code = main(["run", "--algorithm", "ef-soba", "--set", "algorithm.theta=1.5", "--rounds", "1", "--quiet",
                 "--out", str(tmp_path / "s")])
    assert code == 2 and "algorithm.theta" in capsys.readouterr().err
