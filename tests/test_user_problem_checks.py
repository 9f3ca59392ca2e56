"""Frictions of a user-defined Problem (problems/checks.py): one line before round 0, or applied."""
import json

import numpy as np
import pytest
import torch
from helpers import SoftplusProblem

import distbo
from distbo.cli import main
from distbo.errors import ConfigError


class NoUpperLoss(SoftplusProblem):
    steps = 0

    def evaluate(self, x, y):
        return {"my_loss": 1.0}


class TensorMetrics(SoftplusProblem):
    def evaluate(self, x, y):
        return {"upper_loss": (y ** 2).sum(), "np": np.float32(2.5), "vec": torch.arange(3), "n": np.int64(4)}


class Float64Data(SoftplusProblem):
    """Data in float64 (numpy's default), the class left at the default dtype float32."""

    def __init__(self):
        super().__init__(dtype=torch.float64)
        self.dtype = torch.float32

    def init(self, seed):
        return torch.zeros(self.d_x), torch.zeros(self.d_y)


def test_evaluate_without_upper_loss_is_one_line_before_round_0():
    with pytest.raises(ConfigError, match=r"^evaluate: .*'upper_loss'.*\['my_loss'\]"):
        distbo.run(NoUpperLoss(), rounds=5, progress=True)


def test_tensor_and_numpy_metrics_become_numbers(tmp_path):
    r = distbo.run(TensorMetrics(), rounds=2, eval_every=1, out=tmp_path / "run")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert isinstance(row["upper_loss"], float) and row["np"] == 2.5 and row["vec"] == [0, 1, 2] and row["n"] == 4
    assert r.metrics[-1]["upper_loss"] == row["upper_loss"]


@pytest.mark.parametrize("kw,field", [({"workers": 4}, "workers"), ({"dtype": "float32"}, "dtype"),
                                      ({"overrides": ["task.noise=0.1"]}, "task"),
                                      ({"overrides": ["workers=5"]}, "workers")])
def test_settings_a_user_problem_cannot_apply_are_errors(kw, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        distbo.run(SoftplusProblem(workers=3), rounds=1, **kw)


def test_matching_settings_are_accepted():
    r = distbo.run(SoftplusProblem(workers=3), workers=3, dtype="float64", rounds=1)
    assert r.config["workers"] == 3 and r.config["dtype"] == "float64"


def test_dtype_mismatch_is_one_line_naming_dtype():
    with pytest.raises(ConfigError, match=r"^dtype: Float64Data has dtype float32 but its 'f' batches are float64"):
        distbo.run(Float64Data(), rounds=1)


def test_distbo_list_states_the_value_width(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    comp = out[out.index("compressors:"):].splitlines()[1:]
    assert comp and all("32 bits per value in float32, 64 in float64" in line for line in comp if line.strip())


# ----- malformed ModuleProblems (problems/validate.py): one ConfigError naming the culprit, before round 0 -----
def _data(workers=4, rows=20, features=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, features, generator=gen), torch.randint(0, 3, (rows,), generator=gen))
            for _ in range(workers)]


def _ce(up, low, batch):
    return torch.nn.functional.cross_entropy(low(batch[0] * up), batch[1])


def _ridge(up, low, batch):
    return _ce(up, low, batch) + 1e-2 * (low.params["weight"] ** 2).sum()


class NoForward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(30))


def _module_problem(**change):
    torch.manual_seed(0)
    kw = dict(upper=torch.ones(30), lower=torch.nn.Linear(30, 3), f=_ce, g=_ridge, train=_data(), val=_data(seed=1),
              batch_size=8, test=(torch.randn(10, 30), torch.randint(0, 3, (10,))))
    kw.update({k: (v(kw) if callable(v) and k not in ("f", "g", "predict") else v) for k, v in change.items()})
    return distbo.ModuleProblem(**kw)


def _poke(split, worker, value, tensor=0):
    def change(kw):
        parts = [tuple(t.clone() for t in p) for p in kw[split]]
        parts[worker][tensor].view(-1)[5] = value
        return parts
    return change


def _features(worker, n):
    return lambda kw: [(X[:, :n], Y) if i == worker else (X, Y) for i, (X, Y) in enumerate(kw["train"])]


