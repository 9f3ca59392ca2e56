"""Steps shared by the federated algorithms AggITD, FedNest and LFedNest (docs/algorithms.md, FedNest and 3).

One outer iteration is a *session* (``FedRound``): the server samples its participants (a fraction
of the clients, uniformly without replacement, from the round key, so every process draws the
same set and keeps its local ones), each participant draws fresh minibatches, and every
worker->server round goes through ``FedRound.exchange`` (compressed by ``ctx.compressor`` unless
it is the identity, then sent as Dense / DenseSum). Per-participant quantities carry the worker
axis [n, d] with n = the participants this process hosts, which may be 0 under torch.distributed:
then ``batch`` returns None, ``ClientOracles`` returns empty rows (vmap cannot map over an empty
axis) and ``exchange`` still calls ``comm.exchange`` exactly once, so every process makes the same
number of exchanges.

``local_steps`` is the clients' work of FedAvg (plain local SGD) and of FedInn (SVRG-corrected
local steps); ``neumann`` the truncated Neumann series of FedIHGP (global) and LFedNest (local).

Default alpha, beta (and eta) are derived from the problem's constants and the compressor when the
run is resolved (distbo/defaults.py: tau beta L_g,max <= 1, eta = 0.5/L_g, alpha shrinking with
every compressed message on the hypergradient's way; docs/defaults.md), and so are the clients'
local steps and the series lengths, AggITD's N and FedNest's Neumann N (distbo/budgets.py).

Down-link (``ctx.downlink``; docs/composition.md). Every server->client broadcast goes through
``FedRound.broadcast``, which returns what the clients hold; the algorithms compute with that
(``FedRound.seen`` for x and y) and the server updates its exact values. With a compressed
down-link every broadcast *channel* is an EF21-P copy shared by the server and all clients
(``compression.CompressedDownlink``): the server sends C'(u - u_hat) and both sides set
u_hat += it, so every client holds the same copy and what C' dropped is sent with the channel's
next broadcast (server-side error feedback per channel). The channels are x and y (one each: y is
broadcast at the start of a round and after each averaging round) and, for the per-round vectors,
one per vector and position in the round (``q/r`` of inner round r, ``b/0``, ``hp/k`` of Neumann
term k, ``h/0``, AggITD's ``v/r`` of backward round r): each tracks the same quantity from one
outer iteration to the next, which settles as x converges, so its differences shrink. (A copy
restarted every round would send C'(b) for a vector sent once per round and keep its error.)
The copies are part of the algorithm's state (``down``; x, y start at x_0, y_0, the others at
0). To keep every copy identical each broadcast goes to every client, sampled or not: with
client sampling the compressed down-link counts n receivers per broadcast where the
uncompressed one counts the participants. An identity down-link is the uncompressed broadcast;
with a compressor at rate 1 (topk:1.0) the copies equal the server's values up to rounding
(tests/test_aggitd.py).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field

from .. import rng
from ..comm.messages import Dense, DenseSum, Message
from ..defaults import derived
from ..oracles import Oracles
from ..problems.base import Batch
from ..registry import Params
from .base import STREAM_CLIENTS, STREAM_COMPRESS, STREAM_F, STREAM_G, Algorithm, Context
from .compression import CompressedDownlink
from .fixed_x import AtX, fixed_x
from .upper import UpperOptName, upper_opt_field

Tensor = torch.Tensor
DOWN = -1  # sub-key of the down-link's broadcasts (the up-link's count exchanges from 0)


class FederatedParams(Params):
    """Hyper-parameters every federated method has."""

    alpha: float | None = Field(None, gt=0, description="upper-level (x) step size",
                                json_schema_extra=derived("as soba's alpha x compressor factor on d_x"))
    beta: float | None = Field(None, gt=0, le=100, description="clients' local lower-level step size",
                               json_schema_extra=derived("min(1/L_g, 1/(tau L_g,max)) x compressor factor on d_y"))
    local_steps: int | None = Field(None, ge=1, le=10_000, description="tau: clients' local steps per lower-level round",
                                    json_schema_extra=derived("clamp(round(sigma^2 / zeta^2), 1, 5): the workers' "
                                                              "sampling noise over their heterogeneity, measured"))
    upper_opt: UpperOptName = upper_opt_field()


def sample_clients(key: Tensor, n_workers: int, fraction: float, local_workers: Tensor) -> tuple[Tensor, int]:
    """Participants of one outer iteration: (global ids hosted here, number over all processes).

    max(1, round(fraction * n)) clients, uniform without replacement, a pure function of ``key``.
    """
    m = max(1, min(n_workers, round(fraction * n_workers)))
    if m == n_workers:
        return local_workers, n_workers
    chosen = rng.subset(key, n_workers, m)
    return local_workers[torch.isin(local_workers, chosen)], m


class ClientOracles:
    """f- and g-oracles at the local participants; ``batch=None`` means there are none here."""

    def __init__(self, oracles: Oracles):
        self.o = oracles
        p = oracles.problem
        self.d_x, self.d_y, self.dtype = p.d_x, p.d_y, p.dtype

    def _none(self, dims: tuple[int, ...], reduce: bool) -> tuple[Tensor, ...]:
        return tuple(torch.zeros((d,) if reduce else (0, d), dtype=self.dtype) for d in dims)

    def grad_f(self, x, y, batch, reduce=False) -> tuple[Tensor, Tensor]:
        """(grad_x F_i, grad_y F_i) on one sample (the same for both)."""
        if batch is None:
            return self._none((self.d_x, self.d_y), reduce)
        return self.o.grad_f(x, y, batch, reduce)

    def grad_g_y(self, x, y, batch, reduce=False) -> Tensor:
        if batch is None:
            return self._none((self.d_y,), reduce)[0]
        return self.o.grad_g_y(x, y, batch, reduce)

    def hvp_g(self, x, y, v, batch, reduce=False) -> tuple[Tensor, Tensor]:
        """(H_xy,i v, H_yy,i v)."""
        if batch is None:
            return self._none((self.d_x, self.d_y), reduce)
        return self.o.hvp_g(x, y, v, batch, reduce)


class FedRound:
    """One outer iteration t: its participants, their minibatches and their messages."""

    def __init__(self, alg: Algorithm, t: int):
        ctx: Context = alg.ctx
        self.alg, self.t, self.comm, self.compressor = alg, t, alg.comm, ctx.compressor
        self.ids, self.total = sample_clients(rng.key(alg.round_key(t), STREAM_CLIENTS),
                                              alg.comm.n_workers, ctx.clients.fraction, alg.workers)
        self.n = int(self.ids.numel())
        self.exact = ctx.compressor.kind == "exact"
        self.draws = 0  # minibatches drawn so far (one sub-key each)
        self.rounds = 0  # exchanges so far
        self.down: CompressedDownlink | None = getattr(alg, "downlink", None)
        self.held: dict[str, Tensor] = {}  # the clients' copies of the channels (compressed down-link)
        # up-link error feedback (contractive C): each hosted client's residual per up-link channel
        self.ef = ctx.compressor.kind == "contractive"
        self.errors: dict[str, Tensor] = {}
        self.posted: dict[str, int] = {}  # messages per name so far (the position of a per-round vector)
        self.rows = torch.nonzero(torch.isin(alg.workers, self.ids)).squeeze(1)  # the participants' rows
        self.sent: dict[str, int] = {}  # broadcasts per name so far (the position of a per-round vector)
        self.casts = 0  # compressed broadcasts so far (one sub-key each)
        self._at: tuple[Tensor, AtX] | None = None

    def at_x(self, x: Tensor) -> AtX:
        """The participants' lower-level oracles at the x they hold (algorithms/fixed_x.py), made
        once per x: with a representation, its features are computed once per outer iteration."""
        if self._at is None or self._at[0] is not x:
            self._at = (x, fixed_x(self.alg.clients, x, self.ids))
        return self._at[1]

    def batch(self, level: str, low: AtX | None = None) -> Batch | None:
        """A fresh minibatch per participant at level 'f' or 'g' (None if none is hosted here);
        a g-batch only for the fixed-x oracles ``low`` may leave out what they do not read."""
        sub, self.draws = self.draws, self.draws + 1
        if self.n == 0:
            return None
        k = rng.key(rng.key(self.alg.round_key(self.t), sub), STREAM_F if level == "f" else STREAM_G)
        if low is not None and level == "g":
            return low.sample(self.ids, k)
        return self.alg.problem.sample(level, self.ids, k)

    def batches(self, level: str, count: int, low: AtX | None = None) -> list[Batch | None]:
        return [self.batch(level, low) for _ in range(count)]

    def message(self, var: int, name: str, u: Tensor) -> Message:
        """Rows [n, d] -> compressed Payload; with the identity compressor Dense rows, or a
        DenseSum when ``u`` is already the local sum [d] (oracles with reduce=True). A contractive
        C gets error feedback per client and up-link channel (EF14: send C(u + e), keep
        e <- u + e - C(u + e)): without it top-K biases every message, and AggITD's hypergradient
        settled away from the solution (docs/defaults.md)."""
        if self.exact:
            return Dense(u) if u.dim() == 2 else DenseSum(u, self.n)
        if u.dim() != 2:
            raise ValueError("a compressed message needs one row per participant")
        keys = self.alg.compress_keys(self.t, var, self.ids, self.rounds)
        if not self.ef:
            return self.compressor.compress(u, keys)
        ch = channel(name, self.posted.get(name, 0), up=True)
        self.posted[name] = self.posted.get(name, 0) + 1
        err = self.errors[ch]
        m = u + err[self.rows].to(u.dtype)
        payload = self.compressor.compress(m, keys)
        # out of place: the previous round's state keeps its residuals
        self.errors[ch] = err.index_put((self.rows,), (m - payload.decoded().to(m.dtype)).to(err.dtype))
        return payload

    def exchange(self, rows: dict[str, Tensor]) -> dict[str, Tensor]:
        """One worker->server round: the server's mean of each message over all participants."""
        msgs = {name: self.message(var, name, u) for var, (name, u) in enumerate(rows.items())}
        self.rounds += 1
        return self.comm.exchange(msgs)

    def broadcast(self, items: dict[str, Tensor]) -> dict[str, Tensor]:
        """Server -> clients, counted in bits_down; returns what the clients hold: the items (sent
        to the participants), or with a compressed down-link the channels' updated copies (sent to
        every client)."""
        if self.down is None:
            self.comm.broadcast(items, receivers=self.total)
            return items
        names = {k: channel(k, self.sent.get(k, 0)) for k in items}
        for k in items:
            self.sent[k] = self.sent.get(k, 0) + 1
        held = {names[k]: self.held.get(names[k], torch.zeros_like(v)) for k, v in items.items()}
        server = torch.zeros(1, dtype=torch.int64)
        rk, cast = self.alg.round_key(self.t), self.casts
        keys = lambda: {c: rng.key(rk, STREAM_COMPRESS, DOWN, cast, i, server) for i, c in enumerate(held)}
        new = self.down.send(held, {names[k]: v for k, v in items.items()}, self.comm, keys)
        self.casts += 1
        self.held.update(new)
        return {k: new[names[k]] for k in items}

    def seen(self, name: str, value: Tensor) -> Tensor:
        """The clients' copy of x or y, whose server value is ``value``."""
        return value if self.down is None else self.held[name]


