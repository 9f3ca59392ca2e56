"""The comparison table of several runs: final metrics, costs, and the cost to reach a target.

A target is ``FIELD<=VALUE`` or ``FIELD>=VALUE``; a run reaches it at its first metric row that
satisfies it, and the table reports the bits sent up and the rounds spent until then. The default
target is the best level that every run reaches (on test_acc, else hypergrad_norm, else
upper_loss), so the column always compares the runs on a level all of them attain.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .rundirs import RunDir

COSTS = ("round", "comm_rounds", "bits_up", "bits_down", "wall_s")
QUALITY = ("upper_loss", "test_loss", "test_acc", "hypergrad_norm", "x_err")
DEFAULT_TARGETS = (("test_acc", ">="), ("hypergrad_norm", "<="), ("upper_loss", "<="))


@dataclass(frozen=True)
class Target:
    field: str
    op: str  # '<=' or '>='
    value: float

    def reached(self, v: float) -> bool:
        return v <= self.value if self.op == "<=" else v >= self.value

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value:.4g}"


def parse_target(text: str) -> Target:
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*(<=|>=)\s*(\S+)\s*", text)
    if not m:
        raise ConfigError("--target", f"expected FIELD<=VALUE or FIELD>=VALUE (e.g. test_acc>=0.9), got '{text}'")
    try:
        value = float(m.group(3))
    except ValueError:
        raise ConfigError("--target", f"'{m.group(3)}' is not a number") from None
    from .rundirs import ALIASES

    return Target(ALIASES.get(m.group(1), m.group(1)), m.group(2), value)


def default_target(runs: list[RunDir]) -> Target | None:
    """The best level every run reaches, on the first field of DEFAULT_TARGETS all runs have."""
    for name, op in DEFAULT_TARGETS:
        vals = [[v for v, _ in r.series(name)] for r in runs]
        if all(vals):
            best = [max(v) if op == ">=" else min(v) for v in vals]
            return Target(name, op, min(best) if op == ">=" else max(best))
    return None


def first_reach(run: RunDir, target: Target) -> dict[str, Any] | None:
    return next((row for v, row in run.series(target.field) if target.reached(v)), None)


def build(runs: list[RunDir], labels: list[str], target: Target | None,
          fields: list[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """(header, one row per run) with raw values (None where a run has no value)."""
    if fields is None:
        fields = [f for f in QUALITY if any(f in r.fields() for r in runs)]
    header = ["run", "status", "progress", *COSTS, *fields]
    if target is not None:
        header += [f"bits_up to {target}", f"rounds to {target}"]
    body = []
    for run, label in zip(runs, labels):
        last = run.rows[-1] if run.rows else {}
        row = [label, run.status, _verdict(run), *(last.get(k) for k in COSTS), *(last.get(f) for f in fields)]
        if target is not None:
            hit = first_reach(run, target)
            row += [hit.get("bits_up") if hit else None, hit.get("round") if hit else None]
        body.append(row)
    return header, body


def _verdict(run: RunDir) -> str | None:
    """summary.json's progress verdict, else (a run still going or killed) the rows' own."""
    from .progress import assess

    p = run.summary.get("progress") if "progress" in run.summary else assess(run.rows)
    return p["verdict"] if isinstance(p, dict) else None


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 100_000:
        return f"{v:.3e}"
    return str(v)


def to_text(header: list[str], body: list[list[Any]], left: int = 1) -> str:
    """Aligned columns; the first ``left`` are aligned left, the others right."""
    cells = [header] + [[fmt(v) for v in row] for row in body]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    return "\n".join(lines) + "\n"


def to_markdown(header: list[str], body: list[list[Any]], left: int = 2) -> str:
    """A Markdown table; the first ``left`` columns are aligned left, the others right."""
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join(":--" if i < left else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(fmt(v)) for v in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], body: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in row] for row in body])
    return buf.getvalue()
