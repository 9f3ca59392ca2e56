import importlib.util
from pathlib import Path

import distbo


def test_module_problem_example_learns():
    path = Path(__file__).parents[1] / "examples" / "module_problem.py"
    spec = importlib.util.spec_from_file_location("module_problem", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = distbo.run(mod.make_problem(), algorithm={"name": "ef-soba", "alpha": 0.3, "beta": 0.3, "gamma": 0.3},
                   compressor="topk:0.1", rounds=40, eval_every=40)
    assert r.metrics[-1]["upper_loss"] < 0.6 * r.metrics[0]["upper_loss"]
    assert r.metrics[-1]["test_acc"] > r.metrics[0]["test_acc"]
    assert r.config["task"]["name"] == "custom"
