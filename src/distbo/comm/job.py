"""Facts about the job this process belongs to (its rank), readable from every layer: problems and
communicators ask them without depending on the process launcher (launch.py re-exports them)."""
from __future__ import annotations

import os

import torch.distributed as dist


def job_env() -> tuple[int, int] | None:
    """(rank, world size) from the environment torchrun (or run_procs) sets, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def in_job() -> bool:
    return (dist.is_available() and dist.is_initialized()) or job_env() is not None


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = job_env()
    return env[0] if env else 0
