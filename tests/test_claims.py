"""distbo reproduce claims: grid suites, --quick, and the claim analyses (tables -> verdicts)."""
import json
import math
from pathlib import Path

import pytest
import torch

from distbo import rundirs, suites
from distbo.claims import Table, compression, federated, pruning
from distbo.claims.stats import exponents, loglog_fit, mean, std
from distbo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, name, rows, status="completed"):
    return rundirs.RunDir(tmp_path / name, {"algorithm": {"name": "x"}}, rows, {"status": status})


class Tagged:  # what the analyses read of a SuiteRun
    def __init__(self, **tags):
        self.tags = tags


# ----- suites: grids and --quick -----
GRID_SUITE = """
description = "a grid"
[quick]
max_rounds = 3
first = {seed = 1}
set = ["workers=2"]
[[runs]]
label = "plain"
config = "c.toml"
[[grids]]
config = "c.toml"
tags = {task = "q"}
set = ["dtype=\\"float64\\""]
[grids.axes]
method.soba = []
method."ef top" = ["algorithm.name=ef-soba", "compressor=topk:0.5"]
seed = ["seed=0", "seed=1"]
"""


def test_grid_expands_to_the_product_of_its_axes(tmp_path):
    (tmp_path / "s.toml").write_text(GRID_SUITE)
    suite = suites.load_file(tmp_path / "s.toml")
    runs = suites.expand(suite)
    assert [r.label for r in runs] == ["plain", "q soba seed=0", "q soba seed=1", "q ef top seed=0", "q ef top seed=1"]
    assert runs[4].tags == {"task": "q", "method": "ef top", "seed": "1"}
    assert runs[4].set == ['dtype="float64"', "algorithm.name=ef-soba", "compressor=topk:0.5", "seed=1"]
    assert [r.label for r in suites.expand(suite, quick=True)] == ["plain", "q soba seed=0", "q ef top seed=0"]


def test_quick_scales_rounds_and_keeps_evaluations():
    quick = suites.Quick(scale=0.1, max_rounds=20, set=["workers=2"])
    raw = {"rounds": 1000, "eval_every": 50}
    suites.scale_down(raw, quick)
    assert raw == {"rounds": 20, "eval_every": 5, "workers": 2}
    raw = {"rounds": 30, "eval_every": 1}
    suites.scale_down(raw, quick)
    assert raw["rounds"] == 3 and raw["eval_every"] == 1


def test_a_suite_needs_runs_and_a_known_analysis(tmp_path):
    (tmp_path / "empty.toml").write_text('description = "nothing"\n')
    (tmp_path / "bad.toml").write_text('analysis = "compresion"\n' + GRID_SUITE)
    with pytest.raises(Exception, match="needs"):
        suites.load_file(tmp_path / "empty.toml")
    with pytest.raises(Exception, match="did you mean 'compression'"):
        suites.load_file(tmp_path / "bad.toml")


# ----- statistics -----
def test_loglog_fit_and_exponents_recover_power_laws():
    q = [10, 20, 40, 80, 160]
    c = [1, 2, 4, 8]
    pts = [(qq, cc, 3.0 * qq ** -0.5 * cc ** -1.0) for qq in q for cc in c]
    slope, icpt = loglog_fit([a * b for a, b, _ in pts], [m for *_, m in pts])
    a, b = exponents([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts])
    assert a == pytest.approx(-0.5) and b == pytest.approx(-1.0)
    assert -1.0 < slope < -0.5  # one line through both exponents lies between them
    assert loglog_fit([5, 5], [1, 2]) is None and exponents([1, 2], [3, 3], [1, 1]) is None
    assert mean([1, None, 3]) == 2 and std([1, 3]) == pytest.approx(math.sqrt(2)) and std([1]) is None


# ----- claim 1 -----
def _acc_rows(bits_acc):
    return [{"round": i, "bits_up": b, "test_acc": a} for i, (b, a) in enumerate(bits_acc)]


def test_claim1_table_measures_bits_to_the_reference_accuracy(tmp_path):
    ref = _run(tmp_path, "soba", _acc_rows([(0, 0.1), (100, 0.85), (200, 0.89), (300, 0.90)]))
    ef = _run(tmp_path, "ef", _acc_rows([(0, 0.1), (5, 0.80), (10, 0.895), (15, 0.893)]))
    cs = _run(tmp_path, "c", _acc_rows([(0, 0.1), (10, 0.5), (20, 0.6)]))
    runs = [Tagged(task="t", variant=v, seed="0") for v in ("soba", "ef", "c")]
    t = compression.table(runs, [ref, ef, cs])
    rows = {r["variant"]: r for r in t.records()}
    # target 0.90 - 0.01 = 0.89: SOBA meets it at 200 bits, ef at 10 bits -> 20x; c never
    assert rows["soba"]["reduction (mean)"] == 1.0
    assert rows["ef"]["reduction (mean)"] == pytest.approx(20.0) and rows["ef"]["bits_up to target (mean)"] == 10
    assert rows["ef"]["acc change pt (mean)"] == pytest.approx(-0.7)
    assert rows["c"]["reached"] == 0 and rows["c"]["reduction (mean)"] is None


