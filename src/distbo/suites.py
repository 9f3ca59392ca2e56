"""Named suites of runs (``configs/suites/NAME.toml``) and ``distbo reproduce``.

A suite file holds a one-line ``description``, a ``[plot]`` section (metrics fields ``x`` and ``y``)
and its runs: ``[[runs]]``, each with a ``label``, a run ``config`` (a path relative to the
repository root) and optional ``set`` overrides, and/or ``[[grids]]``, each the Cartesian product of
its ``axes`` (axis name -> options; an option is a list of ``set`` items, or one ``key=value``
string named by its value), labelled by the options' names, which also become the runs' ``tags``.
A suite may instead ``include`` other suites (reproduced one after the other into sub-folders).

Reproducing a suite checks every run's configuration first, then runs each into its own sub-folder
of the output folder, and draws ``figure.png`` and writes ``table.md`` / ``table.csv`` and
``report.md`` there; a suite with an ``analysis`` (distbo.claims) writes that analysis's figures,
tables and verdict lines instead. ``--quick`` runs a scaled-down version (section ``[quick]``:
rounds scaled by ``scale`` and capped at ``max_rounds``, extra ``set`` items, and only the
``first`` k options of the named grid axes) into NAME-quick. A run whose folder already holds a
finished (completed or diverged) run of the same configuration is reused; an interrupted one is
resumed from its checkpoint; a run of another configuration is replaced (the log line says so). A run that diverges stays in the figure and table up to its last good
round.
"""
from __future__ import annotations

import itertools
import json
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .config import apply_set, load_toml
from .errors import ConfigError, unknown
from .folders import check_out, holds_run, prepare_locked
from .safeio import read_json
from .registry import Params, validate

SUITES = Path("configs") / "suites"


class PlotSpec(Params):
    x: str = Field("bits_up", description="metrics field on the x axis (or rounds, wall_s)")
    y: str = Field("hypergrad_norm", description="metrics field on the y axis")
    xscale: Literal["auto", "linear", "log"] = "auto"
    yscale: Literal["auto", "linear", "log"] = "auto"
    title: str | None = None


class SuiteRun(Params):
    label: str = Field(min_length=1, description="legend and table label")
    config: str = Field(min_length=1, description="run config, relative to the repository root")
    set: list[str] = Field(default_factory=list, description="--set overrides")
    tags: dict[str, str] = Field(default_factory=dict, description="what the run stands for (for analyses)")


class Grid(Params):
    config: str = Field(min_length=1, description="run config, relative to the repository root")
    set: list[str] = Field(default_factory=list, description="--set overrides of every run of the grid")
    tags: dict[str, str] = Field(default_factory=dict, description="tags of every run of the grid")
    axes: dict[str, dict[str, list[str]] | list[str]] = Field(
        min_length=1, description="axis -> options: {name = [set items]} or ['key=value', ...]")


class Quick(Params):
    scale: float = Field(0.05, gt=0, le=1, description="share of each run's rounds")
    max_rounds: int = Field(20, ge=1, description="at most this many rounds per run")
    set: list[str] = Field(default_factory=list, description="--set overrides of every run")
    first: dict[str, int] = Field(default_factory=dict, description="grid axis -> keep its first k options")
    options: dict[str, Any] = Field(default_factory=dict, description="analysis options that replace the suite's")


class Suite(Params):
    description: str
    plot: PlotSpec = Field(default_factory=PlotSpec)
    target: str | None = Field(None, description="table target, FIELD<=VALUE or FIELD>=VALUE")
    runs: list[SuiteRun] = Field(default_factory=list)
    grids: list[Grid] = Field(default_factory=list)
    include: list[str] = Field(default_factory=list, description="other suites, reproduced in turn")
    analysis: str | None = Field(None, description="a claim analysis of distbo.claims")
    options: dict[str, Any] = Field(default_factory=dict, description="options of the analysis")
    quick: Quick = Field(default_factory=Quick)

    @model_validator(mode="after")
    def _has_runs(self) -> "Suite":
        if not (self.runs or self.grids or self.include):
            raise ValueError("a suite needs [[runs]], [[grids]] or include")
        return self


def _options(name: str, axis: dict[str, list[str]] | list[str]) -> list[tuple[str, str, list[str]]]:
    """(tag value, label part, set items) of each option of an axis."""
    if isinstance(axis, dict):
        return [(opt, opt if re.search("[A-Za-z]", opt) else f"{name}={opt}", items) for opt, items in axis.items()]
    values = [item.partition("=")[2].strip().strip('"') for item in axis]
    return [(v, f"{name}={v}", [item]) for v, item in zip(values, axis)]


