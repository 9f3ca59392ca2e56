"""Refuse a task that cannot fit in this machine's memory before allocating any of it.

``check_task`` asks the task's estimator (``ESTIMATES``, by task name) for a lower bound of the
bytes the task holds once built, and the field that drives it; if the bound exceeds the memory of
this machine (physical memory, or the cgroup limit when lower) the run is refused with one line.
A bound, not a guess: a task that passes may still need more (the algorithm's state comes on top).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

Estimate = Callable[[Any, int, int], tuple[int, str]]


def _quadratic(p: Any, workers: int, itemsize: int) -> tuple[int, str]:
    """Per worker: A_i, P_i (d_y x d_y), B_i, R_i (d_y x d_x), S_i (d_x x d_x), kept in float64 and
    (for float32 runs) once more in the run's dtype."""
    entries = workers * (2 * p.d_y ** 2 + 2 * p.d_y * p.d_x + p.d_x ** 2)
    field = "task.d_y" if p.d_y >= p.d_x else "task.d_x"
    return entries * (8 + (itemsize if itemsize != 8 else 0)), field


ESTIMATES: dict[str, Estimate] = {"quadratic": _quadratic}


def machine_bytes() -> int | None:
    """Physical memory, or the cgroup (v2 or v1) limit when that is lower; None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.3g} GiB"


def check_task(name: str, params: Any, workers: int, itemsize: int, available: int | None = None) -> None:
    estimate = ESTIMATES.get(name)
    available = machine_bytes() if available is None else available
    if estimate is None or available is None:
        return
    need, field = estimate(params, workers, itemsize)
    if need > available:
        raise ConfigError(field, f"the {name} task with {workers} workers needs at least {gib(need)} of memory, "
                          f"this machine has {gib(available)}; use a smaller {field} or fewer workers")