STATE_CHANNELS = ("x", "y")


def channel(name: str, position: int, up: bool = False) -> str:
    """The channel of the ``position``-th broadcast (``up``: message) of ``name`` in a round."""
    return name if name in STATE_CHANNELS and not up else f"{name}/{position}"


class FederatedAlgorithm(Algorithm):
    """Base of the federated methods: per-outer-iteration sessions and client oracles."""

    client_settings = ("fraction",)

    def __init__(self, ctx: Context, hp):
        super().__init__(ctx, hp)
        self.clients = ClientOracles(self.oracles)
        self.downlink = None if ctx.downlink is None else CompressedDownlink(ctx.downlink)

    def channels(self) -> dict[str, int]:
        """The per-round vectors' down-link channels (name -> dimension), besides x and y."""
        return {}

    def uplink_channels(self) -> dict[str, int]:
        """The clients' messages of one round (channel -> dimension): the up-link error-feedback
        residuals a contractive compressor needs."""
        return {}

    def residuals(self) -> Any:
        """The up-link's state before round 0: every hosted client's zero residual per channel
        (() unless the compressor is contractive)."""
        if self.ctx.compressor.kind != "contractive":
            return ()
        n, dtype = int(self.workers.numel()), self.problem.dtype
        return {k: torch.zeros(n, d, dtype=dtype) for k, d in self.uplink_channels().items()}

    def copies(self, x: Tensor, y: Tensor) -> Any:
        """The down-link's state before round 0: every channel's copy (() if uncompressed)."""
        if self.downlink is None:
            return ()
        return {"x": x, "y": y, **{k: torch.zeros(d, dtype=x.dtype) for k, d in self.channels().items()}}

    def begin(self, t: int, down: Any = (), up: Any = (), **server: Tensor) -> FedRound:
        """Open outer iteration t with the clients' copies ``down`` and up-link residuals ``up``,
        and send the server's state."""
        fr = FedRound(self, t)
        fr.held = dict(down) if down else {}
        fr.errors = dict(up) if up else {}
        fr.broadcast(server)
        return fr

    def copies_after(self, fr: FedRound) -> Any:
        """The down-link's state after the round (() if uncompressed)."""
        return () if self.downlink is None else fr.held

    def residuals_after(self, fr: FedRound) -> Any:
        """The up-link's state after the round (() unless contractive)."""
        return fr.errors if fr.ef else ()


