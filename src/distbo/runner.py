"""Config -> problem, communicator, algorithm; the round loop, evaluation, metrics and outputs.

Outputs of a run with an output folder (docs/design.md contract): ``config.json`` (the resolved
configuration and facts about the task), ``metrics.jsonl`` (one row per evaluation, flushed as it
is written) and ``summary.json`` (final row, totals, status). ``wall_s`` is training time only:
evaluation is not counted.
"""
from __future__ import annotations

import importlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checkpoint, folders, memory, safeio, stopping
from .allocator import reuse_freed_memory
from .progress import assess as assess_progress
from .algorithms import ALGORITHMS, Clients, Context
from .algorithms.base import check_clients
from .comm.base import CommStats, Communicator
from .compressors import make_compressor
from .compressors.base import check_sizes
from .config import DTYPES, Resolved, RunConfig, check_run
from .defaults import derived_fields, resolve_hyper
from .devices import default_device, resolve_device, to_device
from .errors import ConfigError, DivergenceError
from .hypergrad import HypergradMetric
from .launch import in_job, make_comm, run_procs
from .problems import TASKS, Problem
from .problems.checks import check_problem, check_user_problem, metric_row, user_settings
from .registry import validate

CONTRACT_FIELDS = ("round", "bits_up", "bits_down", "comm_rounds", "wall_s", "upper_loss")


@dataclass
class Result:
    metrics: list[dict[str, Any]]
    x: torch.Tensor
    y: torch.Tensor
    state: Any
    config: dict[str, Any]
    out: Path | None = None
    status: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)


def task_defaults(problem: Problem, algorithm: str, fields: dict) -> dict[str, Any]:
    """A task's recommended hyper-parameters for an algorithm (flat keys, then per-algorithm). For a
    hyper-parameter with a derived default it replaces the base value before the compressor and
    local-step scaling (defaults.py)."""
    d = {k: v for k, v in problem.defaults.items() if k in fields}
    specific = problem.defaults.get(algorithm)
    if isinstance(specific, dict):
        d.update({k: v for k, v in specific.items() if k in fields})
    return d


def resolve(raw: dict[str, Any], problem: Problem | None = None) -> tuple[Resolved, Problem]:
    """Check every field, then build the problem (a user Problem is taken as it is; ``problem =
    "FILE.py:FUNCTION"`` is called here, problemfile.py)."""
    if problem is None and raw.get("problem") is not None:
        problem = load_problem(raw)
    run = check_run(raw)
    resolve_device(run.device)  # CUDA asked for and absent: one line before any work
    alg_entry = ALGORITHMS.get(run.algorithm["name"], "algorithm.name")
    user_alg = {k: v for k, v in run.algorithm.items() if k != "name"}
    validate(alg_entry.params, user_alg, "algorithm")  # fail before any work
    make_compressor(run.compressor, "compressor")
    make_compressor(run.downlink, "downlink")
    task_params = None
    if problem is None:
        entry = TASKS.get(run.task["name"], "task.name")
        task_params = validate(entry.params, {k: v for k, v in run.task.items() if k != "name"}, "task")
        memory.check_task(run.task["name"], task_params, run.workers, DTYPES[run.dtype].itemsize)
        problem = entry.build(task_params, workers=run.workers, seed=run.seed, dtype=DTYPES[run.dtype])
        if not entry.build.__module__.startswith("distbo."):  # a task you registered (docs/extending.md)
            check_user_problem(problem, run)
    else:
        check_user_problem(problem, run)  # malformed losses or data: one line before any derivation
        if problem.n_workers != run.workers:
            run = run.model_copy(update={"workers": problem.n_workers})
    for name in ("compressor", "downlink"):
        check_sizes(make_compressor(getattr(run, name), name), (problem.d_x, problem.d_y), name)
    name = run.algorithm["name"]
    task = task_defaults(problem, name, alg_entry.params.model_fields)
    base = {k: v for k, v in task.items() if k in derived_fields(alg_entry.params) and k not in user_alg}
    hp = validate(alg_entry.params, {**{k: v for k, v in task.items() if k not in base}, **user_alg}, "algorithm")
    hp, derived = resolve_hyper(name, hp, problem, run.compressor, run.seed, base, run.clients.fraction, run.rounds)
    return Resolved(run, task_params, hp, derived), problem


def load_problem(raw: dict[str, Any]) -> Problem:
    """The Problem of ``raw["problem"]`` (FILE.py:FUNCTION); its workers and dtype go into ``raw``."""
    from .problemfile import load

    if "task" in raw:
        raise ConfigError("problem", "is your own problem; drop the task (--task, task.* settings), which names "
                          "a built-in one")
    raw["problem"] = check_run({"problem": raw["problem"]}).problem  # FILE absolute: the same in every process
    problem = load(raw["problem"])
    user_settings(problem, raw)
    return problem


