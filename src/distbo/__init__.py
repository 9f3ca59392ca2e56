"""distbo: distributed and federated stochastic bilevel optimization with cheap communication.

    import distbo
    result = distbo.run("quadratic", algorithm="soba", rounds=500)
    result.metrics[-1]["hypergrad_norm"]
"""
from . import problems as tasks
from .errors import ConfigError, DistboError, DivergenceError
from .problems.base import Problem
from .problems.module import ModuleProblem
from .runner import Result, run

__all__ = ["ConfigError", "DistboError", "DivergenceError", "ModuleProblem", "Problem", "Result", "run", "tasks"]
__version__ = "0.1.0"
