"""Config -> problem, communicator, algorithm; the round loop, evaluation, metrics and outputs.

Outputs of a run with an output folder (DESIGN.md contract): ``config.json`` (the resolved
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

from . import checkpoint
from .algorithms import ALGORITHMS, Clients, Context
from .comm.base import CommStats, Communicator
from .compressors import make_compressor
from .config import DTYPES, Resolved, RunConfig, check_run
from .defaults import derived_fields, resolve_hyper
from .errors import DivergenceError
from .launch import in_job, make_comm, run_procs
from .problems import TASKS, Problem
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
    """Check every field, then build the problem (a user Problem is taken as it is)."""
    run = check_run(raw)
    alg_entry = ALGORITHMS.get(run.algorithm["name"], "algorithm.name")
    user_alg = {k: v for k, v in run.algorithm.items() if k != "name"}
    validate(alg_entry.params, user_alg, "algorithm")  # fail before any work
    make_compressor(run.compressor, "compressor")
    make_compressor(run.downlink, "downlink")
    task_params = None
    if problem is None:
        entry = TASKS.get(run.task["name"], "task.name")
        task_params = validate(entry.params, {k: v for k, v in run.task.items() if k != "name"}, "task")
        problem = entry.build(task_params, workers=run.workers, seed=run.seed, dtype=DTYPES[run.dtype])
    elif problem.n_workers != run.workers:
        run = run.model_copy(update={"workers": problem.n_workers})
    name = run.algorithm["name"]
    task = task_defaults(problem, name, alg_entry.params.model_fields)
    base = {k: v for k, v in task.items() if k in derived_fields(alg_entry.params) and k not in user_alg}
    hp = validate(alg_entry.params, {**{k: v for k, v in task.items() if k not in base}, **user_alg}, "algorithm")
    hp, derived = resolve_hyper(name, hp, problem, run.compressor, run.seed, base, run.clients.fraction)
    return Resolved(run, task_params, hp, derived), problem


def build(res: Resolved, problem: Problem, comm: Communicator | None = None):
    run = res.run
    comm = comm or make_comm(run.workers, run.timeout)
    down = make_compressor(run.downlink, "downlink")
    ctx = Context(problem=problem, comm=comm, compressor=make_compressor(run.compressor), seed=run.seed,
                  clients=Clients(**run.clients.model_dump()),
                  downlink=None if down.kind == "exact" else down, rounds=run.rounds)
    algorithm = ALGORITHMS.get(run.algorithm["name"]).build(ctx, res.algorithm)
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
    """The run folder; only the main process writes."""

    def __init__(self, out: Path | None, enabled: bool, fresh: bool = True):
        self.dir = out if enabled else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            if fresh:
                (self.dir / "metrics.jsonl").write_text("")

    def write_json(self, name: str, obj: Any) -> None:
        if self.dir is not None:
            tmp = self.dir / f".{name}.tmp"
            tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
            tmp.replace(self.dir / name)

    def append_row(self, row: dict[str, Any]) -> None:
        if self.dir is not None:
            with open(self.dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")


def execute(res: Resolved, problem: Problem, out: Path | None = None, progress: bool = False,
            comm: Communicator | None = None, resume: bool = False) -> Result:
    """Run the round loop of a resolved configuration (``resume``: from the checkpoint in ``out``)."""
    torch.manual_seed(res.run.seed)
    importlib.import_module("torch._dynamo")  # torch.func loads it on first use (seconds): not in wall_s
    algorithm, comm = build(res, problem, comm)
    out = Path(out) if out is not None else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads_for(res.run, problem, before))
    try:
        with checkpoint.claim(out, comm.rank):  # no second process writes this folder meanwhile
            return _loop(res, problem, algorithm, comm, out, progress, resume)
    finally:
        torch.set_num_threads(before)


SMALL_MODEL = 100_000  # parameters (d_x + d_y) below which one thread is fastest


def threads_for(run: RunConfig, problem: Problem, available: int) -> int:
    """Torch threads for this run: ``run.threads`` if set, else 1 for a small model (its ops are too
    small to split, and idle threads spinning on a busy machine cost up to 40x: measured 0.27 s vs
    10.9 s for 100 rounds of SOBA on the 60-parameter quadratic beside another job), else all the
    cores this process has (the launcher gives each process cores // procs)."""
    if run.threads is not None:
        return run.threads
    return 1 if problem.d_x + problem.d_y < SMALL_MODEL else available


def _loop(res: Resolved, problem: Problem, algorithm, comm: Communicator, out: Path | None,
          progress: bool, resume: bool) -> Result:
    run: RunConfig = res.run
    state = algorithm.init()
    rows: list[dict[str, Any]] = []
    train_s, start = 0.0, 0
    ck = checkpoint.load(out, comm.rank, state, comm.world_size) if resume and out is not None else None
    if resume:
        checkpoint.check_same_round(ck.round if ck is not None else -1, comm)
    if ck is not None:
        state, start, train_s = ck.state, ck.round, ck.train_s
        comm.stats = CommStats(**ck.stats)
        rows = checkpoint.restore_rows(out, ck.rows, truncate=comm.is_main)
    files = Outputs(out, comm.is_main, fresh=ck is None)
    config = {**res.as_dict(), "task_info": problem.describe()}
    files.write_json("config.json", config)
    saved: int | None = start if ck is not None else None  # round of the last checkpoint

    def evaluate(t: int) -> dict[str, Any]:
        x, y = algorithm.point(state)
        row = {"round": t, **comm.stats.as_dict(), "wall_s": round(train_s, 6),
               **problem.evaluate(x, y), **algorithm.metrics(state)}
        rows.append(row)
        files.append_row(row)
        return row

    status = "completed"
    show = progress and comm.is_main and sys.stderr.isatty()
    bar = tqdm(total=run.rounds, initial=start, disable=not show, leave=False,
               desc=f"{run.algorithm['name']}", unit="round")
    try:
        if ck is None:
            evaluate(0)
        for t in range(start, run.rounds):
            tic = time.perf_counter()
            state = algorithm.step(state, t)
            train_s += time.perf_counter() - tic
            check_finite(state, t + 1, comm)  # before any output: a diverged state is never saved
            if (t + 1) % run.eval_every == 0 or t + 1 == run.rounds:
                row = evaluate(t + 1)
                bar.set_postfix(upper_loss=f"{row['upper_loss']:.4g}", refresh=False)
            if out is not None and checkpoint.due(t + 1, run.checkpoint_every, run.rounds):
                checkpoint.save(out, comm.rank, checkpoint.Checkpoint(
                    t + 1, state, comm.stats.as_dict(), train_s, len(rows)), comm.world_size)
                saved = t + 1
            bar.update(1)
    except DivergenceError as exc:
        status = "diverged"
        kept = (f"the checkpoint of round {saved} is kept" if saved is not None
                else "no checkpoint was written") if out is not None else "nothing was saved (no output folder)"
        raise DivergenceError(f"{exc}; {kept}") from None
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        bar.close()
        files.write_json("summary.json", summary(rows, status, run))
    x, y = algorithm.point(state)
    return Result(rows, x, y, state, config, files.dir, status, {"resumed_from": start} if resume else {})


def resume(out: str | Path, progress: bool = False, problem: Problem | None = None,
           comm: Communicator | None = None) -> Result:
    """Continue the run in folder ``out`` from its last checkpoint (from round 0 if it has none),
    with the configuration in its config.json; pass ``problem`` again for a user-defined one."""
    raw = checkpoint.load_config(Path(out), user_problem=problem is not None)
    if problem is not None:
        raw["workers"] = problem.n_workers
    user_problem = problem
    res, problem = resolve(raw, problem)
    if res.run.procs > 1 and comm is None and not in_job():  # each process reads its own shard
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
    return {"status": status, "final": final, "best": best,
            "totals": {k: final.get(k) for k in ("round", "bits_up", "bits_down", "comm_rounds", "wall_s")},
            "rounds_planned": run.rounds}


def run(task: str | dict | Problem = "quadratic", algorithm: str | dict = "soba", *,
        out: str | Path | None = None, progress: bool = False, overrides: list[str] | None = None,
        comm: Communicator | None = None, **top: Any) -> Result:
    """Run one configuration from Python; the keywords are the CLI's (see ``distbo run --help``).

    ``task`` is a task name, a dict ``{"name": ..., **params}`` or your own ``distbo.Problem``;
    ``algorithm`` a name or ``{"name": ..., **hyper}``; other keywords are top-level fields
    (compressor, rounds, workers, seed, eval_every, ...); ``overrides`` are ``key=value`` strings.
    """
    from .config import apply_set

    problem = task if isinstance(task, Problem) else None
    raw: dict[str, Any] = {"algorithm": algorithm, **top}
    if problem is None:
        raw["task"] = task
    else:
        raw["workers"] = problem.n_workers
        raw["dtype"] = "float64" if problem.dtype == torch.float64 else "float32"
    for item in overrides or []:
        apply_set(raw, item)
    user_problem = problem
    res, problem = resolve(raw, problem)
    out = Path(out) if out is not None else None
    if res.run.procs > 1 and comm is None and not in_job():  # start the processes (launch.py)
        return run_procs(raw, user_problem, out, progress, res.run.procs, res.run.timeout, res.run.workers)
    return execute(res, problem, out, progress, comm)
