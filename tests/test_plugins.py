"""Entry points (registry.py): a package installed in the test session registers an algorithm, a
compressor and a task; ``distbo list`` shows them and ``distbo run`` runs them by name, in every
process of --procs; a broken entry point is one warning line and the rest still loads."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKAGE = {
    "algos.py": '''
from distbo.algorithms import ALGORITHMS, StepSizes
from distbo.algorithms.compression import ErrorFeedbackUplink
from distbo.algorithms.soba import SOBA


@ALGORITHMS.register("plug-ef", StepSizes, "SOBA with error feedback, from a plugin")
def _plug_ef(ctx, hp):
    return SOBA(ctx, hp, uplink=ErrorFeedbackUplink(ctx.compressor, None, ctx.problem.dtype))
''',
    "dup.py": '''
from distbo.algorithms import ALGORITHMS

ALGORITHMS.register("soba")(lambda ctx, hp: None)  # a built-in name: refused, the built-in stays
''',
    "comp.py": '''
import torch
from distbo.compressors import COMPRESSORS, Compressor


class Half(Compressor):
    kind = "contractive"

    def encode(self, u, keys):
        return {"values": (u.to(torch.float16), 16)}

    def decode(self, fields, d):
        return fields["values"][0].float()

    def delta(self, d):
        return 0.99


def register():
    COMPRESSORS.register("plug-half", summary="values in float16, 16 bits each")(lambda arg: Half())
''',
    "tasks.py": '''
from distbo.problems import TASKS
from distbo.problems.quadratic import Quadratic
from distbo.registry import Params


class Small(Params):
    d: int = 3


@TASKS.register("plug-quad", Small, "a small quadratic, from a plugin")
def _plug_quad(p, workers, seed, dtype):
    return Quadratic(workers=workers, d_x=p.d, d_y=p.d + 1, seed=seed, dtype=dtype)
''',
}
ENTRY_POINTS = """[distbo.algorithms]
plug-ef = distbo_test_plugin.algos
dup = distbo_test_plugin.dup

[distbo.compressors]
plug-half = distbo_test_plugin.comp:register

[distbo.tasks]
plug-quad = distbo_test_plugin.tasks
broken = distbo_test_plugin.no_such_module
"""


def install(where: Path) -> None:
    """The package and its metadata (a dist-info folder, as pip writes it) on a folder of sys.path."""
    pkg = where / "distbo_test_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in PACKAGE.items():
        (pkg / name).write_text(text)
    info = where / "distbo_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: distbo-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


LIST_AND_RUN = """
import sys
from distbo.cli import main
main(["list"])
print("---")
sys.exit(main(["run", "--task", "plug-quad", "--algorithm", "plug-ef", "--compressor", "plug-half", "--workers", "4",
               "--procs", "2", "--rounds", "20", "--out", "r", "--quiet"]))
"""


def test_a_plugin_package_is_listed_and_run_by_name(tmp_path):
    install(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(tmp_path)])}
    done = subprocess.run([sys.executable, "-c", LIST_AND_RUN], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("---")[0].splitlines()
    for name in ("plug-ef", "plug-half", "plug-quad"):
        line = next(line for line in listed if line.split()[:1] == [name])
        assert line.endswith("[plugin: distbo-test-plugin]"), line
    warning = [line for line in done.stderr.splitlines() if "broken" in line]
    assert len(warning) == 1 and "skipped the task plugin 'broken'" in warning[0] and "ModuleNotFoundError" in warning[0]
    assert sum("skipped the algorithm plugin 'dup'" in line and "'soba' is already registered" in line
               for line in done.stderr.splitlines()) == 1
    soba = next(line for line in listed if line.split()[:1] == ["soba"])
    assert "Dagreou" in soba and "plugin" not in soba
    assert not list((tmp_path / "r").glob(".lock-rank*"))  # both processes removed their lock files
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bits_up"] == 20 * 4 * 16 * (3 + 2 * 4)  # rounds x workers x 16 bits x (d_x + 2 d_y)
    assert rows[-1]["hypergrad_norm"] < 0.1 * rows[0]["hypergrad_norm"]
