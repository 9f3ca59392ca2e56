"""What RABO / RAFBO clients send and receive (docs/algorithms.md, RABO with sections 1 and 5).

Up-link. A client sends, per variable (x, y, v), the changes of its kept coordinates: its
*sub-model vector* u_i (k_i entries, k_i set by its resource level). The server adds, per
coordinate, the sum of what the clients covering it sent (then divides by their number,
``submodels.coverage_average``).
- ``KeptUplink`` (identity compressor): the kept values travel as they are (``submodels.Kept``).
- ``CompressedKeptUplink``: the up-link compressor acts on u_i (top-K of the kept coordinates,
  rand-K, QSGD, sign: K and the bits follow k_i). For a contractive compressor (top-K, sign) with
  per-client error feedback (EF21 / EF-SOBA style, ``ErrorFeedbackUplink``'s rule with rho = 1):
  client i keeps a shift m_i on the full vector, of which it reads and moves its kept
  coordinates only, sends c_i = C(u_i - m_i[kept_i]) and sets m_i[kept_i] += c_i; the server's
  estimate of u_i is m_i[kept_i] + c_i. The masks move between rounds (rolling, random), so the
  server cannot work with the sum of the shifts as EF-SOBA does: it keeps every client's shift
  (a function of what that client sent, replicated in every process) and the coverage sum adds
  m_i[kept_i] + c_i over the covering clients only. An unbiased compressor (rand-K, QSGD) is
  used without shifts (E C(u_i) = u_i, as C-SOBA).
  Clients of one level send rows of equal length; levels differ (and in the coordinate layout
  one vmapped group mixes them), so one payload per variable carries a block of fields per
  level ('L<level>/<field>'), each with the rows of that level's senders in worker order, and a
  level none of a process's clients has is sent as zero rows: every process sends the same
  kind of payload. ``OnKept`` decodes such a payload into every sender's decoded values side by
  side (their sum over disjoint slots), which the server scatters to the senders' positions.

Down-link. Each round the server sends every participating client its sub-model (the kept
coordinates of x, y and v; the whole vectors in the coordinate layout, where clients compute
on full vectors).
- ``KeptDownlink``: uncompressed (``submodels.PerReceiver`` counts the floats).
- ``CompressedKeptDownlink``: server-side error feedback per client (EF21-P, as SOBA's
  ``CompressedDownlink`` but with one copy per client, since clients receive different
  coordinates): the server keeps z_hat_i, client i's copy of x, y, v (all start at z_0), sends
  q_i = C'(z[recv_i] - z_hat_i[recv_i]) on the client's received coordinates (C' the contractive
  form of the down-link compressor) and both sides set z_hat_i[recv_i] += q_i; client i starts
  its local steps from z_hat_i[recv_i]. A coordinate a client has not received for a while
  (rolling windows) has a large difference and is sent first.
Keys: up-link (round, STREAM_COMPRESS, 0, variable, worker), down-link (..., 1, variable, worker).
"""
from __future__ import annotations

import torch

from .. import rng
from ..comm.base import Communicator
from ..comm.messages import float_bits
from ..compressors import Compressor, Payload, contractive
from ..compressors.base import Fields
from .base import STREAM_COMPRESS
from .submodels import SPACE, VARS, Kept, Layout, PerReceiver, Plan

Tensor = torch.Tensor
Senders = dict[int, tuple[Tensor, Tensor]]  # level -> (global worker ids [n_L], positions [n_L, k_L])


def link_keys(round_key: Tensor, direction: int, var: int, workers: Tensor) -> Tensor:
    """One key per client for compressing variable ``var`` (direction 0: up, 1: down)."""
    return rng.key(round_key, STREAM_COMPRESS, direction, var, workers)


def senders(layout: Layout, plan: Plan, name: str) -> Senders:
    """Every level's senders of variable ``name`` (all levels, empty where no client sends)."""
    out = {L: (torch.zeros(0, dtype=torch.int64), torch.zeros(0, layout.kept_size(L, SPACE[name]),
                                                            dtype=torch.int64))
           for L in range(len(layout.levels))}
    for grp in plan.groups:
        for L, ids, pos, _ in layout.rows(grp, name):
            out[L] = (ids, pos)
    return out


