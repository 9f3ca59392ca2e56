"""Checkpoints and resuming: one file per process, written atomically.

A checkpoint holds what the next round needs and nothing more: the algorithm state, the number of
completed rounds, the communication counters (CommStats), the training time so far and the number
of metric rows already written. Every random draw is a pure function of (seed, round, stream,
worker) (rng.py), so there is no generator state to save, and a resumed run repeats exactly the
rounds an uninterrupted run would have made.

The state is saved as its list of leaves (tensors and plain numbers); its structure (NamedTuples,
tuples, dicts) comes from ``algorithm.init()`` on resume, so loading needs no pickled classes
(``torch.load(weights_only=True)``) and a configuration that no longer matches is caught.
Under torch.distributed every process holds its own block of per-worker state and writes its own
shard ``checkpoint-rank{r}.pt``; only the main process writes metrics.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import folders, safeio
from .errors import ConfigError

VERSION = 1
Leaf = Any  # a tensor or a plain value (int, float, bool, str, None)


@dataclass
class Checkpoint:
    round: int  # completed rounds
    state: Any
    stats: dict[str, int]  # CommStats.as_dict()
    train_s: float
    rows: int  # metric rows written when the checkpoint was taken
    config: dict[str, Any] | None = None  # the resolved configuration (its defining part is hashed)


@contextlib.contextmanager
def claim(out: Path | None, rank: int):
    """Hold an exclusive lock on this process's part of the run folder while the run lives, so that
    two runs (say a resume, and the not yet dead processes of a killed run) never write one folder.
    The operating system releases it when the process ends, however it ends; a run that ends
    removes the file (while still holding the lock), so a finished folder holds no lock file."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if out is None or fcntl is None:
        yield
        return
    lock = Path(out) / f".lock-rank{rank}"
    created = not Path(out).exists()
    while True:
        with safeio.writing(lock):
            Path(out).mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError("--out", f"{out} is in use by another running process (rank {rank}); "
                              "wait for it to end or stop it") from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # the file was removed by a run that ended meanwhile: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        if created:  # a run refused before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                Path(out).rmdir()  # fails, as it should, on a folder that holds anything
        os.close(fd)


def _same_file(fd: int, p: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(p))
    except OSError:
        return False


def path(out: Path, rank: int) -> Path:
    return Path(out) / f"checkpoint-rank{rank}.pt"


def due(done: int, every: int, total: int) -> bool:
    """Checkpoint after ``done`` rounds? Every ``every`` rounds (0: never) and always at the end."""
    return done == total or (every > 0 and done % every == 0)


def flatten(tree: Any) -> list[Leaf]:
    """Leaves of a state made of NamedTuples, tuples, lists and dicts, in a fixed order."""
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in flatten(item)]
    if isinstance(tree, dict):
        return [leaf for k in tree for leaf in flatten(tree[k])]
    return [tree]


def unflatten(template: Any, leaves: list[Leaf]) -> Any:
    """``template`` with its leaves replaced, in ``flatten`` order; shapes and dtypes must match."""
    it = iter(leaves)

    def build(node: Any, where: str) -> Any:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(build(v, f"{where}.{k}") for k, v in zip(node._fields, node)))
        if isinstance(node, (tuple, list)):
            return type(node)(build(v, f"{where}[{i}]") for i, v in enumerate(node))
        if isinstance(node, dict):
            return {k: build(v, f"{where}.{k}") for k, v in node.items()}
        leaf = next(it, _MISSING)
        if leaf is _MISSING:
            raise _mismatch(f"it has fewer values than the state ({where or 'state'})")
        if isinstance(node, torch.Tensor):
            if not isinstance(leaf, torch.Tensor) or leaf.shape != node.shape or leaf.dtype != node.dtype:
                got = (tuple(leaf.shape), leaf.dtype) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
                raise _mismatch(f"'{where.lstrip('.')}' is {got}, the state needs {(tuple(node.shape), node.dtype)}")
        return leaf

    state = build(template, "")
    if next(it, _MISSING) is not _MISSING:
        raise _mismatch("it has more values than the state")
    return state


_MISSING = object()


def _mismatch(why: str) -> ConfigError:
    return ConfigError("--resume", f"the checkpoint does not match this configuration: {why}")


def save(out: Path, rank: int, ck: Checkpoint, world_size: int = 1) -> Path:
    """Write this process's shard atomically (a temporary file, then os.replace); a failed write is
    a WriteError and leaves the previous shard as it was."""
    final = path(out, rank)
    with safeio.writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
    d = {"version": VERSION, "round": ck.round, "leaves": flatten(ck.state), "stats": dict(ck.stats),
         "train_s": ck.train_s, "rows": ck.rows, "world_size": world_size}
    if ck.config is not None:
        d["config_hash"] = folders.fingerprint(ck.config)
        d["config"] = json.dumps(folders.hashed(ck.config))
    return safeio.write_atomic(final, lambda tmp: _save(d, tmp))