def _claim1_table(red, change, reached=3):
    rows = [["hyperclean", "soba", 3, 3, 0, 1e8, 1.0, 1.0, 1.0, 0.9, 0.0, 0.0],
            ["hyperclean", "ef-soba topk", 3, reached, 0, 1e7, red, red, red, 0.9, change, 0.1]]
    return Table("claim1", "t", compression.HEADER, rows)


def test_claim1_verdict_follows_the_numbers():
    yes = compression.verdict(_claim1_table(11.0, -0.3))
    assert "holds:" in yes and "1 of 1" in yes and "ef-soba topk on hyperclean 11.0x (-0.3 pt)" in yes
    few = compression.verdict(_claim1_table(3.0, -0.3))
    assert "does not hold" in few and "0 of 1" in few and "largest reduction ef-soba topk on hyperclean 3.0x" in few
    lossy = compression.verdict(_claim1_table(11.0, -2.5))
    assert "does not hold" in lossy and "(-2.5 pt)" in lossy
    never = compression.verdict(_claim1_table(None, -5.0, reached=0))
    assert "never reach the target: ef-soba topk on hyperclean" in never
    assert compression.verdict(_claim1_table(11.0, -0.3), min_factor=20) != yes


# ----- claim 2 -----
def _regime(ratio_het, ratio_iid=3.0):
    header = ["task", "heterogeneity", "tau", "heterogeneous", "aggitd rounds", "fednest rounds", "winner",
              "fednest / aggitd rounds"]
    rows = [["quadratic", "0.0", "5", False, 100, 300, "aggitd", ratio_iid],
            ["quadratic", "1.0", "5", True, 100, None if ratio_het is None else 100 * ratio_het,
             "aggitd" if ratio_het and ratio_het > 1 else "fednest", ratio_het]]
    return Table("claim2", "t", header, rows)


def test_claim2_verdict_follows_the_numbers():
    yes = federated.verdict(_regime(4.0))
    assert "holds:" in yes and "2 of 2 cells (1 of 1 heterogeneous)" in yes and "aggitd 2" in yes
    no = federated.verdict(_regime(0.5))
    assert "does not hold" in no and "1 of 2 cells (0 of 1 heterogeneous)" in no
    assert "quadratic h=1.0 tau=5 (0.5x)" in no and "fednest 1" in no
    never = federated.verdict(_regime(None))
    assert "AggITD never reaches it" in never


def test_claim2_regime_map_from_runs(tmp_path):
    def rows(norms, per):
        return [{"round": i, "comm_rounds": i * per, "bits_up": 64 * i * per, "hypergrad_norm": n}
                for i, n in enumerate(norms)]

    runs = [Tagged(task="quadratic", heterogeneity="1.0", steps="5", method="aggitd"),
            Tagged(task="quadratic", heterogeneity="1.0", steps="5", method="fednest"),
            Tagged(task="quadratic", heterogeneity="1.0", method="soba")]
    dirs = [_run(tmp_path, "a", rows([10, 5, 0.5], 11)), _run(tmp_path, "f", rows([10, 5, 2, 0.9, 0.1], 11)),
            _run(tmp_path, "s", rows([10] * 30 + [0.9], 1))]
    per_run = federated.run_table(runs, dirs, {"quadratic": "hypergrad_norm<=10%"})
    assert [r["rounds to target"] for r in per_run.records()] == [22, 33, 30]
    (cell,) = federated.regime_table(per_run, ["0.0"]).records()
    assert cell["winner"] == "aggitd" and cell["fednest / aggitd rounds"] == pytest.approx(1.5)
    assert cell["soba rounds"] == 30 and cell["heterogeneous"] is True


# ----- claim 3 -----
def test_claim3_points_are_the_minimum_so_far_and_the_fit_finds_the_slope(tmp_path):
    runs, dirs = [], []
    for c in (1, 2, 4, 8):
        rows = [{"round": t, "C_x": c, "hypergrad_norm": math.sqrt((c * t) ** -0.5) if t else 9.0}
                for t in range(0, 1001, 10)]
        rows[30]["hypergrad_norm"] = 100.0  # a bad round does not raise the minimum so far
        runs.append(Tagged(task="quadratic", setting="identical", method="rabo"))
        dirs.append(_run(tmp_path, f"c{c}", rows))
    pts = pruning.points_table(runs, dirs, {}, q_points=5, q_min=10)
    recs = pts.records()
    assert {r["Q"] for r in recs} == {10, 30, 100, 320, 1000}
    assert all(r["measure"] == pytest.approx((r["C_x* Q"]) ** -0.5) for r in recs)
    (fit,) = pruning.fit_table(pts, {}).records()
    assert fit["slope vs C_x* Q"] == pytest.approx(-0.5) and fit["holds"] is True and fit["rate"] == "as claimed"
    assert fit["exponent of Q"] == pytest.approx(-0.5) and fit["exponent of C_x*"] == pytest.approx(-0.5)


