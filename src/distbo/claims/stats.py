"""Small statistics of the claim analyses: mean and spread over seeds, log-log slope fits."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def present(values: list[Any]) -> list[float]:
    """The finite numbers among ``values`` (None, NaN and inf left out)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def mean(values: list[Any]) -> float | None:
    v = present(values)
    return sum(v) / len(v) if v else None


def std(values: list[Any]) -> float | None:
    """Sample standard deviation (None with fewer than two values)."""
    v = present(values)
    if len(v) < 2:
        return None
    m = sum(v) / len(v)
    return math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1))


def lo(values: list[Any]) -> float | None:
    v = present(values)
    return min(v) if v else None


def hi(values: list[Any]) -> float | None:
    v = present(values)
    return max(v) if v else None


def loglog_fit(x: list[float], y: list[float]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line log10 y = slope log10 x + intercept over the
    points with x, y > 0; None with fewer than two distinct x."""
    pts = [(math.log10(a), math.log10(b)) for a, b in zip(x, y) if a and b and a > 0 and b > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    X = np.array([[p[0], 1.0] for p in pts])
    coef, *_ = np.linalg.lstsq(X, np.array([p[1] for p in pts]), rcond=None)
    return float(coef[0]), float(coef[1])


def exponents(a: list[float], b: list[float], y: list[float]) -> tuple[float, float] | None:
    """(p, q) of the least-squares fit log y = p log a + q log b + c over positive points; None
    when a or b takes fewer than two values (its exponent is not identified)."""
    pts = [(math.log10(u), math.log10(v), math.log10(w)) for u, v, w in zip(a, b, y)
           if u > 0 and v > 0 and w and w > 0]
    if len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
        return None
    X = np.array([[p[0], p[1], 1.0] for p in pts])
    coef, *_ = np.linalg.lstsq(X, np.array([p[2] for p in pts]), rcond=None)
    return float(coef[0]), float(coef[1])
