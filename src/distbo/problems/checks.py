"""Checks of a Problem against the run, so a user's mistake is one line before round 0.

- ``user_settings``: settings given to ``distbo.run`` with your own Problem that it cannot apply
  (``workers`` / ``dtype`` other than the Problem's, ``task.*`` overrides) are ConfigErrors; the
  Problem's own worker count and dtype are filled in.
- ``check_problem``: the starting point and one worker's batches must have the Problem's dtype
  (else torch fails deep inside an oracle with "same dtype" messages); ``check_user_problem``
  adds the checks of f and g (problems/validate.py) for a user's Problem.
- ``metric_row``: ``evaluate()`` must give ``upper_loss``; tensor / numpy values become Python
  numbers (a metrics.jsonl row is JSON).
"""
from __future__ import annotations

from numbers import Number
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from .. import rng
from ..errors import ConfigError
from .base import Problem

DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def _dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def user_settings(problem: Problem, raw: dict[str, Any]) -> None:
    """Refuse run settings a user Problem would ignore; fill in its workers and dtype (in ``raw``)."""
    name = type(problem).__name__
    if "task" in raw:
        keys = sorted(raw["task"]) if isinstance(raw["task"], dict) else [str(raw["task"])]
        raise ConfigError("task", f"task settings ({', '.join(keys)}) apply to built-in tasks only; your "
                          f"{name} takes its settings in its constructor")
    if raw.get("workers", problem.n_workers) != problem.n_workers:
        raise ConfigError("workers", f"your {name} has {problem.n_workers} workers but workers={raw['workers']} "
                          "was given; build the Problem with that many workers, or drop workers=")
    own = _dtype_name(problem.dtype)
    if own not in DTYPE_NAMES.values():
        raise ConfigError("dtype", f"your {name} has dtype {own}; allowed: float32, float64")
    if raw.get("dtype", own) != own:
        raise ConfigError("dtype", f"your {name} computes in {own} but dtype={raw['dtype']!r} was given; set the "
                          f"Problem's dtype (and its data) to {raw['dtype']}, or drop dtype=")
    raw["workers"], raw["dtype"] = problem.n_workers, own


def check_problem(problem: Problem, run: Any) -> None:
    """ConfigError on 'dtype' if the starting point or worker 0's batches are floats of another
    dtype than ``problem.dtype`` (the oracles would fail inside torch)."""
    want = problem.dtype
    x0, y0 = problem.init(run.seed)
    found = [("x0", x0.dtype), ("y0", y0.dtype)]
    worker = torch.zeros(1, dtype=torch.int64)
    for level in ("f", "g"):
        batch = problem.sample(level, worker, rng.key(run.seed, 0xC4EC))
        found += [(f"its '{level}' batches", t.dtype) for t in tree_leaves(batch)
                  if isinstance(t, torch.Tensor) and t.is_floating_point()]
    bad = next(((what, dt) for what, dt in found if dt != want), None)
    if bad is not None:
        raise ConfigError("dtype", f"{type(problem).__name__} has dtype {_dtype_name(want)} but {bad[0]} "
                          f"{'is' if bad[0] in ('x0', 'y0') else 'are'} "
                          f"{_dtype_name(bad[1])}; make them agree (set the Problem's dtype to "
                          f"{_dtype_name(bad[1])}, or convert the data to {_dtype_name(want)})")


def check_user_problem(problem: Problem, run: Any) -> None:
    """A user's Problem before its defaults are derived: the dtypes (``check_problem``), then f and
    g on worker 0's batches (problems/validate.py)."""
    from .validate import check_losses

    check_problem(problem, run)
    check_losses(problem, run.seed, getattr(run, "worker_chunk", None))


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor) or type(v).__module__ == "numpy":
        if hasattr(v, "numel") and v.numel() == 1 or getattr(v, "size", None) == 1:
            return v.item()
        return v.tolist()
    return v


def metric_row(metrics: Any) -> dict[str, Any]:
    """``evaluate()``'s metrics as plain Python values; ConfigError if ``upper_loss`` is missing."""
    if not isinstance(metrics, dict):
        raise ConfigError("evaluate", f"Problem.evaluate() must return a dict of metrics, got {type(metrics).__name__}")
    row = {str(k): _plain(v) for k, v in metrics.items()}
    if "upper_loss" not in row:
        raise ConfigError("evaluate", "Problem.evaluate() must return 'upper_loss' (the upper-level objective "
                          f"every run reports), got {sorted(row) or 'no metrics'}")
    if not isinstance(row["upper_loss"], Number):
        raise ConfigError("evaluate", f"'upper_loss' must be a number, got {row['upper_loss']!r}")
    return row
