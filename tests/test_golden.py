"""Golden rows: fixed runs whose metric rows (losses, accuracies, bits, rounds) must not change.

The fixture tests/data/golden_rows.json was recorded before the speed work of issue 14; every
speed change (fused updates, preallocated buffers, one selection per round, ...) must leave these
runs bit-identical. Every hyper-parameter is given explicitly, so a change of a task's or an
algorithm's defaults does not touch them. Rows are compared exactly (floats survive JSON
unchanged); ``wall_s`` is the only field left out.

Regenerate (only for an intended change of the numerics, saying so in the commit):
    DISTBO_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/test_golden.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import distbo

FIXTURE = Path(__file__).parent / "data" / "golden_rows.json"
QUAD = {"name": "quadratic", "d_x": 6, "d_y": 10, "heterogeneity": 1.0, "noise": 0.1}
REP = {"name": "hyperrep", "dataset": "digits", "hidden": [16], "batch_size": 8, "max_samples": 400,
       "max_test": 200}
SOBA_STEPS = {"alpha": 0.05, "beta": 0.2, "gamma": 0.2}
SMALL_STEPS = {"alpha": 0.01, "beta": 0.04, "gamma": 0.04}  # rand-K with K = 1 of 6 needs them
FED_STEPS = {"alpha": 0.05, "beta": 0.05, "inner_rounds": 3, "local_steps": 3}
CASES = {  # name -> keywords of distbo.run
    "ef-soba-topk": dict(task=QUAD, algorithm={"name": "ef-soba", **SOBA_STEPS, "theta": 0.5, "rho": 1.0},
                         compressor="topk:0.1", rounds=30),
    "ef-soba-topk-avg-yv": dict(task=QUAD, algorithm={"name": "ef-soba", **SOBA_STEPS, "theta": 0.3,
                                                      "average_yv": True}, compressor="topk:0.3", rounds=30),
    "c-soba-randk": dict(task=QUAD, algorithm={"name": "c-soba", **SMALL_STEPS}, compressor="randk:0.1", rounds=30),
    "cm-soba-qsgd": dict(task=QUAD, algorithm={"name": "cm-soba", **SOBA_STEPS, "theta": 0.2},
                         compressor="qsgd:4", rounds=30),
    "ef-soba-msc-sign": dict(task=QUAD, algorithm={"name": "ef-soba-msc", **SOBA_STEPS, "theta": 0.5,
                                                   "msc_steps": 2}, compressor="sign", rounds=30),
    "ef-soba-randk": dict(task=QUAD, algorithm={"name": "ef-soba", **SMALL_STEPS, "theta": 0.5},
                          compressor="randk:0.2", rounds=30),
    "soba": dict(task=QUAD, algorithm={"name": "soba", **SOBA_STEPS}, rounds=30),
    "aggitd": dict(task=QUAD, algorithm={"name": "aggitd", **FED_STEPS}, rounds=20),
    "aggitd-sampled": dict(task=QUAD, algorithm={"name": "aggitd", **FED_STEPS}, rounds=20,
                           clients={"fraction": 0.5}),
    "fednest-randk": dict(task=QUAD, algorithm={"name": "fednest", **FED_STEPS, "neumann_terms": 3, "eta": 0.1},
                          compressor="randk:0.5", rounds=20, clients={"fraction": 0.5}),
    "fednest-local-svrg": dict(task=QUAD, algorithm={"name": "fednest", **FED_STEPS, "neumann_terms": 3,
                                                     "eta": 0.1, "outer": "local-svrg"}, rounds=10),
    "hyperrep-ef-soba-topk": dict(task=REP, algorithm={"name": "ef-soba", "alpha": 0.1, "beta": 0.3, "gamma": 0.3,
                                                       "theta": 1.0}, compressor="topk:0.1", rounds=6, workers=3),
    "hyperrep-ef-soba-topk-float32": dict(task=REP, algorithm={"name": "ef-soba", "alpha": 0.1, "beta": 0.3,
                                                               "gamma": 0.3, "theta": 0.5}, compressor="topk:0.1",
                                          rounds=6, workers=3, dtype="float32"),
    "hyperrep-c-soba-randk": dict(task=REP, algorithm={"name": "c-soba", "alpha": 0.1, "beta": 0.3,
                                                       "gamma": 0.3}, compressor="randk:0.1", rounds=4, workers=3),
    "hyperrep-aggitd-sampled": dict(task=REP, algorithm={"name": "aggitd", "alpha": 0.1, "beta": 0.1,
                                                         "inner_rounds": 2, "local_steps": 2},
                                    rounds=3, workers=4, clients={"fraction": 0.5}),
}


def rows(case: dict) -> list[dict]:
    kw = {"workers": 4, "seed": 3, "eval_every": 5, "dtype": "float64", "threads": 1, **case}
    result = distbo.run(kw.pop("task"), kw.pop("algorithm"), **kw)
    state = {name: t.double() for name, t in (("x", result.x), ("y", result.y))}
    final = {f"final_{k}": [float(v.sum()), float(v.norm())] for k, v in state.items()}
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in result.metrics] + [final]


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("DISTBO_GOLDEN_WRITE"):
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps({name: rows(c) for name, c in CASES.items()}, indent=1) + "\n")
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_rows_are_bit_identical(golden, name):
    assert torch.get_default_dtype() == torch.float32
    assert rows(CASES[name]) == golden[name]
