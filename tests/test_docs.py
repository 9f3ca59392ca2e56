"""Every command and Python block in README.md and docs/ runs, so an example that diverges or a flag
that changed fails CI.

Fenced blocks tagged ``sh``/``bash``/``console``/``shell`` run line by line (``distbo ...`` in this
process through ``distbo.cli.main``, ``python ...`` as a subprocess); ``python`` blocks are executed.
All blocks of one file run in order in one scratch folder (holding links to configs/, examples/
and benchmarks/), so a later block may use a run folder an earlier one wrote. An HTML comment just
above a block steers it:

    <!-- doc-test: skip (why) -->                 not run (set-up, benchmarks, multi-machine jobs)
    <!-- doc-test: sub "--rounds 2000" "--rounds 50" -->   shorten before running (repeatable)
    <!-- doc-test: exit 2 -->                     every command of the block must exit with 2
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"sh", "bash", "console", "shell"}
BLOCK = re.compile(r"((?:^<!-- doc-test:[^\n]*-->\n(?:\s*\n)*)*)^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
DIRECTIVE = re.compile(r"<!-- doc-test:\s*(.*?)\s*-->")


def blocks(path: Path):
    """(line number, language, code, directives) of every fenced block of a Markdown file."""
    text = path.read_text()
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start(2)) + 1
        yield line, m.group(2), m.group(3), DIRECTIVE.findall(m.group(1))


def prepare(code: str, directives: list[str]) -> tuple[str | None, int]:
    """The code to run (None: skipped) and the exit code every command must return."""
    expect = 0
    for d in directives:
        if d.startswith("skip"):
            return None, 0
        if d.startswith("sub "):
            old, new = shlex.split(d[4:])
            assert old in code, f"doc-test sub: {old!r} is not in the block"
            code = code.replace(old, new)
        elif d.startswith("exit "):
            expect = int(d[5:])
        else:
            raise AssertionError(f"unknown doc-test directive {d!r}")
    return code, expect


def commands(code: str) -> list[list[str]]:
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def run_command(argv: list[str], where: str) -> int:
    from distbo import cli

    if argv[0] == "distbo":
        return cli.main(argv[1:])
    if argv[0] in ("python", "python3"):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        return subprocess.run([sys.executable, *argv[1:]], env=env, timeout=300).returncode
    raise AssertionError(f"{where}: cannot run '{argv[0]}' in the doc test; mark the block "
                         "<!-- doc-test: skip (why) --> or use distbo / python")


def sandbox(tmp: Path) -> Path:
    for name in ("configs", "examples", "benchmarks"):
        (tmp / name).symlink_to(ROOT / name)
    return tmp


@pytest.fixture
def own_registries():
    """What a page registers (docs/extending.md) is gone after it: other tests see the built-in tables."""
    from distbo.algorithms import ALGORITHMS
    from distbo.compressors import COMPRESSORS
    from distbo.problems import TASKS

    saved = [(r, dict(r._entries)) for r in (ALGORITHMS, COMPRESSORS, TASKS)]
    yield
    for r, entries in saved:
        r._entries = entries


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_doc_blocks_run(path: Path, tmp_path, monkeypatch, own_registries):
    monkeypatch.chdir(sandbox(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ran = 0
    for line, lang, code, directives in blocks(path):
        if lang not in SHELL | {"python"}:
            continue
        code, expect = prepare(code, directives)
        if code is None:
            continue
        where = f"{path.relative_to(ROOT)}:{line}"
        if lang == "python":
            exec(compile(code, where, "exec"), {"__name__": "__main__"})
        else:
            for argv in commands(code):
                rc = run_command(argv, where)
                assert rc == expect, f"{where}: '{shlex.join(argv)}' exited {rc}, expected {expect}"
        ran += 1
    if path.name == "README.md":
        assert ran > 0, "README.md should have runnable examples"


def test_directives_parse():
    code, expect = prepare("distbo run --rounds 2000\n", ['sub "--rounds 2000" "--rounds 5"', "exit 3"])
    assert code == "distbo run --rounds 5\n" and expect == 3
    assert prepare("x", ["skip (benchmark)"]) == (None, 0)
    assert commands("distbo run \\\n  --rounds 5   # comment\n\n$ distbo list\n") == [
        ["distbo", "run", "--rounds", "5"], ["distbo", "list"]]
