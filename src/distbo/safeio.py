"""Writing and reading run-folder files so that a failure never leaves a file worse than before.

- ``write_atomic``: the new content goes to a hidden temporary file beside the target, which then
  replaces it in one step (``os.replace``). If anything fails the temporary file is removed and the
  old file is untouched.
- ``append_line``: one whole line appended; if the write fails part-way, the file is cut back to
  the length it had before, so it always ends with a whole line (a known-good prefix).
- A failed write (disk full, permission denied, read-only file system, ...) raises ``WriteError``:
  one line naming the file and the reason; the command line exits with code 4.
- ``read_json`` / ``read_text``: a missing, unreadable, non-UTF-8 or invalid file is a one-line
  ConfigError naming the file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError, DistboError


class WriteError(DistboError):
    """A file of the run folder could not be written; what was there before is kept."""

    exit_code = 4

    def __init__(self, message: str, path: Path | str):
        super().__init__(message)
        self.path = Path(path)

    @classmethod
    def of(cls, path: Path | str, exc: OSError) -> "WriteError":
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return cls(f"cannot write {path}: {reason(exc)} ({name})", path)


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OSError raised inside into a WriteError naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise WriteError.of(path, exc) from None


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_atomic(path: Path | str, write: Callable[[Path], None] | str) -> Path:
    """Replace ``path`` by what ``write(tmp_path)`` writes (or by the text ``write``), atomically."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        with writing(path):
            if isinstance(write, str):
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(write)
            else:
                write(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def write_json(path: Path | str, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_line(path: Path | str, line: str) -> None:
    """Append ``line`` (a newline is added) as a whole: on failure the file is cut back."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def remove(path: Path | str) -> None:
    """Delete ``path`` if it exists; a failure is a WriteError naming it."""
    with writing(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def read_text(path: Path | str, field: str) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(field, f"{path} is not UTF-8 text (byte {exc.start})") from None
    except IsADirectoryError:
        raise ConfigError(field, f"{path} is a folder, expected a file") from None
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {reason(exc)}") from None


def read_json(path: Path | str, field: str) -> Any:
    """The JSON object in ``path``; anything else is a one-line ConfigError naming the file."""
    text = read_text(path, field)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(field, f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(obj, dict):
        raise ConfigError(field, f"{path} holds a JSON {type(obj).__name__}, expected an object")
    return obj
