"""Compressor transforms: the contractive form of an unbiased compressor, and multi-step compression.

- ``contractive(C)``: C' = C / (1 + omega) for an unbiased C (then E||C'(u) - u||^2 <=
  (1 - 1/(1+omega)) ||u||^2), C itself for a contractive or exact one. Same fields and bits as C;
  the scale is applied by the decoder, which knows omega from the spec and d.
- ``multi_step(C, R)`` (docs/algorithms.md, SOBA, MSC): R rounds of C' on the residual,
      u_hat = 0;  for r in 1..R: u_hat <- u_hat + C'(u - u_hat),
  sending all R payloads (the bits add up). The error is (1 - delta)^R ||u||^2 (in expectation for
  a random C). The R payloads travel as one Payload whose fields are prefixed 'r<i>/'; the
  decoder sums the decoded parts, so it depends on the fields only. Step r draws its randomness
  from the row key folded with r. An exact C has a zero residual after one step, so multi_step
  returns it unchanged.
"""
from __future__ import annotations

import torch

from .. import rng
from .base import Compressor, Fields


class Scaled(Compressor):
    """C / (1 + omega): the contractive form of an unbiased compressor."""

    kind = "contractive"

    def __init__(self, inner: Compressor):
        self.inner, self.spec = inner, f"{inner.spec}/(1+omega)"

    def factor(self, d: int) -> float:
        return 1.0 / (1.0 + self.inner.omega(d))

    def encode(self, u, keys):
        return self.inner.encode(u, keys)

    def decode(self, fields, d):
        return self.inner.decode(fields, d) * self.factor(d)

    def decode_sum(self, fields, d):
        return self.inner.decode_sum(fields, d) * self.factor(d)

    def add_to_(self, base, fields, d, alpha=1.0):
        return self.inner.add_to_(base, fields, d, alpha * self.factor(d))

    def delta(self, d):
        return self.factor(d)


def contractive(c: Compressor) -> Compressor:
    """The contractive form C' of any compressor (identity and contractive ones are unchanged)."""
    return Scaled(c) if c.kind == "unbiased" else c


class MultiStep(Compressor):
    """R rounds of C' on the residual; one Payload carrying the R parts."""

    kind = "contractive"

    def __init__(self, inner: Compressor, steps: int):
        self.inner, self.steps = inner, steps
        self.step_c = contractive(inner)
        self.spec = f"msc{steps}({inner.spec})"

    def encode(self, u: torch.Tensor, keys: torch.Tensor) -> Fields:
        d, fields = u.shape[-1], {}
        u_hat = torch.zeros_like(u)
        for r in range(self.steps):
            part = self.step_c.encode(u - u_hat, rng.key(keys, r))
            u_hat = u_hat + self.step_c.decode(part, d).to(u.dtype)
            fields.update({f"r{r}/{name}": f for name, f in part.items()})
        return fields

    @staticmethod
    def parts(fields: Fields) -> list[Fields]:
        """The R steps' fields, in order."""
        parts: dict[int, Fields] = {}
        for name, f in fields.items():
            r, _, sub = name.partition("/")
            parts.setdefault(int(r[1:]), {})[sub] = f
        return [parts[r] for r in sorted(parts)]

    def decode(self, fields: Fields, d: int) -> torch.Tensor:
        return sum(self.step_c.decode(p, d) for p in self.parts(fields))

    def decode_sum(self, fields: Fields, d: int) -> torch.Tensor:
        return sum(self.step_c.decode_sum(p, d) for p in self.parts(fields))

    def add_to_(self, base, fields, d, alpha=1.0):
        for p in self.parts(fields):
            self.step_c.add_to_(base, p, d, alpha)
        return base

    def delta(self, d):
        return 1.0 - (1.0 - self.step_c.delta(d)) ** self.steps


def multi_step(c: Compressor, steps: int) -> Compressor:
    """MSC with R = ``steps`` (an exact compressor is returned as it is)."""
    return c if c.kind == "exact" else MultiStep(c, steps)
