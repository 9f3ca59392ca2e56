"""Running the Flower apps on this machine: the in-process runtime and the dispatch (docs/flower.md).

``runtime = "inprocess"``: ``LocalGrid`` is a Flower ``Grid`` that hands every message to the
ClientApp of its destination node in this process, each node with its own persistent Context,
and turns a raising ClientApp into an error reply, as Flower's runtimes do. The ServerApp and
ClientApp are the real ones and every message is a real flwr Message whose deflated size is
counted, but no SuperLink, SuperNode or network is involved: this is a test harness and a fast
local runner, not Flower's runtime. ``runtime = "deployment"`` (flower/deploy.py) is the real
one: a SuperLink and SuperNodes on 127.0.0.1 and ``flwr run``.
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from .app import blocks, client_app, serve

from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode


class LocalGrid(Grid):
    """Nodes 2..n+1 in this process (1 is the server's, as in Flower); a pushed message is answered
    at once by its node's ClientApp."""

    def __init__(self, nodes: int, run_id: int = 1):
        self.run_id = run_id
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
        self.contexts = {nid: Context(run_id=run_id, node_id=nid, node_config={"partition-id": j,
                                                                               "num-partitions": nodes},
                                      state=RecordDict(), run_config={})
                         for j, nid in enumerate(range(SUPERLINK_NODE_ID + 1, SUPERLINK_NODE_ID + 1 + nodes))}
        self.replies: dict[str, Message] = {}
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = mid = msg.object_id
            ctx = self.contexts[msg.metadata.dst_node_id]
            try:
                reply = client_app(msg, ctx)
            except Exception as exc:  # noqa: BLE001 - Flower's runtimes reply with the error, so do we
                reason = "".join(traceback.format_exception_only(exc)).strip()
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
            self.replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(m) for m in message_ids if m in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_flower(raw: dict[str, Any], out: Path | None, progress: bool = False, overwrite: bool = False):
    """``engine = "flower"``: the run through Flower, in the configured runtime."""
    from ..config import check_run

    run = check_run(raw)
    blocks(run.workers, run.flower.nodes or run.workers)  # fail before starting anything
    if run.flower.runtime == "deployment":
        from .deploy import run_deployment

        return run_deployment(raw, out, progress, overwrite)
    return serve(LocalGrid(run.flower.nodes or run.workers), raw, out, progress, overwrite)
