"""Sparsifiers: rand-K (unbiased) and top-K (contractive), docs/algorithms.md, compressors.

Both keep K coordinates per row, batched over the worker axis. K is given as a count ('100') or
as a fraction of d ('0.05') and resolved against each message's d (``resolve_k``).

- rand-K sends its K values and the 32-bit seed of the row; the decoder regenerates the same K
  indices from that seed (``rng.subset``, in its unsorted, deterministic order: sorting them cost
  a sort of n K indices per message and changes no sum) and scales by d/K: 32 K + 32 bits. Unbiased,
  omega = d/K - 1.
- top-K sends the K largest-magnitude values and their indices, each index in ceil(log2 d) bits:
  K (32 + ceil(log2 d)) bits. Contractive, delta = K/d.
"""
from __future__ import annotations

import math

import torch

from .. import rng
from ..comm.messages import float_bits
from ..errors import ConfigError
from .base import COMPRESSORS, Compressor, resolve_k

SEED_BITS = 32


def check_size(name: str, arg: str | None) -> str:
    """Validate K at parse time: a count >= 1 or a fraction in (0, 1]."""
    example = f"e.g. {name}:0.05 (fraction of d) or {name}:100 (count)"
    if arg is None:
        raise ConfigError("compressor", f"{name} needs a size K, {example}")
    try:
        val = float(arg)
    except ValueError:
        raise ConfigError("compressor", f"{name} size '{arg}' is not a number; {example}") from None
    if not math.isfinite(val) or val <= 0:
        raise ConfigError("compressor", f"{name} size must be > 0, got '{arg}'; {example}")
    fraction = val < 1 or "." in arg
    if fraction and val > 1:
        raise ConfigError("compressor", f"{name} fraction must be in (0, 1], got '{arg}'; {example}")
    if not fraction and val != int(val):
        raise ConfigError("compressor", f"{name} count must be an integer, got '{arg}'; {example}")
    return arg


def sparse_sum(idx: torch.Tensor, values: torch.Tensor, d: int) -> torch.Tensor:
    """Sum over rows of sparse vectors (row r has values[r] at idx[r]) without densifying each row."""
    return values.new_zeros(d).index_add_(0, idx.reshape(-1), values.reshape(-1))


def index_bits(d: int) -> int:
    """Bits of one coordinate index in [0, d)."""
    return max(0, math.ceil(math.log2(d)))


class RandK(Compressor):
    """K uniformly random coordinates per row, scaled by d/K (unbiased)."""

    kind = "unbiased"

    def __init__(self, k: str):
        self.k_arg = k
        self._recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # (seeds, their indices), newest last

    def k(self, d: int) -> int:
        return resolve_k(self.k_arg, d)

    def _indices(self, seeds: torch.Tensor, d: int, k: int) -> torch.Tensor:
        """rng.subset of the seeds; the decoder of the very payload just encoded in this process
        (the simulator) reuses the encoder's indices instead of drawing them again."""
        for known, idx in self._recent:
            if known is seeds and idx.shape[-1] == k:
                return idx
        idx = rng.subset(seeds, d, k, ordered=False)  # any fixed order: decoders draw the same
        self._recent = [*self._recent[-7:], (seeds, idx)]  # one round's variables and MSC steps
        return idx

    def encode(self, u, keys):
        d = u.shape[-1]
        seeds = keys.to(torch.int64) & 0xFFFFFFFF
        idx = self._indices(seeds, d, self.k(d))
        return {"values": (torch.gather(u, -1, idx), float_bits(u)), "seed": (seeds, SEED_BITS)}

    def _sparse(self, fields, d) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, scaled values) of every row."""
        values, seeds = fields["values"][0], fields["seed"][0]
        k = values.shape[-1]
        return self._indices(seeds, d, k), values * (d / k)

    def decode(self, fields, d):
        idx, values = self._sparse(fields, d)
        return values.new_zeros(values.shape[:-1] + (d,)).scatter_(-1, idx, values)

    def decode_sum(self, fields, d):
        return sparse_sum(*self._sparse(fields, d), d)

    def add_to_(self, base, fields, d, alpha=1.0):
        idx, values = self._sparse(fields, d)
        return base.scatter_add_(-1, idx, values * alpha)

    def omega(self, d):
        return d / self.k(d) - 1.0


class TopK(Compressor):
    """The K largest-magnitude coordinates of each row (contractive, delta = K/d)."""

    kind = "contractive"

    def __init__(self, k: str):
        self.k_arg = k

    def k(self, d: int) -> int:
        return resolve_k(self.k_arg, d)

    def encode(self, u, keys):
        d = u.shape[-1]
        idx = torch.topk(u.abs(), self.k(d), dim=-1, sorted=False).indices
        return {"values": (torch.gather(u, -1, idx), float_bits(u)), "indices": (idx, index_bits(d))}

    def decode(self, fields, d):
        values, idx = fields["values"][0], fields["indices"][0]
        return values.new_zeros(values.shape[:-1] + (d,)).scatter_(-1, idx, values)

    def decode_sum(self, fields, d):
        return sparse_sum(fields["indices"][0], fields["values"][0], d)

    def add_to_(self, base, fields, d, alpha=1.0):
        return base.scatter_add_(-1, fields["indices"][0], fields["values"][0] * alpha)

    def delta(self, d):
        return self.k(d) / d


@COMPRESSORS.register("randk", summary="rand-K: K random coordinates x d/K, unbiased (omega = d/K - 1); "
                      "32 K + 32 bits (K values and a 32-bit seed); 32 bits per value in float32, 64 in float64")
def _randk(arg):
    return RandK(check_size("randk", arg))


@COMPRESSORS.register("topk", summary="top-K: K largest-magnitude coordinates, contractive (delta = K/d); "
                      "K (32 + ceil(log2 d)) bits (K values and their indices); 32 bits per value in float32, 64 in float64")
def _topk(arg):
    return TopK(check_size("topk", arg))
