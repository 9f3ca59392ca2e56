"""The configuration reference, generated from the parameter schemas: ``distbo list NAME`` and
``distbo list --markdown`` (committed as docs/reference.md; a test checks it is current).

Every row comes from a pydantic field: its type, its default (or ``derived: <rule>`` when the field's
``json_schema_extra`` has a "derived" rule), its range (the gt/ge/lt/le and length constraints) and
its description. What an algorithm accepts (compressor kinds, a compressed down-link, client
sampling, resource levels) is not written down anywhere: it is found by building the algorithm on a
tiny quadratic with each setting and seeing whether it refuses (a ConfigError), so it cannot go stale.
The output depends only on the code: registries in registration order, fields in schema order.
"""
from __future__ import annotations

import re
import types
import typing
from functools import lru_cache
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic.fields import FieldInfo

from .algorithms.upper import OPTIMIZERS
from .errors import ConfigError, unknown
from .registry import Params

HEADER = ["key", "type", "default", "range", "description"]
# one setting per question: (what, top-level overrides)
PROBES = {"exact": {"compressor": "identity"}, "unbiased": {"compressor": "randk:0.5"},
          "contractive": {"compressor": "topk:0.5"}}
SETTINGS = {"compressed downlink": {"downlink": "topk:0.5"},
            "clients.fraction < 1": {"clients": {"fraction": 0.5}},
            "clients.resources < 1": {"clients": {"resources": [1.0, 0.5]}}}


# ----- one field -----
def _number(v: Any) -> str:
    if isinstance(v, float) and float(f"{v:g}") == v:
        return f"{v:g}"
    return repr(v)


def _value(v: Any) -> str:
    """A default as it is written in TOML (unset for None)."""
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (int, float)):
        return _number(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict) and set(v) == {"name"}:
        return _value(v["name"])
    return "" if isinstance(v, Params) else str(v)  # a section: its keys are listed on their own