def _fits(slope, c_exponent=None):
    c = slope if c_exponent is None else c_exponent
    return Table("claim3", "t", pruning.FIT_HEADER,
                 [["quadratic", "identical", "rabo", "m", "1/2/4/8", 24, slope, slope, c, None, None]])


def test_claim3_verdict_follows_the_numbers():
    yes = pruning.verdict(_fits(-0.52))
    assert "holds:" in yes and "1 of 1 settings" in yes and "in 1 [" in yes and "as claimed" in yes
    fast = pruning.verdict(_fits(-1.0))  # a bound: falling faster supports it
    assert "holds:" in fast and "within 0.15 of -1/2 in 0" in fast and "-1.00 (Q -1.00, C_x* -1.00) faster" in fast
    flat = pruning.verdict(_fits(-0.1))
    assert "does not hold" in flat and "0 of 1" in flat and "quadratic identical rabo -0.10" in flat
    assert "holds" in pruning.verdict(_fits(-0.1), tol=0.5)
    no_c = pruning.verdict(_fits(-0.5, c_exponent=-0.05))  # the rate does not follow C_x*
    assert "does not hold" in no_c


def test_rabo_hypergrad_proxy_is_the_exact_hypergradient_at_y_star_v_star():
    import distbo
    from distbo.runner import build, resolve

    x = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r, problem = resolve({"task": {"name": "quadratic", "d_x": 4, "d_y": 6}, "algorithm": "rabo", "workers": 4,
                          "dtype": "float64"})
    alg, _ = build(r, problem)
    y, v = problem.y_star(x), problem.v_star(x)
    state = alg.init()._replace(x=x, y=y, v=v)
    assert alg.hypergrad_proxy(state) == pytest.approx(float(problem.hypergrad(x).norm()), rel=1e-9)
    res = distbo.run({"name": "quadratic", "d_x": 4, "d_y": 6}, algorithm="rabo", workers=4, rounds=1, dtype="float64")
    assert "hypergrad_proxy" in res.metrics[-1]


# ----- the committed suites, end to end -----
@pytest.mark.slow
def test_reproduce_claims_quick_runs_every_claim(tmp_path, capsys):
    out = tmp_path / "claims"
    assert main(["reproduce", "claims", "--quick", "--quiet", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    for n, sub in enumerate(("claims-compression", "claims-federated", "claims-pruning"), 1):
        verdict = (out / sub / "verdicts.txt").read_text().strip()
        assert verdict.startswith(f"Claim {n} (") and len(verdict.splitlines()) == 1 and verdict in log
        assert (out / sub / f"claim{n}.png").read_bytes().startswith(b"\x89PNG")
        assert f"suite {sub} (quick):" in log and (out / sub / f"claim{n}.csv").read_text().startswith("task,")
    report = (out / "report.md").read_text()
    assert "claims-pruning/claim3.png" in report and report.count("**Verdict.**") == 3
    conf = json.loads((out / "claims-compression" / "hyperclean-soba-seed-0" / "config.json").read_text())
    assert conf["rounds"] == 4 and conf["threads"] == 1


def test_claim3_tail_statistic_is_the_mean_over_the_second_half():
    series = [(t, math.sqrt(t)) for t in range(1, 11)]  # squared values 1..10
    assert pruning.summarise(series, 10, "tail") == pytest.approx((6 + 7 + 8 + 9 + 10) / 5)
    assert pruning.summarise(series, 4, "min") == 1.0


TINY = """
description = "two tiny SOBA runs"
[plot]
x = "round"
[[grids]]
config = "tiny.toml"
[grids.axes]
alpha = ["algorithm.alpha=0.05", "algorithm.alpha=0.2"]
"""


def test_no_run_draws_from_the_finished_runs_only(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs" / "suites").mkdir(parents=True)
    (tmp_path / "tiny.toml").write_text('rounds = 8\neval_every = 4\nworkers = 2\n[task]\nname = "quadratic"\n'
                                        'd_x = 2\nd_y = 3\n[algorithm]\nname = "soba"\n')
    (tmp_path / "configs" / "suites" / "tiny.toml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["reproduce", "tiny", "--no-run", "--out", str(out)]) == 2  # nothing finished yet
    assert "--no-run" in capsys.readouterr().err
    assert main(["reproduce", "tiny", "--quiet", "--out", str(out)]) == 0
    (out / "alpha-0.2" / "summary.json").unlink()  # as if it had been killed
    before = (out / "alpha-0.05" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["reproduce", "tiny", "--no-run", "--out", str(out)]) == 0
    assert "1 of 2 runs finished; left out: alpha=0.2" in (out / "report.md").read_text()
    assert "| alpha=0.05 |" in (out / "table.md").read_text() and "alpha=0.2 |" not in (out / "table.md").read_text()
    assert (out / "alpha-0.05" / "metrics.jsonl").stat().st_mtime_ns == before
