"""Tasks: ready-made Problems, looked up by name (``distbo.tasks.make("quadratic", workers=8)``)."""
from __future__ import annotations

from .base import Batch, Problem
from .registry import TASKS, make, register_task

__all__ = ["Batch", "Problem", "TASKS", "make", "register_task"]
