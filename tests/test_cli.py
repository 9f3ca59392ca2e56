import json
import subprocess
import sys

import pytest

from distbo.cli import main

RUN = ["run", "--task", "quadratic", "--workers", "2", "--rounds", "3", "--quiet"]


def _one_line_error(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0, argv
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("argv,needles", [
    (RUN + ["--algorithm", "sobaa"], ["algorithm.name", "soba"]),
    (["run", "--task", "quadratik", "--rounds", "1"], ["task.name", "quadratic"]),
    (RUN + ["--compressor", "zip:3"], ["compressor", "identity"]),
    (RUN + ["--set", "algorithm.alpha=-1"], ["algorithm.alpha", "greater than 0"]),
    (RUN + ["--set", "algorithm.alhpa=0.1"], ["algorithm.alhpa", "alpha"]),
    (RUN + ["--set", "noequals"], ["--set", "key=value"]),
    (RUN + ["--set", "rounds=many"], ["rounds"]),
    (["run", "/no/such/file.toml"], ["config", "not found"]),
    (RUN + ["--workers", "0"], ["workers"]),
    (RUN + ["--set", "task.heterogeneity=-2"], ["task.heterogeneity"]),
    (["run", "--rounds", "x"], ["--rounds"]),
])
def test_bad_input_is_one_clear_line(capsys, argv, needles, tmp_path):
    _one_line_error(capsys, argv + ["--out", str(tmp_path / "o")] if argv[0] == "run" and "x" not in argv else argv,
                    *needles)


def test_bad_toml_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("rounds = = 3\n")
    _one_line_error(capsys, ["run", str(cfg)], "not valid TOML")


def test_run_writes_the_contract_files(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('rounds = 4\neval_every = 2\nworkers = 3\n[task]\nname = "quadratic"\nd_x = 2\n'
                   '[algorithm]\nname = "soba"\nalpha = 0.05\n')
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--set", "algorithm.beta=0.2", "--out", str(out), "--quiet"]) == 0
    conf = json.loads((out / "config.json").read_text())
    assert conf["algorithm"] == {**conf["algorithm"], "name": "soba", "alpha": 0.05, "beta": 0.2}
    assert conf["task"]["d_x"] == 2 and conf["workers"] == 3
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 2, 4]
    summ = json.loads((out / "summary.json").read_text())
    assert summ["status"] == "completed" and summ["final"] == rows[-1]


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("quadratic", "soba", "identity"):
        assert name in out


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distbo", "run", "--algorithm", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "algorithm.name" in proc.stderr
