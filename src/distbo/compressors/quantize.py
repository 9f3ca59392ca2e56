"""Quantizers: QSGD (unbiased) and scaled sign (contractive), docs/algorithms.md, compressors.

- qsgd:s sends the row norm (one float) and, per coordinate, a sign bit and a level in 0..s
  (ceil(log2(s+1)) bits): 32 + d (1 + ceil(log2(s+1))) bits. The level is the stochastic rounding
  of s |u_j| / ||u|| (up with probability equal to the fractional part), so
  C(u)_j = ||u|| sign(u_j) level_j / s is unbiased with omega = min(d/s^2, sqrt(d)/s)
  (Alistarh et al., NeurIPS 2017).
- sign sends ||u||_1 / d (one float) and one bit per coordinate: 32 + d bits. C(u) =
  (||u||_1/d) sign(u) (a zero coordinate is sent as +), and ||C(u) - u||^2 = ||u||^2 - ||u||_1^2/d
  <= (1 - 1/d) ||u||^2: contractive with delta = 1/d (in the worst case; ||u||_1^2/(d ||u||^2)
  for a given u).
"""
from __future__ import annotations

import math

import torch

from .. import rng
from ..comm.messages import float_bits
from ..errors import ConfigError
from .base import COMPRESSORS, Compressor


def _level_dtype(s: int) -> torch.dtype:
    return torch.int8 if s <= 127 else torch.int16 if s <= 32767 else torch.int32


class QSGD(Compressor):
    """s-level stochastic quantization with the row norm (unbiased)."""

    kind = "unbiased"

    def __init__(self, s: int):
        self.s = s

    def encode(self, u, keys):
        d, s = u.shape[-1], self.s
        u64 = u.to(torch.float64)
        norm = u64.norm(dim=-1, keepdim=True)
        r = s * u64.abs() / norm.clamp_min(torch.finfo(torch.float64).tiny)
        low = torch.floor(r)
        level = low + (rng.uniform(keys, (d,), torch.float64) < r - low)
        signed = (torch.sign(u64) * level).to(_level_dtype(s))
        return {"norm": (norm.squeeze(-1).to(u.dtype), float_bits(u)),
                "levels": (signed, 1 + math.ceil(math.log2(s + 1)))}

    def decode(self, fields, d):
        norm, levels = fields["norm"][0], fields["levels"][0]
        return norm.unsqueeze(-1) * levels.to(norm.dtype) / self.s

    def omega(self, d):
        return min(d / self.s**2, math.sqrt(d) / self.s)


class Sign(Compressor):
    """(||u||_1 / d) sign(u), one bit per coordinate (contractive, delta >= 1/d)."""

    kind = "contractive"

    def encode(self, u, keys):
        scale = u.abs().mean(dim=-1)
        return {"scale": (scale, float_bits(u)), "signs": (u >= 0, 1)}

    def decode(self, fields, d):
        scale, signs = fields["scale"][0], fields["signs"][0]
        return scale.unsqueeze(-1) * (2 * signs.to(scale.dtype) - 1)

    def delta(self, d):
        return 1.0 / d


@COMPRESSORS.register("qsgd", summary="QSGD: s-level stochastic quantization, unbiased "
                      "(omega = min(d/s^2, sqrt(d)/s)); 32 + d (1 + ceil(log2(s+1))) bits (the norm is a value); 32 bits per value in float32, 64 in float64")
def _qsgd(arg):
    if arg is None:
        raise ConfigError("compressor", "qsgd needs a number of levels s >= 1, e.g. qsgd:4")
    try:
        s = int(arg)
    except ValueError:
        s = 0
    if s < 1 or str(s) != arg.strip():
        raise ConfigError("compressor", f"qsgd levels must be an integer >= 1, got '{arg}' (e.g. qsgd:4)")
    return QSGD(s)


@COMPRESSORS.register("sign", summary="scaled sign (||u||_1/d) sign(u), contractive (delta >= 1/d); "
                      "32 + d bits (the scale is a value); 32 bits per value in float32, 64 in float64")
def _sign(arg):
    if arg is not None:
        raise ConfigError("compressor", f"sign takes no argument, got 'sign:{arg}' (use 'sign')")
    return Sign()
