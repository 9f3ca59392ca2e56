"""Multi-process runs: start P processes on this machine, or join a torchrun job (docs/design.md).

- ``distbo run CONFIG --procs P`` or ``distbo.run(..., procs=P)``: ``run_procs`` starts P fresh
  Python processes (multiprocessing 'spawn'); rank r hosts workers [r n/P, (r+1) n/P). They meet
  through a ``file://`` rendezvous in a new private temporary folder (never reused, no port to
  race for) and gloo talks over the loopback interface. The launcher watches them: when one fails
  (raises or dies) the others get a short grace period to stop by themselves, then are terminated
  and killed; the run fails with one line naming the first failing rank and its error.
- ``torchrun --nproc-per-node P [--nnodes N ...] -m distbo run CONFIG --out DIR``: each process
  finds RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in its environment and joins (``env://``);
  torchrun watches the processes.
Inside a job ``make_comm`` gives the runner a TorchDistComm instead of the simulator. Collectives
time out after the run's ``timeout`` seconds, so a process that stops answering makes the others
fail instead of hanging. Each process uses cores // (processes on this machine) torch threads, at
least 1 (``DISTBO_THREADS`` overrides). Only rank 0 writes metrics and shows the progress bar.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from .comm.job import in_job, job_env, rank  # noqa: F401 (re-exported: the launcher's users)
from .errors import LaunchError  # noqa: F401 (re-exported)
from .comm.base import Communicator
from .comm.simulated import SimulatedComm
from .comm.torch_dist import CollectiveError, TorchDistComm, short_error, backend_for
from .devices import resolve_device
from .errors import ConfigError, DistboError, DivergenceError

ENV_INIT = "DISTBO_INIT_METHOD"
ENV_DEVICE = "DISTBO_DEVICE_TYPE"  # 'cuda': the processes of run_procs join with nccl
GRACE_S = 5.0  # after a failure, how long the other processes get to stop by themselves
KILL_AFTER_S = 3.0  # after SIGTERM, before SIGKILL


# ----- inside a job -----
def threads_per_process(local_procs: int) -> int:
    if os.environ.get("DISTBO_THREADS"):
        return max(1, int(os.environ["DISTBO_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_procs))


def init_group(timeout: float, device: str = "cpu") -> None:
    """Join the job described by the environment (no-op if already joined)."""
    if dist.is_initialized():
        return
    env = job_env()
    if env is None:
        raise RuntimeError("not inside a distributed job: RANK and WORLD_SIZE are not set")
    r, world = env
    torch.set_num_threads(threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    backend = backend_for(os.environ.get(ENV_DEVICE, device))
    if backend == "nccl":  # this process's GPU before any collective (devices.py: cuda:LOCAL_RANK)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=os.environ.get(ENV_INIT, "env://"), rank=r,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout))


def make_comm(workers: int, timeout: float, device: torch.device | str = "cpu") -> Communicator:
    """The simulator, or (inside a job) torch.distributed with a block of workers per process."""
    if not in_job():
        return SimulatedComm(workers)
    init_group(timeout, device)
    return TorchDistComm(workers, device)


# ----- starting processes on this machine -----
def run_procs(raw: dict[str, Any], problem, out: Path | None, progress: bool, procs: int,
              timeout: float, workers: int, resume: bool = False, overwrite: bool = False):
    """Run one configuration in ``procs`` processes; rank 0's Result (state=None) comes back."""
    from .runner import Result

    if workers % procs:
        raise ConfigError("procs", f"{procs} processes cannot share {workers} workers evenly; "
                          f"use a number of processes that divides {workers}")
    out = Path(out).absolute() if out is not None else None
    device = resolve_device(str(raw.get("device", "cpu"))).type
    value = spawn(_run_rank, (raw, problem, out, progress, resume, overwrite), procs, timeout, {ENV_DEVICE: device})[0]
    extra = {**value.pop("extra", {}), "procs": procs}
    return Result(**value, state=None, extra=extra)


