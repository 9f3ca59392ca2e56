"""The Communicator over torch.distributed: each process hosts a contiguous block of workers.

Rank r of W hosts workers [r n/W, (r+1) n/W). An exchange (comm/base.py) really moves what the
simulator only counts, in as few collectives as possible:

- Dense / DenseSum messages (and any message known only by its local sum) are added up by ONE
  all_reduce of a flat buffer per dtype holding every local sum, followed by the number of local
  senders and the bits they sent, written as small integer limbs so that the float sum is exact.
- Payloads (compressed messages) travel in their compressed form: the fields of every payload
  (e.g. top-K values and indices; integer fields narrowed to the width the compressor declares)
  go as one byte buffer through ONE all_gather. Ranks may host different numbers of senders
  (client sampling; gloo rejects unequal sizes), so one small all_gather of the sizes comes first
  (it also carries the senders and the bits); buffers are padded to the largest and trimmed after.
  Every rank then decodes all rows, in global worker order, with ``payload.compressor.decode_sum`` and
  sums them: the same rows in the same order as the simulator, hence the same result.
Bits and senders are summed over ranks exactly, so the counters equal the simulator's. The bytes
handed to collectives are counted separately in ``wire`` (benchmarks compare them with the bits).

Backend: gloo for CPU tensors, nccl for CUDA ones (``backend_for``).
"""
from __future__ import annotations

import math
import os
import time
import zlib
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from ..compressors.base import Payload
from ..errors import ConfigError
from .base import Communicator
from .messages import Message

Tensor = torch.Tensor

LIMB, N_LIMBS = 1 << 11, 6  # integers < 2^66 as 6 limbs < 2^11: sums of <= 4096 ranks stay exact in float32
FAULT_ENV = "DISTBO_TEST_FAULT"  # test-only fault injection, see ``Fault``


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def to_limbs(values: list[int], dtype: torch.dtype) -> Tensor:
    """Non-negative integers as base-2^11 digits (exact in any float dtype after a sum over ranks)."""
    digits = []
    for v in values:
        if v < 0 or v >= LIMB**N_LIMBS:
            raise ValueError(f"cannot pack {v} into {N_LIMBS} limbs")
        for _ in range(N_LIMBS):
            v, r = divmod(v, LIMB)
            digits.append(r)
    return torch.tensor(digits, dtype=dtype)


def from_limbs(t: Tensor) -> list[int]:
    digits = t.double().round().to(torch.int64).tolist()
    return [sum(c * LIMB**j for j, c in enumerate(digits[i:i + N_LIMBS])) for i in range(0, len(digits), N_LIMBS)]


def wire_dtype(t: Tensor, width: int, signed: bool = True) -> torch.dtype:
    """The dtype an integer field travels in: the smallest (un)signed integer type of at least
    ``width`` bits (the declared width includes the sign bit of signed fields). Floating fields
    travel as they are; boolean fields are packed 8 per byte (``encode_field``)."""
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        return t.dtype
    kinds = (torch.int8, torch.int16, torch.int32) if signed else (torch.uint8, torch.uint16, torch.uint32)
    for dt in kinds:
        if width <= 8 * dt.itemsize < 8 * t.dtype.itemsize:
            return dt
    return t.dtype


def field_nbytes(rows: int, t: Tensor, wdt: torch.dtype) -> int:
    """Bytes of ``rows`` rows of field ``t`` on the wire."""
    n = rows * math.prod(t.shape[1:])
    return -(-n // 8) if wdt == torch.bool else n * wdt.itemsize


def encode_field(t: Tensor, wdt: torch.dtype) -> Tensor:
    """A field as flat bytes in its wire dtype (booleans: 8 per byte)."""
    flat = t.reshape(-1)
    if wdt == torch.bool:
        pad = flat.new_zeros(-flat.numel() % 8)
        octets = torch.cat([flat, pad]).reshape(-1, 8).to(torch.uint8)
        return (octets << torch.arange(8, dtype=torch.uint8, device=t.device)).sum(-1, dtype=torch.uint8)
    return flat.to(wdt).contiguous().view(torch.uint8)


def decode_field(data: Tensor, rows: int, t: Tensor, wdt: torch.dtype) -> Tensor:
    """Inverse of ``encode_field`` for ``rows`` rows shaped like ``t``'s."""
    shape = (rows,) + tuple(t.shape[1:])
    if wdt == torch.bool:
        bits = (data.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8, device=data.device)) & 1
        return bits.reshape(-1)[:math.prod(shape)].to(torch.bool).reshape(shape)
    return data.clone().view(wdt).reshape(shape).to(t.dtype)