def expand(suite: Suite, quick: bool = False) -> list[SuiteRun]:
    """The suite's runs: its [[runs]], then every grid's product of options (label = option names).
    With ``quick``, only the first k options of the axes named in ``quick.first``."""
    out = list(suite.runs)
    for g in suite.grids:
        axes = []
        for name, axis in g.axes.items():
            opts = _options(name, axis)
            if quick and name in suite.quick.first:
                opts = opts[: suite.quick.first[name]]
            axes.append([(name, *o) for o in opts])
        for combo in itertools.product(*axes):
            tags = {**g.tags, **{name: value for name, value, *_ in combo}}
            label = " ".join([*g.tags.values(), *(part for _, _, part, _ in combo)])
            out.append(SuiteRun(label=label, config=g.config, tags=tags,
                                set=[*g.set, *(item for *_, items in combo for item in items)]))
    return out


def scale_down(raw: dict, quick: Quick) -> None:
    """--quick: fewer rounds (evaluated at least four times), then the suite's quick overrides."""
    rounds = raw.get("rounds", 1000)
    if isinstance(rounds, int):
        raw["rounds"] = min(quick.max_rounds, max(2, math.ceil(rounds * quick.scale)))
        every = raw.get("eval_every", 10)
        raw["eval_every"] = max(1, min(every if isinstance(every, int) else 10, raw["rounds"] // 4))
    for item in quick.set:
        apply_set(raw, item)


def roots() -> list[Path]:
    """Where suites are looked up: the current folder, then the repository distbo runs from."""
    here = Path(__file__).resolve().parents[2]
    out: list[Path] = []
    for root in (Path.cwd(), here):
        if (root / SUITES).is_dir() and root.resolve() not in [r.resolve() for r in out]:
            out.append(root)
    return out


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in roots():
        for p in sorted((root / SUITES).glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def describe_all() -> list[tuple[str, str]]:
    """(name, description) of every suite; a broken file says so instead of hiding."""
    out = []
    for name, p in available().items():
        try:
            out.append((name, load_file(p).description))
        except ConfigError as exc:
            out.append((name, f"(invalid: {exc})"))
    return out


def load_file(p: Path) -> Suite:
    try:
        suite = validate(Suite, load_toml(p), "")
        if suite.analysis is not None:
            from . import claims

            claims.check(suite.analysis)
        return suite
    except ConfigError as exc:
        raise ConfigError(f"{p} {exc.field}".strip(), exc.message) from None


def find(name: str) -> tuple[Suite, Path]:
    """The suite called ``name`` and its repository root (run configs are relative to it)."""
    found = available()
    if name not in found:
        raise unknown("suite", name, found, "suite")
    p = found[name]
    return load_file(p), p.parents[2]


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "run"


def prepare(suite: Suite, root: Path, quick: bool = False) -> list[tuple[SuiteRun, dict, Any, Any]]:
    """Check every run's configuration before any of them starts: (run, raw, Resolved, Problem)."""
    from .runner import resolve

    seen: dict[str, str] = {}
    out = []
    for i, r in enumerate(expand(suite, quick)):
        folder = slug(r.label)
        if folder in seen:
            raise ConfigError(f"runs.{i}.label", f"'{r.label}' and '{seen[folder]}' would share the folder '{folder}'")
        seen[folder] = r.label
        try:
            raw = load_toml(root / r.config)
            for item in r.set:
                apply_set(raw, item)
            if quick:
                scale_down(raw, suite.quick)
            res, problem = resolve(raw)
        except ConfigError as exc:
            raise ConfigError(f"run '{r.label}': {exc.field}", exc.message) from None
        out.append((r, raw, res, None))  # the problem is built again when the run starts
    return out


def _state(folder: Path, res: Any) -> str:
    """'done' (same config, completed or diverged), 'resume' (same config, interrupted) or 'new'."""
    conf, summ = folder / "config.json", folder / "summary.json"
    if not conf.is_file():
        return "new"
    stored = {k: v for k, v in read_json(conf, "--out").items() if k != "task_info"}
    if stored != json.loads(json.dumps(res.as_dict(), default=str)):
        return "new"
    status = read_json(summ, "--out").get("status") if summ.is_file() else None
    return "done" if status in ("completed", "diverged") else "resume"


def reproduce(name: str, out: str | Path | None = None, progress: bool = True, log=print,
              quick: bool = False, run: bool = True) -> Path:
    """Run suite ``name`` into ``out`` (default runs/NAME, runs/NAME-quick with ``quick``); write its
    figure(s), table(s) and report.md, and log how long it took. ``run=False``: run nothing, draw
    them from the runs already finished there (the others are left out and named in the report)."""
    suite, root = find(name)
    out = check_out(Path(out) if out is not None else Path("runs") / (f"{name}-quick" if quick else name))
    tic = time.perf_counter()
    if suite.include:
        for sub in suite.include:
            find(sub)  # every name is checked before anything runs
        parts = [reproduce(sub, out / sub, progress, log, quick, run) for sub in suite.include]
        text = "\n".join(re.sub(r"\]\((?!http)([^)]+\.png)\)", rf"]({p.name}/\1)", (p / "report.md").read_text())
                          for p in parts)
        (out / "report.md").write_text(f"# {suite.description}\n\n{_stamp(name, quick, run)}\n\n{text}")
        for p in parts:
            verdicts = p / "verdicts.txt"
            if verdicts.is_file():
                log(verdicts.read_text().rstrip())
    else:
        if run:
            runs = prepare(suite, root, quick)
            dirs, missing = _run_all(runs, out, progress, log), []
            runs = [r for r, *_ in runs]
        else:
            runs, dirs, missing = _finished(expand(suite, quick), out, log)
            if not runs:
                raise ConfigError("--no-run", f"no finished run of suite '{name}' in {out}; run it first")
        _report(suite, name, runs, dirs, out, log, quick, missing, run)
    log(f"suite {name}{' (quick)' if quick else ''}: {time.perf_counter() - tic:.1f} s -> {out / 'report.md'}")
    return out


def _stamp(name: str, quick: bool, run: bool = True) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"`distbo reproduce {name}{' --quick' if quick else ''}{'' if run else ' --no-run'}`, {when}"


def _finished(runs: list[SuiteRun], out: Path, log) -> tuple[list[SuiteRun], list, list[str]]:
    """The runs whose folder holds a finished (completed or diverged) run, loaded; the labels of
    the others."""
    from . import rundirs

    kept, dirs, missing = [], [], []
    for r in runs:
        folder = out / slug(r.label)
        d = rundirs.load(folder) if (folder / "config.json").is_file() else None
        if d is None or d.status not in ("completed", "diverged"):
            missing.append(r.label)
            log(f"{r.label}: not finished, left out -> {folder}")
            continue
        kept.append(r)
        dirs.append(d)
    return kept, dirs, missing


def _run_all(runs: list, out: Path, progress: bool, log) -> list:
    """Run (or reuse, or resume) every prepared run into its sub-folder; the loaded run folders."""
    from . import rundirs
    from .errors import DivergenceError
    from .launch import in_job, run_procs
    from .runner import execute, resolve

    for i, (r, raw, res, _) in enumerate(runs, 1):
        folder = out / slug(r.label)
        state, note = _state(folder, res), ""
        if state == "new" and holds_run(folder):  # the suite's run changed: replace the old one
            prepare_locked(folder, overwrite=True)
            note = " (replaced a run of another configuration)"
        tic = time.perf_counter()
        try:
            if state != "done" and res.run.procs > 1 and not in_job():
                run_procs(raw, None, folder, progress, res.run.procs, res.run.timeout, res.run.workers,
                          resume=state == "resume")
            elif state != "done":
                res, problem = resolve(raw)  # built again here: a suite does not hold every data set at once
                execute(res, problem, folder, progress=progress, resume=state == "resume")
        except DivergenceError as exc:
            note = f"{note} ({exc})"
        log(f"[{i}/{len(runs)}] {r.label}: " + ("up to date" if state == "done" else
                                                f"{'resumed' if state == 'resume' else 'ran'} in "
                                                f"{time.perf_counter() - tic:.1f} s") + f" -> {folder}{note}")
    return [rundirs.load(out / slug(r.label)) for r, *_ in runs]


def _report(suite: Suite, name: str, runs: list[SuiteRun], dirs: list, out: Path, log, quick: bool,
            missing: list[str] = (), run: bool = True) -> None:
    """The suite's figure(s), table(s), verdicts and report.md: its analysis's, or the generic ones."""
    from . import plotting, rundirs, tables

    head = f"## {suite.description}\n\n{_stamp(name, quick, run)}\n"
    if missing:
        head += f"\n{len(runs)} of {len(runs) + len(missing)} runs finished; left out: {', '.join(missing)}\n"
    if suite.analysis is not None:
        from . import claims

        options = {**suite.options, **(suite.quick.options if quick else {})}
        rep = claims.analyse(suite.analysis, runs, dirs, options)
        rep.write(out, head)
        log("\n".join(t.text() for t in rep.tables).rstrip())
        log(f"wrote {out / 'report.md'} and its figures and tables")
        return
    labels = [r.label for r in runs]
    x = rundirs.field_name(dirs, suite.plot.x, "plot.x")
    y = rundirs.field_name(dirs, suite.plot.y, "plot.y")
    fig = plotting.figure(dirs, x, y, labels, suite.plot.xscale, suite.plot.yscale,
                          suite.plot.title or suite.description)
    plotting.save(fig, out / "figure.png")
    target = tables.parse_target(suite.target) if suite.target else tables.default_target(dirs)
    header, body = tables.build(dirs, labels, target)
    (out / "table.md").write_text(tables.to_markdown(header, body))
    (out / "table.csv").write_text(tables.to_csv(header, body))
    (out / "report.md").write_text(f"{head}\n![{name}](figure.png)\n\n{tables.to_markdown(header, body)}")
    log(tables.to_text(header, body).rstrip())
    log(f"wrote {out / 'figure.png'}, {out / 'table.md'}, {out / 'table.csv'}")
