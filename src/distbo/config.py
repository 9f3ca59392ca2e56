"""The run configuration: a TOML file, command-line flags and ``--set key=value`` overrides.

Top-level keys are typed and range-checked here; the ``task`` and ``algorithm`` sections are
checked against the chosen task's and algorithm's own schema (registry.py), so an unknown key or a
bad value anywhere is a one-line ConfigError naming the dotted field and what is allowed.
"""
from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from . import safeio
from .errors import ConfigError
from .registry import Params, validate
from .until import parse_until


def __getattr__(name: str) -> Any:
    """``DTYPES`` (name -> torch dtype) is made on first use: checking a configuration needs no torch."""
    if name == "DTYPES":
        import torch

        return {"float32": torch.float32, "float64": torch.float64}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_NAMES = {"task": "quadratic", "algorithm": "soba"}
DEVICES = "cpu, cuda, cuda:N, auto"


def is_device_spec(spec: str) -> bool:
    """A well-formed ``device`` setting (whether CUDA is there is checked by devices.resolve_device)."""
    return spec in ("cpu", "cuda", "auto") or (spec.startswith("cuda:") and spec[5:].isdigit())


class ClientsConfig(Params):
    fraction: float = Field(1.0, gt=0, le=1, description="share of clients sampled per outer iteration")
    resources: list[float] = Field([1.0], min_length=1, description="resource levels in (0, 1], cycled over clients")
    policy: Literal["static", "rolling", "random"] = Field("rolling", description="sub-model mask policy")

    @field_validator("resources")
    @classmethod
    def _in_unit(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0 < r <= 1]
        if bad:
            raise ValueError(f"every resource level must be in (0, 1], got {bad}")
        return v


class FlowerConfig(Params):
    nodes: int | None = Field(None, gt=0, description="Flower nodes (ClientApps), each hosting a block of "
                              "workers (unset: one worker per node)")
    runtime: Literal["inprocess", "deployment"] = Field(
        "inprocess", description="inprocess: the Flower apps driven in this process; deployment: a SuperLink and "
        "SuperNodes on 127.0.0.1 with flwr run (docs/flower.md)")