def _run_rank(raw: dict[str, Any], problem, out: Path | None, progress: bool, resume: bool = False,
              overwrite: bool = False):
    from .runner import execute, resolve

    res, problem = resolve(raw, problem)
    r = execute(res, problem, out, progress, resume=resume, overwrite=overwrite)
    if dist.get_rank() == 0:
        return {"metrics": r.metrics, "x": r.x, "y": r.y, "config": r.config, "out": r.out, "status": r.status,
                "extra": r.extra}
    return None


def spawn(fn: Callable[..., Any], args: tuple, procs: int, timeout: float,
          extra_env: dict[str, str] | None = None) -> list[Any]:
    """Run ``fn(*args)`` in ``procs`` new processes forming one job; their return values by rank.

    ``fn`` and ``args`` must be picklable (a module-level function). Raises LaunchError when a
    process fails; no process outlives this call.
    """
    ctx = _context()
    tmp = Path(tempfile.mkdtemp(prefix="distbo-job-"))
    env = {**os.environ, "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE": str(procs), "MASTER_ADDR": "127.0.0.1",
           ENV_INIT: f"file://{tmp / 'rendezvous'}", **(extra_env or {})}
    work = pickle.dumps((fn, args))  # unpickled inside the child, where a failure is reported
    children = [ctx.Process(target=_child, name=f"distbo-rank{r}",
                            args=(r, env, str(tmp), timeout, os.getpid(), work)) for r in range(procs)]
    try:
        for c in children:
            c.start()
        failures, stopped = _watch(children, tmp, timeout)
        if failures or stopped:
            raise _summarize(failures, stopped, timeout)
        results = [tmp / f"result-rank{r}.pt" for r in range(procs)]
        return [torch.load(f, weights_only=False) if f.exists() else None for f in results]
    finally:
        _stop(children)
        shutil.rmtree(tmp, ignore_errors=True)


def _watch(children: list, tmp: Path, timeout: float) -> tuple[dict[int, dict], list[int]]:
    """Wait for every child. After the first failure, stop the ones still running ``GRACE_S``
    later (at most ``timeout``); after the first success, the ones still running ``timeout`` later
    (the ranks work in lockstep, so they finish together)."""
    alive = {c.sentinel: r for r, c in enumerate(children)}
    failures: dict[int, dict] = {}
    failed_at = done_at = None
    while alive:
        ready = wait(list(alive), timeout=0.2)
        now = time.time()
        for s in ready:
            r = alive.pop(s)
            children[r].join()
            if children[r].exitcode != 0:
                failures[r] = _failure(r, children[r].exitcode, tmp, now)
                failed_at = failed_at or now
            else:
                done_at = done_at or now
        late = ((failed_at is not None and now - failed_at > min(GRACE_S, timeout))
                or (done_at is not None and now - done_at > timeout))
        if alive and late:
            stopped = sorted(alive.values())
            _stop([children[r] for r in stopped])
            return failures, stopped
    return failures, []


def _failure(r: int, code: int, tmp: Path, now: float) -> dict:
    f = tmp / f"error-rank{r}.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        pass
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code} without a Python error"
    return {"time": now, "error": f"process {how}", "secondary": False, "code": 1}


def _summarize(failures: dict[int, dict], stopped: list[int], timeout: float) -> Exception:
    """One line: the first real failure (a rank's own error, else a rank that stopped answering)."""
    ranked = sorted(failures.items(), key=lambda kv: (kv[1]["secondary"], kv[1]["time"]))
    own = [(r, f) for r, f in ranked if not f["secondary"]]
    if own or not stopped:
        rank_, first = ranked[0]
        head = f"rank {rank_} failed: {first['error']}"
        same = [r for r, f in ranked[1:] if f["error"] == first["error"]]
        rest = [f"rank {r}: {f['error']}" for r, f in ranked[1:] if r not in same]
        if same:
            head += f" (the same on rank{'s' if len(same) > 1 else ''} {', '.join(map(str, same))})"
        if stopped:
            rest.append(f"rank{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} stopped")
    else:
        rank_, first = stopped[0], {"code": 1}
        head = (f"rank{'s' if len(stopped) > 1 else ''} {', '.join(map(str, stopped))} stopped answering "
                f"(timeout {timeout:g} s) and {'were' if len(stopped) > 1 else 'was'} stopped")
        rest = [f"rank {r}: {f['error']}" for r, f in ranked]
    msg = head + (f" (then {'; '.join(rest)})" if rest else "")
    if first.get("type") == "DivergenceError":
        return DivergenceError(msg)
    return LaunchError(msg, rank_, first["code"])


