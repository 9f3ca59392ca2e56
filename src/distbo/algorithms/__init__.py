"""Algorithms, registered by name. Importing this package registers all of them."""
from . import soba  # noqa: F401  (registers)
from . import rabo  # noqa: F401  (registers RABO, RAFBO)
from . import aggitd, fednest  # noqa: F401  (registers)
from .base import ALGORITHMS, Algorithm, Clients, Context, StepSizes

__all__ = ["ALGORITHMS", "Algorithm", "Clients", "Context", "StepSizes"]