class OnKept(Compressor):
    """``inner`` on each client's sub-model vector; decodes a payload of all senders (listed in
    ``who``, levels in order, worker order within a level) into their decoded rows side by side."""

    def __init__(self, inner: Compressor, who: Senders):
        self.inner, self.who = inner, who
        self.kind, self.spec, self.header_bits = inner.kind, f"kept({inner.spec})", inner.header_bits
        self.slots = sum(pos.numel() for _, pos in who.values())

    def payload(self, rows: dict[int, tuple[Tensor, Tensor]], dtype: torch.dtype) -> Payload:
        """``rows[L]`` = (this process's level-L rows [n, k_L], their keys [n]) -> one Payload."""
        fields: Fields = {}
        count = 0
        for L, (_, pos) in self.who.items():
            u, keys = rows.get(L, (torch.zeros(0, pos.shape[1], dtype=dtype), torch.zeros(0, dtype=torch.int64)))
            count += u.shape[0]
            fields.update({f"L{L}/{n}": f for n, f in self.inner.encode(u, keys).items()})
        return Payload(self, fields, self.slots, count)

    def encode(self, u, keys):
        raise NotImplementedError("OnKept payloads are built per level with payload()")

    def decode(self, fields, d):
        raise NotImplementedError("OnKept decodes every sender's rows together (decode_sum)")

    def parts(self, fields: Fields) -> dict[int, Fields]:
        out: dict[int, Fields] = {L: {} for L in self.who}
        for name, f in fields.items():
            L, _, sub = name.partition("/")
            out[int(L[1:])][sub] = f
        return out

    def decode_sum(self, fields, d):
        """The senders' decoded rows, flattened level after level: the sum of their embeddings into
        disjoint slots of a vector of ``slots`` entries (the simulator and every process decode
        the same rows in the same order)."""
        parts = self.parts(fields)
        return torch.cat([self.inner.decode(parts[L], pos.shape[1]).reshape(-1) for L, (_, pos) in self.who.items()])


def split_slots(flat: Tensor, who: Senders) -> dict[int, Tensor]:
    """``OnKept.decode_sum``'s vector -> each level's decoded rows [n_L, k_L]."""
    out, off = {}, 0
    for L, (_, pos) in who.items():
        out[L] = flat[off:off + pos.numel()].reshape(pos.shape)
        off += pos.numel()
    return out


class KeptUplink:
    """Uncompressed: the kept values travel; the server gets each variable's per-coordinate sum."""

    def __init__(self, layout: Layout, dims: dict[str, int], dtype: torch.dtype):
        self.layout, self.dims, self.dtype = layout, dims, dtype

    def init(self, n_workers: int):
        return ()

    def send(self, state, local: Plan, every: Plan, changes: dict[str, list[Tensor]], comm: Communicator,
             round_key: Tensor):
        count = sum(int(g.workers.numel()) for g in local.groups)
        msgs = {n: Kept(self.dims[n], [self.layout.kept(g, n, u) for g, u in zip(local.groups, changes[n])],
                        count, self.dtype) for n in VARS}
        return state, comm.exchange(msgs, mean=False)


