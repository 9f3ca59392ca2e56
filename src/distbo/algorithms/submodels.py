"""Sub-models of resource-limited clients (docs/algorithms.md, RABO): masks, coverage, messages.

Client i has the resource level r_i = ``clients.resources[i % len]`` and, each round, keeps
ceil(r_i H) of the H units of every *unit family*:
  - a task whose ``units()`` gives ``{"net": DenseNet}``: the units of each hidden layer. A client
    computes with the sliced sub-network (smaller matrices, ``models.DenseNet.slice_params``) through
    the task's losses called with ``sizes=`` the sub-network's layer sizes; its masks cover whole
    units of x (layers before the split) and of y (the rest); v uses y's;
  - any other task (fallback): every coordinate of x, and of y, is a unit. The client computes on the
    full vectors and only its kept coordinates are updated and sent (correct, but no savings).
Mask policies (``clients.policy``): 'static' keeps the first units (HeteroFL-like); 'rolling' a
window that moves by one unit per round, the j-th client of a level starting j windows further so
the clients of a level tile the layer (FedRolex-like); 'random' a uniform subset per round. Every
mask is a pure function of (seed, round, worker, level) through distbo.rng, so every process draws
every client's masks and knows the coverage counts the server divides by.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from .. import rng
from ..comm.messages import Message, float_bits
from ..errors import ConfigError
from ..problems.base import Problem
from .base import STREAM_MASKS, Clients

Tensor = torch.Tensor
VARS = ("x", "y", "v")
SPACE = {"x": "x", "y": "y", "v": "y"}  # v lives in y's space and uses y's masks
POLICIES = ("static", "rolling", "random")


def keep_count(level: float, total: int) -> int:
    """Units kept out of ``total`` at resource ``level``: ceil(level * total), at least 1."""
    return max(1, min(total, math.ceil(level * total - 1e-9)))


def unit_indices(policy: str, total: int, keep: int, t: int, ranks: Tensor, keys: Tensor) -> Tensor:
    """Sorted indices [n, keep] of the units kept at round t by n clients of one level.

    ``ranks`` numbers the clients within their level (rolling windows), ``keys`` are their random
    keys (random policy)."""
    n = ranks.numel()
    if keep >= total:
        return torch.arange(total).expand(n, total)
    if policy == "static":
        return torch.arange(keep).expand(n, keep)
    if policy == "rolling":
        start = (t + ranks * keep) % total
        return torch.sort((start[:, None] + torch.arange(keep)) % total, dim=1).values
    return rng.subset(keys, total, keep)


@dataclass
class Group:
    """The local clients of one resource level in one round."""

    level: int  # index into Layout.levels
    workers: Tensor  # their global ids
    idx: list[Tensor]  # kept unit indices per family, [n_g, k_f]
    # 'x', 'y' -> which coordinates the clients keep: positions [n_g, k] (network layout) or
    # 0/1 masks [n_g, d] (coordinate layout, where one group holds every local client)
    kept: dict[str, Tensor]


@dataclass
class Plan:
    """One round's masks: coverage counts over ALL clients and the local clients' groups."""

    coverage: dict[str, Tensor]  # 'x', 'y' -> [d] float counts
    groups: list[Group]

    def restrict(self, local: Tensor) -> "Plan":
        """The same round with only the groups' ``local`` clients (a process's share of the plan)."""
        groups = []
        for g in self.groups:
            sel = torch.isin(g.workers, local)
            if bool(sel.any()):
                groups.append(Group(g.level, g.workers[sel], [i[sel] for i in g.idx],
                                    {k: v[sel] for k, v in g.kept.items()}))
        return Plan(self.coverage, groups)


class Layout:
    """How clients' sub-models sit in x and y; subclasses fix the unit families and the compute."""

    families: list[int]  # number of units of each family

    def __init__(self, problem: Problem, clients: Clients, n_workers: int):
        self.problem, self.policy, self.n = problem, clients.policy, n_workers
        if self.policy not in POLICIES:
            raise ConfigError("clients.policy", f"unknown policy '{self.policy}'; allowed: {', '.join(POLICIES)}")
        self.resources = list(clients.resources)
        per_worker = [self.resources[i % len(self.resources)] for i in range(n_workers)]
        self.levels = sorted(set(per_worker), reverse=True)
        self.level_of = torch.tensor([self.levels.index(r) for r in per_worker])
        self.members = [torch.nonzero(self.level_of == L).flatten() for L in range(len(self.levels))]
        self.dims = {"x": problem.d_x, "y": problem.d_y}

    def keeps(self, L: int) -> list[int]:
        return [keep_count(self.levels[L], h) for h in self.families]

    def draw(self, t: int, key: Tensor) -> list[list[Tensor]]:
        """Per level, the kept unit indices of all its clients, per family [n_L, k]."""
        out = []
        for L, workers in enumerate(self.members):
            ranks = torch.arange(workers.numel())
            out.append([unit_indices(self.policy, h, k, t, ranks, rng.key(key, STREAM_MASKS, workers, f))
                        for f, (h, k) in enumerate(zip(self.families, self.keeps(L)))])
        return out

    def plan(self, t: int, key: Tensor, local: Tensor, active: Tensor | None = None) -> Plan:
        """Round t's coverage over the ``active`` clients (all if None; client sampling) and the
        groups (one per resource level) of the ``local`` clients, which should be active."""
        drawn = self.draw(t, key)
        groups = []
        for L, (workers, idx) in enumerate(zip(self.members, drawn)):
            here = torch.isin(workers, local)
            if bool(here.any()):
                sel = [i[here] for i in idx]
                groups.append(Group(L, workers[here], sel, self.coords(sel)))
        return Plan(self.coverage(drawn, active), groups)

    def check(self, rounds: int | None, key_of: Callable[[int], Tensor],
              active_of: Callable[[int], Tensor] | None = None) -> None:
        """ConfigError if a coordinate of x or y stays uncovered for the whole run.

        First the policy with every client: static masks never change (one round decides);
        rolling windows repeat with period lcm(family sizes); random masks are checked round by
        round up to ``rounds`` (skipped when the run length is unknown). Then, with client sampling
        (``active_of(t)``: round t's sampled clients), the run's own draws up to ``rounds``: the
        samples are a pure function of the seed, so a coordinate no sampled client ever covers is
        known before the run (skipped when the run length is unknown)."""
        if self.policy == "static":
            horizon = 1
        elif self.policy == "rolling":
            horizon = math.lcm(*self.families) if self.families else 1
            horizon = min(horizon, rounds) if rounds is not None else horizon
        else:
            horizon = rounds
        if horizon is not None:
            miss = self._uncovered(horizon, key_of, None)
            if miss is not None:
                span = "every round" if self.policy == "static" else f"all {horizon} rounds"
                raise ConfigError("clients.policy", f"'{self.policy}' with resources {self.resources} never covers "
                                  f"{miss} ({span}); use a client with resource 1, more rounds, or another "
                                  "policy (allowed: " + ", ".join(POLICIES) + ")")
        if active_of is not None and rounds is not None:
            miss = self._uncovered(rounds, key_of, active_of)
            if miss is not None:
                raise ConfigError("clients.fraction", f"the sampled clients never cover {miss} in all {rounds} "
                                  "rounds (seed-determined); use a larger fraction, more rounds or another seed")

    def _uncovered(self, horizon: int, key_of, active_of) -> str | None:
        """'M of D coordinates of V' never covered in rounds 0..horizon-1, or None."""
        seen = {k: torch.zeros(d, dtype=torch.bool) for k, d in self.dims.items()}
        for t in range(horizon):
            cov = self.coverage(self.draw(t, key_of(t)), None if active_of is None else active_of(t))
            for k in seen:
                seen[k] |= cov[k] > 0
            if all(bool(s.all()) for s in seen.values()):
                return None
        var = "x" if not bool(seen["x"].all()) else "y"
        return f"{int((~seen[var]).sum())} of {self.dims[var]} coordinates of {var}"

    # --- what subclasses define ---
    def coords(self, idx: list[Tensor]) -> dict[str, Tensor]:
        """Positions [n_g, k] in x and y of the coordinates kept with unit indices ``idx``."""
        raise NotImplementedError

    def coverage(self, drawn: list[list[Tensor]], active: Tensor | None = None) -> dict[str, Tensor]:
        """Per coordinate, how many of the ``active`` clients (all if None) keep it."""
        raise NotImplementedError

    def losses(self, L: int) -> Any:
        """An object with the losses f, g on level L's computation vectors."""
        raise NotImplementedError

    def view(self, grp: Group, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The computation vectors of the group's clients [n_g, ...] at the server's point."""
        raise NotImplementedError

    def masked(self, grp: Group, name: str, u: Tensor) -> Tensor:
        """A local update restricted to the kept coordinates (on the computation vectors)."""
        return u

    def kept(self, grp: Group, name: str, u: Tensor) -> tuple[Tensor, Tensor]:
        """The kept entries of a computation-vector quantity [n_g, ...], flat, with their flat
        positions in the full vector: what a client sends (the positions do not travel)."""
        return u.reshape(-1), grp.kept[SPACE[name]].reshape(-1)

    def rows(self, grp: Group, name: str, u: Tensor | None = None) -> list[tuple[int, Tensor, Tensor, Tensor | None]]:
        """Per resource level among the group's clients: (level, workers [n], positions [n, k] of
        their kept coordinates in the full vector, the kept entries of ``u`` [n, k] or None): the
        sub-model vectors a compressor acts on, one row per client."""
        pos = grp.kept[SPACE[name]]
        return [(grp.level, grp.workers, pos, None if u is None else u.reshape(pos.shape))]

    def kept_size(self, L: int, space: str) -> int:
        """Kept coordinates of x or y of a level-L client."""
        raise NotImplementedError

    def received(self, grp: Group, space: str) -> Tensor:
        """Positions [n_g, k] of the coordinates the group's clients receive (their computation
        vectors' entries, in order)."""
        return grp.kept[space]

    def down_size(self, L: int, space: str) -> int:
        return self.kept_size(L, space)

    def down_floats(self, L: int) -> int:
        """Floats the server sends a level-L client per round (x, y and v as it needs them)."""
        return self.down_size(L, "x") + 2 * self.down_size(L, "y")

    def flops(self, L: int, batch_f: Any, batch_g: Any, steps: int) -> float | None:
        """Multiply-adds x2 of one level-L client per round (None where the task gives no shapes)."""
        return None