def local_steps(low: AtX, y: Tensor, batches: list[Batch | None], beta: float,
                n: int, q: Tensor | None = None, keep: bool = False) -> tuple[Tensor, list[Tensor]]:
    """The participants' local steps on their copies, from the server's y (one per batch).

    Plain (FedAvg, docs/algorithms.md, AggITD):  y_i <- y_i - beta grad_y G_i(x, y_i; zeta_m)
    SVRG (FedInn, docs/algorithms.md, FedNest, given the server's mean gradient q at y):
        y_i <- y_i - beta (grad_y G_i(x, y_i; zeta_m) - grad_y G_i(x, y; zeta_m) + q)
    Returns the final copies [n, d_y] and, with ``keep``, the iterate each step started from
    (y_i^{m}, m = 0..tau-1: where AggITD's backward sweep takes its Hessians).
    """
    Y = y.unsqueeze(0).expand(n, -1)
    starts = []
    for b in batches:
        if keep:
            starts.append(Y)
        d = low.grad_y(Y, b)
        if q is not None:
            d = d - low.grad_y(y, b) + q
        Y = Y - beta * d
    return Y, starts


def fedavg_round(fr: FedRound, low: AtX, y: Tensor, batches: list[Batch | None],
                 beta: float, q: Tensor | None = None, keep: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Local steps from the clients' y, then one exchange of the model change; the server's new y
    (broadcast). ``low`` is at the x the clients hold, ``q`` what they hold, ``y`` the server's value."""
    held = fr.seen("y", y)
    Y, starts = local_steps(low, held, batches, beta, fr.n, q, keep)
    y = y - fr.exchange({"dy": held - Y})["dy"]
    fr.broadcast({"y": y})
    return y, starts


def neumann(b: Tensor, eta: float, terms: int, product: Callable[[Tensor, int], Tensor]) -> Tensor:
    """eta * p_N with p_0 = b, p_{k+1} = b + p_k - eta H p_k  (= eta sum_{k<=N} (I - eta H)^k b).

    ``product(p, k)`` is H p at term k: the server's mean over participants in FedIHGP (one
    exchange per term), or each client's own Hessian in LFedNest (rows, no communication).
    """
    p = b
    for k in range(terms):
        p = b + p - eta * product(p, k)
    return eta * p
