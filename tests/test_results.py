"""distbo plot / compare / reproduce on small real runs."""
import csv
import json
from pathlib import Path

import pytest

import distbo
from distbo import plotting, rundirs, suites, tables
from distbo.cli import main
from distbo.results import compare_runs, plot_runs

TASK = {"name": "quadratic", "d_x": 2, "d_y": 3}
ALPHAS = (0.05, 0.2, 0.4)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for a in ALPHAS:
        p = root / f"a{a}"
        distbo.run(TASK, algorithm={"name": "soba", "alpha": a}, workers=2, rounds=30, eval_every=5,
                   dtype="float64", out=p)
        paths.append(str(p))
    return paths


def _rows(p):
    return [json.loads(line) for line in (Path(p) / "metrics.jsonl").read_text().splitlines()]


def test_plot_writes_a_png_with_one_line_per_run(runs, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert main(["plot", *runs, "--x", "rounds", "--y", "hypergrad_norm", "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000

    fig = plot_runs(runs, "rounds", "hypergrad_norm")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == len(runs)
    labels = [line.get_label() for line in lines]
    assert labels == [f"soba, identity, alpha={a}" for a in ALPHAS]  # same algorithm: the differing value
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"  # decades of norm, 0..30 rounds
    for line, p in zip(lines, runs):  # the plotted points are the metric rows (rounds > 0 kept, y > 0)
        rows = _rows(p)
        assert list(line.get_xdata()) == [r["round"] for r in rows]
        assert list(line.get_ydata()) == [r["hypergrad_norm"] for r in rows]


def test_plot_labels_by_algorithm_and_compressor(runs, tmp_path):
    other = tmp_path / "csoba"
    distbo.run(TASK, algorithm="c-soba", compressor="randk:0.5", workers=2, rounds=10, eval_every=5, out=other)
    fig = plot_runs([runs[0], str(other)], "bits_up", "upper_loss")
    # every key that differs between the two runs is named, top-level keys first (the derived steps too)
    alg = [json.loads((Path(p) / "config.json").read_text())["algorithm"] for p in (runs[0], other)]
    steps = [", ".join(f"{k}={a[k]}" for k in ("alpha", "beta", "gamma")) for a in alg]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == [
        f"soba, identity, dtype=float64, rounds=30, {steps[0]}", f"c-soba, randk:0.5, dtype=float32, rounds=10, {steps[1]}"]


def test_auto_scales():
    assert plotting.pick_scale([0, 10, 1e3, 1e6], "auto") == "log"  # zeros left out of a log axis
    assert plotting.pick_scale([0.5, 0.7, 0.9], "auto") == "linear"  # accuracies
    assert plotting.pick_scale([-1, 10, 1e6], "auto") == "linear"
    assert plotting.pick_scale([0.5, 0.7], "log") == "log"


def test_plot_unknown_field_is_one_line_with_suggestion(runs, tmp_path, capsys):
    assert main(["plot", *runs, "--y", "hypergrad_nrm", "-o", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--y" in err and "did you mean 'hypergrad_norm'" in err
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "f.png")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_compare_prints_every_run_and_writes_csv_and_markdown(runs, tmp_path, capsys):
    c, m = tmp_path / "t.csv", tmp_path / "t.md"
    assert main(["compare", *runs, "--target", "hypergrad_norm<=0.5", "--csv", str(c), "--md", str(m)]) == 0
    out = capsys.readouterr().out
    for a, p in zip(ALPHAS, runs):
        assert f"alpha={a}" in out and p in out
    table = list(csv.DictReader(c.open()))
    assert [r["folder"] for r in table] == runs
    for r, p in zip(table, runs):  # the first row that reaches the target, from the metrics themselves
        rows = _rows(p)
        hit = next((x for x in rows if x["hypergrad_norm"] <= 0.5), None)
        assert r["bits_up to hypergrad_norm<=0.5"] == (str(hit["bits_up"]) if hit else "")
        assert r["rounds to hypergrad_norm<=0.5"] == (str(hit["round"]) if hit else "")
        assert int(r["bits_up"]) == rows[-1]["bits_up"] and float(r["hypergrad_norm"]) == rows[-1]["hypergrad_norm"]
        assert r["status"] == "completed"
    md = m.read_text().splitlines()
    assert md[0].startswith("| run | status |") and len(md) == 2 + len(runs)


def test_compare_default_target_is_reached_by_every_run(runs):
    header, body, tgt = compare_runs(runs)
    assert tgt.field == "hypergrad_norm" and tgt.op == "<="
    worst = max(min(r["hypergrad_norm"] for r in _rows(p)) for p in runs)
    assert tgt.value == worst
    col = header.index(f"rounds to {tgt}")
    assert all(row[col] is not None for row in body)


def test_compare_writes_only_where_out_says_and_never_over_a_users_file(runs, capsys, tmp_path):
    parent = Path(runs[0]).parent
    before = sorted(p.name for p in parent.iterdir())
    assert main(["compare", *runs]) == 0  # no -o: the table is printed, nothing is written
    assert sorted(p.name for p in parent.iterdir()) == before
    assert "best level every run reaches" in capsys.readouterr().out
    t = tmp_path / "tables"
    assert main(["compare", *runs, "-o", str(t / "c.md"), "-o", str(t / "c.csv")]) == 0
    assert (t / "c.csv").read_text().count("\n") == 1 + len(runs) and (t / "c.md").is_file()
    assert main(["compare", *runs, "-o", str(t / "c.md")]) == 0  # distbo's own file: replaced
    (t / "c.md").write_text("my notes")  # changed since: no longer distbo's to replace
    capsys.readouterr()
    assert main(["compare", *runs, "-o", str(t / "c.md"), "-o", str(t / "c.csv")]) == 2
    assert "distbo did not write it" in capsys.readouterr().err
    assert (t / "c.md").read_text() == "my notes"


@pytest.mark.parametrize("text", ["hypergrad_norm<0.1", "acc>=high", ">=0.3"])
def test_bad_target_is_one_line(runs, capsys, text):
    assert main(["compare", *runs, "--target", text]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--target" in err


def test_target_parsing():
    t = tables.parse_target("test_acc >= 0.9")
    assert (t.field, t.op, t.value) == ("test_acc", ">=", 0.9) and t.reached(0.9) and not t.reached(0.89)
    assert tables.parse_target("rounds<=5").field == "round"


SUITE = """
description = "two tiny SOBA runs"
target = "hypergrad_norm<=1"
[plot]
x = "rounds"
y = "hypergrad_norm"
[[runs]]
label = "slow"
config = "configs/tiny.toml"
set = ["algorithm.alpha=0.02"]
[[runs]]
label = "fast"
config = "configs/tiny.toml"
[[runs]]
label = "boom"
config = "configs/tiny.toml"
set = ["algorithm.alpha=1e4", "diverge_factor=0"]  # NaN after a few rounds (no stop by growth at round 1)
"""


@pytest.fixture
def suite_repo(tmp_path, monkeypatch):
    (tmp_path / "configs" / "suites").mkdir(parents=True)
    (tmp_path / "configs" / "tiny.toml").write_text(
        'rounds = 12\neval_every = 4\nworkers = 2\n[task]\nname = "quadratic"\nd_x = 2\nd_y = 3\n'
        '[algorithm]\nname = "soba"\nalpha = 0.2\n')
    (tmp_path / "configs" / "suites" / "tiny.toml").write_text(SUITE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_reproduce_writes_figure_table_and_one_folder_per_run(suite_repo, capsys):
    out = suite_repo / "out"
    assert main(["reproduce", "tiny", "--out", str(out), "--quiet"]) == 0
    assert (out / "figure.png").read_bytes().startswith(PNG)
    table = list(csv.DictReader((out / "table.csv").open()))
    assert [r["run"] for r in table] == ["slow", "fast", "boom"]
    assert [r["status"] for r in table] == ["completed", "completed", "diverged"]  # the suite goes on
    assert 0 < int(table[2]["round"]) < 12
    assert "| slow |" in (out / "table.md").read_text()
    for label, alpha in (("slow", 0.02), ("fast", 0.2)):
        conf = json.loads((out / label / "config.json").read_text())
        assert conf["algorithm"]["alpha"] == alpha and conf["rounds"] == 12
        assert [r["round"] for r in _rows(out / label)] == [0, 4, 8, 12]
    log = capsys.readouterr().out
    assert log.count("ran in") == 3 and "diverged at round" in log

    before = (out / "slow" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["reproduce", "tiny", "--out", str(out), "--quiet"]) == 0  # again: reused, not rerun
    assert capsys.readouterr().out.count("up to date") == 3
    assert (out / "slow" / "metrics.jsonl").stat().st_mtime_ns == before


def test_reproduce_list_and_unknown_name(suite_repo, capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "tiny" in listed and "two tiny SOBA runs" in listed and "quickstart" in listed
    assert main(["reproduce", "tinny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'tiny'" in err and "quickstart" in err


def test_bad_suite_is_one_line_before_any_run(suite_repo, capsys):
    bad = SUITE.replace('set = ["algorithm.alpha=0.02"]', 'set = ["algorithm.alpah=0.02"]')
    (suite_repo / "configs" / "suites" / "bad.toml").write_text(bad)
    (suite_repo / "configs" / "suites" / "typo.toml").write_text(SUITE.replace("label =", "lable =", 1))
    for name, needles in (("bad", ["run 'slow'", "algorithm.alpah", "alpha"]),
                          ("typo", ["runs.0.lable", "did you mean 'label'"])):
        assert main(["reproduce", name, "--out", str(suite_repo / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
        assert not (suite_repo / name).exists()


def test_committed_suites_are_valid():
    """Every suite in the repository parses, and its runs' configurations pass the top-level check."""
    from distbo.config import apply_set, check_run, load_toml

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "configs" / "suites").glob("*.toml"))
    assert any(p.stem == "quickstart" for p in files)
    for p in files:
        suite = suites.load_file(p)
        for r in suites.expand(suite):
            raw = load_toml(root / r.config)
            for item in r.set:
                apply_set(raw, item)
            check_run(raw)


def test_run_labels_fall_back_to_folder_names(tmp_path):
    def run(name, alpha, every):
        conf = {"algorithm": {"name": "soba", "alpha": alpha}, "checkpoint_every": every}
        return rundirs.RunDir(tmp_path / name, conf, [])

    runs = [run("one", 0.1, 0), run("two", 0.1, 5), run("three", 0.3, 0)]
    # checkpoint_every does not change results, so it does not tell runs apart; folder names do
    assert rundirs.labels(runs) == ["soba, identity, alpha=0.1 (one)", "soba, identity, alpha=0.1 (two)",
                                    "soba, identity, alpha=0.3"]


def _conf(**over):
    conf = {"algorithm": {"name": "soba", "alpha": 0.1, "beta": 0.3}, "compressor": "identity", "rounds": 300,
            "seed": 0, "task": {"name": "quadratic", "heterogeneity": 1.0, "d_x": 10}}
    for k, v in over.items():
        sec, _, key = k.rpartition("__")
        (conf[sec] if sec else conf)[key] = v
    return conf


def test_labels_name_every_differing_key_when_few(tmp_path):
    # the case of `distbo plot runs/q runs/q0`: heterogeneity (and the step it was run with) changed
    runs = [rundirs.RunDir(tmp_path / "q", _conf(), []),
            rundirs.RunDir(tmp_path / "q0", _conf(task__heterogeneity=0.0, algorithm__alpha=0.05), [])]
    assert rundirs.labels(runs) == ["soba, identity, heterogeneity=1.0, alpha=0.1",
                                    "soba, identity, heterogeneity=0.0, alpha=0.05"]
    # top-level keys first, then task, clients, algorithm; a key only one run has (theta, of ef-soba) goes
    # with its algorithm and is not named
    runs.append(rundirs.RunDir(tmp_path / "ef", _conf(seed=1, algorithm__name="ef-soba", algorithm__theta=1.0,
                                                     compressor="topk:0.1"), []))
    assert rundirs.labels(runs)[2] == "ef-soba, topk:0.1, seed=1, heterogeneity=1.0, alpha=0.1"


def test_labels_keep_the_first_keys_when_many(tmp_path):
    many = {f"task__k{i}": i for i in range(rundirs.LABEL_KEYS + 2)}
    runs = [rundirs.RunDir(tmp_path / "a", _conf(**{k: -1 for k in many}), []),
            rundirs.RunDir(tmp_path / "b", _conf(rounds=10, **many), [])]
    shown = rundirs.labels(runs)[1].split(", ")[2:]
    assert len(shown) == rundirs.LABEL_KEYS and shown[0] == "rounds=10" and shown[1] == "k0=0"