class _Losses:
    """A problem's losses with keywords bound (e.g. ``sizes=`` of a sub-network)."""

    def __init__(self, problem: Problem, **kw: Any):
        self.f, self.g = partial(problem.f, **kw), partial(problem.g, **kw)


class CoordLayout(Layout):
    """Fallback: each coordinate of x and of y is a unit; compute on full vectors, masked updates.

    Every client's computation vectors have the full size, so all local clients form one group."""

    def __init__(self, problem, clients, n_workers):
        super().__init__(problem, clients, n_workers)
        self.families = [problem.d_x, problem.d_y]
        self._losses = _Losses(problem)

    def masks(self, drawn: list[list[Tensor]]) -> dict[str, Tensor]:
        """0/1 masks [n, d] of every client's kept coordinates of x and y."""
        out = {k: torch.zeros(self.n, d, dtype=torch.bool) for k, d in self.dims.items()}
        for workers, idx in zip(self.members, drawn):
            for f, k in enumerate(("x", "y")):
                out[k][workers[:, None], idx[f]] = True
        return out

    def plan(self, t, key, local, active=None):
        masks = self.masks(self.draw(t, key))
        cov = self._count(masks, active)
        return Plan(cov, [Group(0, local, [], {k: m[local] for k, m in masks.items()})])

    def _count(self, masks: dict[str, Tensor], active: Tensor | None) -> dict[str, Tensor]:
        on = slice(None) if active is None else active
        return {k: m[on].sum(0).to(self.problem.dtype) for k, m in masks.items()}

    def coverage(self, drawn, active=None):
        return self._count(self.masks(drawn), active)

    def losses(self, L):
        return self._losses

    def view(self, grp, x, y, v):
        n = grp.workers.numel()
        return x.expand(n, -1), y.expand(n, -1), v.expand(n, -1)

    def masked(self, grp, name, u):
        return torch.where(grp.kept[SPACE[name]], u, torch.zeros((), dtype=u.dtype))

    def kept(self, grp, name, u):
        m = grp.kept[SPACE[name]]
        return u[m], torch.nonzero(m)[:, 1]

    def rows(self, grp, name, u=None):
        """One group holds every level here: split it, rows of a level have the same length."""
        m, level = grp.kept[SPACE[name]], self.level_of[grp.workers]
        out = []
        for L in range(len(self.levels)):
            sel = level == L
            if bool(sel.any()):
                ms = m[sel]
                n = int(sel.sum())
                pos = torch.nonzero(ms)[:, 1].reshape(n, -1)
                out.append((L, grp.workers[sel], pos, None if u is None else u[sel][ms].reshape(n, -1)))
        return out

    def kept_size(self, L, space):
        return keep_count(self.levels[L], self.dims[space])

    def received(self, grp, space):
        return torch.arange(self.dims[space]).expand(grp.workers.numel(), -1)

    def down_size(self, L, space):
        return self.dims[space]  # clients compute on the full vectors


