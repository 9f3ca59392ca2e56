"""Run control (stopping.py): a run stops as diverged when it grows far past its start (exit 3, last
good checkpoint kept) and stops at a target with ``until``; both agree across processes."""
import json
import math
from pathlib import Path

import pytest
import torch

import distbo
from distbo import checkpoint, launch, runner, stopping
from distbo.cli import main
from distbo.errors import DivergenceError

SMALL = ["--workers", "3", "--set", "task.d_x=4", "--set", "task.d_y=6", "--quiet"]
# beta and gamma set, so that the test does not depend on the task's default step sizes
BLOWUP = ["run", *SMALL, "--rounds", "300", "--set", "algorithm.alpha=0.5", "--set", "algorithm.beta=0.3",
          "--set", "algorithm.gamma=0.3", "--set", "checkpoint_every=5"]


def rows_of(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def test_a_finite_blow_up_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "big"
    assert main([*BLOWUP, "--out", str(out)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "grew to" in err and "non-finite" not in err, err
    bad = int(err.split("diverged at round ")[1].split(":")[0])
    kept = (bad - 1) // 5 * 5
    assert 5 <= kept < bad and f"checkpoint of round {kept} is kept" in err, err
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    rows = rows_of(out)
    assert rows and all(math.isfinite(r["upper_loss"]) for r in rows) and rows[-1]["round"] <= bad

    res, problem = runner.resolve(checkpoint.load_config(out))
    algorithm, _ = runner.build(res, problem)
    start = algorithm.point(algorithm.init())
    ck = checkpoint.load(out, 0, algorithm.init())
    assert ck.round == kept
    for v, v0 in zip(algorithm.point(ck.state), start):  # the kept state is below the limit
        assert bool(torch.isfinite(v).all()) and float(v.norm()) <= 1e4 * max(float(v0.norm()), v0.numel() ** 0.5)

    # without the stop by growth the same run goes on: the state stays finite (no NaN stop) while
    # upper_loss grows past 1e4 x its start
    assert main([*BLOWUP, "--rounds", "60", "--set", "diverge_factor=0", "--out", str(tmp_path / "on")]) == 0
    on = rows_of(tmp_path / "on")
    assert on[-1]["round"] == 60 and 1e4 * on[0]["upper_loss"] < on[-1]["upper_loss"] < math.inf


def test_until_stops_at_the_first_evaluation_that_meets_the_target(tmp_path, capsys):
    common = dict(task={"name": "quadratic", "d_x": 4, "d_y": 6}, workers=3, rounds=150, eval_every=5,
                  dtype="float64", algorithm={"name": "soba", "alpha": 0.05, "beta": 0.2, "gamma": 0.2})
    full = distbo.run(**common)
    level = full.metrics[0]["hypergrad_norm"] * 1e-2
    first = next(r for r in full.metrics if r["hypergrad_norm"] <= level)
    assert 0 < first["round"] < 150

    out = tmp_path / "u"
    argv = ["run", *SMALL, "--rounds", "150", "--eval-every", "5", "--set", 'dtype="float64"',
            "--set", "algorithm.alpha=0.05", "--set", "algorithm.beta=0.2", "--set", "algorithm.gamma=0.2"]
    assert main([*argv, "--until", f"hypergrad_norm<={level!r}", "--out", str(out)]) == 0
    assert f"reached at round {first['round']}" in capsys.readouterr().out
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    rows = rows_of(out)
    assert strip(rows) == strip(full.metrics[: len(rows)]) and rows[-1]["round"] == first["round"]
    summ = json.loads((out / "summary.json").read_text())
    assert summ["status"] == "completed" and summ["target"] == {
        "until": f"hypergrad_norm<={level!r}", "reached": True, "round": first["round"],
        "bits_up": first["bits_up"], "bits_down": first["bits_down"]}
    assert checkpoint.load(out, 0, runner.build(*runner.resolve(checkpoint.load_config(out)))[0].init()).round \
        == first["round"]  # the stop is checkpointed like the end of a run

    never = distbo.run(**{**common, "rounds": 20}, until="x_err<=0")  # Python API; not reached
    assert never.extra["target"] == {"until": "x_err<=0", "reached": False, "round": None, "bits_up": None,
                                     "bits_down": None}
    at_start = distbo.run(**common, until="round>=0")
    assert [r["round"] for r in at_start.metrics] == [0] and at_start.extra["target"]["round"] == 0


@pytest.mark.parametrize("until,needles", [
    ("hypergrad<=1", ["until: unknown field 'hypergrad'", "hypergrad_norm"]),
    ("hypergrad_norm<1", ["until:", "FIELD<=VALUE"]),
    ("hypergrad_norm<=abc", ["until:", "FIELD<=VALUE"]),
])
def test_a_bad_target_is_one_line(tmp_path, capsys, until, needles):
    assert main(["run", *SMALL, "--rounds", "3", "--until", until, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err


class _Rank1:
    """Rank 1 of a 2-process job whose rank 0 contributes ``main`` to every all_sum."""

    rank, world_size, is_main = 1, 2, False

    def __init__(self, main):
        self.main = torch.tensor(main, dtype=torch.float64)

    def all_sum(self, t):
        return t + self.main


def test_other_processes_take_rank_0s_decision():
    x0y0 = (torch.zeros(4), torch.zeros(6))
    first = {"round": 0, "upper_loss": 2.0, "hypergrad_norm": 3.0}
    row = {"round": 10, "upper_loss": 1.0, "hypergrad_norm": 1e9}  # this rank would stop; rank 0 did not
    assert stopping.RunControl("upper_loss<=0.5", 1e4, x0y0, _Rank1([0, 0, 0, 0])).after_eval(row, first) is False
    assert stopping.RunControl("upper_loss<=0.5", 1e4, x0y0, _Rank1([1, 0, 0, 0])).after_eval(row, first) is True
    with pytest.raises(DivergenceError, match="round 10: upper_loss grew to 5e"):
        stopping.RunControl(None, 1e4, x0y0, _Rank1([0, 1, 5e4, 2.0])).after_eval(row, first)


def _job():
    """In each rank of a 2-process job: a run stopped by a target and one stopped by growth."""
    kw = dict(task={"name": "quadratic", "d_x": 4, "d_y": 6}, workers=4, rounds=150, eval_every=5, dtype="float64",
              algorithm={"name": "soba", "alpha": 0.05, "beta": 0.2, "gamma": 0.2})
    reached = distbo.run(**kw, until="hypergrad_norm<=0.05")
    try:
        distbo.run(**{**kw, "algorithm": {**kw["algorithm"], "alpha": 0.5}})
        grew = None
    except DivergenceError as exc:
        grew = str(exc)
    return {"rounds": [r["round"] for r in reached.metrics], "target": reached.extra["target"], "grew": grew}


def test_two_processes_stop_where_the_simulator_stops():
    ranks = launch.spawn(_job, (), 2, timeout=60)
    sim = _job()
    assert sim["target"]["reached"] and sim["grew"].startswith("diverged at round")
    assert ranks[0] == sim and ranks[1] == sim
