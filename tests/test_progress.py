"""A run that got worse says so (issue 26, item 6): the verdict in summary.json, the last printed
line and ``distbo compare``."""
import csv
import json

from distbo import progress
from distbo.cli import main
from distbo.runner import resume


def rows(name, values, every=10):
    return [{"round": every * i, name: v} for i, v in enumerate(values)]


def test_worse_than_start_with_the_numbers():
    p = progress.assess(rows("hypergrad_norm", [4.0, 1.0, 2.0, 5.0, 9.0]))
    assert p["verdict"] == "worse than start"
    assert (p["metric"], p["start"], p["end"], p["best"], p["best_round"]) == ("hypergrad_norm", 4.0, 9.0, 1.0, 10)
    assert progress.line(p) == "hypergrad_norm 4 -> 9 (best 1 at round 10): worse than start"


def test_accuracy_is_higher_is_better_and_preferred_over_the_loss():
    r = [{"round": i, "test_acc": a, "upper_loss": 3.0 - i} for i, a in enumerate([0.5, 0.7, 0.4])]
    assert progress.assess(r)["verdict"] == "worse than start"
    r[-1]["test_acc"] = 0.8
    assert progress.assess(r)["verdict"] == "improved"


def test_a_limit_cycle_below_its_start_is_no_progress():
    # falls from 13.9, then circles between 0.5 and 1.9 with no new best in the last quarter
    cycle = [13.9, 5.0, 2.0, 0.5, 1.0, 1.9, 1.0, 0.5, 1.0, 1.9, 1.0, 0.6, 1.2, 1.9, 1.0, 0.7]
    p = progress.assess(rows("hypergrad_norm", cycle))
    assert p["verdict"] == "no progress (oscillates)" and p["end"] < p["start"]
    assert p["tail"] == {"from_round": 120, "min": 0.7, "max": 1.9}
    assert "between 0.7 and 1.9 from round 120, not beating its earlier best" in progress.line(p)
    cycle[-4] = 0.49  # a new best by 2% is no progress either
    assert progress.assess(rows("hypergrad_norm", cycle))["verdict"] == "no progress (oscillates)"
    cycle[-4] = 0.3
    assert progress.assess(rows("hypergrad_norm", cycle))["verdict"] == "improved"


def test_still_improving_at_a_floor_or_with_small_swings_is_improved():
    falling = [4.0 / 2 ** i for i in range(16)]
    assert progress.assess(rows("hypergrad_norm", falling))["verdict"] == "improved"
    floor = [4.0, 1e-3, 1e-5] + [1e-6, 3e-6] * 6  # float rounding noise at 1e-6 of the start
    assert progress.assess(rows("hypergrad_norm", floor))["verdict"] == "improved"
    plateau = [4.0, 1.0] + [0.40, 0.45] * 6  # no new best, but no swing by 2x
    assert progress.assess(rows("hypergrad_norm", plateau))["verdict"] == "improved"


def test_no_progress_and_too_few_rows():
    assert progress.assess(rows("test_acc", [0.1, 0.3, 0.1]))["verdict"] == "no progress"
    assert progress.assess(rows("upper_loss", [1.0])) is None
    assert progress.line(None).startswith("progress: fewer than two")


def test_a_run_whose_step_is_too_large_says_so(tmp_path, capsys):
    """SOBA with alpha = 1 on a small quadratic grows 4.1 -> 90 in 40 rounds without reaching the
    divergence stop: status completed, exit 0, and the verdict everywhere."""
    out = tmp_path / "big"
    code = main(["run", "--task", "quadratic", "--set", "task.d_x=2", "--set", "task.d_y=3", "--workers", "2",
                 "--rounds", "40", "--eval-every", "2", "--set", "algorithm.alpha=1.0", "--set", "dtype=float64",
                 "--out", str(out), "--quiet"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("hypergrad_norm 4.135 -> ") and last.endswith(": worse than start")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    p = summary["progress"]
    assert p["verdict"] == "worse than start" and p["end"] > 10 * p["start"] and p["best"] < p["start"]
    assert resume(out).extra["progress"]["verdict"] == "worse than start"  # the Python result too
    assert main(["compare", str(out), "--csv", str(tmp_path / "c.csv")]) == 0
    header, row = csv.reader((tmp_path / "c.csv").read_text().splitlines())
    assert header[:3] == ["run", "status", "progress"] and row[1:3] == ["completed", "worse than start"]
