"""Multi-process runs (comm/torch_dist.py, launch.py): the same numbers as the simulator, clean failures.

Process start-up dominates (each process imports torch), so the tests share as few launches as
possible: one 2-process job runs every algorithm case and the communicator checks; the CLI and
the failure tests launch one job each.
"""
import faulthandler
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist

import distbo
from distbo import launch
from distbo.algorithms import ALGORITHMS
from distbo.comm import Dense, DenseSum, SimulatedComm
from distbo.comm.torch_dist import (FAULT_ENV, TorchDistComm, decode_field, encode_field, field_nbytes, from_limbs,
                                    to_limbs, wire_dtype)
from distbo.compressors import make_compressor

PROCS, N = 2, 4
COMMON = dict(task={"name": "quadratic", "d_x": 3, "d_y": 6, "noise": 0.1}, workers=N, rounds=6,
              eval_every=2, dtype="float64", seed=1)
# case -> run keywords; each is compared with the simulator, field by field
CASES = {
    "soba": dict(algorithm="soba"),
    "c-soba": dict(algorithm="c-soba", compressor="randk:0.5"),  # C-SOBA takes unbiased compressors
    "ef-soba": dict(algorithm="ef-soba", compressor="topk:0.5"),  # top-K goes with error feedback
    "aggitd": dict(algorithm="aggitd"),
    # half the clients per round: a rank may host 0, 1 or 2 senders of a compressed payload
    "aggitd-sampled": dict(algorithm={"name": "aggitd", "inner_rounds": 2, "local_steps": 2},
                           compressor="topk:0.5", clients={"fraction": 0.5}),
    "rabo": dict(algorithm="rabo"),
    # compressed down-links (per-channel copies) with sampling and a compressed up-link
    "fednest-down": dict(algorithm={"name": "fednest", "inner_rounds": 2, "neumann_terms": 2}, downlink="topk:0.5",
                         compressor="qsgd:4", clients={"fraction": 0.5}),
    "aggitd-down": dict(algorithm={"name": "aggitd", "inner_rounds": 2, "local_steps": 2}, downlink="sign"),
    # server optimizers of x (algorithms/upper.py): replicated state, on a direction and on a local-step move
    "soba-adam": dict(algorithm={"name": "soba", "upper_opt": "adam"}),
    "ef-soba-dog": dict(algorithm={"name": "ef-soba", "upper_opt": "dog"}, compressor="topk:0.5"),
    "rabo-adam": dict(algorithm={"name": "rabo", "upper_opt": "adam"}, clients={"resources": [1.0, 0.5]}),
    "fednest-dog": dict(algorithm={"name": "fednest", "upper_opt": "dog", "inner_rounds": 2, "neumann_terms": 2,
                                   "outer": "local-svrg"}, clients={"fraction": 0.5}),
}


def _alg(case: str) -> str:
    a = CASES[case]["algorithm"]
    return a if isinstance(a, str) else a["name"]
EXACT = ("round", "bits_up", "bits_down", "comm_rounds")
SPECS = ("identity", "topk:0.3", "randk:2", "qsgd:3", "sign")


def _rows(d: int, seed: int) -> torch.Tensor:
    return torch.randn(6, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _exchange_cases(comm, senders: dict[int, list[int]]):
    """Per compressor spec: the sums and bits of one exchange in which each rank sends the rows of
    its own ``senders`` (possibly none), as a payload next to a Dense and a DenseSum message."""
    out = {}
    for i, spec in enumerate(SPECS):
        c, U = make_compressor(spec), _rows(7, i)
        mine = torch.tensor([w for w in senders.get(comm.rank, []) if w in comm.local_workers.tolist()]
                            if comm.world_size > 1 else sum(senders.values(), []), dtype=torch.int64)
        keys = 1000 + mine
        before = comm.stats.bits_up
        sums = comm.exchange({"p": c.compress(U[mine], keys), "d": Dense(U[mine] * 2),
                              "s": DenseSum(U[mine].sum(0), len(mine))}, mean=True)
        out[spec] = ({k: v.clone() for k, v in sums.items()}, comm.stats.bits_up - before)
    return out


SENDERS = [{0: [0, 2], 1: [4]}, {0: [1], 1: []}]  # unequal and empty blocks (client sampling)


def _job(names: list[str]):
    """Runs in every rank of a 2-process job: each algorithm case, then raw exchanges."""
    results = {name: distbo.run(**COMMON, **CASES[name]) for name in names}
    comm = TorchDistComm(6)
    exchanges = [_exchange_cases(comm, s) for s in SENDERS]
    x_sum = comm.all_sum(torch.tensor([float(dist.get_rank())], dtype=torch.float64))
    return {"metrics": {k: r.metrics for k, r in results.items()}, "x": {k: r.x for k, r in results.items()},
            "exchanges": exchanges, "wire": comm.wire_stats(), "all_sum": float(x_sum)}


@pytest.fixture(scope="module")
def job():
    names = [n for n in CASES if _alg(n) in ALGORITHMS.names()]
    return names, launch.spawn(_job, (names,), PROCS, timeout=60)


def _same_rows(sim: list[dict], par: list[dict]) -> None:
    assert len(sim) == len(par)
    for a, b in zip(sim, par):
        assert set(a) == set(b)
        for k in set(a) - {"wall_s"}:
            if isinstance(a[k], float) and k not in EXACT:
                assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-12), (a["round"], k)
            else:  # counters, coverage, ...: exactly
                assert a[k] == b[k], (a["round"], k, a[k], b[k])


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_give_the_simulators_metrics_and_bits(job, name):
    if _alg(name) not in ALGORITHMS.names():
        pytest.skip(f"algorithm '{_alg(name)}' is not registered yet")
    names, values = job
    sim = distbo.run(**COMMON, **CASES[name])
    _same_rows(sim.metrics, values[0]["metrics"][name])
    assert sim.metrics[-1]["bits_up"] > 0 and sim.metrics[-1]["comm_rounds"] > 0
    torch.testing.assert_close(values[0]["x"][name], sim.x, rtol=1e-9, atol=1e-12)
    # the server state is replicated: rank 1 ends at the same point
    torch.testing.assert_close(values[1]["x"][name], values[0]["x"][name], rtol=0, atol=0)


