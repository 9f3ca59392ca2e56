"""The command line: ``distbo run | list`` (and the result tools: plot, compare, reproduce).

Errors a user can fix are one line on stderr naming the field and the allowed values, with a
non-zero exit code (2 for bad input, 3 for a diverged run, 4 when a file of the run folder could
not be written, 130 when interrupted by Ctrl-C, 143 by SIGTERM; docs/run-folders.md). The flags,
the TOML file and the top-level fields are checked before torch is imported.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .errors import DistboError, DivergenceError

EXIT_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_OS = 2, 3, 130, 143, 1


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str):  # noqa: D401
        sys.stderr.write(f"distbo: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_INPUT)


ArgsFn = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[str, ArgsFn, Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, args: ArgsFn = lambda p: None):
    """Register a subcommand: ``args(parser)`` adds its arguments; the function runs it."""
    def deco(fn):
        COMMANDS[name] = (help, args, fn)
        return fn
    return deco


def _config_args(p: argparse.ArgumentParser) -> None:
    """The flags that make a configuration (``distbo run`` and ``distbo tune``; see ``raw_config``)."""
    p.add_argument("config", nargs="?", help="a TOML configuration file")
    p.add_argument("--task", help="task name (see 'distbo list')")
    p.add_argument("--problem", metavar="FILE.py:FUNCTION", help="your own problem instead of a task: FUNCTION "
                   "returns a distbo.Problem or ModuleProblem (docs/own-model.md)")
    p.add_argument("--algorithm", help="algorithm name (see 'distbo list'; 'distbo list NAME' shows its "
                   "hyper-parameters, defaults and ranges)")
    p.add_argument("--compressor", help="compressor spec, e.g. topk:0.1")
    p.add_argument("--workers", type=int, help="number of workers")
    p.add_argument("--rounds", type=int, help="outer iterations")
    p.add_argument("--eval-every", type=int, dest="eval_every", help="evaluate every K rounds")
    p.add_argument("--seed", type=int)
    p.add_argument("--procs", type=int, help="processes on this machine (torch.distributed)")
    p.add_argument("--until", metavar="FIELD<=VALUE", help="stop at the first evaluation that meets this "
                   "target (or FIELD>=VALUE), e.g. hypergrad_norm<=1e-3")
    p.add_argument("--engine", choices=["sim", "flower"], help="sim (default) or flower (Flower apps, docs/flower.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="override a config field by dotted key (repeatable); every key, with its "
                   "default and range: 'distbo list ALGORITHM|TASK', 'distbo list --markdown'")


def _run_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--out", help="output folder (default: runs/<task>-<algorithm>-<time>)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its folder (with it only "
                   "--rounds, --eval-every, --until, --procs and --set of rounds, eval_every, until, timeout, threads)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files are "
                   "removed first)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


@command("run", "run one configuration", _run_args)
def cmd_run(a: argparse.Namespace) -> int:
    if a.resume:
        return _resume(a)
    raw = _checked_raw(a)  # before torch is imported: a bad flag answers at once
    from . import launch
    from .errors import ConfigError
    from .runner import execute, resolve

    res, problem = resolve(raw)
    if a.out is None and launch.in_job():
        raise ConfigError("--out", "is required under torchrun (every process must use the same folder)")
    out = Path(a.out) if a.out else Path("runs") / (
        f"{res.as_dict()['task']['name']}-{res.run.algorithm['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
    if res.run.engine == "flower":
        from .flower import run_flower

        try:
            result = run_flower(raw, out, not a.quiet, overwrite=a.overwrite)
        except launch.LaunchError as exc:
            sys.stderr.write(f"distbo: error: {exc}\n")
            return exc.code
    elif res.run.procs > 1 and not launch.in_job():  # start the processes (launch.py)
        try:
            result = launch.run_procs(raw, None, out, not a.quiet, res.run.procs, res.run.timeout, res.run.workers,
                                      overwrite=a.overwrite)
        except launch.LaunchError as exc:
            sys.stderr.write(f"distbo: error: {one_line(exc)}\n")
            return exc.code
    else:
        result = execute(res, problem, out, progress=not a.quiet, overwrite=a.overwrite)
    if launch.rank() != 0:
        return 0
    if not a.quiet:
        print_rows(result.metrics)
    if "target" in result.extra:
        print(describe_target(result.extra["target"]))
    print(f"wrote {out}")
    print(progress_line(result.metrics))  # the last line: did the tracked metric improve?
    return 0


def raw_config(a: argparse.Namespace) -> dict[str, Any]:
    """The raw configuration of the run flags: CONFIG, then the flags, then each --set."""
    from .config import apply_set, load_toml, merge

    raw: dict[str, Any] = load_toml(a.config) if a.config else {}
    raw = merge(raw, task=a.task, problem=getattr(a, "problem", None), algorithm=a.algorithm,
                compressor=a.compressor, workers=a.workers, rounds=a.rounds, eval_every=a.eval_every,
                seed=a.seed, procs=a.procs, until=a.until, engine=a.engine)
    for item in a.sets:
        apply_set(raw, item)
    return raw


def _checked_raw(a: argparse.Namespace) -> dict[str, Any]:
    """The raw configuration of ``distbo run``, its top-level fields checked, and ``--out``
    checked (torch-free: config.py, folders.py)."""
    from . import folders
    from .config import check_run

    raw = raw_config(a)
    check_run(raw)
    if a.out is not None:
        folders.check_out(a.out)
        folders.refuse_existing(a.out, a.overwrite)  # nothing is removed before the run's own checks
    return raw


def _resume_changes(a: argparse.Namespace) -> dict[str, Any]:
    """What ``distbo run --resume DIR`` may change: --rounds, --eval-every, --procs and --set of the
    fields in folders.RESUMABLE; any other flag is one line."""
    from .config import apply_set
    from .errors import ConfigError
    from .folders import check_changes

    flags = ("config", "task", "problem", "algorithm", "compressor", "workers", "seed", "out", "overwrite", "engine")
    given = [("CONFIG" if k == "config" else f"--{k.replace('_', '-')}") for k in flags
             if getattr(a, k, None) not in (None, [], False)]
    if given:
        raise ConfigError("--resume", f"uses the run's own config.json; drop {', '.join(given)} (only --rounds, "
                          "--eval-every, --until, --procs and --set of rounds, eval_every, until, timeout, threads "
                          "may be given)")
    changes: dict[str, Any] = {}
    for item in a.sets:
        apply_set(changes, item)
    changes.update({k: v for k, v in (("rounds", a.rounds), ("eval_every", a.eval_every), ("procs", a.procs),
                                      ("until", a.until)) if v is not None})
    return check_changes(changes)


def _resume(a: argparse.Namespace) -> int:
    """``distbo run --resume DIR``: the configuration comes from DIR/config.json, with the changes
    that _resume_changes allows."""
    changes = _resume_changes(a)
    from .runner import resume

    result = resume(a.resume, progress=not a.quiet, changes=changes)
    if not a.quiet:
        print_rows(result.metrics)
    print(f"resumed {a.resume} from round {result.extra['resumed_from']}")
    print(progress_line(result.metrics))
    return 0


def progress_line(rows: list[dict[str, Any]]) -> str:
    from .progress import assess, line

    return line(assess(rows))


def describe_target(info: dict[str, Any]) -> str:
    if not info["reached"]:
        return f"target {info['until']} not reached"
    return f"target {info['until']} reached at round {info['round']} ({info['bits_up']} bits up)"


def print_rows(rows: list[dict[str, Any]], limit: int = 6) -> None:
    """A short table of the first and last metric rows."""
    if not rows:
        return
    keys = [k for k in ("round", "comm_rounds", "bits_up", "wall_s", "upper_loss", "hypergrad_norm",
                        "test_acc") if k in rows[-1]]
    pick = rows if len(rows) <= limit else rows[:2] + rows[-(limit - 2):]
    print("  ".join(f"{k:>14}" for k in keys))
    for r in pick:
        print("  ".join(f"{_fmt(r.get(k)):>14}" for k in keys))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="a task, algorithm or compressor: every parameter "
                   "with its type, default, range and description")
    p.add_argument("--markdown", action="store_true", help="print the whole configuration reference as Markdown "
                   "(docs/reference.md)")


@command("list", "list tasks, algorithms and compressors, or the parameters of one", _list_args)
def cmd_list(a: argparse.Namespace) -> int:
    from . import reference
    from .algorithms import ALGORITHMS

    if a.name or a.markdown:
        print(reference.describe(a.name) if a.name else reference.markdown(), end="")
        return 0
    from .compressors import COMPRESSORS
    from .problems import TASKS

    for title, reg in (("tasks", TASKS), ("algorithms", ALGORITHMS), ("compressors", COMPRESSORS)):
        print(f"{title}:")
        for e in reg.entries():
            print(f"  {e.name:<14} {e.summary}")
    return 0


def _load_extensions() -> None:
    """Subcommands defined in other modules register themselves on import."""
    import importlib

    for mod in ("distbo.results", "distbo.tuning"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    _load_extensions()
    parser = _Parser(prog="distbo", description="distributed and federated stochastic bilevel optimization")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_, add_args, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        p.set_defaults(fn=fn)
    try:
        a = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (already printed) and --help
        return int(exc.code or 0)
    try:
        with _sigterm_as_interrupt():
            return a.fn(a)
    except DivergenceError as exc:
        sys.stderr.write(f"distbo: error: {one_line(exc)}\n")
        return EXIT_DIVERGED
    except DistboError as exc:
        sys.stderr.write(f"distbo: error: {one_line(exc)}\n")
        return getattr(exc, "exit_code", EXIT_INPUT)
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"distbo: {'stopped by SIGTERM' if isinstance(exc, Terminated) else 'interrupted'}\n")
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OSError as exc:  # a file that could not be read or written, outside the run folder's writes
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"distbo: error: {where}{exc.strerror or exc}\n")
        return EXIT_OS


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a newline in a value the user typed is shown as \\n)."""
    return str(exc).replace("\r", "\\r").replace("\n", "\\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops, its summary says "interrupted"."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs in the main thread, SIGTERM raises Terminated."""
    def on_term(signum, frame):
        raise Terminated("SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    raise SystemExit(main())
