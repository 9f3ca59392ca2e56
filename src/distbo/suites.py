"""Named suites of runs (``configs/suites/NAME.toml``) and ``distbo reproduce``.

A suite file holds a one-line ``description``, a ``[plot]`` section (metrics fields ``x`` and ``y``)
and ``[[runs]]``, each with a ``label``, a run ``config`` (a path relative to the repository root)
and optional ``set`` overrides. Reproducing a suite checks every run's configuration first, then
runs each into its own sub-folder of the output folder, and draws ``figure.png`` and writes
``table.md`` / ``table.csv`` there. A run whose folder already holds a finished (completed or
diverged) run of the same configuration is reused; an interrupted one is resumed from its
checkpoint; a run of another configuration is replaced (the log line says so). A run that diverges stays in the figure and table up to its last good round.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

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


class Suite(Params):
    description: str
    plot: PlotSpec = Field(default_factory=PlotSpec)
    target: str | None = Field(None, description="table target, FIELD<=VALUE or FIELD>=VALUE")
    runs: list[SuiteRun] = Field(min_length=1)


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
        return validate(Suite, load_toml(p), "")
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


def prepare(suite: Suite, root: Path) -> list[tuple[SuiteRun, dict, Any, Any]]:
    """Check every run's configuration before any of them starts: (run, raw, Resolved, Problem)."""
    from .runner import resolve

    seen: dict[str, str] = {}
    out = []
    for i, r in enumerate(suite.runs):
        folder = slug(r.label)
        if folder in seen:
            raise ConfigError(f"runs.{i}.label", f"'{r.label}' and '{seen[folder]}' would share the folder '{folder}'")
        seen[folder] = r.label
        try:
            raw = load_toml(root / r.config)
            for item in r.set:
                apply_set(raw, item)
            res, problem = resolve(raw)
        except ConfigError as exc:
            raise ConfigError(f"run '{r.label}': {exc.field}", exc.message) from None
        out.append((r, raw, res, problem))
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


def reproduce(name: str, out: str | Path | None = None, progress: bool = True, log=print) -> Path:
    """Run suite ``name`` into ``out`` (default runs/NAME); write figure.png, table.md, table.csv."""
    from . import plotting, rundirs, tables
    from .errors import DivergenceError
    from .launch import in_job, run_procs
    from .runner import execute

    out = check_out(Path(out) if out is not None else Path("runs") / name)
    suite, root = find(name)
    runs = prepare(suite, root)
    for i, (r, raw, res, problem) in enumerate(runs, 1):
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
                execute(res, problem, folder, progress=progress, resume=state == "resume")
        except DivergenceError as exc:
            note = f"{note} ({exc})"
        log(f"[{i}/{len(runs)}] {r.label}: " + ("up to date" if state == "done" else
                                                f"{'resumed' if state == 'resume' else 'ran'} in "
                                                f"{time.perf_counter() - tic:.1f} s") + f" -> {folder}{note}")
    dirs = [rundirs.load(out / slug(r.label)) for r, *_ in runs]
    labels = [r.label for r, *_ in runs]
    x = rundirs.field_name(dirs, suite.plot.x, "plot.x")
    y = rundirs.field_name(dirs, suite.plot.y, "plot.y")
    fig = plotting.figure(dirs, x, y, labels, suite.plot.xscale, suite.plot.yscale,
                          suite.plot.title or suite.description)
    plotting.save(fig, out / "figure.png")
    target = tables.parse_target(suite.target) if suite.target else tables.default_target(dirs)
    header, body = tables.build(dirs, labels, target)
    (out / "table.md").write_text(tables.to_markdown(header, body))
    (out / "table.csv").write_text(tables.to_csv(header, body))
    log(tables.to_text(header, body).rstrip())
    log(f"wrote {out / 'figure.png'}, {out / 'table.md'}, {out / 'table.csv'}")
    return out
