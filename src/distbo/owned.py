"""Files distbo writes outside a run folder (``distbo compare -o``): it replaces such a file only if
it wrote it and nobody has changed it since. ``.distbo-written.json`` in the file's folder maps each
file name distbo wrote there to the SHA-256 of what it wrote."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import ConfigError
from .folders import check_link, check_out
from .safeio import write_atomic, write_json, writing

RECORD = ".distbo-written.json"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(folder: Path) -> dict[str, str]:
    try:
        rec = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def check(path: Path | str, field: str) -> Path:
    """``path`` if distbo may write it: new, or a file it wrote itself and nobody changed since."""
    p = Path(path)
    check_out(p.parent, field)
    check_link(p, field)
    with writing(p):
        if p.is_dir():
            raise ConfigError(field, f"{p} is a folder, expected a file")
        if p.exists() and _record(p.parent).get(p.name) != _digest(p.read_bytes()):
            raise ConfigError(field, f"{p} exists and distbo did not write it (or it was changed since); "
                              "it is left as it is: choose another file, or remove it yourself")
    return p


def write(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` (atomically; checked with ``check`` first) and record it."""
    p = Path(path)
    with writing(p):
        p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, text)
    write_json(p.parent / RECORD, {**_record(p.parent), p.name: _digest(text.encode("utf-8"))})
    return p
