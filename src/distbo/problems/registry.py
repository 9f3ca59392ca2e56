"""The task table: name -> parameter schema and factory."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..registry import Params, Registry, validate
from .base import Problem
from .hyperclean import Hyperclean, HypercleanParams
from .hyperrep import HyperrepParams, make_hyperrep
from .quadratic import Quadratic

TASKS = Registry("task")
register_task = TASKS.register


class QuadraticParams(Params):
    d_x: int = Field(10, gt=0, description="upper-level dimension")
    d_y: int = Field(20, gt=0, description="lower-level dimension")
    heterogeneity: float = Field(1.0, ge=0, description="0 = identical workers")
    noise: float = Field(0.0, ge=0, description="std of Gaussian gradient noise")
    mu: float = Field(1.0, gt=0, description="lower-level strong convexity floor")


@register_task("quadratic", QuadraticParams,
               "random quadratic bilevel problem with closed-form y*(x), hypergradient and x*")
def _quadratic(p: QuadraticParams, workers: int, seed: int, dtype: torch.dtype) -> Problem:
    return Quadratic(workers=workers, seed=seed, dtype=dtype, **p.model_dump())


@register_task("hyperclean", HypercleanParams,
               "data hyper-cleaning: per-sample weights x over noisy labels, classifier y (mnist5k, digits, idx:PATH)")
def _hyperclean(p: HypercleanParams, workers: int, seed: int, dtype: torch.dtype) -> Problem:
    return Hyperclean(workers=workers, seed=seed, dtype=dtype, params=p)


@register_task("hyperrep", HyperrepParams,
               "hyper-representation: MLP hidden layers (or CNN convolutions, model=cnn) x, linear head y "
               "(mnist5k, digits, idx:PATH, cifar10:PATH)")
def _hyperrep(p: HyperrepParams, workers: int, seed: int, dtype: torch.dtype) -> Problem:
    return make_hyperrep(p, workers, seed, dtype)


def make(name: str, workers: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32,
         **params: Any) -> Problem:
    """Build a ready task by name, e.g. ``make("quadratic", workers=8, heterogeneity=0)``."""
    entry = TASKS.get(name, "task.name")
    return entry.build(validate(entry.params, params, "task"), workers=workers, seed=seed, dtype=dtype)
