"""Run folders you can trust (issue 16, docs/run-folders.md): every bad input and fault found by
trying the CLI as a new user is one line on stderr with a non-zero exit, no traceback, and the
files already in the run folder are left as they were. The CLI runs in-process (cli.main)."""
import errno
import gzip
import json
import os
import shutil
import signal
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import distbo
from distbo import checkpoint, folders, runner, safeio
from distbo.cli import _resume_changes, main
from helpers import stop_at, without_time

QUICK = ["--task", "quadratic", "--workers", "3", "--rounds", "8", "--eval-every", "2", "--seed", "3",
         "--set", "task.d_x=2", "--set", "task.d_y=4", "--set", "checkpoint_every=4", "--quiet"]


def run_cli(*argv):
    return main(["run", *QUICK, *map(str, argv)])


def snapshot(folder: Path) -> dict[str, bytes]:
    """The run's files (not the lock files, which a failed --overwrite on a read-only disk cannot remove)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())
            if p.is_file() and not p.name.startswith(".lock-")} if folder else {}


def rows_of(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]




def stop_in_round(monkeypatch, round_, action):
    """Make the next algorithm built call ``action()`` at the start of round ``round_``."""
    monkeypatch.setattr(runner, "build", stop_at(round_, action))


def fail_writes(monkeypatch, name: str, err: int, after: int = 0):
    """Every os.write / os.open / torch.save / os.unlink touching a file called ``name`` fails with
    ``err``, after ``after`` successful writes of it (what a full or read-only disk does)."""
    count = {"n": 0}
    real_write, real_open, real_save, real_unlink = os.write, os.open, torch.save, os.unlink
    fds: set[int] = set()

    def hit(path) -> bool:
        if name not in str(path):
            return False
        count["n"] += 1
        return count["n"] > after

    def oserror(path):
        return OSError(err, os.strerror(err), str(path))

    def fake_open(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        if name in str(path):
            fds.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in fds and hit(name):
            real_write(fd, bytes(data)[: len(data) // 2])  # a torn write, as on a full disk
            raise oserror(name)
        return real_write(fd, data)

    def fake_save(obj, f, *a, **k):
        if hit(f):
            Path(f).write_bytes(b"torn")
            raise oserror(f)
        return real_save(obj, f, *a, **k)

    def fake_unlink(path, *a, **k):  # a full disk still deletes; a read-only one does not
        if err != errno.ENOSPC and hit(path):
            raise oserror(path)
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    monkeypatch.setattr(torch, "save", fake_save)
    monkeypatch.setattr(os, "unlink", fake_unlink)


# ----- folders the cases start from -----
def finished(tmp: Path) -> Path:
    assert run_cli("--out", tmp / "R") == 0
    return tmp / "R"


def _interrupt():
    raise KeyboardInterrupt


def interrupted(tmp: Path, monkeypatch) -> Path:
    stop_in_round(monkeypatch, 6, _interrupt)
    assert run_cli("--out", tmp / "R") == 130
    monkeypatch.undo()
    return tmp / "R"


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, raw: bytes | None = None):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = raw if raw is not None else header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def idx_folder(tmp: Path, images=None, labels=None, image_bytes=None, label_bytes=None, gz=False) -> str:
    """train files with 40 6x5 images of 4 classes (or the given arrays / raw bytes)."""
    folder = tmp / "idx"
    folder.mkdir(exist_ok=True)
    ext = ".gz" if gz else ""
    n = 40
    images = np.zeros((n, 6, 5), np.uint8) if images is None else images
    labels = (np.arange(n) % 4).astype(np.uint8) if labels is None else labels
    write_idx(folder / f"train-images-idx3-ubyte{ext}", images, 0x08, image_bytes)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", labels, 0x09 if labels.dtype == np.int8 else 0x08,
              label_bytes)
    return f"idx:{folder}"


def idx_run(spec: str) -> list[str]:
    return ["run", "--task", "hyperclean", "--workers", "2", "--rounds", "2", "--quiet",
            "--set", f'task.dataset="{spec}"', "--set", "task.batch_size=4"]


def _edit_config(folder: Path, **changes):
    conf = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        node = conf
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    (folder / "config.json").write_text(json.dumps(conf))


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


# ----- the table -----
@dataclass
class Case:
    name: str
    setup: Callable  # (tmp, monkeypatch) -> (argv, folder whose files must stay, or None)
    needles: tuple[str, ...]
    code: int = 2


def _finished_again(t, mp):
    r = finished(t)
    return ["run", *QUICK, "--out", str(r)], r


def _interrupted_again(t, mp):
    r = interrupted(t, mp)
    return ["run", *QUICK, "--set", "seed=5", "--out", str(r)], r


def _read_only_existing(t, mp):
    r = finished(t)
    fail_writes(mp, str(r), errno.EROFS)
    return ["run", *QUICK, "--out", str(r)], r


def _read_only_overwrite(t, mp):
    r = finished(t)
    fail_writes(mp, str(r), errno.EACCES)
    return ["run", *QUICK, "--out", str(r), "--overwrite"], r


def _edited_config(t, mp):
    r = interrupted(t, mp)
    _edit_config(r, seed=4, **{"task.heterogeneity": 2.0})
    return ["run", "--resume", str(r), "--quiet"], r


def _procs_mismatch(t, mp):
    r = interrupted(t, mp)
    d = torch.load(checkpoint.path(r, 0), weights_only=True)
    torch.save({**d, "world_size": 2}, checkpoint.path(r, 0))
    return ["run", "--resume", str(r), "--quiet"], r


def _not_utf8(t, mp):
    (t / "c.toml").write_bytes(b"rounds = 3\n# caf\xe9\n")
    return ["run", str(t / "c.toml"), "--quiet"], None


def _bad_json(name):
    def setup(t, mp):
        r = interrupted(t, mp)
        lines = (r / name).read_text().splitlines(keepends=True)
        (r / name).write_text("{not json" if name == "config.json" else '{"round": 0, "bits_up"\n' + "".join(lines[1:]))
        return ["run", "--resume", str(r), "--quiet"], r
    return setup


def _bad_json_compare(name):
    def setup(t, mp):
        r = finished(t)
        text = (r / name).read_text()
        (r / name).write_text(text.replace("}", "", 1) if name == "metrics.jsonl" else text[:-5])
        return ["compare", str(r), "--csv", str(t / "c.csv")], r
    return setup


def _out_file(sub: str, command: str):
    def setup(t, mp):
        (t / "f").write_text("a file")
        out = t / "f" / sub if sub else t / "f"
        argv = ["run", *QUICK, "--out", str(out)] if command == "run" else ["reproduce", "demo", "--out", str(out)]
        return argv, None
    return setup


def _plot_xyz(t, mp):
    r = finished(t)
    return ["plot", str(r), "-o", str(t / "fig.xyz")], r


def _idx(**kw):
    def setup(t, mp):
        return idx_run(idx_folder(t, **kw)), None
    return setup


EMPTY = bytes([0, 0, 8, 3]) + struct.pack(">3i", 0, 6, 5)
CASES = [
    Case("run --out R on a finished run", _finished_again, ("--out", "already holds a completed run",
                                                             "--resume", "--overwrite")),
    Case("run --out R on an interrupted run (the splice)", _interrupted_again,
         ("--out", "a stopped run (interrupted)", "--resume", "--overwrite")),
    Case("run --out R on a run in a read-only folder", _read_only_existing, ("--out", "already holds")),
    Case("run --out R --overwrite in a read-only folder", _read_only_overwrite,
         ("cannot write", "config.json", "EACCES"), 4),
    Case("config.json edited (seed, task.heterogeneity), then --resume", _edited_config,
         ("--resume", "seed, task.heterogeneity", "only rounds, eval_every, until, timeout, threads")),
    Case("resume advice for another process count", _procs_mismatch,
         ("written by 2 processes, not 1", "distbo run --resume DIR --procs 2")),
    Case("topk:1000000 on a 2-value message", lambda t, mp: (["run", *QUICK, "--compressor", "topk:1000000"], None),
         ("compressor", "topk:1000000", "message of 2 values", "fraction")),
    Case("IDX labels 255", _idx(labels=np.array([0, 1, 2, 3] * 9 + [255] * 4, np.uint8)),
         ("task.dataset", "train-labels", "every class present", "largest is 255")),
    Case("config file not UTF-8", _not_utf8, ("config", "c.toml", "not UTF-8")),
    Case("--seed 99999999999999999999", lambda t, mp: (["run", *QUICK, "--seed", "99999999999999999999"], None),
         ("seed", "less than or equal to 4294967295")),
    Case("IDX truncated", _idx(image_bytes=(bytes([0, 0, 8, 3]) + struct.pack(">3i", 40, 6, 5) + b"\0" * 100)),
         ("task.dataset", "train-images", "truncated")),
    Case("IDX bad magic", _idx(image_bytes=b"\x12\x34\x56\x78" + b"\0" * 64), ("task.dataset", "bad magic")),
    Case("IDX empty file", _idx(image_bytes=b""), ("task.dataset", "train-images", "bad magic")),
    Case("IDX empty data set", _idx(image_bytes=EMPTY), ("task.dataset", "N >= 1")),
    Case("IDX header larger than the data", _idx(image_bytes=bytes([0, 0, 8, 3, 0, 0])),
         ("task.dataset", "announces 3 dimensions", "6 bytes")),
    Case("IDX image/label count mismatch", _idx(labels=(np.arange(39) % 4).astype(np.uint8)),
         ("task.dataset", "40 images", "39 labels")),
    Case("IDX 2-D labels", _idx(labels=(np.arange(80) % 4).astype(np.uint8).reshape(40, 2)),
         ("task.dataset", "one label per image", "(40, 2)")),
    Case("IDX negative labels", _idx(labels=(np.arange(40) % 4 - 1).astype(np.int8)),
         ("task.dataset", "0..K-1", "-1")),
    Case("IDX broken .gz", lambda t, mp: (idx_run(_broken_gz(t)), None), ("task.dataset", "broken .gz")),
    Case("--out is a file (run)", _out_file("", "run"), ("--out", "is a file")),
    Case("--out lies under a file (run)", _out_file("sub", "run"), ("--out", "lies under the file")),
    Case("--out is a file (reproduce)", _out_file("", "reproduce"), ("--out", "is a file")),
    Case("--out lies under a file (reproduce)", _out_file("sub", "reproduce"), ("--out", "lies under the file")),
    Case("config.json not valid JSON (resume)", _bad_json("config.json"), ("--resume", "config.json", "not valid JSON")),
    Case("metrics.jsonl not valid JSON (resume)", _bad_json("metrics.jsonl"),
         ("--resume", "metrics.jsonl line 1", "not valid JSON")),
    Case("config.json not valid JSON (compare)", _bad_json_compare("config.json"), ("config.json", "not valid JSON")),
    Case("metrics.jsonl not valid JSON (compare)", _bad_json_compare("metrics.jsonl"),
         ("metrics.jsonl line 1", "not valid JSON")),
    Case("plot -o fig.xyz", _plot_xyz, ("-o", "fig.xyz", ".png, .pdf, .svg")),
    Case("--set task.d_y=100000 on the quadratic", lambda t, mp: (["run", "--set", "task.d_y=100000", "--quiet"], None),
         ("task.d_y", "needs at least", "GiB", "this machine has")),
]


def _broken_gz(t: Path) -> str:
    spec = idx_folder(t, gz=True)
    p = t / "idx" / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:30])
    return spec


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_case_is_one_line_and_leaves_the_files(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, folder = case.setup(tmp_path, monkeypatch)
    before = snapshot(folder)
    capsys.readouterr()
    code = main(argv)
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert code == case.code, (code, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in case.needles:
        assert needle in err, (needle, err)
    assert snapshot(folder) == before
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_resume_advice_can_be_followed():
    """'resume with --procs 2': --procs is accepted with --resume (and only the resumable fields)."""
    import argparse

    a = argparse.Namespace(config=None, task=None, algorithm=None, compressor=None, workers=None, seed=None,
                           out=None, overwrite=False, rounds=None, eval_every=None, procs=2, until=None, engine=None,
                           sets=["timeout=60", "threads=1"])
    assert _resume_changes(a) == {"procs": 2, "timeout": 60, "threads": 1}


# ----- faults while a run writes -----
@pytest.mark.parametrize("target,err,after", [("metrics.jsonl", errno.ENOSPC, 2),
                                              ("checkpoint-rank0.pt", errno.ENOSPC, 1),
                                              ("metrics.jsonl", errno.EROFS, 0)])
def test_a_failed_write_stops_with_one_line_keeps_whole_rows_and_the_checkpoint(
        tmp_path, monkeypatch, capsys, target, err, after):
    out = tmp_path / "R"
    fail_writes(monkeypatch, target, err, after)
    code = run_cli("--out", out)
    monkeypatch.undo()
    msg = capsys.readouterr().err.strip()
    assert code == 4 and len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
    assert f"cannot write {out / target}" in msg and errno.errorcode[err] in msg
    text = (out / "metrics.jsonl").read_text()
    assert text == "" or text.endswith("\n")  # whole rows only
    rows = rows_of(out)
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"
    assert not list(out.glob(".*.tmp"))
    if target == "checkpoint-rank0.pt":  # the first checkpoint (round 4) was written, the second failed
        assert "the checkpoint of round 4 is kept" in msg
    # the run continues exactly from what was kept
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    ref = distbo.run({"name": "quadratic", "d_x": 2, "d_y": 4}, workers=3, rounds=8, eval_every=2, seed=3)
    assert without_time(rows_of(out)) == without_time(ref.metrics)
    assert without_time(rows) == without_time(ref.metrics)[: len(rows)]


def test_sigterm_is_handled_like_ctrl_c(tmp_path, monkeypatch, capsys):
    out = tmp_path / "R"
    stop_in_round(monkeypatch, 6, _sigterm)
    assert run_cli("--out", out) == 143
    monkeypatch.undo()
    assert capsys.readouterr().err.strip() == "distbo: stopped by SIGTERM"
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert [r["round"] for r in rows_of(out)] == [0, 2, 4, 6, 8]


# ----- overwrite, splice, resume changes -----
def test_overwrite_clears_the_old_run_so_nothing_is_spliced(tmp_path, monkeypatch, capsys):
    out = finished(tmp_path)  # 8 rounds, checkpoints at 4 and 8
    (out / "notes.txt").write_text("mine")
    stop_in_round(monkeypatch, 3, _interrupt)  # before the new run's first checkpoint
    assert run_cli("--out", out, "--overwrite", "--set", "seed=5") == 130
    monkeypatch.undo()
    assert not checkpoint.path(out, 0).exists() and (out / "notes.txt").read_text() == "mine"
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert "from round 0" in capsys.readouterr().out  # not the old run's round 8
    ref = distbo.run({"name": "quadratic", "d_x": 2, "d_y": 4}, workers=3, rounds=8, eval_every=2, seed=5)
    assert without_time(rows_of(out)) == without_time(ref.metrics)


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path, monkeypatch, capsys):
    """The splice, forced: the old run's shard copied into a new run's folder."""
    old, new = finished(tmp_path), tmp_path / "new"
    stop_in_round(monkeypatch, 6, _interrupt)
    assert run_cli("--out", new, "--set", "seed=7") == 130
    monkeypatch.undo()
    shutil.copy(checkpoint.path(old, 0), checkpoint.path(new, 0))  # the old run's shard (seed 3)
    before = snapshot(new)
    assert main(["run", "--resume", str(new), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs from the configuration the checkpoint was written with in" in err
    assert "seed" in err.split(" in ", 1)[1].split(";")[0]  # the changed fields are named (with the steps
    # derived from the seed's problem)
    assert snapshot(new) == before


def test_the_resumable_fields_may_change(tmp_path, monkeypatch, capsys):
    out = interrupted(tmp_path, monkeypatch)  # stopped in round 6, checkpoint of round 4
    _edit_config(out, timeout=60.0, threads=1)
    assert main(["run", "--resume", str(out), "--rounds", "12", "--eval-every", "4", "--quiet"]) == 0
    assert [r["round"] for r in rows_of(out)] == [0, 2, 4, 8, 12]
    conf = json.loads((out / "config.json").read_text())
    assert conf["rounds"] == 12 and conf["eval_every"] == 4 and conf["timeout"] == 60.0
    assert main(["run", "--resume", str(out), "--rounds", "3", "--quiet"]) == 2
    assert "rounds: is 3, but the checkpoint has already done 12 rounds" in capsys.readouterr().err


def test_the_python_api_refuses_an_existing_run_unless_overwrite(tmp_path):
    kw = dict(workers=2, rounds=2, out=tmp_path / "R")
    distbo.run("quadratic", **kw)
    with pytest.raises(distbo.ConfigError, match="already holds a completed run"):
        distbo.run("quadratic", **kw)
    res = distbo.run("quadratic", overwrite=True, seed=1, **kw)
    assert json.loads((tmp_path / "R" / "config.json").read_text())["seed"] == 1 and res.status == "completed"


def test_fingerprint_ignores_exactly_the_resumable_fields():
    base = {"seed": 0, "rounds": 10, "task": {"name": "quadratic", "d_y": 4}, "procs": 1, "task_info": {"a": 1}}
    same = {**base, "rounds": 99, "eval_every": 3, "timeout": 5.0, "threads": 2, "until": "x<=1", "procs": 2}
    assert folders.fingerprint(base) == folders.fingerprint(same)
    for change in ({"seed": 1}, {"task": {"name": "quadratic", "d_y": 5}}, {"checkpoint_every": 3}):
        assert folders.fingerprint({**base, **change}) != folders.fingerprint(base)
    assert folders.changed_fields(base, {**base, "seed": 1, "task": {"name": "quadratic", "d_y": 5}}) == \
        ["seed", "task.d_y"]


def test_append_line_cuts_a_torn_row_back(tmp_path, monkeypatch):
    p = tmp_path / "m.jsonl"
    safeio.append_line(p, '{"round": 0}')
    fail_writes(monkeypatch, "m.jsonl", errno.ENOSPC)
    with pytest.raises(safeio.WriteError, match="No space left on device"):
        safeio.append_line(p, '{"round": 1, "long": "' + "x" * 100 + '"}')
    monkeypatch.undo()
    assert p.read_text() == '{"round": 0}\n'
