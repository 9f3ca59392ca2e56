"""Where a run computes: the ``device`` setting ("cpu", "cuda", "cuda:N", "auto").

``resolve_device`` turns the setting into a ``torch.device`` (one-line ConfigError on 'device' when
CUDA is asked for and absent). Under torch.distributed every process takes the GPU of its
LOCAL_RANK (``cuda:LOCAL_RANK``, modulo the GPUs present) and the job uses nccl (comm/torch_dist.py).

A problem is always built on the CPU (so its data and every draw at construction are the same on
every device) and then moved with ``to_device``: every tensor, module and dataclass of tensors it
holds goes to the device. The run then executes under ``torch.device(...)`` as the default device,
so the state, the rng draws (made on their key's device, rng.py) and the compressors' buffers are
created there. On the CPU nothing is moved and no default is set: results are those of a CPU run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import torch
from pydantic import BaseModel

from .config import DEVICES as ALLOWED, is_device_spec
from .errors import ConfigError


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(spec: str, in_job: bool = False) -> torch.device:
    """The torch.device of a ``device`` setting (``in_job``: one GPU per local rank)."""
    if spec == "cpu":
        return torch.device("cpu")
    count = _cuda_count()
    if spec == "auto" and count == 0:
        return torch.device("cpu")
    if not is_device_spec(spec):
        raise ConfigError("device", f"unknown device '{spec}'; allowed: {ALLOWED}")
    if count == 0:
        raise ConfigError("device", f"'{spec}' asks for CUDA but torch sees no CUDA GPU on this machine "
                          f"(torch {torch.__version__}); use device=\"cpu\" or \"auto\"")
    if in_job and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % count)
    index = int(spec[5:]) if spec.startswith("cuda:") else 0
    if index >= count:
        raise ConfigError("device", f"'{spec}' but this machine has {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def _move(obj: Any, device: torch.device, seen: set[int]) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, torch.nn.Module):
        return obj.to(device)
    if id(obj) in seen:
        return obj
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_move(v, device, seen) for v in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device, seen) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        seen.add(id(obj))
        changes = {f.name: _move(getattr(obj, f.name), device, seen) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes) if changes else obj
    if (hasattr(obj, "__dict__") and type(obj).__module__.startswith("distbo")
            and not isinstance(obj, BaseModel)):  # settings (frozen pydantic models) hold no tensors
        seen.add(id(obj))
        for k, v in list(vars(obj).items()):
            setattr(obj, k, _move(v, device, seen))
    return obj


def to_device(problem: Any, device: torch.device) -> Any:
    """Move every tensor and module a problem holds (attributes, lists, dicts, dataclasses, distbo
    objects inside it) to ``device``, in place; a no-op on the CPU. A problem that defines
    ``to_device(device)`` moves itself."""
    if device.type == "cpu":
        return problem
    if callable(getattr(problem, "to_device", None)):
        problem.to_device(device)
        return problem
    seen: set[int] = {id(problem)}
    for k, v in list(vars(problem).items()):
        setattr(problem, k, _move(v, device, seen))
    return problem


def default_device(device: torch.device):
    """A context in which new tensors are created on ``device`` (nothing at all on the CPU)."""
    return contextlib.nullcontext() if device.type == "cpu" else torch.device(device)
