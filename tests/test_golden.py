"""Golden rows: fixed runs whose metric rows (losses, accuracies, bits, rounds) must not change.

The fixture tests/data/golden_rows.json was recorded before the speed work of issue 14; every
speed change (fused updates, preallocated buffers, one selection per round, ...) must leave these
runs identical. Every hyper-parameter is given explicitly, so a change of a task's or an
algorithm's defaults does not touch them. Bits, rounds and every other integer are compared
exactly; floats to a few units in the last place of the run's dtype (``same``): the fixture was
recorded on one CPU, and MKL's and ATen's vector kernels round differently on another (measured on
an AVX-512 AMD EPYC against the recording machine: 1.5e-16 relative in float64, 3.3e-8 in
float32, bits identical). ``wall_s`` is the only field left out.

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


def same(got, want, rel: float) -> bool:
    """Equal structure and integers; floats within ``rel`` (relative; absolute for values below
    1e-6, such as a final state's sum that sits at zero)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k], rel) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(same(a, b, rel) for a, b in zip(got, want))
    if isinstance(want, float) and isinstance(got, float):
        return abs(got - want) <= rel * (1.0 if abs(want) < 1e-6 else abs(want))
    return type(got) is type(want) and got == want


@pytest.mark.parametrize("name", list(CASES))
def test_rows_are_identical(golden, name):
    assert torch.get_default_dtype() == torch.float32
    rel = 1e-6 if CASES[name].get("dtype") == "float32" else 1e-13
    got = rows(CASES[name])
    assert same(got, golden[name], rel), (got, golden[name])


def test_same_compares_integers_exactly_and_floats_to_the_last_bits():
    assert same([{"bits_up": 3, "loss": 1.0}], [{"bits_up": 3, "loss": 1.0 + 1e-15}], 1e-13)
    assert not same([{"bits_up": 3, "loss": 1.0}], [{"bits_up": 4, "loss": 1.0}], 1e-13)
    assert not same([{"loss": 1.0}], [{"loss": 1.0 + 1e-9}], 1e-13)
    assert same([1.5e-16], [1.9e-16], 1e-13) and not same([1], [1.0], 1e-13)