class NetLayout(Layout):
    """The task's network: hidden units are the units; clients compute with the sliced sub-network."""

    def __init__(self, problem, clients, n_workers, net):
        super().__init__(problem, clients, n_workers)
        if (net.numel("x"), net.numel("y")) != (problem.d_x, problem.d_y):
            raise ValueError(f"units()['net'] has {net.numel('x')} x- and {net.numel('y')} y-parameters, "
                             f"the task {problem.d_x} and {problem.d_y}")
        self.net = net
        self.families = list(net.sizes[1:-1])
        self.sub = [net.sub_sizes(self.keeps(L)) for L in range(len(self.levels))]
        self._losses = [_Losses(problem, sizes=s) for s in self.sub]

    def coords(self, idx):
        return {k: self.net.coords(k, idx) for k in ("x", "y")}

    def coverage(self, drawn, active=None):
        kept = [torch.zeros(self.n, h, dtype=torch.float64) for h in self.families]
        for workers, idx in zip(self.members, drawn):
            on = slice(None) if active is None else torch.isin(workers, active)
            for f, i in enumerate(idx):
                kept[f][workers[on, None], i[on]] = 1.0
        return {k: self.net.coverage(k, kept, self.n).to(self.problem.dtype) for k in ("x", "y")}

    def losses(self, L):
        return self._losses[L]

    def view(self, grp, x, y, v):
        cx, cy = grp.kept["x"], grp.kept["y"]
        return x[cx], y[cy], v[cy]

    def kept_size(self, L, space):
        return self.net.numel(space, self.sub[L])

    def flops(self, L, batch_f, batch_g, steps):
        """Forward F = DenseNet.flops of the sub-network; a gradient costs 3F (forward + backward
        at twice the forward). Per local step: grad F (3F_f) and three gradients of G (9F_g): the
        centre and y +- delta v for finite differences, or the gradient plus an exact HVP counted as
        two gradient passes (Pearlmutter's R-op), so both product options cost the same FLOPs."""
        bf, bg = batch_size(batch_f), batch_size(batch_g)
        if bf is None or bg is None:
            return None
        s = self.sub[L]
        return float(steps * (3 * self.net.flops(bf, s) + 9 * self.net.flops(bg, s)))