class CollectiveError(RuntimeError):
    """A collective failed on this rank (usually because another process failed or stopped first)."""


def short_error(exc: BaseException, limit: int = 300) -> str:
    line = (str(exc).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit] + "..."


@dataclass
class WireStats:
    """What this process handed to collectives (bytes of the input tensors)."""

    bytes: int = 0  # exchanges
    collectives: int = 0  # exchanges
    other_bytes: int = 0  # bookkeeping (all_sum)


@dataclass
class Fault:
    """Test-only fault injection: ``DISTBO_TEST_FAULT="rank=1,exchange=3,action=raise"``.

    At its ``exchange``-th exchange (0-based), rank ``rank`` raises (``raise``), dies without any
    clean-up (``exit``, exit code 17) or stops answering (``hang``). Unset (always, outside tests)
    it does nothing.
    """

    rank: int
    exchange: int
    action: str = "raise"

    @classmethod
    def from_env(cls) -> "Fault | None":
        spec = os.environ.get(FAULT_ENV)
        if not spec:
            return None
        try:
            kv = dict(part.split("=", 1) for part in spec.split(","))
            fault = cls(int(kv["rank"]), int(kv["exchange"]), kv.get("action", "raise"))
        except (KeyError, ValueError):
            fault = None
        if fault is None or fault.action not in ("raise", "exit", "hang"):
            raise ConfigError(FAULT_ENV, f"expected rank=R,exchange=K[,action=raise|exit|hang], got '{spec}'")
        return fault

    def maybe_fire(self, rank: int, exchange: int) -> None:
        if rank != self.rank or exchange != self.exchange:
            return
        if self.action == "exit":
            os._exit(17)
        if self.action == "hang":
            while True:
                time.sleep(1)
        raise RuntimeError(f"injected fault ({FAULT_ENV}) at exchange {exchange}")