def build(res: Resolved, problem: Problem, comm: Communicator | None = None):
    run = res.run
    comm = comm or make_comm(run.workers, run.timeout, resolve_device(run.device, in_job()))
    down = make_compressor(run.downlink, "downlink")
    ctx = Context(problem=problem, comm=comm, compressor=make_compressor(run.compressor), seed=run.seed,
                  clients=Clients(**run.clients.model_dump()),
                  downlink=None if down.kind == "exact" else down, rounds=run.rounds,
                  worker_chunk=run.worker_chunk)
    algorithm = ALGORITHMS.get(run.algorithm["name"]).build(ctx, res.algorithm)
    check_clients(ctx.clients, algorithm.client_settings, run.algorithm["name"])
    return algorithm, comm


def _tensors(obj: Any, prefix: str):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif hasattr(obj, "_asdict"):
        for k, v in obj._asdict().items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def check_finite(state: Any, t: int, comm: Communicator | None = None) -> None:
    """Raise DivergenceError naming the round and the first non-finite variable. With several
    processes they agree (a NaN may sit in another process's block of per-worker state)."""
    bad = next((name for name, tensor in _tensors(state, "")
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)
    if comm is not None and comm.world_size > 1:
        if float(comm.all_sum(torch.tensor([float(bad is not None)], dtype=torch.float64))) > 0:
            bad = bad or "the state of another process"
    if bad is not None:
        raise DivergenceError(f"diverged at round {t}: non-finite values in '{bad}' (try smaller step sizes)")


class Outputs:
    """The run folder; only the main process writes. JSON files are replaced atomically and metric
    rows appended whole (safeio.py): a failed write is a WriteError naming the file."""

    def __init__(self, out: Path | None, enabled: bool, fresh: bool = True):
        self.dir = out if enabled else None
        if self.dir is not None:
            with safeio.writing(self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            if fresh:
                safeio.write_atomic(self.dir / "metrics.jsonl", "")

    def write_json(self, name: str, obj: Any) -> None:
        if self.dir is not None:
            safeio.write_json(self.dir / name, obj)

    def append_row(self, row: dict[str, Any]) -> None:
        if self.dir is not None:
            safeio.append_line(self.dir / "metrics.jsonl", json.dumps(row))


def execute(res: Resolved, problem: Problem, out: Path | None = None, progress: bool = False,
            comm: Communicator | None = None, resume: bool = False, overwrite: bool = False) -> Result:
    """Run the round loop of a resolved configuration (``resume``: from the checkpoint in ``out``).
    A new run refuses a folder that holds a run, unless ``overwrite`` (folders.py)."""
    torch.manual_seed(res.run.seed)
    importlib.import_module("torch._dynamo")  # torch.func loads it on first use (seconds): not in wall_s
    device = resolve_device(res.run.device, in_job())
    to_device(problem, device)
    with default_device(device):
        check_problem(problem, res.run)
        algorithm, comm = build(res, problem, comm)
    note = algorithm.upper_note()  # the server optimizer of x, when not sgd: one line
    if note and comm.is_main and not resume:
        sys.stderr.write(f"distbo: {note}\n")
    reuse_freed_memory()  # large per-worker tensors: reuse freed blocks instead of page-faulting anew
    out = Path(out) if out is not None else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads_for(res.run, problem, before))
    try:
        with checkpoint.claim(out, comm.rank), default_device(device):  # no second process writes this folder
            if out is not None and not resume:
                folders.agree_fresh(out, overwrite, comm)
            return _loop(res, problem, algorithm, comm, out, progress, resume)
    finally:
        torch.set_num_threads(before)


def threads_for(run: RunConfig, problem: Problem, available: int) -> int:
    """Torch threads for this run: ``run.threads`` if set, else 1. Idle threads spin on a shared
    machine: beside other jobs (2 cores, load ~20) a hyperrep SOBA round took 2.1 s with 1 thread
    and 6.1 s with 2 at 100 workers, 0.52 s vs 3.65 s at 10 workers, and the 60-parameter
    quadratic 0.14 s vs 0.26 s (benchmarks/speed.py --thread-policy, docs/speed.md). More threads
    pay off only on cores you have to yourself: set ``threads`` then."""
    return run.threads if run.threads is not None else 1


def _loop(res: Resolved, problem: Problem, algorithm, comm: Communicator, out: Path | None,
          progress: bool, resume: bool) -> Result:
    run: RunConfig = res.run
    state = algorithm.init()
    control = stopping.RunControl(run.until, run.diverge_factor, algorithm.point(state), comm)
    rows: list[dict[str, Any]] = []
    train_s, start = 0.0, 0
    config = {**res.as_dict(), "task_info": problem.describe()}
    if resume and out is not None:  # the derived values are explicit now: keep how they were derived
        config = {**config, **_derived_record(out)}
    ck = checkpoint.load(out, comm.rank, state, comm.world_size, config) if resume and out is not None else None
    if resume:
        checkpoint.check_same_round(ck.round if ck is not None else -1, comm)
    if ck is not None:
        folders.check_rounds(ck.round, run.rounds)
        state, start, train_s = ck.state, ck.round, ck.train_s
        comm.stats = CommStats(**ck.stats)
        rows = checkpoint.restore_rows(out, ck.rows, truncate=comm.is_main)

    exact = HypergradMetric(problem, run.seed) if run.eval_hypergrad else None

    def measure(t: int) -> dict[str, Any]:
        x, y = algorithm.point(state)
        metrics = metric_row(problem.evaluate(x, y))
        if exact is not None and "hypergrad_norm" not in metrics:
            metrics.update(exact(x, y))
        return {"round": t, **comm.stats.as_dict(), "wall_s": round(train_s, 6), **metrics, **algorithm.metrics(state)}

    first = measure(0) if ck is None else None
    if first is not None:
        control.check_fields(first)  # an unknown `until` field: refused before the folder is touched
    if out is not None and comm.is_main:  # every check passed: clear the old run, record our files
        with safeio.writing(out):
            out.mkdir(parents=True, exist_ok=True)
        folders.start(out, folders.own_names(comm.world_size, run.engine), fresh=not resume)
    files = Outputs(out, comm.is_main, fresh=ck is None)
    files.write_json("config.json", config)
    saved: int | None = start if ck is not None else None  # round of the last checkpoint

    def evaluate(t: int, row: dict[str, Any] | None = None) -> dict[str, Any]:
        row = row if row is not None else measure(t)
        files.append_row(row)  # first: a row that could not be written is not in the summary either
        rows.append(row)
        return row

    status = "completed"
    show = progress and comm.is_main and sys.stderr.isatty()
    bar = tqdm(total=run.rounds, initial=start, disable=not show, leave=False,
               desc=f"{run.algorithm['name']}", unit="round")
    try:
        reached = control.after_eval(evaluate(0, first), first) if first is not None else False
        for t in range(start, start if reached else run.rounds):
            tic = time.perf_counter()
            state = algorithm.step(state, t)
            train_s += time.perf_counter() - tic
            check_finite(state, t + 1, comm)  # before any output: a diverged state is never saved
            control.after_step(algorithm.point(state), t + 1)  # grown far past the start: diverged
            if (t + 1) % run.eval_every == 0 or t + 1 == run.rounds:
                row = evaluate(t + 1)
                reached = control.after_eval(row, rows[0])  # True: the target `until` is met
                bar.set_postfix(upper_loss=f"{row['upper_loss']:.4g}", refresh=False)
            if out is not None and (reached or checkpoint.due(t + 1, run.checkpoint_every, run.rounds)):
                checkpoint.save(out, comm.rank, checkpoint.Checkpoint(
                    t + 1, state, comm.stats.as_dict(), train_s, len(rows), config), comm.world_size)
                saved = t + 1
            bar.update(1)
            if reached:
                break
    except DivergenceError as exc:
        status = "diverged"
        raise DivergenceError(f"{exc}; {_kept(out, saved)}") from None
    except safeio.WriteError as exc:
        status = "failed"
        raise safeio.WriteError(f"{exc}; the run stopped, {_kept(out, saved)} "
                                f"and {len(rows)} whole metric rows", exc.path) from None
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        bar.close()
        try:
            files.write_json("summary.json", summary(rows, status, run))
        except safeio.WriteError:
            if status == "completed":
                raise  # else the error that stopped the run is the one to report
    x, y = algorithm.point(state)
    extra = {"resumed_from": start} if resume else {}
    extra["progress"] = assess_progress(rows)  # as summary.json's
    if run.until is not None:
        extra["target"] = stopping.target_info(run.until, rows)
    return Result(rows, x, y, state, config, files.dir, status, extra)


def _derived_record(out: Path) -> dict[str, Any]:
    """The ``derived`` entry of the run's config.json (what its defaults were derived from), if any."""
    try:
        old = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"derived": old["derived"]} if isinstance(old, dict) and "derived" in old else {}


