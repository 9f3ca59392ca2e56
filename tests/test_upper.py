"""The server optimizers of x (algorithms/upper.py, ``algorithm.upper_opt``): each update equals a
hand-written reference, sgd is the step every algorithm made before, and adam's state survives a
checkpoint and resume (simulator = 2 processes: tests/test_distributed.py)."""
import json
import math

import pytest
import torch

import distbo
from distbo import checkpoint, runner
from distbo.algorithms.upper import B1, B2, EPS_ADAM, OPTIMIZERS
from helpers import stop_at, without_time

F64 = torch.float64
X0 = [1.0, -2.0]
GRADS = [[0.5, -1.0], [0.25, 2.0], [-1.0, 0.5], [0.0, 0.0]]  # a zero direction at the end
ALPHA = 0.3
SQRT = lambda t: 1.0 / math.sqrt(t + 1)  # noqa: E731  (the "sqrt" schedule)


def _run(name: str, factor=lambda t: 1.0, grads=GRADS, step: bool = False) -> list[list[float]]:
    """The iterates x_1.. of the optimizer fed ``grads`` (as SGD moves lr_t g_t with ``step``)."""
    opt = OPTIMIZERS[name](ALPHA, factor)
    x = torch.tensor(X0, dtype=F64)
    state, out = opt.init(x), []
    for t, g in enumerate(grads):
        g = torch.tensor(g, dtype=F64)
        state, d = opt.update(state, t, x, step=opt.lr(t) * g) if step else opt.update(state, t, x, g)
        x = x - d
        out.append(x.tolist())
    return out


def _close(got, want):
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)


def _sgd(factor):
    x, out = list(X0), []
    for t, g in enumerate(GRADS):
        x = [xi - factor(t) * ALPHA * gi for xi, gi in zip(x, g)]
        out.append(x)
    return out


def _momentum(factor):
    x, m, out = list(X0), [0.0, 0.0], []
    for t, g in enumerate(GRADS):
        m = [B1 * mi + (1 - B1) * gi for mi, gi in zip(m, g)]
        x = [xi - factor(t) * ALPHA * mi for xi, mi in zip(x, m)]
        out.append(x)
    return out


def _adam(factor):
    x, m, v, s, out = list(X0), [0.0, 0.0], [0.0, 0.0], 0.0, []
    for t, g in enumerate(GRADS):
        s = max(s, math.sqrt(sum(gi * gi for gi in g) / len(g)))
        m = [B1 * mi + (1 - B1) * gi for mi, gi in zip(m, g)]
        v = [B2 * vi + (1 - B2) * gi * gi for vi, gi in zip(v, g)]
        x = [xi - factor(t) * ALPHA * s * (mi / (1 - B1 ** (t + 1))) / (math.sqrt(vi / (1 - B2 ** (t + 1)))
                                                                        + EPS_ADAM * s)
             for xi, mi, vi in zip(x, m, v)]
        out.append(x)
    return out


def _dog(factor):
    x, r, G, out = list(X0), 0.0, 0.0, []
    for t, g in enumerate(GRADS):
        norm = math.sqrt(sum(gi * gi for gi in g))
        r = r if r > 0 else factor(t) * ALPHA * norm  # r_eps: SGD's first step
        r = max(r, math.dist(x, X0))
        G += norm * norm
        x = [xi - factor(t) * r / math.sqrt(G) * gi for xi, gi in zip(x, g)]
        out.append(x)
    return out


@pytest.mark.parametrize("name,reference", [("sgd", _sgd), ("momentum", _momentum), ("adam", _adam), ("dog", _dog)])
@pytest.mark.parametrize("factor", [lambda t: 1.0, SQRT], ids=["constant", "sqrt"])
def test_each_update_equals_its_closed_form(name, reference, factor):
    _close(_run(name, factor), reference(factor))
    _close(_run(name, factor, step=True), reference(factor))  # a local-step move: g = move / lr_t


def test_dog_first_step_is_sgd_and_a_zero_start_moves_nothing():
    assert _run("dog", grads=GRADS[:1]) == _run("sgd", grads=GRADS[:1])
    for name in ("adam", "dog", "momentum"):  # SOBA's first D_x is 0 where f does not depend on x
        out = _run(name, grads=[[0.0, 0.0]] + GRADS[:2])
        assert out[0] == X0 and all(math.isfinite(v) for row in out for v in row)
    assert _run("dog", grads=[[0.0, 0.0]] + GRADS[:1])[1] == _run("sgd", grads=GRADS[:1])[0]


