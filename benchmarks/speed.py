"""Speed of the vectorised simulator vs a plain per-worker Python loop, and where the time goes.

For each task x workers x algorithm this times ``algorithm.step`` twice on the same problem:
  distbo  the library as it is (vmap over the worker axis; the server's mean of an uncompressed
          message computed as one derivative of the summed loss),
  loop    the same algorithm code with every vmap replaced by a Python loop over workers, the
          summed-loss shortcut turned off and compressors applied one worker at a time: what the
          public federated bilevel codebases do (one client after another).
It prints worker-iterations per second (outer iterations x workers / time), the ratio, the share
of a distbo round spent in oracles / compression / communication / bookkeeping (exclusive
timers around the library's own functions).

    python benchmarks/speed.py              # full table, 1 torch thread (--threads N)
    python benchmarks/speed.py --quick      # 10 workers only
    python benchmarks/speed.py --memory     # peak memory, a fresh process per case (see memory_table)
    python benchmarks/speed.py --memory --tasks cnn --algorithms soba --workers 100,1000 --chunk 50
    python benchmarks/speed.py --thread-policy  # 1 thread vs all cores, alone and beside a busy process
    python benchmarks/speed.py --profile ef-soba --workers 100 --tasks hyperrep  # torch.profiler table
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections import defaultdict

import torch
from torch.utils._pytree import tree_leaves, tree_map

import distbo.algorithms.fixed_x as fixed_x_mod
import distbo.oracles as oracles_mod
from distbo.comm.base import Communicator
from distbo.allocator import reuse_freed_memory
from distbo.compressors.base import Compressor, Payload
from distbo.problems.softmax_head import LinearSoftmaxHead
from distbo.runner import build, resolve

Tensor = torch.Tensor

WARMUP = 2
ORACLE_FUNS = ("grad_xy", "grad_y", "grad_y_hvp", "hvp", "fd_grad_y_hvp", "loss_values")
MIXED = "clients.resources=[1, 0.5, 0.25, 0.125]"
CASES = {  # name -> (algorithm, overrides, label): every registered algorithm
    "soba": ("soba", [], "soba"),
    "c-soba": ("c-soba", ["compressor=randk:0.1"], "c-soba randk:0.1"),
    "cm-soba": ("cm-soba", ["compressor=randk:0.1"], "cm-soba randk:0.1"),
    "ef-soba": ("ef-soba", ["compressor=topk:0.1"], "ef-soba topk:0.1"),  # c-soba refuses biased top-K
    "cm-soba-msc": ("cm-soba-msc", ["compressor=randk:0.1"], "cm-soba-msc randk:0.1"),
    "ef-soba-msc": ("ef-soba-msc", ["compressor=topk:0.1"], "ef-soba-msc topk:0.1"),
    "rabo": ("rabo", [MIXED], "rabo mixed"),
    "rafbo": ("rafbo", [MIXED], "rafbo mixed"),
    "aggitd": ("aggitd", [], "aggitd"),
    "fednest": ("fednest", [], "fednest"),
    "lfednest": ("lfednest", [], "lfednest"),
}
TASKS = {
    "quadratic": ["task.d_x=100", "task.d_y=200"],
    "hyperrep": ["task.dataset=\"mnist5k\"", "task.batch_size=32"],
    # conv layers as x (1.27M parameters, most in the last 3x3 convolution on 3x3 maps), head as y
    "cnn": ["task.dataset=\"mnist5k\"", "task.model=\"cnn\"", "task.channels=[32, 64, 128, 1024]",
            "task.batch_size=2"],
}


class Timers:
    """Exclusive wall-clock time per category (a nested call's time counts only for itself)."""

    def __init__(self):
        self.total = defaultdict(float)
        self.stack: list[list[float]] = []

    @contextlib.contextmanager
    def section(self, name: str):
        start = time.perf_counter()
        self.stack.append([0.0])
        try:
            yield
        finally:
            child = self.stack.pop()[0]
            spent = time.perf_counter() - start
            self.total[name] += spent - child
            if self.stack:
                self.stack[-1][0] += spent

    def wrap(self, name, fn):
        def timed(*a, **k):
            with self.section(name):
                return fn(*a, **k)
        return timed


@contextlib.contextmanager
def patched(obj, attr, value):
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def loop_vmap(fn, in_dims=0, **_):
    """vmap's signature, a Python loop's behaviour."""
    def run(*args):
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        n = next(tree_leaves(a)[0].shape[0] for a, d in zip(args, dims) if d is not None)
        outs = [fn(*(a if d is None else tree_map(lambda t: t[i], a) for a, d in zip(args, dims)))
                for i in range(n)]
        return tree_map(lambda *xs: torch.stack(xs), *outs)
    return run


def loop_compress(orig):
    def compress(self, u, keys):
        parts = [orig(self, u[i:i + 1], keys[i:i + 1]) for i in range(u.shape[0])]
        fields = {k: (torch.cat([p.fields[k][0] for p in parts]), w) for k, (_, w) in parts[0].fields.items()}
        return Payload(self, fields, u.shape[-1], u.shape[0])
    return compress


def loop_head(method):
    """A closed-form head's batched method (problems/softmax_head.py) one participant at a time."""
    def run(self, z, *vecs, labels, reduce=False):
        outs = [method(self, z[i:i + 1], *(v[i:i + 1] if v.dim() == 2 else v for v in vecs), labels=labels[i:i + 1])
                for i in range(z.shape[0])]
        outs = tree_map(lambda *xs: torch.cat(xs), *outs)
        if not reduce:
            return outs
        return outs.sum(0) if isinstance(outs, Tensor) else (outs[0], outs[1].sum(0))
    return run


@contextlib.contextmanager
def loop_mode():
    with contextlib.ExitStack() as st:
        st.enter_context(patched(oracles_mod, "vmap", loop_vmap))
        st.enter_context(patched(fixed_x_mod, "vmap", loop_vmap))
        for name in ("grad_y", "pullback"):
            st.enter_context(patched(LinearSoftmaxHead, name, loop_head(vars(LinearSoftmaxHead)[name])))
        st.enter_context(patched(oracles_mod, "_shared", lambda *ts: False))
        st.enter_context(patched(Compressor, "compress", loop_compress(Compressor.compress)))
        yield


@contextlib.contextmanager
def timed_library(timers: Timers):
    with contextlib.ExitStack() as st:
        for name in ORACLE_FUNS:
            if hasattr(oracles_mod, name):
                st.enter_context(patched(oracles_mod, name, timers.wrap("oracles", getattr(oracles_mod, name))))
        for cls in (fixed_x_mod.AtX, fixed_x_mod.Features):  # the federated lower level at a fixed x
            for name in ("__init__", "grad_y", "hvp_yy", "hvp_onto", "settle"):
                if name in vars(cls):
                    st.enter_context(patched(cls, name, timers.wrap("oracles", vars(cls)[name])))
        st.enter_context(patched(Compressor, "compress", timers.wrap("compression", Compressor.compress)))
        st.enter_context(patched(Payload, "decoded", timers.wrap("compression", Payload.decoded)))
        for name in ("exchange", "broadcast"):
            st.enter_context(patched(Communicator, name, timers.wrap("communication", getattr(Communicator, name))))
        yield


def make(task: str, workers: int, name: str, extra: tuple[str, ...] = ()):
    algorithm, overrides, _ = CASES[name]
    raw = {"task": {"name": "hyperrep" if task == "cnn" else task}, "algorithm": {"name": algorithm},
           "workers": workers, "rounds": 10}
    from distbo.config import apply_set

    for item in TASKS[task] + overrides + list(extra):
        apply_set(raw, item)
    res, problem = resolve(raw)
    alg, _ = build(res, problem)
    return alg


def time_steps(alg, steps: int, timers: Timers | None = None) -> float:
    state = alg.init()
    for t in range(WARMUP):  # first calls trace vmap / load kernels
        state = alg.step(state, t)
    ctx = timed_library(timers) if timers else contextlib.nullcontext()
    with ctx:
        start = time.perf_counter()
        for t in range(WARMUP, WARMUP + steps):
            with (timers.section("bookkeeping") if timers else contextlib.nullcontext()):
                state = alg.step(state, t)
        return (time.perf_counter() - start) / steps


def peak_memory(task: str, n: int, name: str, chunk: int | None, rounds: int) -> tuple[float, float, int]:
    """(peak RSS MB of a fresh process that builds the case and runs ``rounds`` rounds, how much of
    it the rounds added, d_x). One torch thread; ``chunk``: the worker_chunk setting."""
    extra = ("threads=1",) + ((f"worker_chunk={chunk}",) if chunk else ())
    code = ("import resource, sys; sys.path.insert(0, 'benchmarks'); import torch; from speed import make;"
            f"alg = make({task!r}, {n}, {name!r}, {extra!r}); torch.set_num_threads(1); s = alg.init();"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            f"[s := alg.step(s, t) for t in range({rounds})];"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "print(peak / 1024, (peak - base) / 1024, alg.problem.d_x)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, grown, d_x = out.stdout.strip().splitlines()[-1].split()
    return float(peak), float(grown), int(d_x)


def memory_table(tasks: list[str], workers: list[int], algorithms: list[str], chunk: int | None,
                 rounds: int) -> None:
    """Peak RSS per case (task x algorithm x workers, unchunked and with ``worker_chunk``)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC, torch {torch.__version__}, 1 thread, {rounds} round(s) per case")
    print("| task | d_x | algorithm | workers | worker_chunk | peak RSS MB | added by the rounds MB |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for task in tasks:
        for name in algorithms:
            for n in workers:
                for k in ([None, chunk] if chunk else [None]):
                    peak, grown, d_x = peak_memory(task, n, name, k, rounds)
                    print(f"| {task} | {d_x:,} | {CASES[name][2]} | {n} | {k or '-'} | {peak:,.0f} | {grown:,.0f} |",
                          flush=True)


BUSY = "import time\nwhile True:\n    sum(i * i for i in range(10_000))\n"


def thread_table(cases: list[tuple[str, int, str]], rounds: int = 4) -> None:
    """ms/round with 1 thread and with all cores, alone and beside a busy process that this
    function starts (one pure-Python loop, standing for another user's job), in one run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"| task | workers | algorithm | threads | alone ms/round | beside a busy process ms/round |")
    print("|---|---|---|---|---:|---:|")
    for task, n, name in cases:
        alg = make(task, n, name)
        cells = {}
        for busy in (False, True):
            proc = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
            try:
                time.sleep(1.0 if busy else 0.0)
                for threads in sorted({1, cores}):
                    torch.set_num_threads(threads)
                    cells[threads, busy] = 1000 * time_steps(alg, rounds)
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
        for threads in sorted({1, cores}):
            print(f"| {task} | {n} | {CASES[name][2]} | {threads} | {cells[threads, False]:.1f} | "
                  f"{cells[threads, True]:.1f} |", flush=True)
    torch.set_num_threads(1)


def profile_table(task: str, n: int, name: str, rounds: int = 3) -> None:
    """torch.profiler's operator table (self CPU time) over ``rounds`` rounds after the warm-up."""
    from torch.profiler import ProfilerActivity, profile

    alg = make(task, n, name)
    state = alg.init()
    for t in range(WARMUP):
        state = alg.step(state, t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in range(WARMUP, WARMUP + rounds):
            state = alg.step(state, t)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory", action="store_true", help="peak memory per case instead (a process each)")
    ap.add_argument("--tasks", default="quadratic,hyperrep")
    ap.add_argument("--algorithms", default=",".join(CASES))
    ap.add_argument("--workers", default=None)
    ap.add_argument("--chunk", type=int, default=None, help="--memory: also measure with this worker_chunk")
    ap.add_argument("--rounds", type=int, default=2, help="--memory: rounds per case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--thread-policy", action="store_true", help="1 thread vs all cores, alone and beside a busy process")
    ap.add_argument("--profile", default=None, metavar="CASE", help="torch.profiler table of one case (see CASES)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    reuse_freed_memory()  # as distbo.run does
    workers = [int(w) for w in (a.workers or ("10" if a.quick else "10,100")).split(",")]
    if a.memory:
        return memory_table(a.tasks.split(","), workers, a.algorithms.split(","), a.chunk, a.rounds)
    if a.profile:
        return profile_table(a.tasks.split(",")[0], workers[0], a.profile)
    if a.thread_policy:
        return thread_table([("quadratic", 10, "soba"), ("hyperrep", 10, "soba"), ("hyperrep", 100, "soba"),
                             ("hyperrep", 100, "ef-soba")])
    head = ("task", "workers", "algorithm", "distbo it/s", "loop it/s", "ratio",
            "oracles", "compress", "comm", "bookkeep", "ms/round", "x soba")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for task in a.tasks.split(","):
        for n in workers:
            soba_ms = None
            for name in a.algorithms.split(","):
                steps = 3 if (task == "hyperrep" and n >= 100) else 10
                alg = make(task, n, name)
                timers = Timers()
                fast = time_steps(alg, steps, timers)
                with loop_mode():
                    slow = time_steps(make(task, n, name), max(2, steps // 3))
                tot = sum(timers.total.values())
                share = {k: 100 * timers.total[k] / tot for k in ("oracles", "compression", "communication", "bookkeeping")}
                soba_ms = 1000 * fast if name == "soba" else soba_ms
                row = (task, n, CASES[name][2], f"{n / fast:,.0f}", f"{n / slow:,.0f}", f"{slow / fast:.1f}x",
                       *(f"{share[k]:.0f}%" for k in share), f"{1000 * fast:.1f}",
                       f"{1000 * fast / soba_ms:.1f}x" if soba_ms else "-")
                print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)


if __name__ == "__main__":
    main()