MALFORMED = [  # (what, change, field, needles)
    ("f returns a vector", dict(f=lambda up, low, b: (low(b[0]) ** 2).sum(1)), "f", ["scalar tensor", "[8]", ".mean()"]),
    ("g returns a vector", dict(g=lambda up, low, b: (low(b[0]) ** 2).sum(1)), "g", ["scalar tensor", "[8]"]),
    ("f returns a float", dict(f=lambda up, low, b: 1.0), "f", ["scalar tensor", "float"]),
    ("g does not depend on y", dict(g=lambda up, low, b: (up ** 2).sum() * b[0].mean()), "g",
     ["strongly convex in y", "L_g = mu_g = 0"]),
    ("NaN in the training data", dict(train=_poke("train", 2, float("nan"))), "train",
     ["worker 2", "NaN or inf"]),
    ("inf in the validation data", dict(val=_poke("val", 1, float("inf"))), "val", ["worker 1", "NaN or inf"]),
    ("NaN in the test data", dict(test=lambda kw: (torch.full((10, 30), float("nan")), kw["test"][1])), "test",
     ["NaN or inf"]),
    ("one worker with 29 features", dict(train=_features(3, 29)), "train", ["worker 3", "[20, 29]", "[20, 30]"]),
    ("test set with 29 features", dict(test=lambda kw: (kw["test"][0][:, :29], kw["test"][1])), "test",
     ["[10, 29]", "[*, 30]"]),
    ("float labels in the data", dict(train=lambda kw: [(X, Y.float()) for X, Y in kw["train"]],
                                      val=lambda kw: [(X, Y.float()) for X, Y in kw["val"]]), "f",
     ["f(...) failed", "validation batch", "class labels must be integers"]),
    ("float test labels", dict(test=lambda kw: (kw["test"][0], kw["test"][1].float())), "test",
     ["integer class labels"]),
    ("a bare tensor per worker", dict(train=lambda kw: [X for X, _ in kw["train"]]), "train",
     ["bare tensor", "(X_i, Y_i)"]),
    ("the whole (X, Y) pair as train", dict(train=lambda kw: (torch.randn(80, 30), torch.randint(0, 3, (80,)))),
     "train", ["one dataset (X, Y) reads as 2 workers", "partition='iid'"]),
    ("one tensor as train", dict(train=lambda kw: torch.randn(80, 30)), "train", ["one tensor", "[80, 30]"]),
    ("upper module without forward, test= set", dict(upper=lambda kw: NoForward()), "predict",
     ["NoForward has no forward()", "predict="]),
    ("f raises", dict(f=lambda up, low, b: low(b[0][:, :3]).sum()), "f", ["f(...) failed", "RuntimeError"]),
    ("f is NaN at the start", dict(f=lambda up, low, b: low(b[0]).sum() * float("nan")), "f",
     ["is nan at the starting point"]),
    ("one worker's labels are floats", dict(train=lambda kw: [(X, Y.float() if i == 1 else Y)
                                                              for i, (X, Y) in enumerate(kw["train"])]),
     "train", ["worker 1's tensor 1 is torch.float32", "int64", ".long()"]),
    ("a test set of one tensor", dict(test=lambda kw: (kw["test"][0],)), "test", ["expected (X, Y)"]),
    ("val_batch_size -1", dict(val_batch_size=-1), "val_batch_size", ['"full"', "got -1"]),
    ("batch_size 0", dict(batch_size=0), "batch_size", ['"full"', "got 0"]),
    ("batch_size 'all'", dict(batch_size="all"), "batch_size", ['"full"']),
]


@pytest.mark.parametrize("change,field,needles", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_module_problem_is_one_config_error_before_round_0(change, field, needles):
    with pytest.raises(ConfigError) as info:
        distbo.run(_module_problem(**change), rounds=1)
    err = str(info.value)
    assert info.value.field == field and "\n" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_a_batch_larger_than_a_shard_is_said_on_stderr(capsys):
    _module_problem(batch_size=25)
    err = capsys.readouterr().err
    assert "batch_size 25 is larger than worker 0's 20 samples" in err and "with replacement" in err
    assert len(err.strip().splitlines()) == 2  # batch_size, then val_batch_size (the same 25)


def test_the_well_formed_table_problem_runs():
    r = distbo.run(_module_problem(), rounds=2, eval_every=1)
    assert len(r.metrics) == 3 and all(np.isfinite(m["upper_loss"]) for m in r.metrics)


class NanFeatures(SoftplusProblem):
    def __init__(self):
        super().__init__()
        self.feats[1] = float("nan")


def test_non_finite_batches_of_a_flat_problem_name_the_level_and_worker():
    with pytest.raises(ConfigError, match=r"^f: worker 1's f-batches hold NaN or inf"):
        distbo.run(NanFeatures(), rounds=1)


def test_a_loss_that_runs_on_one_worker_but_not_under_vmap_is_one_line():
    def g(up, low, b):  # a Python branch on a tensor's value: fine eagerly, not under torch.func.vmap
        return _ridge(up, low, b) * (2.0 if float(b[0].sum()) > 0 else 1.0)

    with pytest.raises(ConfigError, match=r"^g: runs on one worker's batch but fails when distbo differentiates"):
        distbo.run(_module_problem(g=g), rounds=1)
