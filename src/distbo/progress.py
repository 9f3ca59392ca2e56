"""Did the run get anywhere? The verdict summary.json's ``progress`` and the last printed line carry.

A run that ends "completed" may still have learned nothing: the tracked metric (the first of
test_acc, hypergrad_norm, upper_loss the rows hold, as for ``distbo compare``'s default target)
can end worse than it started, or circle without a new best over the last part of the run (a
limit cycle, or a compressed method wandering about its start). ``assess(rows)`` says which:

- "worse than start": the last value is worse than the round-0 value;
- "no progress (oscillates)": over the last TAIL share of the evaluations (at least MIN_TAIL of
  them) the metric never beats its best before that tail by GAIN or more (a limit cycle's minima
  repeat up to rounding), and swings by a factor SWING or more
  (the error rate 1 - test_acc for accuracy: larger is worse), while it is not already at a
  floor (the tail's best above FLOOR times the start; float rounding noise at 1e-6 of the start
  is no oscillation);
- "no progress": the last value equals the start (nothing moved the metric);
- "improved": otherwise (the last value better than the start).

The status stays "completed" and the exit code 0: the run did what was asked (the rounds), and a
script that compares methods needs their folders whatever they reached; the verdict is data.
"""
from __future__ import annotations

import math
from typing import Any

METRICS = (("test_acc", "max"), ("hypergrad_norm", "min"), ("upper_loss", "min"))
TAIL = 0.25  # the last part of the run: this share of the evaluations
MIN_TAIL = 4  # evaluations in that part, at least (fewer rows: no oscillation verdict)
SWING = 2.0  # max / min of the error over the tail that counts as oscillating
FLOOR = 1e-3  # a tail whose best is below this share of the start is at a floor, not oscillating
GAIN = 0.05  # a tail whose best beats the earlier best by less than this share made no progress


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def tracked(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(metric, 'min' or 'max') of the first METRICS field the rows report, else None."""
    for name, sense in METRICS:
        if sum(_finite(r.get(name)) for r in rows) >= 2:
            return name, sense
    return None


def assess(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The verdict on the tracked metric, with the numbers; None with fewer than two evaluations."""
    which = tracked(rows)
    if which is None:
        return None
    name, sense = which
    series = [(r.get("round"), float(r[name])) for r in rows if _finite(r.get(name))]
    # as an error (lower is better, >= 0 for the built-in metrics): accuracy -> error rate
    err = [1.0 - v if sense == "max" else v for _, v in series]
    best_i = min(range(len(err)), key=err.__getitem__)
    out = {"metric": name, "start": series[0][1], "end": series[-1][1], "best": series[best_i][1],
           "best_round": series[best_i][0]}
    k = max(MIN_TAIL, math.ceil(TAIL * len(err)))
    if err[-1] > err[0]:
        verdict = "worse than start"
    elif err[-1] == err[0]:
        verdict = "no progress"
    elif len(err) > k and _oscillates(err[:-k], err[-k:], err[0]):
        verdict = "no progress (oscillates)"
    else:
        verdict = "improved"
    if len(err) > k:
        tail = [v for _, v in series[-k:]]
        out["tail"] = {"from_round": series[-k][0], "min": min(tail), "max": max(tail)}
    return {"verdict": verdict, **out}


def _oscillates(before: list[float], tail: list[float], start: float) -> bool:
    low, high = min(tail), max(tail)
    return low >= (1 - GAIN) * min(before) and low > FLOOR * abs(start) and high >= SWING * low


def line(p: dict[str, Any] | None) -> str:
    """One line for the end of ``distbo run``: the metric's start -> end, best, and the verdict."""
    if p is None:
        return "progress: fewer than two evaluations of a tracked metric"
    text = f"{p['metric']} {p['start']:.4g} -> {p['end']:.4g} (best {p['best']:.4g} at round {p['best_round']})"
    if p["verdict"] == "no progress (oscillates)":
        t = p["tail"]
        text += f", between {t['min']:.4g} and {t['max']:.4g} from round {t['from_round']}, not beating its earlier best"
    return f"{text}: {p['verdict']}"
