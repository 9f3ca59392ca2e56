"""The Communicator: the only place where data crosses between workers and the server.

The server's state is replicated in every process (it is a deterministic function of what the
workers send), so a worker->server exchange is a reduction over all workers, and a server->worker
broadcast moves nothing between processes; both are counted in bits from the real messages.
The simulator hosts all workers in one process; comm/torch_dist.py hosts a block per process.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch

from .messages import Message, float_bits

Tensor = torch.Tensor


@dataclass
class CommStats:
    bits_up: int = 0  # cumulative, all workers
    bits_down: int = 0  # cumulative, all receivers
    comm_rounds: int = 0  # cumulative worker->server exchanges

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Communicator(ABC):
    n_workers: int  # all workers of the run
    local_workers: Tensor  # int64 global ids of the workers this process hosts
    rank: int = 0
    world_size: int = 1

    def __init__(self) -> None:
        self.stats = CommStats()

    @property
    def n_local(self) -> int:
        return int(self.local_workers.numel())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def _reduce(self, messages: dict[str, Message]) -> tuple[dict[str, Tensor], int, int]:
        """Global (sums per message, number of senders, total bits up) over all processes."""

    @abstractmethod
    def all_sum(self, t: Tensor) -> Tensor:
        """Sum of a tensor over processes, outside the bit accounting (bookkeeping only)."""

    def exchange(self, messages: dict[str, Message], mean: bool = True) -> dict[str, Tensor]:
        """One worker->server round: the server's mean (or sum) of each message over all senders.

        Every message of one exchange must come from the same senders.
        """
        sums, senders, bits = self._reduce(messages)
        self.stats.bits_up += bits
        self.stats.comm_rounds += 1
        if not mean:
            return sums
        return {k: s / max(senders, 1) for k, s in sums.items()}

    def broadcast(self, items: dict[str, Tensor | Message], receivers: int | None = None) -> None:
        """Count a server->worker broadcast of vectors or (compressed) messages to ``receivers``.

        The server state is replicated, so nothing moves; the bits are what a real server sends.
        """
        receivers = self.n_workers if receivers is None else receivers
        per_receiver = sum(m.bits() if isinstance(m, Message) else m.numel() * float_bits(m)
                           for m in items.values())
        self.stats.bits_down += receivers * per_receiver

    def close(self) -> None:
        pass