@pytest.mark.parametrize("case", range(len(SENDERS)))
def test_payloads_travel_compressed_with_unequal_and_empty_blocks(job, case):
    sim = _exchange_cases(SimulatedComm(6), SENDERS[case])
    for rank in range(PROCS):
        got = job[1][rank]["exchanges"][case]
        for spec in SPECS:
            (s_sums, s_bits), (d_sums, d_bits) = sim[spec], got[spec]
            assert d_bits == s_bits, spec
            # payload rows are gathered and decoded in worker order: bitwise the simulator's sum
            torch.testing.assert_close(d_sums["p"], s_sums["p"], rtol=0, atol=0)
            for k in ("d", "s"):
                torch.testing.assert_close(d_sums[k], s_sums[k], rtol=1e-12, atol=1e-12)


def test_collectives_are_few_and_bookkeeping_is_separate(job):
    v = job[1][0]
    assert v["all_sum"] == sum(range(PROCS))
    # per exchange: sizes + payload bytes + dense sums = 3 collectives
    assert v["wire"]["collectives"] == 3 * len(SPECS) * len(SENDERS)
    assert v["wire"]["other_bytes"] == 8


def test_integer_limbs_and_wire_dtypes():
    vals = [0, 1, 2**40 + 12345, 2**63]
    for dt in (torch.float32, torch.float64, torch.int64):
        assert from_limbs(to_limbs(vals, dt) * 3) == [3 * v for v in vals]
    i64 = torch.zeros(2, dtype=torch.int64)
    assert wire_dtype(i64, 5, signed=False) == torch.uint8  # top-K indices, d <= 32
    assert wire_dtype(i64, 16, signed=False) == torch.uint16  # top-K indices, d <= 65536
    assert wire_dtype(i64, 32, signed=False) == torch.uint32  # rand-K seeds
    assert wire_dtype(i64, 3, signed=True) == torch.int8  # QSGD signed levels
    assert wire_dtype(i64, 33, signed=False) == torch.int64
    assert wire_dtype(torch.zeros(2, dtype=torch.int8), 3) == torch.int8
    assert wire_dtype(torch.zeros(2, dtype=torch.float32), 32) == torch.float32
    for t in (torch.rand(3, 13) < 0.5, torch.tensor([[-4, 3], [0, -1]]), torch.randint(0, 60000, (2, 5))):
        wdt = wire_dtype(t, 16, signed=bool((t.to(torch.int64) < 0).any()))
        data = encode_field(t, wdt)
        assert data.dtype == torch.uint8 and data.numel() == field_nbytes(t.shape[0], t, wdt)
        assert torch.equal(decode_field(data, t.shape[0], t, wdt), t)
    assert field_nbytes(3, torch.zeros(3, 13, dtype=torch.bool), torch.bool) == 5  # 39 bits


