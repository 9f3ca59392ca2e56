"""distbo: distributed and federated stochastic bilevel optimization with cheap communication.

    import distbo
    result = distbo.run("quadratic", algorithm="soba", rounds=500)
    result.metrics[-1]["hypergrad_norm"]
"""
from . import problems as tasks
from .errors import ConfigError, DistboError, DivergenceError
from .problems.base import Problem
from .runner import Result, run
from .tuning import tune

__all__ = ["ConfigError", "DistboError", "DivergenceError", "Problem", "Result", "run", "tasks", "tune"]
__version__ = "0.1.0"
