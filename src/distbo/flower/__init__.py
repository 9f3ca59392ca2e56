"""distbo algorithms as a Flower app (``engine = "flower"``, docs/flower.md); needs ``pip install distbo[flower]``."""
from __future__ import annotations

from ..errors import ConfigError


def run_flower(raw, out, progress=False, problem=None, overwrite=False):
    """Run a configuration through Flower (the apps live in flower/app.py, the runtimes in local.py);
    ``overwrite``: the old run in ``out`` is cleared once the run's own checks have passed."""
    from ..config import check_run

    check(check_run(raw), problem)
    try:
        from .local import run_flower as run
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("flwr"):
            raise
        raise ConfigError("engine", "flower needs the Flower package: pip install -e '.[flower]'") from None
    return run(raw, out, progress, overwrite)


def check(run, problem=None) -> None:
    """What engine = 'flower' cannot run, refused before anything starts (torch-free)."""
    if problem is not None:
        raise ConfigError("engine", "flower runs registered tasks only (its nodes rebuild the task from the "
                          "configuration); use engine = 'sim' for a user-defined Problem")
    if run.procs > 1:
        raise ConfigError("procs", "is torch.distributed; with engine = 'flower' the workers are hosted by "
                          "Flower nodes: set flower.nodes instead")
    nodes = run.flower.nodes or run.workers
    if run.workers % nodes:
        raise ConfigError("flower.nodes", f"{nodes} Flower nodes cannot share {run.workers} workers evenly; "
                          f"use a number of nodes that divides {run.workers}")
    if run.algorithm["name"] in ("rabo", "rafbo") and any(r < 1 for r in run.clients.resources):
        raise ConfigError("engine", f"flower cannot carry {run.algorithm['name']}'s sub-model messages "
                          f"(clients.resources {run.clients.resources} has levels below 1); use engine = 'sim', "
                          "or --procs for several processes")