class CompressedKeptUplink(KeptUplink):
    """The up-link compressor on each client's sub-model vector; shifts where it is contractive."""

    def __init__(self, layout, dims, dtype, compressor: Compressor):
        super().__init__(layout, dims, dtype)
        self.c, self.ef = compressor, compressor.kind == "contractive"

    def init(self, n_workers: int):
        """Every client's shifts m_i (full vectors, rows [n_workers, d]), or () without feedback."""
        return {n: torch.zeros(n_workers, d, dtype=self.dtype) for n, d in self.dims.items()} if self.ef else ()

    def send(self, state, local, every, changes, comm, round_key):
        codecs, payloads = {}, {}
        for i, n in enumerate(VARS):
            codecs[n] = OnKept(self.c, senders(self.layout, every, n))
            rows = {}
            for g, u in zip(local.groups, changes[n]):
                for L, ids, pos, vals in self.layout.rows(g, n, u):
                    if self.ef:
                        vals = vals - state[n][ids[:, None], pos]
                    rows[L] = (vals, link_keys(round_key, 0, i, ids))
            payloads[n] = codecs[n].payload(rows, self.dtype)
        decoded = comm.exchange(payloads, mean=False)
        sums, shifts = {}, {}
        for n in VARS:
            total = torch.zeros(self.dims[n], dtype=self.dtype)
            shift = state[n].clone() if self.ef else None
            for L, c in split_slots(decoded[n], codecs[n].who).items():
                ids, pos = codecs[n].who[L]
                c = c.to(self.dtype)
                if self.ef:  # estimate m_i[kept] + c_i; m_i[kept] += c_i (rho = 1, contractive C)
                    c = shift[ids[:, None], pos] + c
                    shift[ids[:, None], pos] = c
                total.index_add_(0, pos.reshape(-1), c.reshape(-1))
            sums[n] = total
            shifts[n] = shift
        return (shifts if self.ef else ()), sums


def make_uplink(layout: Layout, dims: dict[str, int], dtype: torch.dtype, compressor: Compressor) -> KeptUplink:
    if compressor.kind == "exact":
        return KeptUplink(layout, dims, dtype)
    return CompressedKeptUplink(layout, dims, dtype, compressor)


class KeptDownlink:
    """Uncompressed sub-models: the clients start from the server's values."""

    def __init__(self, layout: Layout, dtype: torch.dtype):
        self.layout, self.width = layout, float_bits(torch.zeros((), dtype=dtype))
        self.floats = torch.tensor([layout.down_floats(int(L)) for L in layout.level_of])

    def init(self, z: dict[str, Tensor], n_workers: int):
        return ()

    def send(self, state, z: dict[str, Tensor], every: Plan, comm: Communicator, round_key: Tensor):
        ids = torch.cat([g.workers for g in every.groups]) if every.groups else torch.zeros(0, dtype=torch.int64)
        comm.broadcast({"sub-models": PerReceiver(self.floats[ids], self.width)}, receivers=1)
        return state

    def start(self, state, z: dict[str, Tensor], grp) -> tuple[Tensor, ...]:
        """The group's computation vectors of x, y, v at the start of its local steps."""
        return self.layout.view(grp, z["x"], z["y"], z["v"])


class CompressedKeptDownlink(KeptDownlink):
    """Per-client copies z_hat_i; q_i = C'(z[recv_i] - z_hat_i[recv_i]) (server-side feedback)."""

    def __init__(self, layout, dtype, compressor: Compressor):
        super().__init__(layout, dtype)
        self.c = contractive(compressor)

    def init(self, z, n_workers):
        return {n: v.expand(n_workers, -1).clone() for n, v in z.items()}

    def send(self, state, z, every, comm, round_key):
        copies, payloads = {n: c.clone() for n, c in state.items()}, {}
        for i, n in enumerate(VARS):
            for j, g in enumerate(every.groups):
                pos = self.layout.received(g, SPACE[n])
                rows = (g.workers[:, None], pos)
                held = copies[n][rows]
                p = self.c.compress(z[n][pos] - held, link_keys(round_key, 1, i, g.workers))
                copies[n][rows] = self.c.add_to(held, p.fields, pos.shape[1]).to(held.dtype)
                payloads[f"{n}/{j}"] = p
        comm.broadcast(payloads, receivers=1)  # one row per receiver: the bits sum over receivers
        return copies

    def start(self, state, z, grp):
        return tuple(state[n][grp.workers[:, None], self.layout.received(grp, SPACE[n])] for n in VARS)


def make_downlink(layout: Layout, dtype: torch.dtype, compressor: Compressor | None) -> KeptDownlink:
    if compressor is None or compressor.kind == "exact":
        return KeptDownlink(layout, dtype)
    return CompressedKeptDownlink(layout, dtype, compressor)
