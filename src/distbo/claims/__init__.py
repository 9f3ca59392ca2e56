"""Claim analyses: the suites that check each seed paper's headline claim (``distbo reproduce claims``).

A suite with ``analysis = "NAME"`` hands its runs (with their ``tags``: task, variant, seed, ...) and
loaded run folders to ``ANALYSES[NAME]``, which returns a ``Report``: tables, figures and one-line
verdicts. Every verdict is a function of one of the report's tables (``verdict_*(table)`` in the
claim's module), so it states what was measured, never fixed text. The analyses:
  - ``compression`` (claims/compression.py): He et al., compressed SOBA, ~10x fewer up-link bits
    without severe accuracy loss;
  - ``federated`` (claims/federated.py): Xiao & Ji, AggITD needs far fewer rounds than FedNest;
  - ``pruning`` (claims/pruning.py): Li et al., RABO / RAFBO converge as O(1/sqrt(C_x* Q)).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, unknown
from ..tables import to_csv, to_markdown, to_text


@dataclass
class Table:
    """A named table: a header and rows of raw values (None where there is no value)."""

    name: str  # file stem of its .md / .csv
    title: str
    header: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.header, r)) for r in self.rows]

    def text(self) -> str:
        return f"{self.title}\n{to_text(self.header, self.rows)}"


@dataclass
class Report:
    tables: list[Table]
    verdicts: list[str]
    figures: dict[str, Any] = field(default_factory=dict)  # file stem -> matplotlib Figure
    notes: str = ""  # how the numbers were measured, one paragraph

    def write(self, out: Path, head: str) -> None:
        """figures NAME.png, tables NAME.md / NAME.csv, verdicts.txt and report.md in ``out``."""
        from .. import plotting

        out.mkdir(parents=True, exist_ok=True)
        parts = [head, *(f"**Verdict.** {v}\n" for v in self.verdicts)]
        if self.notes:
            parts.append(self.notes + "\n")
        for name, fig in self.figures.items():
            plotting.save(fig, out / f"{name}.png", dpi=80)
            parts.append(f"![{name}]({name}.png)\n")
        for t in self.tables:
            (out / f"{t.name}.md").write_text(to_markdown(t.header, t.rows))
            (out / f"{t.name}.csv").write_text(to_csv(t.header, t.rows))
            parts.append(f"{t.title}\n\n{to_markdown(t.header, t.rows)}")
        (out / "verdicts.txt").write_text("".join(v + "\n" for v in self.verdicts))
        (out / "report.md").write_text("\n".join(parts))


Analysis = Callable[[list, list, dict[str, Any]], Report]
ANALYSES: dict[str, Analysis] = {}


def register(name: str):
    def deco(fn: Analysis) -> Analysis:
        ANALYSES[name] = fn
        return fn
    return deco


def check(name: str) -> None:
    if name not in ANALYSES:
        raise unknown("analysis", name, ANALYSES, "analysis")


def analyse(name: str, runs: list, dirs: list, options: dict[str, Any]) -> Report:
    """Report of analysis ``name`` on a suite's runs (SuiteRun with tags) and their RunDirs."""
    check(name)
    try:
        return ANALYSES[name](runs, dirs, options)
    except KeyError as exc:  # a run without a tag the analysis needs
        raise ConfigError("tags", f"analysis '{name}' needs the tag {exc} on every run") from None


def by_tags(runs: list, dirs: list, *names: str) -> dict[tuple, Any]:
    """{(tag values of ``names``): RunDir}."""
    return {tuple(r.tags[n] for n in names): d for r, d in zip(runs, dirs)}


from . import compression, federated, pruning  # noqa: E402,F401  (register the analyses)
