"""distbo tune (tuning.py): successive halving over a step-size scale (and theta), best.toml."""
import json
import math
import tomllib
from pathlib import Path

import torch

import distbo
from distbo.cli import main
from distbo.problems.quadratic import Quadratic

SMALL = ["--workers", "3", "--set", "task.d_x=4", "--set", "task.d_y=6", "--quiet"]


def _final(folder: Path, field: str):
    summ = json.loads((folder / "summary.json").read_text())
    return None if summ["status"] == "diverged" else summ["final"][field]


def test_tune_halves_on_the_metric_and_writes_a_runnable_best_toml(tmp_path, capsys):
    out = tmp_path / "t"
    argv = ["tune", *SMALL, "--rounds", "50", "--set", "algorithm.alpha=0.08", "--set", "algorithm.beta=0.2",
            "--set", "algorithm.gamma=0.2", "--scales", "0.25,0.5,1,16", "--budget", "24", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "score: hypergrad_norm at the last evaluation, lower is better" in printed
    trials = out / "trials"
    # rung 1: 4 candidates x 8 rounds, the best ceil(4/3) = 2 go on to 24 rounds
    first = {p.name[3:]: _final(p, "hypergrad_norm") for p in trials.glob("r1-*")}
    assert sorted(first) == ["s0.25", "s0.5", "s1", "s16"] and first["s16"] is None  # 16x: diverged
    alive = sorted((v, k) for k, v in first.items() if v is not None)[:2]
    second = {p.name[3:]: _final(p, "hypergrad_norm") for p in trials.glob("r2-*")}
    assert sorted(second) == sorted(k for _, k in alive)
    winner = min(second, key=second.get)
    assert f"best: {winner};" in printed
    assert [r["round"] for r in map(json.loads, (trials / f"r2-{winner}" / "metrics.jsonl").open())][-1] == 24

    best = tomllib.loads((out / "best.toml").read_text())
    scale = float(winner[1:])
    assert best["rounds"] == 50 and best["task"]["d_x"] == 4
    assert [best["algorithm"][k] for k in ("alpha", "beta", "gamma")] == [0.08 * scale, 0.2 * scale, 0.2 * scale]
    assert main(["run", str(out / "best.toml"), "--rounds", "24", "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert _final(tmp_path / "again", "hypergrad_norm") == second[winner]  # same run as the winning trial
    assert "s16" in (out / "tune.csv").read_text() and (out / "tune.md").read_text().startswith("| candidate")


def test_tune_a_user_problem_with_theta_and_until_from_python(tmp_path):
    problem = Quadratic(workers=3, d_x=4, d_y=6, dtype=torch.float64, seed=0)  # passed as a user Problem
    start = problem.evaluate(*problem.init(0))["hypergrad_norm"]
    r = distbo.tune(problem, algorithm={"name": "ef-soba", "alpha": 0.08, "beta": 0.2, "gamma": 0.2, "theta": 0.3},
                    compressor="topk:0.5", until=f"hypergrad_norm<={start / 4!r}", eval_every=2, budget=30,
                    scales=(0.5, 1.0), thetas=(0.3, 1.0), out=tmp_path / "u")
    assert [(c.scale, c.theta) for c in r.candidates] == [(0.5, 0.3), (0.5, 1.0), (1.0, 0.3), (1.0, 1.0)]
    reached = {c.label: c.shown[-1] for c in r.candidates if len(c.scores) == 2}
    assert len(reached) == 2 and r.winner.label in reached
    # scored by the round of reaching the target: the winner's is the smallest among the finalists
    rounds = {c.label: c.scores[-1] for c in r.candidates if len(c.scores) == 2}
    assert rounds[r.winner.label] == min(rounds.values()) and rounds[r.winner.label][0] == 0
    summ = json.loads((r.winner.folders[-1] / "summary.json").read_text())
    assert summ["target"]["reached"] and summ["target"]["round"] == rounds[r.winner.label][1]
    best = tomllib.loads((tmp_path / "u" / "best.toml").read_text())
    assert "task" not in best and best["algorithm"]["theta"] == r.winner.theta
    assert best["until"] == f"hypergrad_norm<={start / 4!r}" and best["compressor"] == "topk:0.5"
    assert math.isclose(best["algorithm"]["alpha"], 0.08 * r.winner.scale)


def test_tune_bad_metric_is_one_line(tmp_path, capsys):
    assert main(["tune", *SMALL, "--metric", "accuracy", "--budget", "3", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--metric" in err and "hypergrad_norm" in err, err