def _stop(children: list) -> None:
    for c in children:
        if c.is_alive():
            c.terminate()
    deadline = time.time() + KILL_AFTER_S
    for c in children:
        c.join(max(0.0, deadline - time.time()))
        if c.is_alive():
            c.kill()
            c.join()


def _loopback() -> str:
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in ("lo", "lo0") if n in names), names[0] if names else "lo")


def _context():
    """'forkserver' where available: the first launch starts one clean server process that imports
    torch, distbo and torch._dynamo (which torch.func loads on its first call); every process after
    that is forked from it, so a launch does not pay those imports again (2-8 s per process on a
    busy 2-core machine). 'spawn' elsewhere."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["distbo", "distbo.launch", "torch._dynamo"])
    return ctx


def _die_with_launcher(launcher: int) -> None:
    """No orphans: this process stops when the launcher dies, even if it is killed with SIGKILL.

    A fork-server child inherits the write end of the server's liveness pipe; closed here, the
    server exits with the launcher and Linux then sends this process SIGTERM (PR_SET_PDEATHSIG).
    A watchdog thread also polls the launcher: once it is gone, SIGTERM (which ends the run at the
    next Python instruction) and, if the main thread is stuck in a collective, exit 3 s later."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass

    def watch() -> None:
        while True:
            try:
                os.kill(launcher, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(KILL_AFTER_S)
        os._exit(143)

    threading.Thread(target=watch, name="distbo-launcher-watch", daemon=True).start()


def _on_term(signum, frame):
    raise KeyboardInterrupt("stopped by the launcher")


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, DivergenceError):
        return 3
    if isinstance(exc, DistboError):
        return getattr(exc, "exit_code", 2)  # 4: a file of the run folder could not be written
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def _unpickle(work: bytes):
    try:
        return pickle.loads(work)
    except (AttributeError, ImportError) as exc:
        raise RuntimeError(f"cannot load the run in a new process ({exc}); define your Problem class in a "
                           "module, or in a script whose run code is under `if __name__ == '__main__':`") from exc


def _child(r: int, env: dict[str, str], tmp: str, timeout: float, launcher: int, work: bytes) -> None:
    os.environ.clear()  # the launcher's environment now, not the fork server's
    os.environ.update(env, RANK=str(r), LOCAL_RANK=str(r))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback())
    _die_with_launcher(launcher)
    signal.signal(signal.SIGTERM, _on_term)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: nothing to leak at os._exit
    try:
        fn, args = _unpickle(work)
        init_group(timeout)
        value = fn(*args)
        if value is not None:
            torch.save(value, Path(tmp) / f"result-rank{r}.pt")
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher, then this process ends
        secondary = isinstance(exc, (CollectiveError, KeyboardInterrupt))
        if not secondary and not isinstance(exc, DistboError):
            sys.stderr.write("".join(f"[rank {r}] {line}\n" for line in
                                     "".join(traceback.format_exception(exc)).rstrip().splitlines()))
        report = {"time": time.time(), "type": type(exc).__name__, "error": f"{type(exc).__name__}: {short_error(exc)}",
                  "secondary": secondary, "code": exit_code(exc)}
        part = Path(tmp) / f".error-rank{r}.json"
        part.write_text(json.dumps(report))
        part.replace(Path(tmp) / f"error-rank{r}.json")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(report["code"])
