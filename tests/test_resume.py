"""Checkpoints and resume: an interrupted run, resumed, gives exactly the metrics of an uninterrupted
one; a diverging run stops with the round and the variable, exits 3 and keeps its last good checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distbo
from distbo import checkpoint, runner, safeio  # noqa: F401
from distbo.algorithms import ALGORITHMS
from distbo.cli import main
from helpers import stop_at, without_time

TASK = {"name": "quadratic", "d_x": 2, "d_y": 4, "noise": 0.5, "heterogeneity": 1.0}
COMMON = dict(workers=3, rounds=40, eval_every=4, checkpoint_every=10, dtype="float64", seed=3)
CLI = ["run", "--task", "quadratic", "--workers", "3", "--rounds", "40", "--eval-every", "4", "--seed", "3",
       "--set", "task.d_x=2", "--set", "task.d_y=4", "--set", "task.noise=0.5", "--set", "checkpoint_every=10",
       "--set", 'dtype="float64"', "--quiet"]


def rows_of(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def _interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("algorithm,compressor,downlink", [
    ("soba", "identity", "identity"), ("ef-soba", "topk:0.5", "identity"), ("cm-soba", "randk:0.5", "identity"),
    ("rabo", "topk:0.5", "sign")])  # per-client shifts and per-client down-link copies in the state
def test_injected_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch, algorithm, compressor, downlink):
    if algorithm not in ALGORITHMS.names():
        pytest.skip(f"{algorithm} not registered")
    kw = dict(COMMON, algorithm=algorithm, compressor=compressor, downlink=downlink)
    ref = distbo.run(TASK, out=tmp_path / "ref", **kw)

    monkeypatch.setattr(runner, "build", stop_at(27, _interrupt))
    with pytest.raises(KeyboardInterrupt):
        distbo.run(TASK, out=tmp_path / "cut", **kw)
    monkeypatch.undo()
    cut = tmp_path / "cut"
    assert json.loads((cut / "summary.json").read_text())["status"] == "interrupted"
    assert [r["round"] for r in rows_of(cut)] == [0, 4, 8, 12, 16, 20, 24]  # 24 is after the checkpoint

    res = runner.resume(cut)
    assert res.extra["resumed_from"] == 20
    assert without_time(rows_of(cut)) == without_time(ref.metrics) == without_time(res.metrics)
    assert json.loads((cut / "summary.json").read_text())["status"] == "completed"
    walls = [r["wall_s"] for r in rows_of(cut)]
    assert walls == sorted(walls)  # training time carries over
    for a, b in zip(checkpoint.flatten(res.state), checkpoint.flatten(ref.state), strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


CHILD = """
import os, sys, time
from distbo import runner
from distbo.cli import main
orig = runner.build
def build(*a, **k):
    alg, comm = orig(*a, **k)
    step = alg.step
    def stepping(state, t):
        if t == 27:
            open(os.environ["STOP_FLAG"], "w").close()
            time.sleep(120)
        return step(state, t)
    alg.step = stepping
    return alg, comm
runner.build = build
sys.exit(main(sys.argv[1:]))
"""


def test_killed_process_then_resume_equals_uninterrupted(tmp_path, capsys):
    """A real `distbo run` process, killed (SIGKILL: no clean-up at all) in round 27, after the
    checkpoint of round 20 and the metric row of round 24; then `distbo run --resume`."""
    out, flag = tmp_path / "run", tmp_path / "stopped"
    env = {**os.environ, "STOP_FLAG": str(flag), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *CLI, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never reached round 27"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert [r["round"] for r in rows_of(out)][-1] == 24
    assert not (out / "summary.json").exists()  # killed: nothing was tidied up

    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert "from round 20" in capsys.readouterr().out
    ref = distbo.run(TASK, algorithm="soba", **COMMON)
    assert without_time(rows_of(out)) == without_time(ref.metrics)


def test_cli_interrupt_exits_130_then_resume_equals_uninterrupted(tmp_path, capsys, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, what SIGINT raises) in round 27 of `distbo run`."""
    out = tmp_path / "run"
    monkeypatch.setattr(runner, "build", stop_at(27, _interrupt))
    assert main(CLI + ["--out", str(out)]) == 130
    monkeypatch.undo()
    assert "interrupted" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert "from round 20" in capsys.readouterr().out
    ref = distbo.run(TASK, algorithm="soba", **COMMON)
    assert without_time(rows_of(out)) == without_time(ref.metrics)
    assert json.loads((out / "summary.json").read_text())["final"] == rows_of(out)[-1]


