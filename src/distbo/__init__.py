"""distbo: distributed and federated stochastic bilevel optimization with cheap communication.

    import distbo
    result = distbo.run("quadratic", algorithm="soba", rounds=500)
    result.metrics[-1]["hypergrad_norm"]
"""
from .errors import ConfigError, DistboError, DivergenceError

#: imported on first use, so that ``distbo run`` checks its flags before torch is loaded
_LAZY = {"tasks": ("problems", None), "Problem": ("problems.base", "Problem"),
         "ModuleProblem": ("problems.module", "ModuleProblem"),
         "Result": ("runner", "Result"), "run": ("runner", "run"), "tune": ("tuning", "tune")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'distbo' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


__all__ = ["ConfigError", "DistboError", "DivergenceError", "ModuleProblem", "Problem", "Result", "run", "tasks", "tune"]
__version__ = "0.1.0"
