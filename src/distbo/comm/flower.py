"""The Communicator over Flower: each exchange is one Flower round trip (docs/flower.md).

Every party runs a replica of the algorithm, as under torch.distributed (comm/torch_dist.py):

- the ServerApp's replica (``ServerComm``) hosts one phantom worker, a copy of worker 0 whose own
  messages never count: they only tell the server how to decode (compressor, d, field shapes).
  At each exchange the server sends every node one Flower message carrying the reduced sums of the
  previous exchange, and each node answers with its workers' messages of this exchange;
- each ClientApp (``NodeComm``) hosts a contiguous block of workers. Flower keeps no Python
  state between messages (the deployment runtime starts a process per message), so a node keeps
  its replica at the start of the current round in ``context.state`` and replays the round up to
  the requested exchange, feeding the sums it has received so far (``NodeComm`` raises ``Pause``
  with its messages when it reaches the first exchange it has no answer for).

Payloads travel as their encoded fields (``pack``): top-K values and indices, packed sign bits,
integer fields narrowed to the width the compressor declares (the torch_dist field codecs).
The server decodes all rows in worker order with the compressor's ``decode_sum`` and Dense rows
are summed in worker order, so sums equal the simulator's bitwise (DenseSum messages, known only
by their local sums, are added node by node). Bits are the messages' own ``bits()``, summed.
"""
from __future__ import annotations

import io
import json
from typing import Callable

import torch

from ..compressors.base import Payload
from .base import Communicator
from .messages import Dense, DenseSum, Message
from ..errors import LaunchError
from .torch_dist import decode_field, encode_field, short_error, wire_dtype

Tensor = torch.Tensor
Wire = dict[str, bytes | str | int]  # a flat record: what one Flower ConfigRecord holds
DTYPES = {str(dt): dt for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool,
                                 torch.uint8, torch.int8, torch.uint16, torch.int16, torch.uint32, torch.int32,
                                 torch.int64)}


class NodeError(LaunchError):
    """A ClientApp failed; ``rank`` is its node's block index (0-based)."""


# ----- wire format -----
def _fields_of(m: Message) -> dict[str, tuple[Tensor, int]]:
    """The tensors a message sends, with their declared bits per element."""
    if isinstance(m, Payload):
        return m.fields
    if isinstance(m, Dense):
        return {"values": (m.values, 0)}
    if isinstance(m, DenseSum):
        return {"total": (m.total.unsqueeze(0), 0)}
    raise TypeError(f"cannot send a {type(m).__name__} through Flower")


def _tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def pack(messages: dict[str, Message]) -> Wire:
    """A node's messages of one exchange: a JSON header plus one byte string per field."""
    head, out = {}, {}
    for k, m in messages.items():
        fields = {}
        for name, (t, width) in sorted(_fields_of(m).items()):
            signed = t.numel() > 0 and not t.is_floating_point() and t.dtype != torch.bool and bool((t < 0).any())
            wdt = wire_dtype(t, width, signed) if width else t.dtype
            fields[name] = {"dtype": str(t.dtype), "wire": str(wdt), "shape": list(t.shape)}
            out[f"{k}/{name}"] = encode_field(t, wdt).cpu().numpy().tobytes()
        head[k] = {"kind": type(m).__name__, "count": m.count, "bits": m.bits(), "fields": fields}
    out["head"] = json.dumps(head)
    return out


def unpack(wire: Wire) -> dict[str, dict]:
    """Inverse of ``pack``: per message its kind, count, bits and field tensors."""
    head = json.loads(wire["head"])
    for k, h in head.items():
        for name, f in h["fields"].items():
            data = _tensor(wire[f"{k}/{name}"])
            like = torch.empty((0, *f["shape"][1:]), dtype=DTYPES[f["dtype"]])
            f["tensor"] = decode_field(data, f["shape"][0], like, DTYPES[f["wire"]])
    return head


def pack_sums(sums: dict[str, Tensor], senders: int) -> Wire:
    """The server's reduction of one exchange, as it goes down to the nodes."""
    head = {k: {"dtype": str(s.dtype), "shape": list(s.shape)} for k, s in sums.items()}
    out: Wire = {"sums": json.dumps({"senders": senders, "head": head})}
    out.update({f"sum/{k}": s.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() for k, s in sums.items()})
    return out


