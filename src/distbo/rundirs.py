"""Reading run folders (config.json, metrics.jsonl, summary.json) for plots and tables.

An interrupted or diverged run is read as far as it got: its metric rows are what it wrote (a
last row cut short by a kill is left out). A config.json, summary.json or metrics row that is not
valid JSON is a one-line error naming the file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, unknown
from .safeio import read_json, read_text

#: short names accepted for metric fields (``--x rounds`` is the ``round`` field)
ALIASES = {"rounds": "round", "bits": "bits_up", "time": "wall_s"}
#: configuration keys that do not change a run's metrics: never used to tell runs apart
BOOKKEEPING = {"task_info", "checkpoint_every", "procs", "timeout"}


@dataclass
class RunDir:
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def algorithm(self) -> str:
        return str(self.config.get("algorithm", {}).get("name", "?"))

    @property
    def compressor(self) -> str:
        return str(self.config.get("compressor", "identity"))

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "running or killed"))

    def fields(self) -> set[str]:
        return {k for r in self.rows for k, v in r.items() if isinstance(v, (int, float))}

    def series(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """(value of ``name``, row) for every row where it is a finite number."""
        return [(float(r[name]), r) for r in self.rows
                if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]


def load(path: str | Path) -> RunDir:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError("RUN_DIR", f"{p} is not a run folder (no config.json)")
    metrics = p / "metrics.jsonl"
    rows = read_rows(metrics) if metrics.is_file() else []
    summ = p / "summary.json"
    return RunDir(p, distbo_config(p / "config.json"), rows, read_json(summ, "RUN_DIR") if summ.is_file() else {})


def distbo_config(path: Path) -> dict[str, Any]:
    """The configuration in ``path``, if it is one distbo wrote (task and algorithm are named sections)."""
    conf = read_json(path, "RUN_DIR")
    for key in ("task", "algorithm"):
        sec = conf.get(key)
        if not (isinstance(sec, dict) and isinstance(sec.get("name"), str)):
            raise ConfigError("RUN_DIR", f"{path} is not a configuration distbo wrote ('{key}' is "
                              f"{json.dumps(sec)[:40]}, expected a section with a name)")
    return conf


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The metric rows of ``path``; a last line without its newline (cut short) is left out."""
    text = read_text(path, "RUN_DIR")
    lines = text.split("\n")
    whole = lines[:-1]  # the part after the last newline is "" or a row cut short by a kill
    rows = []
    for i, line in enumerate(whole):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError("RUN_DIR", f"{path} line {i + 1} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError("RUN_DIR", f"{path} line {i + 1} is not a JSON object")
        rows.append(row)
    return rows


def load_all(paths: list[str | Path]) -> list[RunDir]:
    if not paths:
        raise ConfigError("RUN_DIR", "give at least one run folder")
    return [load(p) for p in paths]


def field_name(runs: list[RunDir], name: str, option: str) -> str:
    """``name`` (or its alias) as a metrics field every run has; else a one-line error."""
    name = ALIASES.get(name, name)
    for run in runs:
        if not run.rows:
            raise ConfigError("RUN_DIR", f"{run.path} has no metric rows (its run stopped before its first "
                              "evaluation)")
        have = run.fields()
        if name not in have:
            where = f" in {run.path}" if len(runs) > 1 else ""
            raise unknown(option, name, have | set(ALIASES), f"metrics field{where}")
    return name


#: at most this many differing keys are named in a label (all of them when there are no more)
LABEL_KEYS = 6
_ORDER = ("task.", "clients.", "algorithm.")  # causes first: top level, task, clients, then steps


def labels(runs: list[RunDir]) -> list[str]:
    """'algorithm, compressor' per run, then every configuration value that differs between the
    runs shown (all of them when there are at most LABEL_KEYS, else the first LABEL_KEYS: top-level
    keys, then task, clients and algorithm ones); runs that still look alike get their folder names."""
    base = [f"{r.algorithm}, {r.compressor}" for r in runs]
    flat = [_flatten({k: v for k, v in r.config.items() if k not in BOOKKEEPING}) for r in runs]
    keys = differing_keys(flat)[:LABEL_KEYS]
    short = {k: k.split(".")[-1] for k in keys}
    for k in keys:  # the last part of the key, unless two keys shown share it
        if sum(v == short[k] for v in short.values()) > 1:
            short[k] = k
    out = [", ".join([b, *(f"{short[k]}={f[k]}" for k in keys if k in f)]) for b, f in zip(base, flat)]
    return [f"{lab} ({r.path.name})" if out.count(lab) > 1 else lab for lab, r in zip(out, runs)]


def differing_keys(flat: list[dict[str, Any]]) -> list[str]:
    """Keys with at least two different values among the runs that have them (not the algorithm
    name and compressor, which every label shows), top-level keys first, then by section."""
    seen = {k for f in flat for k in f} - {"algorithm.name", "compressor", "derived"}
    keys = [k for k in seen if len({json.dumps(f[k], default=str) for f in flat if k in f}) > 1
            and not k.startswith("derived.")]

    def rank(k: str) -> tuple[int, str]:
        return next((i + 1 for i, p in enumerate(_ORDER) if k.startswith(p)), 0), k

    return sorted(keys, key=rank)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat
