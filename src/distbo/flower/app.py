"""The Flower apps: a ServerApp that runs the round loop and a ClientApp per node (docs/flower.md).

The ServerApp resolves the distbo configuration (run config key ``distbo``: the configuration as
JSON; ``out``: the output folder), assigns contiguous blocks of workers to the nodes in the
order of their Flower node ids and runs ``runner.execute`` with a ``ServerComm``: every exchange
of the algorithm is one ``send_and_receive`` of ``query.exchange`` messages, one per node.
Client sampling happens inside the algorithm from distbo's keys (FedRound), not with Flower's
sampler; a node that hosts no participant of a round still answers (0 senders) and receives the
sums it needs to keep its replica in step.

A ClientApp keeps, in ``context.state``, its replica at the start of its current round (the state
leaves), the round, the exchange at which that round began, and the sums received since; see
comm/flower.py for the replay.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .. import checkpoint
from ..comm.flower import NodeComm, Pause, ServerComm, node_failure, pack, state_bytes, state_leaves
from ..comm.torch_dist import Fault
from ..errors import ConfigError

EXCHANGE = "query.exchange"
RECORD = "distbo"


# ----- what Flower sends -----
def message_bytes(msg: Message) -> int:
    """Bytes of a Flower message as its runtime ships it: every object of its tree, deflated."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


@dataclass
class WireLog:
    """What went through Flower: bytes of the request and reply messages, per exchange."""

    bytes_down: int = 0
    bytes_up: int = 0
    messages: int = 0
    exchanges: int = 0
    seconds: list[float] = field(default_factory=list)  # wall time of each round trip

    def as_dict(self) -> dict[str, Any]:
        return {"bytes_down": self.bytes_down, "bytes_up": self.bytes_up, "messages": self.messages,
                "exchanges": self.exchanges, "round_trip_s": round(sum(self.seconds), 6)}


def blocks(workers: int, nodes: int) -> list[torch.Tensor]:
    if workers % nodes:
        raise ConfigError("flower.nodes", f"{nodes} Flower nodes cannot share {workers} workers evenly; "
                          f"use a number of nodes that divides {workers}")
    b = workers // nodes
    return [torch.arange(j * b, (j + 1) * b) for j in range(nodes)]


# ----- server side -----
class GridRoundTrip:
    """One exchange = one Flower round trip to every node (``ServerComm``'s transport)."""

    def __init__(self, grid: Grid, node_ids: list[int], raw: dict[str, Any], workers: int, timeout: float | None):
        self.grid, self.node_ids, self.timeout = grid, node_ids, timeout
        self.config, self.blocks, self.log = json.dumps(raw), blocks(workers, len(node_ids)), WireLog()

    def __call__(self, seq: int, down) -> list[dict]:
        msgs = []
        for j, nid in enumerate(self.node_ids):
            rec: dict[str, Any] = {"seq": seq, "block": j, "nodes": len(self.node_ids)}
            if seq == 0:
                rec["config"] = self.config
            rec.update(down or {})
            msgs.append(Message(RecordDict({RECORD: ConfigRecord(rec)}), dst_node_id=nid, message_type=EXCHANGE,
                                group_id=str(seq)))
        tic = time.perf_counter()
        replies = {r.metadata.src_node_id: r for r in self.grid.send_and_receive(msgs, timeout=self.timeout)}
        self.log.seconds.append(time.perf_counter() - tic)
        self.log.exchanges += 1
        out = []
        for j, (nid, msg) in enumerate(zip(self.node_ids, msgs)):
            reply = replies.get(nid)
            if reply is None or reply.has_error():
                reason = reply.error.reason if reply is not None else f"no reply within {self.timeout} s"
                raise node_failure(j, len(self.node_ids), self.blocks[j], nid, reason, seq)
            self.log.bytes_down += message_bytes(msg)
            self.log.bytes_up += message_bytes(reply)
            self.log.messages += 2
            out.append(dict(reply.content.config_records[RECORD]))
        return out


def wait_for_nodes(grid: Grid, nodes: int, timeout: float) -> list[int]:
    """The ids of the first ``nodes`` connected nodes, sorted (a deployment's nodes join late)."""
    deadline = time.time() + timeout
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= nodes:
            return ids[:nodes]
        if time.time() > deadline:
            raise ConfigError("flower.nodes", f"only {len(ids)} of {nodes} Flower nodes connected "
                              f"within {timeout:g} s")
        time.sleep(0.2)


def serve(grid: Grid, raw: dict[str, Any], out: Path | None, progress: bool = False, overwrite: bool = False):
    """The ServerApp's work: the whole run, through ``grid``; the runner's Result, with the
    Flower byte counts in ``extra["flower"]`` (and in ``out``/flower.json)."""
    from ..runner import execute, resolve

    res, problem = resolve(raw)
    nodes = res.run.flower.nodes or res.run.workers
    blocks(res.run.workers, nodes)  # fail before waiting
    ids = wait_for_nodes(grid, nodes, res.run.timeout)
    trip = GridRoundTrip(grid, ids, raw, res.run.workers, res.run.timeout)
    result = execute(res, problem, out, progress, comm=ServerComm(res.run.workers, trip), overwrite=overwrite)
    result.extra["flower"] = {**trip.log.as_dict(), "nodes": nodes}
    if result.out is not None:
        (result.out / "flower.json").write_text(json.dumps(result.extra["flower"], indent=2) + "\n")
    return result


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    """Under ``flwr run``: the run, its outputs in ``out`` (plus flower.json with the byte counts,
    flower-point.pt with the final point, and error.txt with the one line of a failure)."""
    raw = json.loads(str(context.run_config["distbo"]))
    out = Path(str(context.run_config.get("out") or "runs/flower")).absolute()
    try:
        result = serve(grid, raw, out, overwrite=bool(context.run_config.get("overwrite", False)))
    except Exception as exc:
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").write_text(f"{exc}\n")
        raise
    torch.save({"x": result.x, "y": result.y}, out / "flower-point.pt")


# ----- client side -----
_REPLICAS: dict[tuple[str, int, int], Any] = {}  # per process: building a problem may load data


def replica(config: str, block: int, nodes: int):
    """This node's algorithm over its block of workers (cached in this process)."""
    key = (config, block, nodes)
    if key not in _REPLICAS:
        from ..runner import build, resolve, threads_for

        res, problem = resolve(json.loads(config))
        comm = NodeComm(res.run.workers, blocks(res.run.workers, nodes)[block])
        algorithm, _ = build(res, problem, comm)
        torch.set_num_threads(threads_for(res.run, problem, torch.get_num_threads()))
        if len(_REPLICAS) >= 64:
            _REPLICAS.pop(next(iter(_REPLICAS)))
        _REPLICAS[key] = algorithm
    return _REPLICAS[key]


def _downs(st: dict[str, Any]) -> list[dict]:
    """The sums a node stored, in order (keys 'd<i>|<key>')."""
    out: dict[int, dict] = {}
    for k, v in st.items():
        if k.startswith("d") and "|" in k:
            i, _, name = k[1:].partition("|")
            out.setdefault(int(i), {})[name] = v
    return [out[i] for i in sorted(out)]


def advance(st: dict[str, Any], seq: int) -> tuple[dict[str, Any], dict]:
    """Replay this node's replica up to exchange ``seq``: (new stored state, the messages to send)."""
    algorithm = replica(st["config"], st["block"], st["nodes"])
    comm: NodeComm = algorithm.comm
    template = algorithm.init()
    state = template if st["round"] == 0 and "leaves" not in st else checkpoint.unflatten(
        template, state_leaves(st["leaves"]))
    t, start, downs = st["round"], st["round_seq"], _downs(st)
    while True:
        if algorithm.ctx.rounds is not None and t >= algorithm.ctx.rounds:
            raise RuntimeError(f"the server asks for exchange {seq}, after the last round of this replica")
        comm.seq, comm.answers = start, list(downs)
        try:
            state = algorithm.step(state, t)
        except Pause as p:
            if p.seq != seq:
                raise RuntimeError(f"replica out of step: it reached exchange {p.seq}, the server asks for {seq}")
            messages = p.messages
            break
        t, downs, start = t + 1, downs[comm.seq - start:], comm.seq
    keep = {k: st[k] for k in ("config", "block", "nodes")}
    keep.update(round=t, round_seq=start, leaves=state_bytes(checkpoint.flatten(state)))
    keep.update({f"d{i}|{k}": v for i, d in enumerate(downs) for k, v in d.items()})
    return keep, messages


client_app = ClientApp()


@client_app.query("exchange")
def _exchange(msg: Message, context: Context) -> Message:
    rec = dict(msg.content.config_records[RECORD])
    seq = int(rec["seq"])
    fault = Fault.from_env()
    if fault is not None:
        fault.maybe_fire(int(rec["block"]), seq)
    if seq == 0:
        st = {"config": rec["config"], "block": rec["block"], "nodes": rec["nodes"], "round": 0, "round_seq": 0}
    else:
        st = dict(context.state.config_records[RECORD])
        n = len(_downs(st))
        st.update({f"d{n}|{k}": v for k, v in rec.items() if k == "sums" or k.startswith("sum/")})
    st, messages = advance(st, seq)
    context.state.config_records[RECORD] = ConfigRecord(st)
    return Message(RecordDict({RECORD: ConfigRecord(pack(messages))}), reply_to=msg)
