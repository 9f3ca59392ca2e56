"""distbo algorithms as a Flower app (``engine = "flower"``, docs/flower.md); needs ``pip install distbo[flower]``."""
from __future__ import annotations

from ..errors import ConfigError


def run_flower(raw, out, progress=False, problem=None):
    """Run a configuration through Flower (the apps live in flower/app.py, the runtimes in local.py)."""
    if problem is not None:
        raise ConfigError("engine", "flower runs registered tasks only (its nodes rebuild the task from the "
                          "configuration); use engine = 'sim' for a user-defined Problem")
    from ..config import check_run

    if check_run(raw).procs > 1:
        raise ConfigError("procs", "is torch.distributed; with engine = 'flower' the workers are hosted by "
                          "Flower nodes: set flower.nodes instead")
    try:
        from .local import run_flower as run
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("flwr"):
            raise
        raise ConfigError("engine", "flower needs the Flower package: pip install -e '.[flower]'") from None
    return run(raw, out, progress)
