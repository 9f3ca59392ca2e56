"""Messages: what a block of local workers sends for one variable in one exchange.

A message knows how many workers sent it, how many bits it took on the wire, the tensors that
really travel (``wire``) and how to turn them back into vectors (``local_sum`` over its senders).
Compressed payloads (compressors/base.py) are messages too.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

Tensor = torch.Tensor


def float_bits(t: Tensor) -> int:
    """Bits of one element of a floating tensor as it is sent (32 for float32)."""
    return torch.finfo(t.dtype).bits


class Message(ABC):
    count: int  # number of local workers that sent it

    @abstractmethod
    def bits(self) -> int:
        """Total bits sent by the local senders."""

    @abstractmethod
    def local_sum(self) -> Tensor:
        """Sum over the local senders of the decoded vectors, shape [d]."""

    def decoded(self) -> Tensor:
        """The decoded vector of every local sender, [count, d] (where the message keeps them)."""
        raise NotImplementedError(f"{type(self).__name__} keeps only the sum")


class Dense(Message):
    """Uncompressed per-worker vectors [n_local, d]."""

    def __init__(self, values: Tensor):
        self.values, self.count = values, values.shape[0]

    def bits(self) -> int:
        return self.values.numel() * float_bits(self.values)

    def local_sum(self) -> Tensor:
        return self.values.sum(0)

    def decoded(self) -> Tensor:
        return self.values


class DenseSum(Message):
    """Uncompressed vectors of ``count`` workers, kept only as their sum.

    Each worker still sends its own d floats (so the bits are count * d * 32); the simulator
    just never forms the per-worker vectors when the server needs only their mean.
    """

    def __init__(self, total: Tensor, count: int):
        self.total, self.count = total, count

    def bits(self) -> int:
        return self.count * self.total.numel() * float_bits(self.total)

    def local_sum(self) -> Tensor:
        return self.total