class TorchDistComm(Communicator):
    """This process's block of workers in a torch.distributed job (see the module docstring)."""

    def __init__(self, n_workers: int, device: torch.device | str = "cpu", group=None):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("TorchDistComm needs torch.distributed to be initialised (see distbo.launch)")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        if n_workers % self.world_size:
            raise ConfigError("workers", f"{n_workers} workers cannot be split over {self.world_size} "
                              f"processes; use a worker count divisible by {self.world_size}")
        self.n_workers, self.device = n_workers, torch.device(device)
        block = n_workers // self.world_size
        self.local_workers = torch.arange(self.rank * block, (self.rank + 1) * block)
        self.wire = WireStats()
        self.fault = Fault.from_env()

    # --- collectives, counted ---
    def _call(self, op, *args) -> None:
        try:
            op(*args, group=self.group)
        except RuntimeError as exc:
            raise CollectiveError(f"{op.__name__} failed on rank {self.rank} (another process probably "
                                  f"failed or stopped first): {short_error(exc)}") from exc

    def _all_reduce(self, t: Tensor) -> Tensor:
        t = t.to(self.device)
        self.wire.bytes += t.nbytes
        self.wire.collectives += 1
        self._call(dist.all_reduce, t)
        return t

    def _all_gather(self, t: Tensor) -> list[Tensor]:
        t = t.to(self.device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self.wire.bytes += t.nbytes
        self.wire.collectives += 1
        self._call(dist.all_gather, out, t)
        return out

    def all_sum(self, t: Tensor) -> Tensor:
        buf = t.detach().to(self.device).clone()
        self.wire.other_bytes += buf.nbytes
        self._call(dist.all_reduce, buf)
        return buf.to(t.device)

    def wire_stats(self) -> dict[str, int]:
        return asdict(self.wire)

    # --- one exchange ---
    def _reduce(self, messages: dict[str, Message]):
        if self.fault is not None:
            self.fault.maybe_fire(self.rank, self.stats.comm_rounds)
        counts = {m.count for m in messages.values()}
        if len(counts) != 1:
            raise ValueError(f"messages of one exchange come from different sender counts: {counts}")
        count, bits = counts.pop(), sum(m.bits() for m in messages.values())
        packed = {k: m for k, m in sorted(messages.items()) if isinstance(m, Payload)}
        summed = {k: m for k, m in sorted(messages.items()) if not isinstance(m, Payload)}
        sums: dict[str, Tensor] = {}
        if packed:
            senders, bits, sizes = self._gather_sizes(packed, count, bits)
            sums.update(self._gather_payloads(packed, sizes))
        ints = None if packed else [count, bits]
        reduced, ints = self._reduce_dense(summed, ints)
        sums.update(reduced)
        if not packed:
            senders, bits = ints
        return {k: sums[k] for k in messages}, senders, bits

    def _reduce_dense(self, summed: dict[str, Message], ints: list[int] | None):
        """One all_reduce per dtype of the local sums; ``ints`` (if any) ride along exactly."""
        local = {k: m.local_sum() for k, m in summed.items()}
        groups: dict[torch.dtype, list[str]] = {}
        for k, s in local.items():
            groups.setdefault(s.dtype, []).append(k)
        if ints is not None and not groups:
            groups[torch.float64] = []
        out: dict[str, Tensor] = {}
        for i, (dtype, keys) in enumerate(groups.items()):
            parts = [local[k].reshape(-1) for k in keys]
            if i == 0 and ints is not None:
                parts.append(to_limbs(ints, dtype).to(parts[0].device if parts else "cpu"))
            buf = self._all_reduce(torch.cat(parts))
            offset = 0
            for k in keys:
                n = local[k].numel()
                out[k] = buf[offset:offset + n].reshape(local[k].shape).to(local[k].device)
                offset += n
            if i == 0 and ints is not None:
                ints = from_limbs(buf[offset:].cpu())
        return out, ints

    @staticmethod
    def _fields(packed: dict[str, Payload]):
        """(payload key, field name, tensor, declared width) of every field, in a fixed order."""
        return [(k, name, t, width) for k, m in packed.items() for name, (t, width) in sorted(m.fields.items())]

    def _gather_sizes(self, packed: dict[str, Payload], count: int, bits: int):
        """All ranks' senders, bits and, per field, 2 rows + (holds negative integers), in one small
        all_gather, with a check that every rank sends the same kind of payloads."""
        fields = self._fields(packed)
        sig = zlib.crc32(repr([(k, n, tuple(t.shape[1:]), str(t.dtype), w, packed[k].d)
                               for k, n, t, w in fields]).encode())
        rows = [2 * t.shape[0] + int(t.numel() > 0 and not t.dtype.is_floating_point and t.dtype != torch.bool
                                     and bool((t < 0).any())) for _, _, t, _ in fields]
        table = torch.stack(self._all_gather(torch.tensor([sig, count, bits] + rows, dtype=torch.int64))).cpu()
        if not bool((table[:, 0] == sig).all()):
            raise RuntimeError(f"rank {self.rank}: the ranks sent differently shaped payloads in one "
                               f"exchange ({sorted(packed)}); every rank must send the same messages")
        per_field = table[:, 3:]
        return int(table[:, 1].sum()), int(table[:, 2].sum()), (per_field // 2, (per_field % 2).any(0).tolist())

    def _gather_payloads(self, packed: dict[str, Payload], sizes) -> dict[str, Tensor]:
        """Every rank's fields as one padded byte buffer; decode all rows in worker order; sum."""
        rows, signed = sizes
        layout = [(k, name, t, width, wire_dtype(t, width, sgn))
                  for (k, name, t, width), sgn in zip(self._fields(packed), signed)]
        chunks = []
        for k, name, t, width, wdt in layout:
            if wdt not in (t.dtype, torch.bool) and t.numel() and not bool((t.to(wdt).to(t.dtype) == t).all()):
                raise ValueError(f"compressor {packed[k].compressor!r}: field '{name}' holds values wider "
                                 f"than the {width} bits per element it declares")
            chunks.append(encode_field(t, wdt))
        nbytes = [[field_nbytes(int(rows[r, j]), t, wdt) for j, (_, _, t, _, wdt) in enumerate(layout)]
                  for r in range(rows.shape[0])]
        local = torch.cat(chunks)
        buf = torch.cat([local, local.new_zeros(max(map(sum, nbytes)) - local.numel())])
        parts: dict[str, dict[str, list[Tensor]]] = {k: {} for k in packed}
        for r, data in enumerate(self._all_gather(buf)):
            data, offset = data.cpu(), 0
            for j, (k, name, t, _, wdt) in enumerate(layout):
                part = decode_field(data[offset:offset + nbytes[r][j]], int(rows[r, j]), t, wdt)
                parts[k].setdefault(name, []).append(part)
                offset += nbytes[r][j]
        sums = {}
        for k, m in packed.items():
            full = {name: (torch.cat(p).to(m.fields[name][0].device), m.fields[name][1])
                    for name, p in parts[k].items()}
            sums[k] = m.compressor.decode_sum(full, m.d)
        return sums
