"""Bad configurations: each is ONE line on stderr naming the field and what is allowed, exit code 2,
and nothing is written (the check happens before any work starts)."""
import pytest

from distbo.cli import main
from distbo.config import check_run
from distbo.errors import ConfigError

RUN = ["run", "--task", "quadratic", "--workers", "2", "--rounds", "2", "--quiet"]

CASES = [
    # top level: unknown keys (with a suggestion), wrong types, ranges
    (["--set", "roudns=3"], ["roudns", "did you mean 'rounds'"]),
    (["--set", "evalevery=3"], ["evalevery", "eval_every"]),
    (["--set", "workers=true"], ["workers", "true/false"]),
    (["--set", 'workers="8"'], ["workers", "not a string"]),
    (["--set", "workers=2.5"], ["workers", "integer"]),
    (["--set", "rounds=-1"], ["rounds", "greater than or equal to 0"]),
    (["--eval-every", "0"], ["eval_every", "greater than 0"]),
    (["--set", "checkpoint_every=-5"], ["checkpoint_every", "greater than or equal to 0"]),
    (["--set", "checkpoint_every=1.5"], ["checkpoint_every", "integer"]),
    (["--seed", "-1"], ["seed", "greater than or equal to 0"]),
    (["--procs", "0"], ["procs", "greater than 0"]),
    (["--set", "dtype=float16"], ["dtype", "'float32', 'float64'"]),
    (["--set", "rounds.x=3"], ["rounds", "not a section"]),
    (["--set", "task=3"], ["task", "dictionary"]),
    # clients.: nested keys get their own suggestions and allowed values
    (["--set", "clients.fractoin=0.5"], ["clients.fractoin", "did you mean 'fraction'", "policy, resources"]),
    (["--set", "clients.fraction=0"], ["clients.fraction", "greater than 0"]),
    (["--set", "clients.fraction=1.5"], ["clients.fraction", "less than or equal to 1"]),
    (["--set", "clients.resources=[0.5, 2]"], ["clients.resources", "(0, 1]"]),
    (["--set", "clients.resources=[]"], ["clients.resources", "at least 1"]),
    (["--set", "clients.resources=[true]"], ["clients.resources", "true/false"]),
    (["--set", "clients.policy=roll"], ["clients.policy", "'rolling'"]),
    (["--set", "clients=3"], ["clients", "dictionary"]),
    # compressor specs
    (["--compressor", "topk:abc"], ["compressor", "'abc'", "not a number"]),
    (["--compressor", "topk:-1"], ["compressor", "-1", "> 0"]),
    (["--compressor", "zip"], ["compressor", "unknown compressor 'zip'", "topk"]),
    (["--compressor", "topk"], ["compressor", "topk:0.05"]),
    (["--compressor", "identity:3"], ["compressor", "no argument"]),
    (["--set", "compressor=3"], ["compressor", "valid string"]),
    (["--set", "downlink=qsgd:x"], ["downlink", "qsgd"]),
    # algorithm and task sections
    (["--set", 'algorithm.alpha="fast"'], ["algorithm.alpha", "not a string", "number"]),
    (["--set", "algorithm.schedule=linear"], ["algorithm.schedule", "'constant', 'sqrt'"]),
    (["--set", "algorithm.beta=0"], ["algorithm.beta", "greater than 0"]),
    (["--set", "task.d_x=0"], ["task.d_x", "greater than 0"]),
    (["--set", "task.noise=true"], ["task.noise", "true/false"]),
    (["--set", "task.heterogenity=1"], ["task.heterogenity", "did you mean 'heterogeneity'"]),
    (["--set", "task.name=quad"], ["task.name", "quadratic"]),
]


def _one_line(capsys, argv, needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, code, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("extra,needles", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_config_is_one_line_and_nothing_is_written(capsys, tmp_path, extra, needles):
    out = tmp_path / "o"
    _one_line(capsys, RUN + extra + ["--out", str(out)], needles)
    assert not out.exists()


@pytest.mark.parametrize("toml,needles", [
    ("evla_every = 3\n", ["evla_every", "did you mean 'eval_every'"]),
    ("[clients]\npolcy = 'static'\n", ["clients.polcy", "did you mean 'policy'"]),
    ("[algoritm]\nalpha = 0.1\n", ["algoritm", "did you mean 'algorithm'"]),
    ("workers = 'four'\n", ["workers", "not a string"]),
    ("[task]\nname = 'quadratic'\nd_y = -3\n", ["task.d_y", "greater than 0"]),
])
def test_bad_toml_file_is_one_line(capsys, tmp_path, toml, needles):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    _one_line(capsys, ["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"], needles)


def test_good_values_still_pass_and_ints_are_accepted_for_floats():
    run = check_run({"workers": 3, "rounds": 0, "clients": {"fraction": 1, "resources": [1, 0.5]}})
    assert run.clients.fraction == 1.0 and run.clients.resources == [1.0, 0.5] and run.workers == 3


def test_config_error_carries_the_field():
    with pytest.raises(ConfigError) as exc:
        check_run({"clients": {"fraction": 2}})
    assert exc.value.field == "clients.fraction"


@pytest.mark.parametrize("argv,needles", [
    (["run", "--resume", "/no/such/run"], ["--resume", "not a run folder"]),
])
def test_bad_resume_is_one_line(capsys, argv, needles):
    _one_line(capsys, argv, needles)


def test_resume_refuses_other_flags(capsys, tmp_path):
    _one_line(capsys, ["run", "--resume", str(tmp_path), "--rounds", "5", "--set", "seed=1"],
              ["--resume", "cannot change seed", "only rounds, eval_every, until, timeout, threads"])
    _one_line(capsys, ["run", "--resume", str(tmp_path), "--workers", "5", "--overwrite"],
              ["--resume", "drop --workers, --overwrite"])


@pytest.mark.parametrize("algorithm,setting", [("soba", "clients.fraction=0.5"), ("ef-soba", "clients.resources=[0.5]"),
                                               ("aggitd", "clients.policy=\"static\"")])
def test_client_settings_an_algorithm_would_ignore_are_refused(algorithm, setting):
    import distbo

    with pytest.raises(distbo.ConfigError) as exc:
        distbo.run("quadratic", algorithm=algorithm, rounds=1, overrides=[setting])
    assert exc.value.field == setting.split("=")[0] and "would ignore" in str(exc.value)