class RunConfig(Params):
    task: dict[str, Any] = Field(default_factory=lambda: {"name": "quadratic"},
                                 description="the task: a name, or a [task] section with name and its parameters")
    problem: str | None = Field(None, description="your own problem instead of a task: FILE.py:FUNCTION, a "
                                "function of no argument returning a distbo.Problem or ModuleProblem (called in "
                                "every process and on resume; FILE is stored absolute)")
    algorithm: dict[str, Any] = Field(default_factory=lambda: {"name": "soba"}, description="the algorithm: a "
                                      "name, or an [algorithm] section with name and its hyper-parameters")
    compressor: str = Field("identity", description="up-link compressor spec, e.g. topk:0.1")
    downlink: str = Field("identity", description="down-link compressor spec")
    workers: int = Field(8, gt=0, description="number of workers (clients)")
    rounds: int = Field(1000, ge=0, description="outer iterations")
    eval_every: int = Field(10, gt=0, description="evaluate every k rounds")
    eval_hypergrad: bool = Field(False, description="report hypergrad_norm at every evaluation for any problem: the "
                                 "lower level solved to a tolerance and the system for v, on fixed batches covering "
                                 "each worker's shard (its cost: hypergrad_s per row; docs/running.md)")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every k rounds (0: only at the end)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the task's data and of every random draw of "
                      "the run (distbo.rng keys are 32-bit)")
    procs: int = Field(1, gt=0, description="processes on this machine")
    timeout: float = Field(30.0, gt=0, description="seconds a multi-process run waits for a silent process "
                           "before it fails")
    threads: int | None = Field(None, ge=1, description="torch threads per process (unset: 1, which is "
                                "fastest on a shared machine; docs/speed.md)")
    dtype: Literal["float32", "float64"] = Field("float32", description="floating-point type of the run")
    clients: ClientsConfig = Field(default_factory=ClientsConfig, description="client settings of the federated "
                                   "and pruning methods ([clients] section)")
    device: str = Field("cpu", description="where to compute: cpu, cuda, cuda:N or auto (cuda if present)")
    worker_chunk: int | None = Field(None, ge=1, description="evaluate the oracles this many workers at a "
                                     "time (memory O(chunk d) instead of O(workers d)); unset: all at once")
    engine: Literal["sim", "flower"] = Field("sim", description="sim: the simulator (or torch.distributed with "
                                             "procs > 1); flower: Flower apps, one round trip per exchange")
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    until: str | None = Field(None, description="stop at the first evaluation that meets FIELD<=VALUE or "
                              "FIELD>=VALUE, e.g. hypergrad_norm<=1e-3 (unset: run every round)")
    diverge_factor: float | None = Field(1e4, ge=0, description="stop as diverged when ||x||, ||y||, "
                                         "upper_loss or hypergrad_norm grows past this factor times its start "
                                         "(floors: sqrt(d) for norms, 1 for metrics); 0 or unset: off")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if is_device_spec(v):
            return v
        raise ValueError(f"unknown device '{v}'; allowed: {DEVICES}")

    @field_validator("problem")
    @classmethod
    def _problem_file(cls, v: str | None) -> str | None:
        from .problemfile import check_spec

        return None if v is None else check_spec(v)

    @field_validator("task", "algorithm", mode="before")
    @classmethod
    def _named(cls, v: Any, info) -> Any:
        if isinstance(v, str):
            return {"name": v}
        if isinstance(v, dict):
            v = {"name": DEFAULT_NAMES[info.field_name], **v}
            if not isinstance(v["name"], str):
                raise ValueError("'name' must be a string")
        return v

    @field_validator("until")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        if v is not None:
            parse_until(v)
        return v


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file not found: {p}")
    try:
        return tomllib.loads(safeio.read_text(p, "config"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{p} is not valid TOML: {exc}") from None


def parse_value(text: str) -> Any:
    """A TOML value ('0.1', '[1, 0.5]', 'true', '"s"'); anything else is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(raw: dict[str, Any], item: str) -> None:
    """Apply one ``key=value`` override with a dotted key (``algorithm.alpha=0.1``)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", f"expected key=value with a dotted key (e.g. algorithm.alpha=0.1), got '{item}'")
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part in ("task", "algorithm"):
            child = node[part] = {"name": child}
        elif child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), f"is a value, not a section; cannot set '{key}'")
        node = child
    val = parse_value(value.strip())
    if parts[-1] in ("task", "algorithm") and len(parts) == 1 and isinstance(val, str):
        node.setdefault(parts[-1], {})
        node[parts[-1]] = {**node[parts[-1]], "name": val} if isinstance(node[parts[-1]], dict) else {"name": val}
    else:
        node[parts[-1]] = val


def merge(raw: dict[str, Any], **flags: Any) -> dict[str, Any]:
    """Lay command-line flags (None = not given) over a raw config."""
    out = copy.deepcopy(raw)
    for k, v in flags.items():
        if v is None:
            continue
        if k in ("task", "algorithm"):
            sec = out.get(k)
            out[k] = {**(sec if isinstance(sec, dict) else {}), "name": v}
        else:
            out[k] = v
    return out


def check_run(raw: dict[str, Any]) -> RunConfig:
    return validate(RunConfig, raw, "")


@dataclass
class Resolved:
    """A fully checked configuration: top level, task parameters, algorithm hyper-parameters."""

    run: RunConfig
    task: Params | None  # None for a user-supplied Problem
    algorithm: Params
    derived: dict[str, Any] | None = None  # inputs of the derived defaults (defaults.py)

    def as_dict(self) -> dict[str, Any]:
        d = self.run.model_dump()
        d["task"] = ({"name": self.run.task["name"], **self.task.model_dump()} if self.task is not None
                     else {"name": "custom"})  # a user-defined Problem
        d["algorithm"] = {"name": self.run.algorithm["name"], **self.algorithm.model_dump()}
        if self.derived is not None:
            d["derived"] = self.derived
        return d
