"""Flower's deployment runtime on this machine: a SuperLink and SuperNodes on 127.0.0.1, ``flwr run``.

``run_deployment`` starts ``flower-superlink`` and one ``flower-supernode`` per node, every
address on the loopback interface (127.0.0.1, free ports), with a private ``FLWR_HOME`` holding
the SuperLink connection; writes a Flower app folder (the pyproject of examples/flower with this
run's configuration) and submits it with ``flwr run --stream``. The ServerApp writes the run
folder; its metrics, summary and Flower byte counts are read back into a Result. Every process
started here is stopped (its process group) when the run ends, however it ends.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..comm.flower import NodeError
from ..errors import LaunchError
from ..errors import ConfigError

HOST = "127.0.0.1"  # never any other address
APP = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "distbo-run"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "distbo"

[tool.flwr.app.components]
serverapp = "distbo.flower.app:server_app"
clientapp = "distbo.flower.app:client_app"

[tool.flwr.app.config]
distbo = {config}
out = {out}
overwrite = {overwrite}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise ConfigError("engine", f"the Flower SuperLink did not listen on {HOST}:{port} "
                                  f"within {timeout:g} s") from None
            time.sleep(0.2)


def _bin(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


class Processes:
    """Processes started here, each in its own session, stopped together."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen([_bin(args[0]), *args[1:]], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run_deployment(raw: dict[str, Any], out: Path | None, progress: bool = False, overwrite: bool = False):
    from ..config import check_run
    from ..runner import Result

    run = check_run(raw)
    nodes = run.flower.nodes or run.workers
    tmp = Path(tempfile.mkdtemp(prefix="distbo-flower-"))
    keep = out is not None
    out = Path(out).absolute() if keep else tmp / "out"
    home, app = tmp / "home", tmp / "app"
    home.mkdir()
    app.mkdir()
    link = free_port()  # flwr 1.42 serves the Runtime, Control and Fleet APIs on one HTTP port
    (home / "config.toml").write_text(f'[superlink]\ndefault = "distbo-local"\n\n[superlink.distbo-local]\n'
                                      f'address = "{HOST}:{link}"\ninsecure = true\n')
    (app / "pyproject.toml").write_text(APP.format(config=json.dumps(json.dumps(raw)), out=json.dumps(str(out)),
                                                  overwrite=json.dumps(overwrite)))
    bindir = str(Path(sys.executable).parent)  # flower-superexec, flwr-serverapp, flwr-clientapp
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    procs = Processes(env, tmp)
    tic = time.perf_counter()
    try:
        procs.start("superlink", "flower-superlink", "--insecure", "--host", HOST, "--port", str(link))
        for j in range(nodes):
            procs.start(f"supernode{j}", "flower-supernode", "--insecure", "--superlink", f"{HOST}:{link}",
                        "--host", HOST, "--port", str(free_port()),
                        "--node-config", f"partition-id={j} num-partitions={nodes}")
        wait_for_port(link, run.timeout)
        limit = max(120.0, 30 * run.timeout)
        try:
            submit = subprocess.run([_bin("flwr"), "run", str(app), "distbo-local", "--stream"], env=env,
                                    capture_output=True, text=True, timeout=limit)
            (tmp / "flwr-run.log").write_text(submit.stdout + submit.stderr)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"the Flower run did not end within {limit:g} s; logs in {tmp}", None, 1) from None
    finally:
        procs.stop()
    seconds = time.perf_counter() - tic
    err = out / "error.txt"
    if err.is_file():  # the ServerApp's one line (a failing node names itself)
        line = err.read_text().strip()
        shutil.rmtree(tmp, ignore_errors=True)
        raise NodeError(line, None, 1)
    if not (out / "summary.json").is_file():
        raise LaunchError(f"the Flower deployment run wrote no results; logs in {tmp}", None, 1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    point = torch.load(out / "flower-point.pt", weights_only=True)
    extra = {"flower": {**json.loads((out / "flower.json").read_text()), "runtime": "deployment",
                        "total_s": round(seconds, 3)}}
    result = Result(rows, point["x"], point["y"], None, json.loads((out / "config.json").read_text()),
                    out if keep else None,
                    json.loads((out / "summary.json").read_text())["status"], extra)
    shutil.rmtree(tmp, ignore_errors=True)
    return result