def test_divergence_exits_3_names_round_and_variable_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "div"
    argv = ["run", "--task", "quadratic", "--workers", "3", "--rounds", "200", "--eval-every", "1",
            "--set", "task.d_x=2", "--set", "task.d_y=4", "--set", "algorithm.alpha=300",
            "--set", "checkpoint_every=4", "--set", "diverge_factor=0", "--out", str(out), "--quiet"]
    assert main(argv) == 3  # the NaN stop (diverge_factor=0: no stop by growth, see test_runctl.py)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    bad = int(err.split("diverged at round ")[1].split(":")[0])
    kept = (bad - 1) // 4 * 4
    assert 4 <= kept < bad
    assert f"non-finite values in 'x'" in err and f"checkpoint of round {kept} is kept" in err

    rows = rows_of(out)
    assert [r["round"] for r in rows] == list(range(bad))  # every good row is kept, no diverged row
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    template = runner.resolve(checkpoint.load_config(out))
    algorithm, _ = runner.build(*template)
    ck = checkpoint.load(out, 0, algorithm.init())
    assert ck.round == kept and ck.rows == kept + 1
    assert all(bool(torch.isfinite(t).all()) for t in checkpoint.flatten(ck.state) if isinstance(t, torch.Tensor))
    assert ck.stats["comm_rounds"] == kept == rows[kept]["comm_rounds"]


def test_resume_of_a_changed_configuration_is_refused(tmp_path, capsys):
    distbo.run(TASK, algorithm="soba", out=tmp_path / "r", **dict(COMMON, rounds=10))
    conf = json.loads((tmp_path / "r" / "config.json").read_text())
    conf["task"]["d_y"] = 5
    (tmp_path / "r" / "config.json").write_text(json.dumps(conf))
    assert main(["run", "--resume", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs from the configuration the checkpoint" in err
    assert "in task.d_y;" in err and "only rounds, eval_every, until, timeout, threads may change" in err


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    s0 = {"x": torch.arange(3.0), "up": (torch.ones(2, 2), 7)}
    checkpoint.save(tmp_path, 0, checkpoint.Checkpoint(5, s0, {"bits_up": 1}, 0.5, 2))

    def broken(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(distbo.safeio.WriteError, match="checkpoint-rank0.pt: disk full"):
        checkpoint.save(tmp_path, 0, checkpoint.Checkpoint(6, s0, {"bits_up": 2}, 0.6, 3))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-rank0.pt"]  # no .tmp left
    ck = checkpoint.load(tmp_path, 0, {"x": torch.zeros(3), "up": (torch.zeros(2, 2), 0)})
    assert ck.round == 5 and torch.equal(ck.state["x"], s0["x"]) and ck.state["up"][1] == 7


def test_every_registered_algorithm_state_round_trips(tmp_path):
    """Each algorithm's state (after two rounds) is saved and rebuilt exactly on a fresh init()."""
    tried = []
    for name in ALGORITHMS.names():
        for comp in ("identity", "randk:0.5", "topk:0.5"):  # the first one the algorithm accepts
            try:
                res, problem = runner.resolve({"task": dict(TASK), "algorithm": name, "workers": 4,
                                               "compressor": comp, "dtype": "float64", "rounds": 2,
                                               "downlink": "sign"})  # its copies are state too
                algorithm, comm = runner.build(res, problem)
                break
            except distbo.ConfigError:
                continue
        else:
            continue
        state = algorithm.step(algorithm.step(algorithm.init(), 0), 1)
        checkpoint.save(tmp_path / name, 0, checkpoint.Checkpoint(2, state, comm.stats.as_dict(), 0.0, 1))
        back = checkpoint.load(tmp_path / name, 0, algorithm.init()).state
        leaves, again = checkpoint.flatten(state), checkpoint.flatten(back)
        assert type(back) is type(state) and len(leaves) == len(again)
        for a, b in zip(leaves, again):
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), name
        tried.append(name)
    assert "soba" in tried, tried


def test_a_folder_in_use_by_a_live_run_is_refused(tmp_path, capsys):
    """E.g. the not yet dead processes of a killed run: a resume must not write beside them."""
    distbo.run(TASK, algorithm="soba", out=tmp_path / "r", **dict(COMMON, rounds=4))
    with checkpoint.claim(tmp_path / "r", 0):  # another open file description: like another process
        assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "in use by another running process" in err
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 0  # released
