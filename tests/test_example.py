import importlib.util
from pathlib import Path

import distbo


def test_custom_problem_example_learns():
    path = Path(__file__).parents[1] / "examples" / "custom_problem.py"
    spec = importlib.util.spec_from_file_location("custom_problem", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = distbo.run(mod.RidgePenalties(), algorithm={"name": "ef-soba", "alpha": 0.5, "beta": 0.05, "gamma": 0.05},
                   compressor="topk:0.3", rounds=60, eval_every=30)
    assert r.metrics[-1]["upper_loss"] < 0.2 * r.metrics[0]["upper_loss"]
    assert r.config["task"]["name"] == "custom"
