"""Counter-based randomness: every random draw is a pure function of integer keys.

A key is an int64 tensor holding a 32-bit value (one per worker, or a scalar). Nothing here
keeps state, so a run is reproducible from its seed alone, resuming needs no generator state,
and a process hosting workers 4..7 draws exactly what the simulator draws for those workers.

The mixer is the 32-bit integer hash of T. Mueller (xor-shift / multiply); products stay below
2^59, so int64 arithmetic never overflows.
"""
from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B
_GOLDEN = 0x9E3779B1


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x & _M32
    x = ((x ^ (x >> 16)) * _MUL) & _M32
    x = ((x ^ (x >> 16)) * _MUL) & _M32
    return x ^ (x >> 16)


def _mix_int(x: int) -> int:
    x &= _M32
    x = ((x ^ (x >> 16)) * _MUL) & _M32
    x = ((x ^ (x >> 16)) * _MUL) & _M32
    return x ^ (x >> 16)


def key(*parts: int | torch.Tensor) -> torch.Tensor:
    """Fold integers (or int64 tensors, broadcast together) into one 32-bit key."""
    k: int | torch.Tensor = 0
    for p in parts:
        if isinstance(p, torch.Tensor) and p.dim() == 0:
            p = int(p)
        if isinstance(p, int) and isinstance(k, int):  # plain Python: no tensor overhead
            k = _mix_int(((k * 31 + _GOLDEN) & _M32) ^ (p & _M32))
        else:
            p = torch.as_tensor(p, dtype=torch.int64) & _M32
            k = _mix((torch.as_tensor(k, dtype=torch.int64) * 31 + _GOLDEN) & _M32 ^ p)
    return torch.as_tensor(k, dtype=torch.int64)


def bits32(k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform 32-bit integers of shape ``k.shape + shape`` (one independent stream per key)."""
    n = 1
    for s in shape:
        n *= s
    ctr = torch.arange(n, dtype=torch.int64).reshape(shape)
    k = k.reshape(k.shape + (1,) * len(shape))
    return _mix(_mix(k ^ (ctr * _GOLDEN & _M32)) + ctr)


def uniform(k: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Uniform(0, 1) samples, strictly inside the interval."""
    return ((bits32(k, shape).to(torch.float64) + 0.5) / 2.0**32).to(dtype)


def normal(k: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Standard normal samples by Box-Muller on two independent uniform streams."""
    u1 = uniform(key(k, 1), shape, torch.float64)
    u2 = uniform(key(k, 2), shape, torch.float64)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)).to(dtype)


def randint(k: torch.Tensor, high: int | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Integers in [0, high); ``high`` may be a tensor broadcasting against ``k.shape``."""
    high = torch.as_tensor(high, dtype=torch.int64)
    high = high.reshape(high.shape + (1,) * len(shape))
    return bits32(k, shape) % high


def subset(k: torch.Tensor, d: int, size: int) -> torch.Tensor:
    """A uniformly random ``size``-subset of range(d) per key, as sorted int64 indices."""
    scores = bits32(k, (d,))
    idx = torch.topk(scores, size, dim=-1, largest=False, sorted=False).indices
    return torch.sort(idx, dim=-1).values