def test_procs_must_divide_workers_and_nothing_starts(capsys, tmp_path):
    from distbo.cli import main

    code = main(["run", "--workers", "3", "--procs", "2", "--rounds", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "procs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_torchrun_environment_is_detected(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert launch.job_env() is None and not launch.in_job()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch.job_env() == (3, 4) and launch.in_job() and launch.rank() == 3
    monkeypatch.setenv("DISTBO_THREADS", "")
    assert launch.threads_per_process(2) == max(1, len(os.sched_getaffinity(0)) // 2)


def _read_rows(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line is whole


@pytest.fixture
def watchdog():
    """A run that hangs aborts the test session with a traceback instead of stalling it."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_cli_procs_run_matches_and_a_raising_worker_fails_cleanly(tmp_path, monkeypatch, capfd, watchdog):
    """`distbo run --procs 2`: a normal run equals the simulator; with rank 1 raising at exchange 3
    the run exits non-zero well within the timeout, names rank 1 and its error, keeps the metrics."""
    from distbo.cli import main

    args = ["run", "--task", "quadratic", "--workers", "4", "--rounds", "8", "--eval-every", "1",
            "--set", "dtype='float64'", "--set", "timeout=20", "--quiet", "--procs", "2"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    sim = distbo.run("quadratic", "soba", workers=4, rounds=8, eval_every=1, dtype="float64")
    _same_rows(sim.metrics, _read_rows(tmp_path / "ok"))
    capfd.readouterr()

    monkeypatch.setenv(FAULT_ENV, "rank=1,exchange=3,action=raise")
    tic = time.time()
    code = main([*args, "--out", str(tmp_path / "bad")])
    elapsed = time.time() - tic
    err = capfd.readouterr().err
    assert code == 1, err
    last = [line for line in err.splitlines() if line.startswith("distbo: error:")]
    assert len(last) == 1 and last[0].startswith("distbo: error: rank 1 failed: RuntimeError: injected fault"), err
    assert "Warning" not in err, err  # e.g. no leaked semaphores
    rows = _read_rows(tmp_path / "bad")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]  # evaluated before the 4th exchange failed
    assert json.loads((tmp_path / "bad" / "summary.json").read_text())["status"] == "failed"
    assert elapsed < 20, elapsed  # peers see the failure at once: no waiting for the timeout


def test_a_hung_worker_fails_the_run_after_the_timeout(tmp_path, monkeypatch, watchdog):
    monkeypatch.setenv(FAULT_ENV, "rank=1,exchange=2,action=hang")
    tic = time.time()
    with pytest.raises(launch.LaunchError) as info:
        distbo.run("quadratic", "soba", workers=2, rounds=20, eval_every=1, procs=2, timeout=3,
                   out=tmp_path / "hang")
    assert time.time() - tic < 3 + launch.GRACE_S + launch.KILL_AFTER_S + 15
    assert str(info.value).startswith("rank 1 stopped answering (timeout 3 s)"), str(info.value)
    assert info.value.rank == 1 and info.value.code != 0
    assert [r["round"] for r in _read_rows(tmp_path / "hang")] == [0, 1, 2]


def test_a_user_problem_runs_in_two_processes_from_python(job):
    """distbo.run(MyProblem(...), procs=2): the problem object is sent to the processes."""
    from helpers import SoftplusProblem

    kw = dict(algorithm={"name": "soba", "alpha": 0.01}, rounds=4, eval_every=2)
    sim = distbo.run(SoftplusProblem(workers=4), **kw)
    par = distbo.run(SoftplusProblem(workers=4), procs=2, **kw)
    _same_rows(sim.metrics, par.metrics)
    torch.testing.assert_close(par.x, sim.x, rtol=1e-9, atol=1e-12)
    assert par.state is None and par.extra["procs"] == 2 and par.config["procs"] == 2


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_killing_the_launcher_leaves_no_process_behind(tmp_path):
    """SIGKILL to `distbo run --procs 2` (no clean-up possible there): its fork server and both
    ranks are gone within seconds; the rows written so far are whole."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "distbo", "run", "--workers", "2", "--rounds", "1000000",
                             "--eval-every", "1", "--procs", "2", "--quiet", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not ((out / "metrics.jsonl").is_file() and len(_read_rows(out)) >= 3):
            assert proc.poll() is None and time.time() < deadline, "the run did not start"
            time.sleep(0.2)
        family = _descendants(proc.pid)
        assert len(family) >= 3  # fork server + 2 ranks
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 10
    while any(_alive(p) for p in family) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in family if _alive(p)]
    assert len(_read_rows(out)) >= 3


def test_a_rank_that_does_not_finish_after_the_others_is_stopped(tmp_path, job):
    """The ranks finish together; one still running ``timeout`` s after another ended is stopped."""
    ctx = launch._context()
    children = [ctx.Process(target=time.sleep, args=(0,)), ctx.Process(target=time.sleep, args=(600,))]
    for c in children:
        c.start()
    tic = time.time()
    failures, stopped = launch._watch(children, tmp_path, timeout=1.0)
    assert failures == {} and stopped == [1] and not children[1].is_alive()
    assert time.time() - tic < 1.0 + launch.KILL_AFTER_S + 5
    assert str(launch._summarize(failures, stopped, 1.0)).startswith("rank 1 stopped answering (timeout 1 s)")