def test_sgd_returns_the_local_steps_move_itself():
    """Bit-identity of sgd for RABO / RAFBO and FedNest's local x steps: the move is not re-scaled."""
    opt = OPTIMIZERS["sgd"](0.3, SQRT)
    move = torch.tensor([0.1, 0.7], dtype=F64)
    assert opt.update((), 3, move, step=move)[1] is move


QUAD = {"name": "quadratic", "d_x": 3, "d_y": 4, "noise": 0.1}


@pytest.mark.parametrize("algorithm", ["soba", "ef-soba", "rafbo", "aggitd", "fednest", "lfednest"])
def test_the_family_default_is_used_and_sgd_keeps_no_state(algorithm):
    """dog for AggITD, sgd for every other method (docs/defaults.md)."""
    kw = dict(workers=3, rounds=4, eval_every=2, dtype="float64")
    default = "dog" if algorithm == "aggitd" else "sgd"
    a = distbo.run(QUAD, algorithm, **kw)
    b = distbo.run(QUAD, {"name": algorithm, "upper_opt": default}, **kw)
    assert a.metrics[-1]["hypergrad_norm"] == b.metrics[-1]["hypergrad_norm"] and torch.equal(a.x, b.x)
    assert a.config["algorithm"]["upper_opt"] == default
    assert distbo.run(QUAD, {"name": algorithm, "upper_opt": "sgd"}, **kw).state.opt == ()


@pytest.mark.parametrize("algorithm", ["soba", "aggitd", "fednest", "lfednest", "rafbo", "ef-soba"])
@pytest.mark.parametrize("opt", ["momentum", "adam", "dog"])
def test_every_algorithm_runs_every_optimizer(algorithm, opt):
    r = distbo.run(QUAD, {"name": algorithm, "upper_opt": opt}, workers=3, rounds=6, eval_every=6, dtype="float64",
                   compressor="topk:0.5" if algorithm == "ef-soba" else "identity")
    x0 = distbo.run(QUAD, "soba", workers=3, rounds=0, dtype="float64").x
    assert math.isfinite(r.metrics[-1]["hypergrad_norm"]) and not torch.equal(r.x, x0) and r.state.opt != ()


def test_unknown_optimizer_is_one_line():
    with pytest.raises(distbo.ConfigError, match="upper_opt"):
        distbo.run(QUAD, {"name": "soba", "upper_opt": "lion"}, rounds=1)


def _interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("algorithm", ["soba", "rafbo"])
def test_adam_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, algorithm):
    kw = dict(workers=3, rounds=20, eval_every=4, checkpoint_every=5, dtype="float64", seed=3,
              algorithm={"name": algorithm, "upper_opt": "adam"})
    ref = distbo.run(QUAD, out=tmp_path / "ref", **kw)
    monkeypatch.setattr(runner, "build", stop_at(13, _interrupt))
    with pytest.raises(KeyboardInterrupt):
        distbo.run(QUAD, out=tmp_path / "cut", **kw)
    monkeypatch.undo()
    res = runner.resume(tmp_path / "cut")
    assert res.extra["resumed_from"] == 10
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert without_time(rows) == without_time(ref.metrics)
    for a, b in zip(checkpoint.flatten(res.state), checkpoint.flatten(ref.state), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_a_run_says_which_optimizer_it_uses_in_one_line(capsys):
    distbo.run(QUAD, {"name": "cm-soba", "upper_opt": "adam"}, compressor="randk:0.5", rounds=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "upper_opt = 'adam'" in err[0] and "averaged twice" in err[0]
    distbo.run(QUAD, {"name": "rafbo", "upper_opt": "dog"}, rounds=1)
    assert "pseudo-gradient" in capsys.readouterr().err
    distbo.run(QUAD, "soba", rounds=1)
    assert capsys.readouterr().err == ""


def test_the_rows_show_the_derived_step():
    dog = distbo.run(QUAD, {"name": "soba", "upper_opt": "dog"}, rounds=4, eval_every=2, dtype="float64")
    assert dog.metrics[0]["dog_step"] == 0.0 and dog.metrics[-1]["dog_step"] > 0
    adam = distbo.run(QUAD, {"name": "rabo", "upper_opt": "adam"}, rounds=2, eval_every=2, dtype="float64")
    assert adam.metrics[-1]["adam_lr"] > 0 and "dog_step" not in adam.metrics[-1]
    assert "adam_lr" not in distbo.run(QUAD, "soba", rounds=1).metrics[-1]
