"""What every algorithm shares: its context, hyper-parameters, batches and the registry.

An algorithm is a hyper-parameter schema plus ``init() -> state`` and ``step(state, t) -> state``
(one outer iteration). Its state is a NamedTuple of tensors: server quantities are 1-D and
replicated in every process, per-worker quantities carry the leading worker axis [n_local, ...].
It talks to other workers only through ``ctx.comm`` and never knows whether it runs in the
simulator or under torch.distributed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field

from .. import rng
from ..comm.base import Communicator
from ..compressors.base import Compressor
from ..defaults import derived
from ..errors import ConfigError
from ..oracles import Oracles
from ..problems.base import Problem
from ..registry import Params, Registry
from .upper import OPTIMIZERS, UpperOptName, UpperOptimizer, upper_note, upper_opt_field

Tensor = torch.Tensor
ALGORITHMS = Registry("algorithm")

# random streams of one round (folded into the round key)
STREAM_F, STREAM_G, STREAM_COMPRESS, STREAM_CLIENTS, STREAM_MASKS = range(5)


@dataclass
class Clients:
    """Client-side settings shared by the federated and pruning algorithms."""

    fraction: float = 1.0  # share of clients sampled per outer iteration
    resources: list[float] = field(default_factory=lambda: [1.0])  # cycled over clients
    policy: str = "rolling"  # sub-model mask policy (pruning algorithms)


@dataclass
class Context:
    problem: Problem
    comm: Communicator
    compressor: Compressor
    seed: int = 0
    clients: Clients = field(default_factory=Clients)
    downlink: Compressor | None = None  # None: the server broadcasts uncompressed
    rounds: int | None = None  # planned outer iterations (None: not known)
    worker_chunk: int | None = None  # oracles evaluate at most this many workers at once (None: all)


class StepSizes(Params):
    """Step sizes shared by the single-loop methods (x: alpha, y: beta, v: gamma). Unset, they are
    derived from the problem's constants and the compressor when the run is resolved
    (distbo/defaults.py, docs/defaults.md)."""

    alpha: float | None = Field(None, gt=0, description="upper-level (x) step size", json_schema_extra=derived(
        "0.5/L_Phi in closed form, else max(0.5/max(L_g, L_f_xx), 0.1/L_Phi estimated at the run's horizon) x compressor factor on d_x (x min(1, 2 theta) with a moving average); rabo/rafbo: / T"))
    beta: float | None = Field(None, gt=0, description="lower-level (y) step size", json_schema_extra=derived(
        "1/L_g x compressor factor on d_y; rabo/rafbo: min(1/L_g, 1/(T L_g,max))"))
    gamma: float | None = Field(None, gt=0, description="linear-system (v) step size", json_schema_extra=derived(
        "as beta"))
    upper_opt: UpperOptName = upper_opt_field()
    schedule: Literal["constant", "sqrt"] = Field("constant", description="constant or 1/sqrt(k+1) decay")
    radius: float | None = Field(None, gt=0, description="project v onto ||v|| <= radius (off if unset)")


def check_clients(clients: Clients, uses: tuple[str, ...], algorithm: str) -> None:
    """Refuse ``clients`` settings (away from their defaults) that the algorithm would ignore."""
    default = Clients()
    for name in ("fraction", "resources", "policy"):
        if name not in uses and getattr(clients, name) != getattr(default, name):
            users = {"fraction": "aggitd, fednest, lfednest, rabo, rafbo", "resources": "rabo, rafbo",
                     "policy": "rabo, rafbo"}[name]
            raise ConfigError(f"clients.{name}", f"{algorithm} does not use it and would ignore "
                              f"{getattr(clients, name)!r}; allowed: {getattr(default, name)!r} "
                              f"(algorithms that use it: {users})")


def schedule_factor(schedule: str, t: int) -> float:
    """Multiplier of the base step sizes at round t (0-based)."""
    return 1.0 if schedule == "constant" else 1.0 / (t + 1) ** 0.5


def project_ball(v: Tensor, radius: float | None) -> Tensor:
    """Euclidean projection onto {||v|| <= radius} (row-wise for per-worker v); identity if None."""
    if radius is None:
        return v
    norm = v.norm(dim=-1, keepdim=True)
    return v * torch.clamp(radius / norm.clamp_min(1e-30), max=1.0)


class Algorithm(ABC):
    Hyper: ClassVar[type[Params]] = Params
    #: the ``clients`` settings this algorithm uses; setting another one is refused (``check_clients``)
    client_settings: ClassVar[tuple[str, ...]] = ()
    #: names of the hyper-parameters a task's ``defaults`` may fill in
    name: str = ""
    #: what the server optimizer of x (``upper_opt``) is applied to (``distbo list``, the run's first line)
    x_update: ClassVar[str] = "the aggregated hypergradient estimate"

    def __init__(self, ctx: Context, hp: Params):
        self.ctx, self.hp = ctx, hp
        self.problem, self.comm = ctx.problem, ctx.comm
        self.oracles = Oracles(ctx.problem, ctx.worker_chunk)
        self.workers = ctx.comm.local_workers
        schedule = getattr(hp, "schedule", None) or "constant"
        self.upper: UpperOptimizer = OPTIMIZERS[getattr(hp, "upper_opt", "sgd")](
            getattr(hp, "alpha", None), lambda t: schedule_factor(schedule, t))

    @abstractmethod
    def init(self) -> NamedTuple:
        """The state before round 0."""

    @abstractmethod
    def step(self, state: Any, t: int) -> Any:
        """One outer iteration (round t, 0-based)."""

    def move_x(self, opt: Any, x: Tensor, t: int, grad: Tensor | None = None,
               step: Tensor | None = None) -> tuple[Tensor, Any]:
        """The server's new x and optimizer state (algorithms/upper.py) from the aggregated
        direction ``grad``, or from the SGD move ``step`` that clients' local steps made."""
        opt, delta = self.upper.update(opt, t, x, grad, step)
        return x - delta, opt

    def upper_note(self) -> str | None:
        """One line on the server optimizer when it is not sgd (printed when the run starts)."""
        return upper_note(getattr(self.hp, "upper_opt", "sgd"), self.x_update, self.hp)

    def point(self, state: Any) -> tuple[Tensor, Tensor]:
        """The server's (x, y), where the run is evaluated."""
        return state.x, state.y

    def metrics(self, state: Any) -> dict[str, float]:
        """Extra metric fields of this algorithm (e.g. coverage); the server optimizer's step."""
        return self.upper.metrics(getattr(state, "opt", ()))

    # --- helpers ---
    def round_key(self, t: int) -> Tensor:
        return rng.key(self.ctx.seed, 0x5EED, t)

    def batches(self, t: int, workers: Tensor | None = None, sub: int = 0):
        """Independent f- and g-batches of round t (``sub`` numbers extra draws in one round)."""
        workers = self.workers if workers is None else workers
        k = rng.key(self.round_key(t), sub)
        return (self.problem.sample("f", workers, rng.key(k, STREAM_F)),
                self.problem.sample("g", workers, rng.key(k, STREAM_G)))

    def compress_keys(self, t: int, var: int, workers: Tensor | None = None, sub: int = 0) -> Tensor:
        """One key per worker for compressing variable ``var`` at round t."""
        workers = self.workers if workers is None else workers
        return rng.key(self.round_key(t), STREAM_COMPRESS, sub, var, workers)

    def x0y0(self) -> tuple[Tensor, Tensor]:
        return self.problem.init(self.ctx.seed)