def _kept(out: Path | None, saved: int | None) -> str:
    if out is None:
        return "nothing was saved (no output folder)"
    return f"the checkpoint of round {saved} is kept" if saved is not None else "no checkpoint was written"


def resume(out: str | Path, progress: bool = False, problem: Problem | None = None,
           comm: Communicator | None = None, changes: dict[str, Any] | None = None) -> Result:
    """Continue the run in folder ``out`` from its last checkpoint (from round 0 if it has none),
    with the configuration in its config.json; pass ``problem`` again for a user-defined one.
    ``changes``: new values of the fields that may change on resume (folders.RESUMABLE, and
    ``procs``, which must equal the number of processes that wrote the checkpoint)."""
    raw = checkpoint.load_config(Path(out), user_problem=problem is not None)
    raw.update(folders.check_changes(changes or {}))
    if problem is not None:
        raw["workers"] = problem.n_workers
    user_problem = problem
    res, problem = resolve(raw, problem)
    if res.run.engine == "flower":
        raise ConfigError("--resume", "a Flower run cannot be resumed (its nodes keep their state in Flower's "
                          "contexts); start it again")
    if res.run.procs > 1 and comm is None and not in_job():  # each process reads its own shard
        checkpoint.check_procs(Path(out), res.run.procs)  # a mismatch: one line, before any process starts
        return run_procs(raw, user_problem, Path(out), progress, res.run.procs, res.run.timeout,
                         res.run.workers, resume=True)
    return execute(res, problem, Path(out), progress, comm, resume=True)


