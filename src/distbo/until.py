"""The ``until`` target (``FIELD<=VALUE`` or ``FIELD>=VALUE``), parsed without torch: the
configuration check (config.py) and the command line use it before torch is imported."""
from __future__ import annotations

import math

from .errors import ConfigError

SYNTAX = "expected FIELD<=VALUE or FIELD>=VALUE with a number VALUE (e.g. hypergrad_norm<=1e-3)"


def parse_until(text: str):
    """The Target of an ``until`` string; ValueError (for the config check) if it is malformed or
    its value is not a finite number (a target of nan or inf can never be met)."""
    from .tables import parse_target

    try:
        target = parse_target(text)
    except ConfigError:
        raise ValueError(f"{SYNTAX}, got '{text}'") from None
    if not math.isfinite(target.value):
        raise ValueError(f"{target.value:g} is not a finite number (a target of nan or inf is never met)")
    return target
