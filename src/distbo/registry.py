"""Name -> implementation tables for tasks, algorithms and compressors, with their parameter schemas.

Third-party packages add entries through Python entry points in the groups ``distbo.algorithms``,
``distbo.compressors`` and ``distbo.tasks`` (``PLUGIN_GROUPS``): each entry point names a module,
whose import registers its entries (``@ALGORITHMS.register(...)``), or a function of no argument
that registers them. They are loaded when a table is first read (a name looked up, ``distbo
list``); an entry point that fails to load, or that would replace an entry already there, is
skipped with one warning line on stderr. Their summaries end with "[plugin: DISTRIBUTION]".
"""
from __future__ import annotations

import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError, unknown


class Params(BaseModel):
    """Base of every parameter schema: typed, range-checked, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, v: Any, info: ValidationInfo) -> Any:
        """Refuse the lax conversions pydantic would make silently: true -> 1, "8" -> 8, 8.0 -> 8."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None:
            problem = _type_mismatch(field.annotation, v)
            if problem:
                raise ValueError(problem)
        return v


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[..., Any]
    params: type[Params]
    summary: str


PLUGIN_GROUPS = {"algorithm": "distbo.algorithms", "compressor": "distbo.compressors", "task": "distbo.tasks"}


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False
        self._plugin: str | None = None  # the distribution whose entry point is being loaded

    def register(self, name: str, params: type[Params] = Params, summary: str = ""):
        def deco(build):
            text = summary or (build.__doc__ or "").split("\n")[0]
            if self._plugin is not None:
                if name in self._entries:
                    raise ConfigError(self.kind, f"'{name}' is already registered")
                text = f"{text} [plugin: {self._plugin}]"
            self._entries[name] = Entry(name, build, params, text)
            return build
        return deco

    def load_plugins(self) -> None:
        """Load this table's entry points (once; see the module doc)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=PLUGIN_GROUPS.get(self.kind, "")):
            self._plugin = ep.dist.name if ep.dist is not None else ep.value
            try:
                obj = ep.load()
                if callable(obj):
                    obj()
            except Exception as exc:  # noqa: BLE001 - a third party's package: said, then skipped
                text = str(exc).strip().splitlines()
                _warn(f"skipped the {self.kind} plugin '{ep.name}' ({ep.value}) of {self._plugin}: "
                      f"{type(exc).__name__}: {text[0] if text else ''}")
            finally:
                self._plugin = None

    def get(self, name: str, field: str | None = None) -> Entry:
        self.load_plugins()
        if name not in self._entries:
            raise unknown(field or self.kind, name, self._entries, self.kind)
        return self._entries[name]

    def names(self) -> list[str]:
        self.load_plugins()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        self.load_plugins()
        return list(self._entries.values())


def _warn(message: str) -> None:
    """One warning line, from one process: not from the processes launch.run_procs starts (their
    launcher loaded the same entry points and said it), nor from ranks > 0 of a torchrun job."""
    if os.environ.get("RANK", "0") == "0" and "DISTBO_INIT_METHOD" not in os.environ:
        sys.stderr.write(f"distbo: warning: {message}\n")


def _scalar_types(annotation: Any) -> tuple[set, Any]:
    """(the plain scalar types a field accepts, the element annotation if it is a list)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # a Literal member accepts its values' types
        args = typing.get_args(annotation)
        literal = {type(v) for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)}
        return {a for a in args if a in (bool, int, float, str, type(None))} | literal, None
    if origin is list:
        return set(), (typing.get_args(annotation) or (Any,))[0]
    return ({annotation} if annotation in (bool, int, float, str) else set()), None


def _type_mismatch(annotation: Any, v: Any) -> str | None:
    """Why ``v`` is the wrong kind of value for ``annotation`` (None if fine or not checked here)."""
    allowed, item = _scalar_types(annotation)
    if item is not None and isinstance(v, list):
        return next((f"item {i}: {p}" for i, x in enumerate(v) if (p := _type_mismatch(item, x))), None)
    if not allowed or str in allowed or v is None:
        return None
    kind = type(v)
    if kind is bool and bool not in allowed:
        return "expected a number, not true/false"
    if kind is str:
        return f"expected {_kinds(allowed)}, not a string"
    if isinstance(v, float) and kind is not bool and allowed & {int, float} == {int}:
        return "expected an integer, not a decimal number"
    if allowed == {bool} and kind is not bool:
        return "expected true or false"
    return None


def _kinds(allowed: set) -> str:
    names = [n for t, n in ((bool, "true/false"), (int, "an integer"), (float, "a number")) if t in allowed]
    return " or ".join(names[-1:] if float in allowed and int in allowed else names) or "a value"


def validate(model: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
    """Build ``model`` from ``data``; turn the first validation error into a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()  # an unknown key first: with a missing one, it is likely its misspelling
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        owner, name = _owner(model, err["loc"])
        if err["type"] == "extra_forbidden":
            raise unknown(field, str(name), owner.model_fields, "key") from None
        msg = err["msg"].removeprefix("Value error, ")
        # say what was given and what is expected, unless the message (our validators') already does
        got = "" if "got " in msg else f" (got {err.get('input')!r})"
        expected = "" if "expected" in msg or "allowed" in msg else _describe_field(owner, name)
        raise ConfigError(field, f"{msg}{got}{expected}") from None


def _owner(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel], Any]:
    """The (nested) model that owns the field at ``loc``, and the field's name in it (a list of
    models is entered through its index: ``runs.0.label``)."""
    i = 0
    while i < len(loc) - 1:
        info = model.model_fields.get(str(loc[i]))
        sub = info.annotation if info is not None else None
        skip = 1
        if typing.get_origin(sub) is list and isinstance(loc[i + 1], int):
            sub, skip = typing.get_args(sub)[0], 2
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)) or i + skip >= len(loc):
            return model, loc[i]
        model, i = sub, i + skip
    return model, (loc[-1] if loc else "")


def _describe_field(model: type[BaseModel], name: Any) -> str:
    info = model.model_fields.get(str(name))
    if info is None:
        return ""
    ann = info.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):  # Literal[...] | None: the Literal
        ann = next((a for a in typing.get_args(ann) if typing.get_origin(a) is typing.Literal), ann)
    if typing.get_origin(ann) is typing.Literal:
        text = "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    else:
        text = (re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(ann)) if typing.get_args(ann)  # list[float]
                else getattr(ann, "__name__", str(ann)))
    return f"; expected {text}" + (f" ({info.description})" if info.description else "")
