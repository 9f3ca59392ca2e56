"""Run control: stop a run at a target (config key ``until``) or when it grows far past its start
(config key ``diverge_factor``).

``until = "FIELD<=VALUE"`` (or ``>=``, the syntax of ``distbo compare --target``) ends the run at
the first evaluation that meets it, round 0 included; summary.json then says the target was
reached, at which round and with which bits.

Divergence by growth: a run stops as diverged (DivergenceError, exit 3) when, after a round,
||x|| or ||y|| of the server's point exceeds ``diverge_factor`` times its value at the start, or
when at an evaluation ``upper_loss`` or ``hypergrad_norm`` (where the task reports it) exceeds
that factor times its value in the round-0 row, or is not finite. Tiny starts are floored:
sqrt(d) for a norm (a root-mean-square coordinate of 1), 1 for a metric, so a run that starts
at zero still has a sensible limit. ``diverge_factor = 0`` (or unset) turns this off.

Several processes agree: the server's (x, y) is replicated, so every process sees the same norms;
the decisions taken at an evaluation are rank 0's (it writes the metrics), sent to all with one
``all_sum`` outside the bit accounting, so every process stops at the same round with the same
message.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .comm.base import Communicator
from .errors import ConfigError, DivergenceError

GROWTH_METRICS = ("upper_loss", "hypergrad_norm")
METRIC_FLOOR = 1.0
from .until import SYNTAX, parse_until  # noqa: F401  (torch-free: the config check uses it)


def target_info(until: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What summary.json records about the target: reached or not, at which round, with which bits."""
    target = parse_until(until)
    hit = next((r for r in rows if _number(r.get(target.field)) and target.reached(r[target.field])), None)
    return {"until": str(until), "reached": hit is not None, "round": hit and hit.get("round"),
            "bits_up": hit and hit.get("bits_up"), "bits_down": hit and hit.get("bits_down")}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RunControl:
    """Checks a run makes after every round (``after_step``) and every evaluation (``after_eval``)."""

    def __init__(self, until: str | None, factor: float | None, start: tuple[torch.Tensor, torch.Tensor],
                 comm: Communicator):
        self.target = parse_until(until) if until is not None else None
        self.factor = factor or 0.0
        self.comm = comm
        self.starts = {name: max(float(v.norm()), math.sqrt(max(v.numel(), 1))) for name, v in zip("xy", start)}

    def after_step(self, point: tuple[torch.Tensor, torch.Tensor], t: int) -> None:
        """DivergenceError if ||x|| or ||y|| grew past its limit (the same in every process)."""
        if not self.factor:
            return
        for (name, start), v in zip(self.starts.items(), point):
            norm = float(v.norm())
            if norm > self.factor * start:
                raise DivergenceError(self._grew(t, f"||{name}||", norm, start))

    def after_eval(self, row: dict[str, Any], first: dict[str, Any]) -> bool:
        """Check an evaluation row against the round-0 row ``first``: DivergenceError if a metric grew
        past its limit, True if the target is met. Every process gets rank 0's answer."""
        if self.target is None and not self.factor:  # nothing to check (the same in every process)
            return False
        self.check_fields(row)
        grown = self._grown(row, first) if self.comm.is_main else None
        reached = self.comm.is_main and self.target is not None and _number(row[self.target.field]) \
            and self.target.reached(row[self.target.field])
        if self.comm.world_size > 1:  # rank 0 decides: [reached, which metric + 1, value, start]
            code = [float(reached), 0.0, 0.0, 0.0]
            if grown is not None:
                code[1:] = [GROWTH_METRICS.index(grown[0]) + 1.0, grown[1], grown[2]]
            got = self.comm.all_sum(torch.tensor(code, dtype=torch.float64)).tolist()
            reached = got[0] > 0
            grown = (GROWTH_METRICS[int(got[1]) - 1], got[2], got[3]) if got[1] > 0 else None
        if grown is not None:
            raise DivergenceError(self._grew(row["round"], *grown))
        return bool(reached)

    def check_fields(self, row: dict[str, Any]) -> None:
        """ConfigError if the target's field is not one of the row's (the round-0 row, before any output)."""
        if self.target is not None and self.target.field not in row:
            allowed = sorted(k for k, v in row.items() if _number(v))
            raise ConfigError("until", f"unknown field '{self.target.field}'; allowed: {', '.join(allowed)}")

    def _grown(self, row: dict[str, Any], first: dict[str, Any]) -> tuple[str, float, float] | None:
        if not self.factor:
            return None
        for name in GROWTH_METRICS:
            v, v0 = row.get(name), first.get(name)
            if not isinstance(v, (int, float)) or not _number(v0):
                continue
            start = max(abs(v0), METRIC_FLOOR)
            if not math.isfinite(v) or abs(v) > self.factor * start:
                return name, float(v), start
        return None

    def _grew(self, t: int, what: str, value: float, start: float) -> str:
        return (f"diverged at round {t}: {what} grew to {value:.4g}, past diverge_factor {self.factor:g} x its "
                f"start {start:.4g} (try smaller step sizes)")
