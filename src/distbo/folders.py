"""What a run folder may be used for (docs/run-folders.md).

- A run folder records what distbo writes into it: the marker ``.distbo-run.json`` lists the
  files of the run (``own_names``), written before any of them. Only those files count as a run,
  and ``--overwrite`` removes exactly those (and their hidden temporary files), nothing else.
- A new run never writes into a folder that already holds a run (finished, stopped or killed):
  ``refuse_existing`` says so in one line. A folder without the marker is used only if it is
  empty (or holds nothing but distbo's lock files), with or without ``--overwrite``.
- ``--out`` must be a folder or not exist yet, and must not lie under a file (``check_out``).
- A checkpoint stores the hash of the configuration it was written with (``fingerprint``); a
  resume whose config.json differs in anything but ``RESUMABLE`` is refused naming the fields.
Nothing here imports torch: the command line runs these checks first.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .safeio import remove, write_json, writing

#: the only configuration fields that may differ between a checkpoint and the run resuming it
RESUMABLE = ("rounds", "eval_every", "until", "timeout", "threads")
#: not part of the fingerprint: facts about the task, and the process count (checked on its own)
NOT_HASHED = ("task_info", "procs", "derived")  # derived: a record; its values are in "algorithm"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json")
FLOWER_FILES = ("flower.json", "flower-point.pt", "error.txt")  # what a Flower run adds
MARKER = ".distbo-run.json"  # the files distbo wrote into this folder (written before them)
LOCK = re.compile(r"\.lock-rank\d+")  # checkpoint.claim's lock files


def check_out(out: Path | str, field: str = "--out") -> Path:
    """``out`` as a Path, if it can be a run folder: a folder, or a path that does not exist yet and
    whose nearest existing parent is a folder."""
    p = Path(out)
    with writing(p):  # a name the file system cannot hold (too long): one line, exit 4
        if p.exists() and not p.is_dir():
            raise ConfigError(field, f"{p} is a file, expected a folder (or a path that does not exist yet)")
        for q in (p, *p.parents):
            check_link(q, field)
        for parent in p.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(field, f"{p} lies under the file {parent}; choose a folder")
                break
    return p


def check_link(p: Path, field: str) -> None:
    """A symbolic link whose target does not exist cannot be written through: say so."""
    with writing(p):  # a name too long for the file system: one line, exit 4
        dangling = p.is_symlink() and not p.exists()
    if dangling:
        raise ConfigError(field, f"{p} is a symbolic link to {os.readlink(p)}, which does not exist; "
                          "choose another path")


def own_names(procs: int, engine: str = "sim") -> list[str]:
    """The files a run writes: its JSON files, one checkpoint shard per process, Flower's files."""
    shards = [f"checkpoint-rank{r}.pt" for r in range(procs)]
    return [*RUN_FILES, *shards, *(FLOWER_FILES if engine == "flower" else ())]


def recorded(out: Path) -> list[str] | None:
    """The file names the marker of ``out`` lists; None if there is no (readable) marker."""
    try:
        names = json.loads((Path(out) / MARKER).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(names, list) and all(isinstance(n, str) and n and "/" not in n and n not in (".", "..")
                                         for n in names)
    return names if ok else None


def record(out: Path, names: list[str], fresh: bool) -> None:
    """Write the marker before the files it lists (a resume adds to it, a new run replaces it)."""
    keep = [] if fresh else (recorded(out) or [])
    write_json(Path(out) / MARKER, {"written_by": "distbo", "files": sorted({*keep, *names})})


def run_files(out: Path) -> list[Path]:
    """The files of the run in ``out``: those its marker lists, with their hidden temporary files."""
    names = recorded(Path(out)) or []
    paths = [Path(out) / n for n in names] + [Path(out) / f".{n}.tmp" for n in names]
    return [p for p in paths if p.exists() or p.is_symlink()]


def holds_run(out: Path) -> bool:
    return any(not p.name.endswith(".tmp") for p in run_files(out))


def foreign(out: Path) -> list[str]:
    """The names in ``out`` that distbo did not write (all of them when it has no marker)."""
    out = Path(out)
    if not out.is_dir():
        return []
    names = recorded(out)
    mine = {MARKER, *(names or []), *(f".{n}.tmp" for n in names or [])} if names is not None else set()
    return sorted(p.name for p in out.iterdir() if p.name not in mine and not LOCK.fullmatch(p.name))


def describe(out: Path) -> str:
    """'a completed run', 'a stopped run (interrupted)', ... for the refusal message."""
    try:
        status = json.loads((out / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "completed":
        return "a completed run"
    return f"a stopped run ({status or 'killed, or still running'})"


def _shown(names: list[str], at_most: int = 4) -> str:
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def refuse_existing(out: Path | str, overwrite: bool = False) -> None:
    """One line if a new run may not use ``out``: it holds a run (unless ``overwrite``), or it is not
    a distbo run folder and not empty, or a file ``overwrite`` would remove is not a plain file."""
    out = Path(out)
    if recorded(out) is None and foreign(out):
        raise ConfigError("--out", f"{out} is not a distbo run folder and is not empty (it holds "
                          f"{_shown(foreign(out))}); distbo writes into a new or empty folder, or over a run it "
                          "wrote itself: choose another folder")
    if holds_run(out) and not overwrite:
        raise ConfigError("--out", f"{out} already holds {describe(out)}; continue it with --resume {out}, "
                          "replace it with --overwrite, or choose another folder")
    for p in run_files(out):
        if p.is_dir() and not p.is_symlink():
            raise ConfigError("--overwrite", f"{p} is a folder, not a file distbo wrote; nothing was removed "
                              "(move it away, or choose another folder)")


def clear(out: Path | str) -> None:
    """Remove the files of the run in ``out`` (those its marker lists; nothing else), after checking
    that every one of them can go (``refuse_existing``): none is removed if one cannot."""
    refuse_existing(out, overwrite=True)
    for p in run_files(Path(out)):
        remove(p)


def start(out: Path, names: list[str], fresh: bool) -> None:
    """The main process, once every check of the run has passed: a new run clears the old run's
    files, then (new or resumed) the marker records the files this run writes."""
    if fresh:
        clear(out)
    record(out, names, fresh)


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
    """May ``out`` take a new run (inside ``execute``)? With several processes, every one looks at the
    folder before any of them writes (the sum is a barrier). Nothing is removed here: the main
    process clears the old run (``start``) once the new run's own checks have passed."""
    check_out(out)
    try:
        refuse_existing(out, overwrite)
        refusal = None
    except ConfigError as exc:
        refusal = exc
    refused = refusal is not None
    if comm.world_size > 1:
        import torch

        refused = float(comm.all_sum(torch.tensor([float(refused)], dtype=torch.float64))) > 0
    if refusal is not None:
        raise refusal  # this process sees it: the message names what is in the way
    if refused:
        raise ConfigError("--out", f"{out} cannot take a new run (seen by another process); use --overwrite "
                          "or another folder")


def prepare_locked(out: Path | str, overwrite: bool) -> None:
    """Refuse, or clear, ``out`` while holding the main process's lock (a live run's folder is never cleared)."""
    from .checkpoint import claim

    check_out(out)
    refuse_existing(out, overwrite)
    if overwrite:
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
