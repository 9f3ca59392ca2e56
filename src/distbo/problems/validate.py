"""Checks of a user's problem, so a malformed one is ONE ConfigError naming the culprit before round 0.

For ``ModuleProblem`` data, at construction (``worker_list``, ``check_shards``, ``check_test``,
``check_predict``, ``warn_batch_size``): the per-worker structure (one tuple of tensors per
worker, not a bare tensor or the whole (X, Y) pair), the same sample shape on every worker, finite
values (naming the split and the worker), integer test labels with the training features' shape,
a ``predict`` where the upper module has no ``forward()``, and a batch larger than a shard.

For every user Problem, before its defaults are derived (``check_losses``): every worker's first
batches must be finite; f and g on worker 0's batches at (x0, y0) must run and return finite
scalar tensors; over all workers they must differentiate (torch.func), and g must curve in y (a
zero H_yy v means g is not strongly convex in y: L_g = mu_g = 0 there).
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .. import rng
from ..errors import ConfigError

Tensor = torch.Tensor
EXPECTED = "a list with one tuple of tensors per worker, e.g. train=[(X_1, Y_1), (X_2, Y_2), ...]"


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _dtype(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def worker_list(data: Any, what: str) -> Sequence[Any]:
    """``data`` as one dataset per worker, or a ConfigError saying what is expected."""
    if isinstance(data, Tensor):
        raise ConfigError(what, f"got one tensor {_shape(data)}; expected {EXPECTED} (or one dataset (X, Y) "
                          "with partition= and workers=)")
    if not isinstance(data, (list, tuple)) or not data:
        raise ConfigError(what, f"expected {EXPECTED} (or partition=), got {type(data).__name__}")
    bare = [i for i, d in enumerate(data) if isinstance(d, Tensor)]
    if bare and len(bare) == len(data) and len(data) <= 3 and len({int(t.shape[0]) for t in data if t.dim()}) == 1:
        raise ConfigError(what, f"got a tuple of {len(data)} tensors ({', '.join(_shape(t) for t in data)}): one "
                          f"dataset (X, Y) reads as {len(data)} workers; pass {EXPECTED}, or this dataset with "
                          "partition='iid' and workers=N")
    if bare:
        raise ConfigError(what, f"worker {bare[0]}'s data is a bare tensor {_shape(data[bare[0]])}; expected a "
                          "tuple of tensors per worker such as (X_i, Y_i) (write (X_i,) for samples of one tensor)")
    return data


def check_shards(parts: Sequence[tuple[Tensor, ...]], what: str) -> None:
    """Every worker's j-th tensor has the same shape after the first dimension and dtype kind, and
    every floating value is finite."""
    first = parts[0]
    for i, p in enumerate(parts):
        for j, (t, ref) in enumerate(zip(p, first)):
            who = f"its tensor {j}" if what == "test" else f"worker {i}'s tensor {j}"
            if t.shape[1:] != ref.shape[1:]:
                raise ConfigError(what, f"{who} has shape {_shape(t)}, worker 0's {_shape(ref)}; "
                                  "every worker's samples must have the same shape after the first dimension")
            if t.is_floating_point() != ref.is_floating_point():
                raise ConfigError(what, f"{who} is {t.dtype}, worker 0's {ref.dtype}; make them "
                                  "agree (integer labels: .long())")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                row = int(torch.nonzero(~torch.isfinite(t.reshape(t.shape[0], -1)).all(1))[0])
                raise ConfigError(what, f"{who} holds NaN or inf (first in row {row}); distbo "
                                  "refuses non-finite data (drop or impute those samples)")


def check_test(test: tuple[Tensor, ...], train: tuple[Tensor, ...], default_predict: bool) -> None:
    """The test set: finite, integer labels (its last tensor), inputs shaped like the training inputs."""
    if len(test) < 2:
        raise ConfigError("test", f"expected (X, Y), inputs and integer labels, got {len(test)} tensor")
    inputs, labels = test[0], test[-1]
    check_shards([test], "test")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ConfigError("test", f"its labels (the last tensor) are {_dtype(labels)}; test_loss / test_acc "
                          "need integer class labels (e.g. Y.long())")
    if default_predict and inputs.shape[1:] != train[0].shape[1:]:
        raise ConfigError("test", f"its inputs have shape {_shape(inputs)}, the workers' training inputs "
                          f"[*, {', '.join(map(str, train[0].shape[1:]))}]; give test inputs shaped like the "
                          "training inputs (or predict=)")


def has_forward(m: Any) -> bool:
    return not isinstance(m, nn.Module) or type(m).forward is not nn.Module.forward


def check_predict(upper: Any, lower: Any, test: Any, predict: Any) -> None:
    """With ``test=`` and no ``predict=``, evaluation calls low(up(X)): both modules need forward()."""
    if test is None or predict is not None:
        return
    missing = [(side, m) for side, m in (("upper", upper), ("lower", lower)) if not has_forward(m)]
    if missing:
        side, m = missing[0]
        raise ConfigError("predict", f"test= is evaluated with low(up(X)), but the {side} module "
                          f"{type(m).__name__} has no forward(); pass predict=lambda up, low, X: ... "
                          "returning the logits")


def warn_batch_size(batch_size: Any, size: Tensor, what: str) -> None:
    """One line on stderr when a batch is larger than a worker's shard (rows then repeat)."""
    from ..comm.job import rank

    if isinstance(batch_size, int) and batch_size > int(size.min()) and rank() == 0:
        i = int(size.argmin())
        sys.stderr.write(f"distbo: warning: {what} {batch_size} is larger than worker {i}'s {int(size[i])} "
                         "samples; minibatches are drawn with replacement, so rows repeat within a batch "
                         "(batch_size=\"full\" takes every sample once)\n")


