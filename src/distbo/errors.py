"""User-facing errors: each prints as ONE line naming the field and what is allowed."""
from __future__ import annotations

import difflib
from typing import Iterable


class DistboError(Exception):
    """Base of the errors the command line reports without a traceback."""


class ConfigError(DistboError):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class DivergenceError(DistboError):
    """A NaN or inf appeared in the state; the run stops and keeps what it saved."""


def unknown(field: str, value: str, allowed: Iterable[str], what: str = "value") -> ConfigError:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    shown = "" if field.endswith(f".{value}") else f" '{value}'"
    return ConfigError(field, f"unknown {what}{shown}{hint}; allowed: {', '.join(allowed)}")


class LaunchError(DistboError):
    """A process of a multi-process run failed; ``rank`` is the first one, ``code`` the exit code."""

    def __init__(self, message: str, rank: int | None, code: int):
        super().__init__(message)
        self.rank, self.code = rank, code
