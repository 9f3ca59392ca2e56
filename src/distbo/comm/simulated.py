"""The in-process simulator: all n workers live in this process on the worker axis."""
from __future__ import annotations

import torch

from .base import Communicator
from .messages import Message


class SimulatedComm(Communicator):
    def __init__(self, n_workers: int):
        super().__init__()
        self.n_workers = n_workers
        self.local_workers = torch.arange(n_workers)

    def _reduce(self, messages: dict[str, Message]):
        counts = {m.count for m in messages.values()}
        if len(counts) != 1:
            raise ValueError(f"messages of one exchange come from different sender counts: {counts}")
        return ({k: m.local_sum() for k, m in messages.items()}, counts.pop(),
                sum(m.bits() for m in messages.values()))

    def all_sum(self, t):
        return t