# ----- the losses, for any Problem -----
def _one(batch: Any) -> Any:
    return tree_map(lambda t: t[0] if isinstance(t, Tensor) else t, batch)


def _describe(batch: Any) -> str:
    leaves = [t for t in tree_leaves(batch) if isinstance(t, Tensor)]
    return ", ".join(f"{_shape(t)} {_dtype(t)}" for t in leaves[:4])


def _hint(exc: Exception, batch: Any) -> str:
    labels = [t for t in tree_leaves(batch) if isinstance(t, Tensor)][-1:]
    msg = str(exc)
    if labels and labels[0].is_floating_point() and any(w in msg for w in ("Long", "Int", "int64", "dtype")):
        return f" (the batch's last tensor is {_dtype(labels[0])}: class labels must be integers, e.g. Y.long())"
    return ""


def _value(problem: Any, level: str, x: Tensor, y: Tensor, batch: Any) -> Tensor:
    where = f"worker 0's {'validation' if level == 'f' else 'training'} batch ({_describe(batch)})"
    try:
        out = getattr(problem, level)(x, y, batch)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: reported in one line
        raise ConfigError(level, f"{level}(...) failed on {where}: {type(exc).__name__}: {_first_line(exc)}"
                          f"{_hint(exc, batch)}") from None
    if not isinstance(out, Tensor):
        raise ConfigError(level, f"must return a scalar tensor (one worker's loss on one batch), got a "
                          f"{type(out).__name__}; compute it with torch operations so it can be differentiated")
    if out.dim() != 0:
        raise ConfigError(level, f"must return a scalar tensor (one worker's loss on one batch), got a tensor of "
                          f"shape {_shape(out)} (reduce it, e.g. with .mean())")
    if not bool(torch.isfinite(out)):
        raise ConfigError(level, f"is {float(out)} at the starting point (x0, y0) on {where}")
    return out


def _finite(level: str, batch: Any) -> None:
    """Every worker's batch holds finite floats (else: the level and the first such worker)."""
    for t in tree_leaves(batch):
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int(torch.nonzero(~torch.isfinite(t.reshape(t.shape[0], -1)).all(1))[0])
            raise ConfigError(level, f"worker {bad}'s {level}-batches hold NaN or inf; distbo refuses "
                              "non-finite data (drop or impute those samples)")


def _over_workers(level: str, fn: Any) -> Any:
    """``fn()``: an oracle over every worker; a failure there is one line naming the level."""
    try:
        return fn()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(level, f"runs on one worker's batch but fails when distbo differentiates it over the "
                          f"workers (torch.func.vmap, grad): {type(exc).__name__}: {_first_line(exc)}; use torch "
                          "operations only (no .item(), no Python branch on a tensor's value)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def check_losses(problem: Any, seed: int, chunk: int | None = None) -> None:
    """f and g at (x0, y0): finite batches; on worker 0's batches they run and return finite
    scalars; over all workers (``chunk`` at a time) they differentiate, and g curves in y."""
    from ..oracles import Oracles

    x0, y0 = problem.init(seed)
    key = rng.key(seed, 0xC4EC)
    batches = {level: problem.sample(level, torch.arange(problem.n_workers), key) for level in ("f", "g")}
    for level, batch in batches.items():
        _finite(level, batch)
        _value(problem, level, x0, y0, _one(batch))
    oracles = Oracles(problem, chunk)
    v = rng.normal(rng.key(seed, 0xC4ED), (problem.d_y,), dtype=y0.dtype)
    _over_workers("f", lambda: oracles.grad_f(x0, y0, batches["f"], reduce=True))
    hv = _over_workers("g", lambda: oracles.hvp_g(x0, y0, v, batches["g"], reduce=True)[1])
    if not bool(hv.abs().sum() > 0):
        raise ConfigError("g", "does not depend on y at the starting point (H_yy v = 0 over the workers' batches, "
                          "so L_g = mu_g = 0): g must be strongly convex in y, the lower-level variables (e.g. "
                          "add a ridge term 1e-3 * ||y||^2)")
