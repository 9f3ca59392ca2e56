"""The examples in examples/ run and learn."""
import importlib.util
from pathlib import Path

import distbo


def load_example(name: str):
    path = Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_custom_problem_example_learns():
    mod = load_example("custom_problem")
    r = distbo.run(mod.RidgePenalties(), algorithm={"name": "ef-soba", "alpha": 0.5, "beta": 0.05, "gamma": 0.05},
                   compressor="topk:0.3", rounds=60, eval_every=30)
    assert r.metrics[-1]["upper_loss"] < 0.2 * r.metrics[0]["upper_loss"]
    assert r.config["task"]["name"] == "custom"


def test_module_problem_example_learns():
    mod = load_example("module_problem")
    r = distbo.run(mod.make_problem(), algorithm={"name": "ef-soba", "alpha": 0.3, "beta": 0.3, "gamma": 0.3},
                   compressor="topk:0.1", rounds=40, eval_every=40)
    assert r.metrics[-1]["upper_loss"] < 0.6 * r.metrics[0]["upper_loss"]
    assert r.metrics[-1]["test_acc"] > r.metrics[0]["test_acc"]
    assert r.config["task"]["name"] == "custom"
