"""Counter-based randomness: every random draw is a pure function of integer keys.

A key is an int64 tensor holding a 32-bit value (one per worker, or a scalar). Nothing here
keeps state, so a run is reproducible from its seed alone, resuming needs no generator state,
and a process hosting workers 4..7 draws exactly what the simulator draws for those workers.

The mixer is the 32-bit integer hash of T. Mueller (xor-shift / multiply). Keys are folded in
Python integers; bulk draws are computed in place on int32 bit patterns (a wrapping multiply is
arithmetic mod 2^32), which gives the same bits as the int64 reference ``_mix`` several times faster.
Draws are made on the device of their key (a CUDA key gives CUDA draws): integer arithmetic is
exact, so the bits are the same on every device.
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


def _as_i32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 with the same 32 bits."""
    return ((x & _M32) ^ 0x80000000).sub_(0x80000000).to(torch.int32)


_COUNTERS: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _counters(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ctr, ctr * golden) as int32 bit patterns, cached per length and device."""
    if (n, device) not in _COUNTERS:
        ctr = torch.arange(n, dtype=torch.int64, device=device)
        _COUNTERS[n, device] = (_as_i32(ctr), _as_i32(ctr * _GOLDEN))
        if len(_COUNTERS) > 64:
            _COUNTERS.pop(next(iter(_COUNTERS)))
    return _COUNTERS[n, device]


def _mix32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """``_mix`` in place on int32 bit patterns (wrapping multiply = mod 2^32; logical shifts)."""
    for step in range(3):
        torch.bitwise_right_shift(x, 16, out=tmp).bitwise_and_(0xFFFF)
        x.bitwise_xor_(tmp)
        if step < 2:
            x.mul_(_MUL)
    return x


_CHUNK = 1 << 18  # elements per in-place block: its working set stays in cache


def _bits_i32(k: torch.Tensor, n: int) -> torch.Tensor:
    """The 32-bit draws of ``bits32`` as int32 bit patterns, shape k.shape + (n,).

    Computed in column blocks of about ``_CHUNK`` elements: eleven in-place passes over a block
    that fits in cache are several times faster than over one [rows, n] array in memory."""
    ctr, ctr_g = _counters(n, k.device)
    k32 = _as_i32(k.to(torch.int64)).reshape(-1, 1)
    out = torch.empty(k32.shape[0], n, dtype=torch.int32, device=k.device)
    width = max(1, _CHUNK // max(1, k32.shape[0]))
    tmp = torch.empty(k32.shape[0], min(width, n), dtype=torch.int32, device=k.device)
    for a in range(0, n, width):
        b = min(n, a + width)
        x, t = out[:, a:b], tmp[:, : b - a]
        torch.bitwise_xor(k32, ctr_g[a:b], out=x)
        _mix32_(x, t).add_(ctr[a:b])
        _mix32_(x, t)
    return out.reshape(k.shape + (n,))


def bits32(k: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform 32-bit integers (int64 in [0, 2^32)) of shape ``k.shape + shape``, one independent
    stream per key: mix(mix(k ^ c * golden) + c) for the counter c. Computed in place on int32."""
    n = 1
    for s in shape:
        n *= s
    return (_bits_i32(torch.as_tensor(k), n).to(torch.int64) & _M32).reshape(torch.as_tensor(k).shape + shape)


def uniform(k: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Uniform(0, 1) samples, strictly inside the interval."""
    n = 1
    for s in shape:
        n *= s
    k = torch.as_tensor(k)
    signed = _bits_i32(k, n).bitwise_xor_(-0x80000000).to(torch.float64)  # = unsigned - 2^31
    return signed.add_(2.0**31 + 0.5).mul_(2.0**-32).to(dtype).reshape(k.shape + shape)


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


def subset(k: torch.Tensor, d: int, size: int, ordered: bool = True) -> torch.Tensor:
    """A uniformly random ``size``-subset of range(d) per key, as sorted int64 indices (with
    ``ordered=False`` the same subset in torch.topk's order, deterministic, without the sort)."""
    scores = _bits_i32(torch.as_tensor(k), d).bitwise_xor_(-0x80000000)  # unsigned order as signed int32
    idx = torch.topk(scores, size, dim=-1, largest=False, sorted=False).indices
    return torch.sort(idx, dim=-1).values if ordered else idx
