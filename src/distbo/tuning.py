"""``distbo tune``: a short search over a step-size scale (and theta) by successive halving.

The candidates multiply every step size of the resolved configuration (alpha, beta, gamma, those
the algorithm has; the values config.json records, so derived defaults are scaled too) by a factor
on a log grid (default 1/8 .. 8), crossed with a few moving-average weights theta where the
algorithm has one (its value /3, x1, x3 and 1, within (0, 1]). Successive halving on a round
budget B with a factor 3: with n candidates there are K = ceil(log3 n) rungs; rung i runs the
survivors for B / 3^(K-1-i) rounds from the start (each in its own run folder) and keeps the best
third; the last rung runs at B and its best candidate wins.

A trial is scored by ``metric`` at its last evaluation (default: hypergrad_norm if the task reports
it, else upper_loss; minimised, a field ending in 'acc' maximised), or with ``until`` by the round
at which it meets the target (then, for those that do not, by how close they end). A diverged
trial scores worst. The winner's configuration, with the user's number of rounds, is written as
DIR/best.toml, which ``distbo run DIR/best.toml`` runs; the table goes to DIR/tune.csv and tune.md.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cli import _config_args, command
from .config import DEFAULT_NAMES, RunConfig, check_run
from .errors import ConfigError, DivergenceError, unknown
from .registry import validate
from .until import parse_until

SCALES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
STEP_KEYS = ("alpha", "beta", "gamma")
ETA = 3  # successive halving keeps the best 1/ETA of each rung
DIVERGED = (2, 0.0)  # the worst score


@dataclass
class Candidate:
    scale: float
    theta: float | None
    algorithm: dict[str, Any]  # the [algorithm] section this candidate runs
    scores: list[tuple[int, float]] = field(default_factory=list)  # one per rung it ran
    shown: list[str] = field(default_factory=list)  # what the table prints per rung
    folders: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"s{self.scale:g}" + (f"-theta{self.theta:.3g}" if self.theta is not None else "")


@dataclass
class TuneResult:
    best: dict[str, Any]  # the winning configuration (what best.toml holds)
    winner: Candidate
    candidates: list[Candidate]
    header: list[str]
    rows: list[list[Any]]
    out: Path
    score: str  # what the trials were scored by


def tune(task: Any = "quadratic", algorithm: str | dict = "soba", *, out: str | Path, metric: str | None = None,
         until: str | None = None, budget: int | None = None, scales: tuple[float, ...] = SCALES,
         thetas: tuple[float, ...] | None = None, overrides: list[str] | None = None,
         log: Callable[[str], None] | None = None, **top: Any) -> TuneResult:
    """Tune the step sizes (and theta) of one configuration; keywords as in ``distbo.run``.

    ``task`` is a task name, a dict or a user ``distbo.Problem``; ``budget`` the rounds of the last
    rung (default: the configuration's rounds); ``thetas`` the theta grid (default: around its value).
    """
    from .runner import python_raw

    raw, problem = python_raw(task, algorithm, overrides, top)
    if until is not None:
        raw["until"] = until
    return _search(raw, problem, Path(out), metric, budget, scales, thetas, log or (lambda s: None))


def _search(raw, problem, out, metric, budget, scales, thetas, log) -> TuneResult:
    # the configuration as a run resolves it (derived defaults included), stopped at its round-0 evaluation
    probe = _run({**raw, "procs": 1, "until": "round>=0", "checkpoint_every": 0}, problem, None)
    base, first = probe.config, probe.metrics[0]
    if raw.get("until") is not None:
        from .stopping import RunControl

        RunControl(raw["until"], 0, (probe.x, probe.y), _Solo()).after_eval(first, first)  # a known field?
    metric = metric or ("hypergrad_norm" if "hypergrad_norm" in first else "upper_loss")
    if metric not in first:
        raise unknown("--metric", metric, [k for k, v in first.items() if isinstance(v, (int, float))], "field")
    rounds_wanted = probe.config["rounds"]
    budget = budget if budget is not None else rounds_wanted
    if budget < 1:
        raise ConfigError("--budget", f"must be a number of rounds >= 1, got {budget}")
    cands = _candidates(base["algorithm"], raw, scales, thetas)
    rungs = max(1, math.ceil(math.log(len(cands), ETA) - 1e-9))
    alive = cands
    for i in range(rungs):
        rounds = max(1, round(budget / ETA ** (rungs - 1 - i)))
        log(f"rung {i + 1}/{rungs}: {len(alive)} candidates x {rounds} rounds")
        for c in alive:
            trial = {**raw, "algorithm": c.algorithm, "rounds": rounds}
            folder = out / "trials" / f"r{i + 1}-{c.label}"
            c.folders.append(folder)
            score, shown = _score(trial, problem, folder, metric)
            c.scores.append(score)
            c.shown.append(shown)
        alive = sorted(alive, key=lambda c: c.scores[-1])  # stable: ties keep the grid order
        alive = alive[: max(1, math.ceil(len(alive) / ETA))] if i < rungs - 1 else alive
    winner = alive[0]
    header, rows = _table(cands, rungs, budget)
    _write_tables(out, header, rows)
    if winner.scores[-1] == DIVERGED:
        raise DivergenceError(f"every candidate diverged within {budget} rounds; try smaller --scales "
                              f"(table in {out / 'tune.csv'})")
    best = _best_config(winner.folders[-1], rounds_wanted, problem is not None)
    score = (f"rounds to {raw['until']} (then its field at the end)" if raw.get("until")
             else f"{metric} at the last evaluation, {'higher' if metric.endswith('acc') else 'lower'} is better")
    note = (f"distbo tune: the best of {len(cands)} candidates at {budget} rounds by {score}: step sizes "
            f"x{winner.scale:g}" + (f", theta {winner.theta:.3g}" if winner.theta is not None else ""))
    (out / "best.toml").write_text(to_toml(best, note))
    return TuneResult(best, winner, cands, header, rows, out, score)


class _Solo:
    """A one-process communicator stand-in for checks outside a run."""

    is_main, world_size = True, 1


def _run(raw: dict[str, Any], problem, out: Path | None):
    from .runner import run

    rest = {k: v for k, v in raw.items() if k not in ("task", "algorithm")}
    task = problem if problem is not None else raw.get("task", DEFAULT_NAMES["task"])
    # a trial's folder belongs to tune: a second tune into the same DIR replaces it
    return run(task, raw.get("algorithm", DEFAULT_NAMES["algorithm"]), out=out, overwrite=out is not None, **rest)


def _candidates(resolved: dict[str, Any], raw: dict[str, Any], scales, thetas) -> list[Candidate]:
    """The grid, in order; candidates outside the schema's ranges are left out."""
    from .algorithms import ALGORITHMS

    user = raw.get("algorithm", DEFAULT_NAMES["algorithm"])
    user = {"name": user} if isinstance(user, str) else dict(user)
    steps = {k: resolved[k] for k in STEP_KEYS if isinstance(resolved.get(k), (int, float))}
    if not steps:
        raise ConfigError("algorithm", f"{resolved['name']} has no step size ({', '.join(STEP_KEYS)}) to tune")
    theta0 = resolved.get("theta")
    if thetas is None and isinstance(theta0, (int, float)):
        thetas = tuple(sorted({min(1.0, t) for t in (theta0 / 3, theta0, theta0 * 3, 1.0)}))
    params = ALGORITHMS.get(resolved["name"], "algorithm.name").params
    _check_thetas(params, resolved, thetas)
    grid = [(s, t) for s in scales for t in (thetas if "theta" in resolved and thetas else (None,))]
    out = []
    for s, t in grid:
        alg = {**user, **{k: v * s for k, v in steps.items()}, **({"theta": t} if t is not None else {})}
        try:
            validate(params, {k: v for k, v in {**resolved, **alg}.items() if k != "name"}, "algorithm")
        except ConfigError:
            continue
        out.append(Candidate(s, t, alg))
    if not out:
        raise ConfigError("--scales", "every candidate is outside the ranges of the algorithm's step sizes")
    return out


def _check_thetas(params, resolved: dict[str, Any], thetas) -> None:
    """--thetas only for an algorithm with a theta, and every value in theta's range (none dropped)."""
    if not thetas:
        return
    if "theta" not in resolved:
        raise ConfigError("--thetas", f"{resolved['name']} has no theta (moving-average weight); drop --thetas")
    rest = {k: v for k, v in resolved.items() if k != "name"}
    for t in thetas:
        try:
            validate(params, {**rest, "theta": t}, "algorithm")
        except ConfigError as exc:
            raise ConfigError("--thetas", f"{t:g} is not a valid theta ({exc.message})") from None


def _score(trial: dict[str, Any], problem, folder: Path, metric: str) -> tuple[tuple[int, float], str]:
    """(score, lower is better; what the table shows) of one trial run."""
    from .launch import LaunchError

    try:
        result = _run(trial, problem, folder)
    except DivergenceError:
        return DIVERGED, "diverged"
    except LaunchError as exc:
        if exc.code == 3:
            return DIVERGED, "diverged"
        raise
    target = result.extra.get("target")
    maximise = metric.endswith("acc")
    if target is not None:  # reached: by the round; not reached: by how close it ends
        if target["reached"]:
            return (0, float(target["round"])), f"reached@{target['round']}"
        goal = parse_until(target["until"])
        metric, maximise = goal.field, goal.op == ">="
    value = result.metrics[-1].get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return DIVERGED, "nan"
    return (1 if target is not None else 0, float(-value if maximise else value)), f"{value:.4g}"


def _table(cands: list[Candidate], rungs: int, budget: int):
    """One row per candidate, the last rung's best first; a rung's cell is its score there."""
    header = ["candidate", "scale", "theta", *STEP_KEYS]
    header += [f"rung {i + 1} ({max(1, round(budget / ETA ** (rungs - 1 - i)))} r)" for i in range(rungs)]
    order = sorted(cands, key=lambda c: (-len(c.scores), c.scores[-1]))
    rows = [[c.label, c.scale, c.theta, *(c.algorithm.get(k) for k in STEP_KEYS),
             *(c.shown + ["-"] * (rungs - len(c.shown)))] for c in order]
    return header, rows


def _write_tables(out: Path, header, rows) -> None:
    from .tables import to_csv, to_markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.csv").write_text(to_csv(header, rows))
    (out / "tune.md").write_text(to_markdown(header, rows, left=1))


def _best_config(folder: Path, rounds: int, custom: bool) -> dict[str, Any]:
    """The winner's resolved configuration (its config.json), with the user's rounds."""
    conf = json.loads((folder / "config.json").read_text())
    custom = custom or conf.get("task", {}).get("name") == "custom"  # problem = "FILE.py:FUNCTION"
    best = {k: v for k, v in conf.items() if k in RunConfig.model_fields and not (custom and k == "task")}
    best["rounds"] = rounds
    return best


# ----- TOML out (the standard library reads TOML but does not write it) -----
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(conf: dict[str, Any], comment: str = "") -> str:
    """A configuration as TOML: top-level values, then one [section] per dict; unset (None) values
    are left out, so they keep their defaults."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in conf.items() if v is not None and not isinstance(v, dict)]
    for k, sec in conf.items():
        if isinstance(sec, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in sec.items() if vv is not None]
    return "\n".join(lines) + "\n"


# ----- the command -----
def _tune_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--out", help="folder for best.toml, tune.csv, tune.md and trials/ (default: runs/tune-<time>)")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.add_argument("--metric", help="score field (default: hypergrad_norm if present, else upper_loss; "
                   "minimised, '*acc' maximised); with --until the score is the rounds to the target")
    p.add_argument("--budget", type=int, help="rounds of the last rung (default: the configuration's rounds)")
    p.add_argument("--scales", help=f"comma-separated step-size factors (default: {','.join(f'{s:g}' for s in SCALES)})")
    p.add_argument("--thetas", help="comma-separated theta values (default: theta/3, theta, 3 theta, 1)")


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(flag, f"expected comma-separated numbers, got '{text}'") from None
    if not vals or any(not v > 0 for v in vals):
        raise ConfigError(flag, f"expected positive numbers, got '{text}'")
    return vals


@command("tune", "search a step-size scale (and theta) by successive halving; writes DIR/best.toml", _tune_args)
def cmd_tune(a: argparse.Namespace) -> int:
    import time

    from . import tables
    from .cli import raw_config

    raw = raw_config(a)
    check_run(raw)  # before torch is imported: a bad flag (--until 'x<1') answers at once
    scales, thetas = _floats(a.scales, "--scales") or SCALES, _floats(a.thetas, "--thetas")
    out = Path(a.out) if a.out else Path("runs") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    result = _search(raw, None, out, a.metric, a.budget, scales, thetas, (lambda s: None) if a.quiet else print)
    print(tables.to_text(result.header, result.rows), end="")
    print(f"score: {result.score}")
    print(f"best: {result.winner.label}; wrote {out / 'best.toml'} (run it: distbo run {out / 'best.toml'})")
    return 0
