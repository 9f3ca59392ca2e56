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
  Every rank then decodes all rows, in global worker order, with ``payload.compressor.decode`` and
  sums them: the same rows in the same order as the simulator, hence the same result.
Bits and senders are summed over ranks exactly, so the counters equal the simulator's. The bytes
handed to collectives are counted separately in ``wire`` (benchmarks compare them with the bits).

Backend: gloo for CPU tensors, nccl for CUDA ones (``backend_for``).
"""
from __future__ import annotations

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


def wire_dtype(t: Tensor, width: int) -> torch.dtype:
    """The dtype a field travels in: integers narrowed to the smallest signed type holding ``width`` bits."""
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        return t.dtype
    for dt in (torch.int8, torch.int16, torch.int32):
        if width < torch.iinfo(dt).bits <= torch.iinfo(t.dtype).bits:
            return dt
    return t.dtype


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
        kv = dict(part.split("=", 1) for part in spec.split(","))
        return cls(int(kv["rank"]), int(kv["exchange"]), kv.get("action", "raise"))

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
            senders, bits, rows = self._gather_sizes(packed, count, bits)
            sums.update(self._gather_payloads(packed, rows))
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

    def _layout(self, packed: dict[str, Payload]):
        """(payload key, field name, tensor, width, wire dtype) of every field, in a fixed order."""
        return [(k, name, t, width, wire_dtype(t, width))
                for k, m in packed.items() for name, (t, width) in sorted(m.fields.items())]

    def _gather_sizes(self, packed: dict[str, Payload], count: int, bits: int):
        """All ranks' senders, bits and field rows in one small all_gather (plus a layout check)."""
        layout = self._layout(packed)
        sig = zlib.crc32(repr([(k, n, tuple(t.shape[1:]), str(t.dtype), w, packed[k].d)
                               for k, n, t, w, _ in layout]).encode())
        meta = torch.tensor([sig, count, bits] + [t.shape[0] for _, _, t, _, _ in layout], dtype=torch.int64)
        rows = torch.stack(self._all_gather(meta)).cpu()
        if not bool((rows[:, 0] == sig).all()):
            raise RuntimeError(f"rank {self.rank}: the ranks sent differently shaped payloads in one "
                               f"exchange ({sorted(packed)}); every rank must send the same messages")
        return int(rows[:, 1].sum()), int(rows[:, 2].sum()), rows[:, 3:]

    def _gather_payloads(self, packed: dict[str, Payload], rows: Tensor) -> dict[str, Tensor]:
        """Every rank's fields as one padded byte buffer; decode all rows; sum."""
        layout = self._layout(packed)
        chunks = []
        for k, name, t, width, wdt in layout:
            w = t.to(wdt)
            if wdt != t.dtype and w.numel() and not bool((w.to(t.dtype) == t).all()):
                raise ValueError(f"compressor {packed[k].compressor!r}: field '{name}' holds values wider "
                                 f"than the {width} bits per element it declares")
            chunks.append(w.contiguous().reshape(-1).view(torch.uint8))
        row_bytes = [_row_nbytes(t, wdt) for _, _, t, _, wdt in layout]
        sizes = (rows * torch.tensor(row_bytes, dtype=torch.int64)).sum(1)
        local = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
        pad = int(sizes.max()) - local.numel()
        buf = torch.cat([local, local.new_zeros(pad)])
        gathered = [g.cpu() for g in self._all_gather(buf)]
        fields: dict[str, dict[str, list[Tensor]]] = {k: {} for k in packed}
        for r, data in enumerate(gathered):
            offset = 0
            for j, (k, name, t, _, wdt) in enumerate(layout):
                n = int(rows[r, j]) * row_bytes[j]
                part = data[offset:offset + n].clone().view(wdt).reshape((int(rows[r, j]),) + tuple(t.shape[1:]))
                fields[k].setdefault(name, []).append(part.to(t.dtype))
                offset += n
        sums = {}
        for k, m in packed.items():
            dev = next(iter(m.fields.values()))[0].device
            full = {name: (torch.cat(parts).to(dev), m.fields[name][1]) for name, parts in fields[k].items()}
            sums[k] = m.compressor.decode(full, m.d).sum(0)
        return sums


def _row_nbytes(t: Tensor, dtype: torch.dtype) -> int:
    n = 1
    for s in t.shape[1:]:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()