def summary(rows: list[dict[str, Any]], status: str, run: RunConfig) -> dict[str, Any]:
    final = rows[-1] if rows else {}
    best = {}
    for key in ("test_acc",):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if vals:
            best[key] = max(vals)
    out = {"status": status, "final": final, "best": best,
           "totals": {k: final.get(k) for k in ("round", "bits_up", "bits_down", "comm_rounds", "wall_s")},
           "rounds_planned": run.rounds, "progress": assess_progress(rows)}
    if run.until is not None:  # the target: reached or not, at which round, with which bits
        out["target"] = stopping.target_info(run.until, rows)
    return out


def python_raw(task: str | dict | Problem, algorithm: str | dict, overrides: list[str] | None,
               top: dict[str, Any]) -> tuple[dict[str, Any], Problem | None]:
    """The raw configuration of a Python call (``distbo.run``, ``distbo.tune``) and its user Problem."""
    from .config import apply_set

    problem = task if isinstance(task, Problem) else None
    raw: dict[str, Any] = {"algorithm": algorithm, **top}
    if problem is None and not (top.get("problem") is not None and task == "quadratic"):  # problem="F.py:FN"
        raw["task"] = task
    for item in overrides or []:
        apply_set(raw, item)
    return raw, problem


def run(task: str | dict | Problem = "quadratic", algorithm: str | dict = "soba", *,
        out: str | Path | None = None, progress: bool = False, overrides: list[str] | None = None,
        comm: Communicator | None = None, overwrite: bool = False, **top: Any) -> Result:
    """Run one configuration from Python; the keywords are the CLI's (see ``distbo run --help``).

    ``task`` is a task name, a dict ``{"name": ..., **params}`` or your own ``distbo.Problem``;
    ``algorithm`` a name or ``{"name": ..., **hyper}``; other keywords are top-level fields
    (compressor, rounds, workers, seed, eval_every, ...); ``overrides`` are ``key=value`` strings.
    A folder ``out`` that already holds a run is refused unless ``overwrite`` (then it is cleared).
    """
    raw, problem = python_raw(task, algorithm, overrides, top)
    if problem is not None:
        user_settings(problem, raw)  # workers / dtype / task.* it would ignore: one-line errors
    user_problem = problem
    res, problem = resolve(raw, problem)
    out = Path(out) if out is not None else None
    spawns = comm is None and (res.run.engine == "flower" or (res.run.procs > 1 and not in_job()))
    if spawns and out is not None:  # refused here; cleared by the main process once the run's checks pass
        folders.check_out(out)
        folders.refuse_existing(out, overwrite)
    if res.run.engine == "flower" and comm is None:  # Flower apps (flower/)
        from .flower import run_flower

        return run_flower(raw, out, progress, user_problem, overwrite)
    if res.run.procs > 1 and comm is None and not in_job():  # start the processes (launch.py)
        return run_procs(raw, user_problem, out, progress, res.run.procs, res.run.timeout, res.run.workers,
                         overwrite=overwrite)
    return execute(res, problem, out, progress, comm, overwrite=overwrite)