def _save(obj: Any, tmp: Path) -> None:
    """torch.save, whose failed writes (a full disk) are RuntimeErrors, as an OSError (a WriteError)."""
    try:
        torch.save(obj, tmp)
    except RuntimeError as exc:
        raise OSError(errno.ENOSPC if _full(tmp) else errno.EIO, str(exc).splitlines()[0]) from None


def _full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def load(out: Path, rank: int, template: Any, world_size: int = 1,
         config: dict[str, Any] | None = None) -> Checkpoint | None:
    """This process's shard, with its state rebuilt on ``template``; None if there is none yet.
    With ``config`` (the resolved configuration of the resume), a checkpoint written with another
    one is refused, naming the fields that differ."""
    p = path(out, rank)
    if not p.is_file():
        return None
    try:
        d = torch.load(p, weights_only=True)
    except Exception as exc:  # a torn or foreign file: say which, in one line
        raise ConfigError("--resume", f"cannot read {p}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(d, dict) or d.get("version") != VERSION:
        version = d.get("version") if isinstance(d, dict) else None
        raise ConfigError("--resume", f"{p} has format version {version}, this distbo reads {VERSION}")
    if config is not None:
        stored = json.loads(d["config"]) if "config" in d else None
        folders.check_same_config(stored, d.get("config_hash"), config, Path(out))
    if d["world_size"] != world_size:
        raise ConfigError("--resume", f"the checkpoint was written by {d['world_size']} processes, "
                          f"not {world_size}; {procs_advice(d['world_size'], out)}")
    return Checkpoint(d["round"], unflatten(template, d["leaves"]), d["stats"], d["train_s"], d["rows"])


def procs_advice(n: int, out: Path | str = "DIR") -> str:
    """How to start a resume of ``out`` with ``n`` processes (advice that the command line accepts)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # started by torchrun
        return f"start {n} processes (torchrun --nproc-per-node {n} ... -m distbo run --resume {out})"
    return f"resume with 'distbo run --resume {out} --procs {n}'"


def check_procs(out: Path, procs: int) -> None:
    """Before any process starts: a resume with another process count than the checkpoint's is one
    line naming the folder (not a broken connection between the processes)."""
    p = path(out, 0)
    if not p.is_file():
        return
    try:
        written = torch.load(p, weights_only=True).get("world_size")
    except Exception:  # noqa: BLE001  (a torn file: load() reports it)
        return
    if isinstance(written, int) and written != procs:
        raise ConfigError("--resume", f"the checkpoint was written by {written} processes, not {procs}; "
                          f"{procs_advice(written, out)}")


def check_same_round(done: int, comm: Any) -> None:
    """All processes must resume from the same round (-1: no shard); say so if they would not."""
    if comm.world_size > 1:
        s = comm.all_sum(torch.tensor([float(done), float(done) ** 2], dtype=torch.float64))
        if float(s[1]) * comm.world_size != float(s[0]) ** 2:  # equal iff all rounds are equal
            raise ConfigError("--resume", "the checkpoint shards of the processes are from different rounds "
                              "(a process stopped while writing); start the run again")


def restore_rows(out: Path, n: int, truncate: bool) -> list[dict[str, Any]]:
    """The first ``n`` metric rows; with ``truncate`` the file is cut to them (atomically), so
    rows written after the checkpoint are not repeated."""
    p = Path(out) / "metrics.jsonl"
    lines = safeio.read_text(p, "--resume").splitlines(keepends=True) if p.is_file() else []
    whole = [line for line in lines[:n] if line.endswith("\n")]
    if len(whole) < n:
        raise ConfigError("--resume", f"{p} has {len(whole)} whole rows, the checkpoint expects at least {n}")
    rows = []
    for i, line in enumerate(whole):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError("--resume", f"{p} line {i + 1} is not valid JSON ({exc.msg})") from None
    if truncate and len(lines) > n:
        safeio.write_atomic(p, "".join(whole))
    return rows


def load_config(out: Path, user_problem: bool = False) -> dict[str, Any]:
    """The run configuration saved in ``out/config.json``, as raw input for ``runner.resolve``
    (without the task section when the run's user-defined Problem is given again)."""
    from .config import RunConfig

    p = Path(out) / "config.json"
    if not p.is_file():
        raise ConfigError("--resume", f"{out} is not a run folder (no config.json)")
    conf = safeio.read_json(p, "--resume")
    custom = conf.get("task", {}).get("name") == "custom"
    if custom and not user_problem and not conf.get("problem"):  # problem = "FILE.py:FUNCTION" is called again
        raise ConfigError("--resume", "this run used a user-defined Problem; resume it from Python with "
                          "distbo.runner.resume(DIR, problem=...)")
    return {k: v for k, v in conf.items() if k in RunConfig.model_fields and not (k == "task" and custom)}
