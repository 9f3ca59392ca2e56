"""``distbo run --problem FILE.py:FUNCTION`` (problemfile.py): a user's problem on the command line, with
--procs, --resume, plot, compare and tune; every mistake in the spec is one line (exit 2)."""
import json
from pathlib import Path

import pytest
from helpers import without_time

from distbo.cli import main

PROBLEM = '''
import torch, torch.nn.functional as F
import distbo

def ce(up, low, b):
    return F.cross_entropy(low(b[0] * up), b[1])

def ridge(up, low, b):
    return ce(up, low, b) + 1e-2 * (low.params["weight"] ** 2).sum()

def make():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g))
            for _ in range(4)]
    torch.manual_seed(0)
    return distbo.ModuleProblem(torch.ones(5, dtype=torch.float64), torch.nn.Linear(5, 3).double(), ce, ridge,
                                train=data, val=data, batch_size=4)

def three():
    return 3

def broken():
    return distbo.ModuleProblem(torch.ones(5), torch.nn.Linear(5, 3), ce, ridge, train=torch.ones(4, 5), val=[])

def fails():
    raise RuntimeError("no data here")

NOT_CALLABLE = 1
'''
QUICK = ["--rounds", "4", "--eval-every", "2", "--quiet"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(PROBLEM)
    (tmp_path / "bad_import.py").write_text("import no_such_module_here\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def rows(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def test_run_resume_procs_compare_plot_on_a_problem_file(here, capsys):
    assert main(["run", "--problem", "mine.py:make", *QUICK, "--out", "a"]) == 0
    conf = json.loads((here / "a" / "config.json").read_text())
    assert conf["problem"] == f"{here / 'mine.py'}:make" and conf["task"] == {"name": "custom"}
    assert conf["workers"] == 4 and conf["dtype"] == "float64"
    assert not list((here / "a").glob(".lock-*"))  # a finished run folder holds no lock file
    assert main(["run", "--problem", "mine.py:make", "--rounds", "2", "--eval-every", "2", "--quiet", "--out", "b"]) == 0
    assert main(["run", "--resume", "b", "--rounds", "4", "--quiet"]) == 0
    assert without_time(rows("b")) == without_time(rows("a"))  # resumed = uninterrupted
    assert main(["run", "--problem", "mine.py:make", *QUICK, "--procs", "2", "--out", "p"]) == 0
    assert without_time(rows("p")) == [pytest.approx(r, rel=1e-12) for r in without_time(rows("a"))]  # sum order
    assert main(["compare", "a", "p"]) == 0
    assert main(["plot", "a", "p", "--y", "upper_loss", "-o", "fig.png"]) == 0 and (here / "fig.png").stat().st_size


def test_tune_on_a_problem_file_writes_a_runnable_best_toml(here, capsys):
    assert main(["tune", "--problem", "mine.py:make", "--rounds", "2", "--scales", "0.5,1", "--out", "t", "--quiet"]) == 0
    best = (here / "t" / "best.toml").read_text()
    assert f'problem = "{here / "mine.py"}:make"' in best and "[task]" not in best
    assert main(["run", str(here / "t" / "best.toml"), "--out", "r", "--quiet"]) == 0


BAD = [  # (--problem, needles)
    ("missing.py:make", ["problem", "file not found: missing.py"]),
    ("mine.py:nope", ["problem", "has no function 'nope'", "make"]),
    ("mine.py:NOT_CALLABLE", ["problem", "a int, not a function"]),
    ("mine.py:three", ["problem", "three() returned a value of type int", "distbo.Problem or distbo.ModuleProblem"]),
    ("mine.py:fails", ["problem", "fails() failed: RuntimeError: no data here"]),
    ("mine.py:broken", ["train: got one tensor [4, 5]"]),
    ("bad_import.py:make", ["problem", "failed to import", "ModuleNotFoundError"]),
    ("mine.py", ["problem", "expected FILE.py:FUNCTION"]),
    ("mine.txt:make", ["problem", "not a .py file"]),
]


@pytest.mark.parametrize("spec,needles", BAD, ids=[b[0] for b in BAD])
def test_a_bad_problem_spec_is_one_line(here, capsys, spec, needles):
    assert main(["run", "--problem", spec, *QUICK, "--out", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), (needles, err)
    assert not (here / "o").exists()


@pytest.mark.parametrize("extra,needles", [
    (["--task", "quadratic"], ["problem", "drop the task"]),
    (["--workers", "3"], ["workers", "has 4 workers"]),
])
def test_settings_that_clash_with_a_problem_file_are_one_line(here, capsys, extra, needles):
    assert main(["run", "--problem", "mine.py:make", *extra, *QUICK]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
