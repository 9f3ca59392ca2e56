"""Small composable pieces of the single-loop methods (SOBA family).

An *uplink* turns the workers' directions D = {'x': D_x, 'y': D_y, 'v': D_v} into the server's
estimates of their means, through one ``comm.exchange`` (compression, error feedback and
multi-step compression are uplinks). A *server filter* post-processes those estimates (the moving
average of CM-SOBA). Each piece has ``init(...) -> state`` and an update returning
``(state, output)``; algorithms compose them instead of branching inside their loop.
"""
from __future__ import annotations

from typing import Any

import torch

from ..comm.base import Communicator
from ..comm.messages import Dense, DenseSum, Message

Tensor = torch.Tensor
Directions = dict[str, Tensor]


def dense_messages(D: Directions, count: int) -> dict[str, Message]:
    """Uncompressed messages: per-worker rows [n, d], or already-summed vectors [d]."""
    return {k: Dense(d) if d.dim() == 2 else DenseSum(d, count) for k, d in D.items()}


class ExactUplink:
    """Uncompressed: the server gets the exact mean. Needs only the workers' sum."""

    per_worker = False

    def init(self, dims: dict[str, int], n_local: int) -> Any:
        return ()

    def send(self, state: Any, D: Directions, comm: Communicator, keys: dict[str, Tensor]):
        return state, comm.exchange(dense_messages(D, comm.n_local))


class NoFilter:
    """The server uses the estimates as they are."""

    def init(self, dims: dict[str, int]) -> Any:
        return ()

    def update(self, state: Any, est: Directions):
        return state, est
