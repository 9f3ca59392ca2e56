"""Compressors and their payloads (docs/algorithms.md, compressors).

A compressor maps a batch of vectors u [n, d] (one row per worker) to a Payload: the tensors that
travel, each with its encoded width in bits per element, plus a fixed header per sender. Bits are
counted from those tensors, so they are exact by construction. Randomness comes from one key per
row (``distbo.rng``), derived from the run seed, round, variable and worker, so runs reproduce.

Kinds: 'exact' (identity), 'unbiased' (E C(u) = u, E||C(u) - u||^2 <= omega ||u||^2) and
'contractive' (||C(u) - u||^2 <= (1 - delta) ||u||^2).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..comm.messages import Message, float_bits
from ..errors import ConfigError
from ..registry import Registry

Tensor = torch.Tensor
Fields = dict[str, tuple[Tensor, int]]  # name -> (tensor [n, ...], bits per element)

COMPRESSORS = Registry("compressor")


class Compressor(ABC):
    kind: ClassVar[str]  # 'exact', 'unbiased' or 'contractive'
    spec: str = ""
    header_bits: int = 0  # per sender (e.g. a norm or a seed)

    @abstractmethod
    def encode(self, u: Tensor, keys: Tensor) -> Fields:
        """Rows of ``u`` [n, d] -> the fields that travel; ``keys`` [n] are the rows' random keys."""

    @abstractmethod
    def decode(self, fields: Fields, d: int) -> Tensor:
        """Fields of n senders -> their decoded vectors [n, d]."""

    def decode_sum(self, fields: Fields, d: int) -> Tensor:
        """Sum over the senders of their decoded vectors, [d] (the server's reduction; the
        simulator and torch.distributed both call this on the rows in worker order)."""
        return self.decode(fields, d).sum(0)

    def add_to(self, base: Tensor, fields: Fields, d: int, alpha: float = 1.0) -> Tensor:
        """base + alpha * decode(fields), row by row, as a new tensor."""
        return self.add_to_(base.clone(), fields, d, alpha)

    def add_to_(self, base: Tensor, fields: Fields, d: int, alpha: float = 1.0) -> Tensor:
        """base += alpha * decode(fields) in place (error-feedback shifts); returns base."""
        return base.add_(self.decode(fields, d), alpha=alpha)

    def omega(self, d: int) -> float:
        """Variance bound of an unbiased compressor."""
        raise NotImplementedError(f"{self.spec} is not unbiased")

    def delta(self, d: int) -> float:
        """Contraction factor of a contractive compressor (biased ones, or C/(1+omega))."""
        return 1.0 / (1.0 + self.omega(d))

    def compress(self, u: Tensor, keys: Tensor) -> "Payload":
        return Payload(self, self.encode(u, keys), u.shape[-1], u.shape[0])

    def __call__(self, u: Tensor, keys: Tensor) -> Tensor:
        """Compress and decode: C(u) row by row."""
        return self.compress(u, keys).decoded()

    def __repr__(self) -> str:
        return self.spec or type(self).__name__


class Payload(Message):
    """Compressed vectors of ``count`` senders, as the fields that really travel."""

    def __init__(self, compressor: Compressor, fields: Fields, d: int, count: int):
        self.compressor, self.fields, self.d, self.count = compressor, fields, d, count
        self._decoded: Tensor | None = None

    def bits(self) -> int:
        body = sum(t.numel() * width for t, width in self.fields.values())
        return body + self.count * self.compressor.header_bits

    def decoded(self) -> Tensor:
        if self._decoded is None:
            self._decoded = self.compressor.decode(self.fields, self.d)
        return self._decoded

    def local_sum(self) -> Tensor:
        return self.compressor.decode_sum(self.fields, self.d)


class Identity(Compressor):
    """No compression: d floats per message."""

    kind = "exact"
    spec = "identity"

    def encode(self, u, keys):
        return {"values": (u, float_bits(u))}

    def decode(self, fields, d):
        return fields["values"][0]

    def omega(self, d):
        return 0.0


@COMPRESSORS.register("identity", summary="no compression: 32 d bits per message; 32 bits per value in float32, 64 in float64")
def _identity(arg):
    if arg is not None:
        raise ConfigError("compressor", f"identity takes no argument, got 'identity:{arg}' (use 'identity')")
    return Identity()


def resolve_k(arg: str | None, d: int, field: str = "compressor") -> int:
    """K given as a count ('100') or a fraction of d ('0.1') -> a count in [1, d]."""
    if arg is None:
        raise ConfigError(field, "needs a size, e.g. topk:0.1 (fraction of d) or topk:100 (count)")
    try:
        val = float(arg)
    except ValueError:
        raise ConfigError(field, f"size '{arg}' is not a number; use a count (100) or a fraction (0.1)") from None
    if val <= 0:
        raise ConfigError(field, f"size must be > 0, got {arg}")
    if val < 1 or "." in arg:
        return max(1, min(d, round(val * d)))
    if int(val) > d:  # a count larger than the message would send more bits than the message itself
        raise ConfigError(field, f"size {arg} is more coordinates than a message of {d} values holds; "
                          f"use a count <= {d} or a fraction of d such as 0.1")
    return int(val)


def check_sizes(comp: Compressor, dims: tuple[int, ...], field: str = "compressor") -> None:
    """Refuse, before a run starts, a size K that is larger than a message of ``dims`` values."""
    if getattr(comp, "k_arg", None) is not None:
        for d in dims:
            try:
                resolve_k(comp.k_arg, d, field)
            except ConfigError as exc:
                raise ConfigError(field, f"{comp.spec}: {exc.message}") from None


def make_compressor(spec: str, field: str = "compressor") -> Compressor:
    """Parse a spec such as 'identity', 'topk:0.05', 'randk:100', 'qsgd:4', 'sign'."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(field, f"expected a compressor spec string, got {spec!r}; allowed: "
                          + ", ".join(COMPRESSORS.names()))
    name, _, arg = spec.partition(":")
    entry = COMPRESSORS.get(name, field)
    try:
        comp = entry.build(arg or None)
    except ConfigError as exc:  # builders name 'compressor'; report the field being parsed
        raise ConfigError(field, exc.message) from None
    comp.spec = spec
    return comp