def batch_size(batch: Any) -> int | None:
    """Samples per worker of a batch [n, B, ...] under 'inputs' (the network tasks' convention)."""
    if isinstance(batch, dict) and isinstance(batch.get("inputs"), torch.Tensor) and batch["inputs"].dim() >= 2:
        return int(batch["inputs"].shape[1])
    return None


def make_layout(problem: Problem, clients: Clients, n_workers: int) -> Layout:
    """The task's network layout if ``problem.units()`` gives one, else coordinate-level masks."""
    units = problem.units()
    net = units.get("net") if isinstance(units, dict) else None
    if net is None:
        return CoordLayout(problem, clients, n_workers)
    return NetLayout(problem, clients, n_workers, net)


def coverage_average(old: Tensor, total: Tensor, coverage: Tensor) -> Tensor:
    """The server's coverage average: each coordinate moves by the sum of the changes the clients
    covering it sent, divided by their number; an uncovered coordinate keeps its value."""
    return old + coverage_change(total, coverage)


def coverage_change(total: Tensor, coverage: Tensor) -> Tensor:
    """The coverage average's change of each coordinate (``coverage_average(old, ...) - old``)."""
    return total / coverage.clamp(min=1)


class Kept(Message):
    """Each local client's kept coordinates of one full-size vector (docs/algorithms.md, RABO).

    ``parts`` holds, per group of clients, their kept values and the values' positions in the
    d-vector (same shapes). Only the values travel: positions are a pure function of (seed, round,
    worker, level) the server recomputes, so the bits are the float width times the kept values."""

    def __init__(self, d: int, parts: list[tuple[Tensor, Tensor]], count: int, dtype: torch.dtype):
        self.d, self.parts, self.count, self.dtype = d, parts, count, dtype

    def bits(self) -> int:
        return sum(v.numel() * float_bits(v) for v, _ in self.parts)

    def local_sum(self) -> Tensor:
        out = torch.zeros(self.d, dtype=self.dtype)
        for v, c in self.parts:
            out.index_add_(0, c.reshape(-1), v.reshape(-1))
        return out


class PerReceiver(Message):
    """A server broadcast in which receiver i gets ``floats[i]`` floats of ``width`` bits.

    Passed to ``comm.broadcast`` with ``receivers=1``: its bits already sum over all receivers."""

    def __init__(self, floats: Tensor, width: int):
        self.floats, self.width, self.count = floats, width, int(floats.numel())

    def bits(self) -> int:
        return int(self.floats.sum()) * self.width

    def local_sum(self) -> Tensor:
        raise NotImplementedError("a broadcast is not reduced")
