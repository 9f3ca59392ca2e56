"""Name -> implementation tables for tasks, algorithms and compressors, with their parameter schemas."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, unknown


class Params(BaseModel):
    """Base of every parameter schema: typed, range-checked, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[..., Any]
    params: type[Params]
    summary: str


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type[Params] = Params, summary: str = ""):
        def deco(build):
            self._entries[name] = Entry(name, build, params, summary or (build.__doc__ or "").split("\n")[0])
            return build
        return deco

    def get(self, name: str, field: str | None = None) -> Entry:
        if name not in self._entries:
            raise unknown(field or self.kind, name, self._entries, self.kind)
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())


def validate(model: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
    """Build ``model`` from ``data``; turn the first validation error into a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if err["type"] == "extra_forbidden":
            raise unknown(field, loc.split(".")[-1], model.model_fields, "key") from None
        allowed = _describe_field(model, err["loc"][0]) if err["loc"] else ""
        raise ConfigError(field, f"{err['msg']} (got {err.get('input')!r}){allowed}") from None


def _describe_field(model: type[BaseModel], name: Any) -> str:
    info = model.model_fields.get(str(name))
    if info is None:
        return ""
    ann = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
    return f"; expected {ann}" + (f" ({info.description})" if info.description else "")
