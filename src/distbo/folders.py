"""What a run folder may be used for (docs/run-folders.md).

- A new run never writes into a folder that already holds a run (finished, stopped or killed):
  ``refuse_existing`` says so in one line; with ``overwrite`` the old run's files are removed first
  (``clear``), so nothing of them can be spliced into the new run.
- ``--out`` must be a folder or not exist yet, and must not lie under a file (``check_out``).
- A checkpoint stores the hash of the configuration it was written with (``fingerprint``); a
  resume whose config.json differs in anything but ``RESUMABLE`` is refused naming the fields.
Nothing here imports torch: the command line runs these checks first.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .safeio import remove

#: the only configuration fields that may differ between a checkpoint and the run resuming it
RESUMABLE = ("rounds", "eval_every", "until", "timeout", "threads")
#: not part of the fingerprint: facts about the task, and the process count (checked on its own)
NOT_HASHED = ("task_info", "procs", "derived")  # derived: a record; its values are in "algorithm"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json")
SHARDS = "checkpoint-rank*.pt"


def check_out(out: Path | str, field: str = "--out") -> Path:
    """``out`` as a Path, if it can be a run folder: a folder, or a path that does not exist yet and
    whose nearest existing parent is a folder."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(field, f"{p} is a file, expected a folder (or a path that does not exist yet)")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(field, f"{p} lies under the file {parent}; choose a folder")
            break
    return p


def run_files(out: Path) -> list[Path]:
    """The files of a run in ``out`` (with the hidden temporary files of interrupted writes)."""
    if not out.is_dir():
        return []
    found = [out / n for n in RUN_FILES if (out / n).exists()]
    return found + sorted(out.glob(SHARDS)) + sorted(out.glob(".*.tmp"))


def holds_run(out: Path) -> bool:
    return any(not p.name.endswith(".tmp") for p in run_files(out))


def describe(out: Path) -> str:
    """'a completed run', 'a stopped run (interrupted)', ... for the refusal message."""
    try:
        status = json.loads((out / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "completed":
        return "a completed run"
    return f"a stopped run ({status or 'killed or still running'})"


def refuse_existing(out: Path | str) -> None:
    """One line if ``out`` already holds a run."""
    out = Path(out)
    if holds_run(out):
        raise ConfigError("--out", f"{out} already holds {describe(out)}; continue it with --resume {out}, "
                          "replace it with --overwrite, or choose another folder")


def clear(out: Path | str) -> None:
    """Remove the files of the run in ``out`` (not the lock files, not anything else)."""
    for p in run_files(Path(out)):
        remove(p)


def hashed(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved configuration that defines the run (what a checkpoint must match)."""
    keep = {k: v for k, v in config.items() if k not in RESUMABLE and k not in NOT_HASHED}
    return json.loads(json.dumps(keep, sort_keys=True, default=str))


def fingerprint(config: dict[str, Any]) -> str:
    text = json.dumps(hashed(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two configurations."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def check_same_config(stored: dict[str, Any] | None, digest: str | None, config: dict[str, Any],
                      where: Path) -> None:
    """Refuse a resume whose configuration differs from the checkpoint's (``stored``/``digest``)."""
    if digest is None or digest == fingerprint(config):
        return
    fields = changed_fields(stored, hashed(config)) if stored is not None else []
    what = ", ".join(fields[:6]) + (", ..." if len(fields) > 6 else "") if fields else "the configuration"
    raise ConfigError("--resume", f"{where / 'config.json'} differs from the configuration the checkpoint "
                      f"was written with in {what}; only {', '.join(RESUMABLE)} may change on resume "
                      "(start a new run with --overwrite or another --out)")


def agree_fresh(out: Path, overwrite: bool, comm: Any) -> None:
    """Make ``out`` ready for a new run inside ``execute``: with several processes, every one looks at the
    folder before any of them writes (the sum is a barrier), then the main process clears it."""
    check_out(out)
    found = holds_run(out)
    if comm.world_size > 1:
        import torch

        found = float(comm.all_sum(torch.tensor([float(found)], dtype=torch.float64))) > 0
    if found and not overwrite:
        refuse_existing(out)  # this process sees it: the message names its status
        raise ConfigError("--out", f"{out} already holds a run (seen by another process); use --overwrite "
                          "or another folder")
    if found and comm.is_main:
        clear(out)


def prepare_locked(out: Path | str, overwrite: bool) -> None:
    """Refuse, or clear, ``out`` while holding the main process's lock (a live run's folder is never cleared)."""
    from .checkpoint import claim

    check_out(out)
    if not overwrite:
        refuse_existing(out)
        return
    with claim(Path(out), 0):
        clear(out)


def check_rounds(done: int, rounds: int) -> None:
    if rounds < done:
        raise ConfigError("rounds", f"is {rounds}, but the checkpoint has already done {done} rounds; "
                          f"resume with rounds >= {done}")


def check_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The new values given to a resume, if each is a field that may change (RESUMABLE, procs)."""
    bad = [k for k in changes if k not in RESUMABLE and k != "procs"]
    if bad:
        raise ConfigError("--resume", f"cannot change {', '.join(bad)} on resume; only {', '.join(RESUMABLE)} "
                          "may change (and --procs, to the number of processes that wrote the checkpoint)")
    return dict(changes)