def unpack_sums(wire: Wire) -> tuple[dict[str, Tensor], int]:
    meta = json.loads(wire["sums"])
    sums = {k: _tensor(wire[f"sum/{k}"]).view(DTYPES[h["dtype"]])
            .reshape(h["shape"]) for k, h in meta["head"].items()}
    return sums, meta["senders"]


def reduce_nodes(templates: dict[str, Message], replies: list[dict[str, dict]]) -> tuple[dict[str, Tensor], int, int]:
    """Sums over the nodes' messages (``unpack``ed, in block order), decoded as ``templates`` say."""
    counts = {sum(r[k]["count"] for r in replies) for k in templates}
    if len(counts) != 1:
        raise ValueError(f"messages of one exchange come from different sender counts: {counts}")
    bits = sum(r[k]["bits"] for r in replies for k in templates)
    sums = {}
    for k, m in templates.items():
        if any(r[k]["kind"] != type(m).__name__ for r in replies):
            raise RuntimeError(f"the nodes sent different kinds of message '{k}' in one exchange")
        rows = {name: torch.cat([r[k]["fields"][name]["tensor"] for r in replies]) for name in replies[0][k]["fields"]}
        if isinstance(m, Payload):
            full = {name: (rows[name], m.fields[name][1]) for name in rows}
            sums[k] = m.compressor.decode_sum(full, m.d)
        elif isinstance(m, Dense):
            sums[k] = rows["values"].sum(0)
        else:  # DenseSum: one local sum per node, added in block order
            sums[k] = rows["total"][0]
            for row in rows["total"][1:]:
                sums[k] = sums[k] + row
    return sums, counts.pop(), bits


def state_bytes(leaves: list) -> bytes:
    buf = io.BytesIO()
    torch.save(leaves, buf)
    return buf.getvalue()


def state_leaves(data: bytes) -> list:
    return torch.load(io.BytesIO(data), weights_only=True)


# ----- the two communicators -----
RoundTrip = Callable[[int, Wire | None], list[Wire]]  # (exchange, previous sums) -> the nodes' replies


class ServerComm(Communicator):
    """The ServerApp's replica: one phantom worker (0), reductions over the nodes' replies."""

    def __init__(self, n_workers: int, round_trip: RoundTrip):
        super().__init__()
        self.n_workers, self.local_workers = n_workers, torch.arange(1)
        self.round_trip, self.seq, self.down = round_trip, 0, None

    def _reduce(self, messages):
        replies = [unpack(w) for w in self.round_trip(self.seq, self.down)]
        sums, senders, bits = reduce_nodes(messages, replies)
        self.seq += 1
        self.down = pack_sums(sums, senders)
        return sums, senders, bits

    def all_sum(self, t):
        return t


class Pause(Exception):
    """A node's replica reached exchange ``seq``, which it has no answer for yet."""

    def __init__(self, seq: int, messages: dict[str, Message]):
        super().__init__(f"paused at exchange {seq}")
        self.seq, self.messages = seq, messages


class NodeComm(Communicator):
    """A ClientApp's replica of a block of workers: exchanges are answered from ``answers`` (the
    server's sums, from exchange ``seq`` on), then ``Pause`` at the first one without an answer."""

    def __init__(self, n_workers: int, local_workers: Tensor):
        super().__init__()
        self.n_workers, self.local_workers = n_workers, local_workers
        self.seq, self.answers = 0, []

    def _reduce(self, messages):
        if not self.answers:
            raise Pause(self.seq, messages)
        sums, senders = unpack_sums(self.answers.pop(0))
        self.seq += 1
        return sums, senders, sum(m.bits() for m in messages.values())

    def all_sum(self, t):
        return t


def node_failure(node: int, nodes: int, workers: Tensor, node_id: int, reason: str | None, seq: int) -> NodeError:
    span = f"{int(workers[0])}-{int(workers[-1])}" if workers.numel() else "none"
    why = short_error(RuntimeError(reason or "no reason given"))
    return NodeError(f"Flower node {node} of {nodes} (workers {span}, node id {node_id}) failed at exchange "
                     f"{seq}: {why}", node, 1)
