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
