"""The Problem interface: per-worker losses on flat parameter vectors.

A problem defines, for ONE worker, the upper-level loss ``f(x, y, batch)`` and the lower-level
loss ``g(x, y, batch)`` as scalars, with ``x`` of shape [d_x], ``y`` of shape [d_y] and ``batch``
a pytree of that worker's samples. distbo vectorises these over the worker axis, differentiates
them and handles all communication, so a user-defined problem needs nothing else than its losses,
its data (``sample``), a starting point and an evaluation.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from .softmax_head import LinearSoftmaxHead

Batch = Any  # a pytree of tensors whose leading axis is the worker


def take(t: torch.Tensor, workers: torch.Tensor) -> torch.Tensor:
    """Rows ``workers`` of a per-worker tensor: a view when they are a contiguous block (the usual
    case: all workers, or one process's block), a gathered copy otherwise."""
    n = workers.numel()
    if n and int(workers[-1]) - int(workers[0]) == n - 1 and bool((workers.diff() == 1).all()):
        return t[int(workers[0]): int(workers[0]) + n]
    return t[workers]


@dataclass(frozen=True)
class Representation:
    """An optional fact about g that lets distbo compute the lower level at a fixed x once:

        g(x, y, batch) == head(features(x, batch["inputs"]), y, batch)   for every g-batch,

    where ``features`` maps each sample on its own (row b of the result depends on x and
    ``inputs[b]`` only), so the features of a worker's training samples can be computed once per
    x and gathered by ``batch["index"]`` (their positions in the training split) for every step
    on y (algorithms/fixed_x.py). All three are for ONE worker, like ``f`` and ``g``.

    ``pool(workers)`` gives those workers' whole training shards: ``inputs`` [n, S, ...] (padded
    to the largest shard), ``index`` [n, S] int64 (their positions; padding repeats a valid one)
    and ``mask`` [n, S] bool (False on padding); ``samples`` is the training split's size.
    ``sample(workers, key)``, if given, is ``sample("g", workers, key)`` without ``inputs`` (the
    same draw): what ``head`` needs, without gathering inputs the features already hold.
    ``softmax``, if given, says ``head`` is a linear softmax head (mean cross-entropy plus
    l2/2 ||y||^2, problems/softmax_head.py): its y-derivatives are then taken in closed form.
    """

    features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    pool: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    samples: int
    sample: Callable[[torch.Tensor, torch.Tensor], Any] | None = None
    softmax: LinearSoftmaxHead | None = None


def rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` for an integer ``index`` of any shape: the same values, gathered row by row
    (``index_select``), several times faster on CPU than advanced indexing for wide rows."""
    return t.index_select(0, index.reshape(-1)).reshape(*index.shape, *t.shape[1:])


class Problem(ABC):
    """Base class of every task. Subclasses set ``n_workers``, ``d_x``, ``d_y`` and ``dtype``."""

    n_workers: int
    d_x: int
    d_y: int
    dtype: torch.dtype = torch.float32
    #: measured overrides where the user sets none: for a hyper-parameter with a derived default
    #: (step sizes) the base value before the compressor / local-step scaling (distbo/defaults.py)
    defaults: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def f(self, x: torch.Tensor, y: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Upper-level loss of one worker on one of its batches (a scalar)."""

    @abstractmethod
    def g(self, x: torch.Tensor, y: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Lower-level loss of one worker on one of its batches (a scalar, strongly convex in y)."""

    @abstractmethod
    def sample(self, level: str, workers: torch.Tensor, key: torch.Tensor) -> Batch:
        """Batches for ``workers`` (int64 global ids) at ``level`` ('f' or 'g').

        Must be a pure function of (workers, key): use ``distbo.rng`` with per-worker keys
        ``rng.key(key, worker)`` so any process hosting a worker draws the same batch.
        """

    def init(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting point (x0, y0); zeros by default."""
        return torch.zeros(self.d_x, dtype=self.dtype), torch.zeros(self.d_y, dtype=self.dtype)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Metrics at the server's (x, y). Must include ``upper_loss``."""
        return {}

    def draws_per_shard(self, level: str) -> int:
        """How many of ``level``'s batches cover a worker's shard on average (1 if unknown): the
        hypergradient with the lower level solved (hypergrad.py) averages that many fixed draws."""
        return 1

    def describe(self) -> dict[str, Any]:
        """Facts recorded in config.json (data sizes, client label histograms, ...)."""
        return {}

    def constants(self) -> dict[str, Any] | None:
        """Smoothness constants for the derived defaults (distbo/defaults.py), if known in closed
        form: ``L_g`` and ``mu_g`` (largest / smallest eigenvalue of the workers' mean H_yy),
        ``L_g_max`` (largest single-worker L_g,i) and optionally ``L_phi`` (smoothness of Phi).
        None (the default): distbo estimates them by power iteration at (x0, y0)."""
        return None

    def representation(self) -> Representation | None:
        """How g depends on x through per-sample features, if it does (``Representation``); None
        (the default): the lower-level loops differentiate g as a whole."""
        return None

    # --- optional pieces a problem may provide for sub-model (pruning) algorithms ---
    def units(self) -> dict[str, Any] | None:
        """Structured-pruning layout (see algorithms/rabo.py); None if the task has none."""
        return None