def type_name(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):  # X | None: None is the 'unset' default
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return " | ".join(_value(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict or (isinstance(ann, type) and issubclass(ann, Params)):
        return "section"
    return getattr(ann, "__name__", str(ann))


def _bounds(metadata: list[Any]) -> str:
    lo = next((("(", m.gt) for m in metadata if isinstance(m, Gt)), None) or \
        next((("[", m.ge) for m in metadata if isinstance(m, Ge)), None)
    hi = next(((")", m.lt) for m in metadata if isinstance(m, Lt)), None) or \
        next((("]", m.le) for m in metadata if isinstance(m, Le)), None)
    if lo and hi:
        return f"{lo[0]}{_number(lo[1])}, {_number(hi[1])}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {_number(lo[1])}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {_number(hi[1])}"
    return ""


def range_text(info: FieldInfo) -> str:
    parts = [_bounds(info.metadata)]
    lengths = [m.min_length for m in info.metadata if isinstance(m, MinLen)], \
        [m.max_length for m in info.metadata if isinstance(m, MaxLen)]
    if any(lengths):
        lo, hi = (lengths[0] or [0])[0], (lengths[1] or [None])[0]
        parts.append(f"{lo} to {hi} items" if hi is not None else f"at least {lo} item{'s' * (lo != 1)}")
    args = typing.get_args(info.annotation)
    if typing.get_origin(info.annotation) is list and args and typing.get_origin(args[0]) is typing.Annotated:
        inner = [m for a in typing.get_args(args[0])[1:] for m in getattr(a, "metadata", [a])]
        if _bounds(inner):
            parts.append(f"each {_bounds(inner)}")
    return ", ".join(p for p in parts if p)


def default_text(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("derived"):
        return f"derived: {extra['derived']}"
    return _value(info.get_default(call_default_factory=True))


def field_rows(model: type[Params], prefix: str = "") -> list[list[str]]:
    """[key, type, default, range, description] for every field of a schema."""
    return [[prefix + name, type_name(f.annotation), default_text(f), range_text(f), f.description or ""]
            for name, f in model.model_fields.items()]


# ----- what an algorithm accepts -----
@lru_cache(maxsize=None)
def accepts(algorithm: str) -> dict[str, bool]:
    """{compressor kind or setting: accepted}, by building ``algorithm`` on a tiny quadratic."""
    from .runner import build, resolve

    out = {}
    for what, top in {**PROBES, **SETTINGS}.items():
        raw = {"task": {"name": "quadratic", "d_x": 2, "d_y": 3}, "workers": 2, "rounds": 2,
               "algorithm": algorithm, **top}
        try:
            algo, comm = build(*resolve(raw))
            algo.init()
            out[what] = True
        except ConfigError:
            out[what] = False
    return out


def accepts_text(algorithm: str) -> list[str]:
    ok = accepts(algorithm)
    kinds = [k for k in PROBES if ok[k]]
    names = [n for n in compressor_kinds() if compressor_kinds()[n] in kinds]
    return [f"compressors: {', '.join(kinds) or 'none'} ({', '.join(names)})",
            "settings: " + "; ".join(f"{s}: {'accepted' if ok[s] else 'refused'}" for s in SETTINGS),
            f"upper_opt: {', '.join(OPTIMIZERS)}, with every compressor and setting; the server applies it to "
            f"{upper_target(algorithm)} after aggregation (no bits)"]


def upper_target(algorithm: str) -> str:
    """What the server optimizer of x is applied to (the algorithm class's ``x_update``)."""
    from .runner import build, resolve

    raw = {"task": {"name": "quadratic", "d_x": 2, "d_y": 3}, "workers": 2, "rounds": 2, "algorithm": algorithm}
    return build(*resolve(raw))[0].x_update


# ----- compressors: a spec NAME[:ARG], no schema -----
def _compressor_info(name: str) -> tuple[str, str]:
    """(its argument, its kind): built without an argument, or with the example its error gives."""
    from .compressors import COMPRESSORS, make_compressor

    try:
        return "none", COMPRESSORS.get(name).build(None).kind
    except ConfigError as exc:
        m = re.search(rf"e\.g\. ({re.escape(name)}:[^\s,)]+)", exc.message)
        kind = make_compressor(m.group(1)).kind if m else "?"
        return exc.message.removeprefix(f"{name} needs ").strip(), kind


@lru_cache(maxsize=None)
def compressor_kinds() -> dict[str, str]:
    from .compressors import COMPRESSORS

    return {n: _compressor_info(n)[1] for n in COMPRESSORS.names()}


def compressor_rows() -> list[list[str]]:
    from .compressors import COMPRESSORS

    return [[e.name, _compressor_info(e.name)[1], _compressor_info(e.name)[0], e.summary]
            for e in COMPRESSORS.entries()]


# ----- output -----
def _registries():
    from .algorithms import ALGORITHMS
    from .compressors import COMPRESSORS
    from .problems import TASKS

    return {"task": TASKS, "algorithm": ALGORITHMS, "compressor": COMPRESSORS}


def describe(name: str) -> str:
    """The text of ``distbo list NAME``: a task, an algorithm or a compressor."""
    from .tables import to_text

    regs = _registries()
    kind = next((k for k, reg in regs.items() if name in reg.names()), None)
    if kind is None:
        raise unknown("NAME", name, [n for reg in regs.values() for n in reg.names()], "name")
    entry = regs[kind].get(name)
    lines = [f"{name} ({kind}): {entry.summary}"]
    if kind == "compressor":
        arg, ckind = _compressor_info(name)
        return "\n".join(lines + [f"kind: {ckind}", f"argument: {arg}", ""])
    if kind == "algorithm":
        lines += accepts_text(name)
    lines.append(f"parameters ([{kind}] section, or --set {kind}.KEY=VALUE):")
    return "\n".join(lines) + "\n" + to_text(HEADER, field_rows(entry.params), left=len(HEADER))


def markdown() -> str:
    """The full configuration reference (docs/reference.md)."""
    from .config import RunConfig
    from .tables import to_markdown

    regs = _registries()
    table = lambda header, rows: to_markdown(header, rows, left=len(header))  # noqa: E731
    out = ["# Configuration reference", "",
           "Generated from the parameter schemas by `distbo list --markdown > docs/reference.md`; do not edit by",
           "hand (a test fails when this file is out of date). `distbo list NAME` prints one entry.", "",
           "A run is configured by a TOML file (`distbo run CONFIG.toml`), command-line flags, `--set KEY=VALUE`",
           "with a dotted key (`--set algorithm.alpha=0.05`) or the keywords of `distbo.run(...)`. A value that",
           "is out of range or of the wrong type, or an unknown key, is a one-line error naming the key.", "",
           "## Top-level keys", "", table(HEADER, field_rows(RunConfig))]
    for key, info in RunConfig.model_fields.items():  # sections with a schema of their own: [clients], ...
        if isinstance(info.annotation, type) and issubclass(info.annotation, Params):
            out += [f"## `[{key}]`", "", table(HEADER, field_rows(info.annotation, f"{key}."))]
    out += ["## Tasks", "", "`[task]` with `name = \"...\"` and the task's parameters.", ""]
    for e in regs["task"].entries():
        out += [f"### `{e.name}`", "", e.summary, "", table(HEADER, field_rows(e.params, "task."))]
    out += ["## Algorithms", "", "`[algorithm]` with `name = \"...\"` and its hyper-parameters. A derived "
            "default is computed at the start of a run from the problem and the compressor; a task may also "
            "set its own (its `defaults`). The values a run used are in its config.json. What each algorithm "
            "accepts is found by building it with each setting.", ""]
    for e in regs["algorithm"].entries():
        out += [f"### `{e.name}`", "", e.summary, ""] + [f"- {line}" for line in accepts_text(e.name)] + [""]
        out += [table(HEADER, field_rows(e.params, "algorithm."))]
    out += ["## Compressors", "", "`compressor = \"NAME:ARG\"` (the up-link) and `downlink = \"NAME:ARG\"`.", "",
            table(["name", "kind", "argument", "description"], compressor_rows())]
    return "\n".join(out).rstrip("\n") + "\n"
