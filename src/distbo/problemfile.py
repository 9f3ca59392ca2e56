"""``distbo run --problem FILE.py:FUNCTION``: your own problem from a Python file.

FUNCTION takes no argument and returns a ``distbo.Problem`` or ``distbo.ModuleProblem``. The spec
is stored in config.json with FILE made absolute, and the function is called again wherever the
problem is needed: in every process of ``--procs``, on ``--resume``, for every trial of ``distbo
tune``. FILE is imported as a module (its folder first on ``sys.path``, as for a script), once
per process. ``check_spec`` (no torch) runs with the other configuration checks; a missing file
or function, a file that fails to import or a function that returns something else is one line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError

FIELD = "problem"
FORM = "FILE.py:FUNCTION (a function of no argument returning a distbo.Problem or distbo.ModuleProblem)"


def split(spec: str) -> tuple[Path, str]:
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise ValueError(f"expected {FORM}, got {spec!r}")
    return Path(path), name


def check_spec(spec: str) -> str:
    """The spec with FILE absolute, if FILE is an existing .py file (a ValueError otherwise)."""
    path, name = split(spec)
    if path.suffix != ".py":
        raise ValueError(f"{path} is not a .py file; expected {FORM}")
    if not path.is_file():
        raise ValueError(f"file not found: {path} (got {spec!r}); expected {FORM}")
    return f"{path.resolve()}:{name}"


def _module(path: Path) -> ModuleType:
    name = f"distbo_problem_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"  # the same in every process
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's file: one line
        del sys.modules[name]
        raise ConfigError(FIELD, f"{path} failed to import: {type(exc).__name__}: {_first_line(exc)}") from None
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def load(spec: str) -> Any:
    """Call FUNCTION of FILE and return its Problem (ConfigError on 'problem' when it cannot)."""
    from .problems.base import Problem

    try:
        path, name = split(check_spec(spec))
    except ValueError as exc:
        raise ConfigError(FIELD, str(exc)) from None
    module = _module(path)
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        why = "no function" if fn is None else f"a {type(fn).__name__}, not a function, named"
        raise ConfigError(FIELD, f"{path} has {why} '{name}'; its functions: {', '.join(found) or 'none'}")
    try:
        problem = fn()
    except ConfigError:
        raise  # e.g. a ModuleProblem's own check, naming its argument
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(FIELD, f"{path.name}:{name}() failed: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(problem, Problem):
        raise ConfigError(FIELD, f"{path.name}:{name}() returned a value of type {type(problem).__name__}, expected a "
                          "distbo.Problem or distbo.ModuleProblem")
    return problem
