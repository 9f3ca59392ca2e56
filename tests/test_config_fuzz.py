"""Property: whatever TOML document and --set values a user gives, loading and checking the
configuration either succeeds or raises ConfigError (one line) — never anything else."""
import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distbo.algorithms import ALGORITHMS
from distbo.cli import one_line
from distbo.compressors import make_compressor
from distbo.config import apply_set, check_run, load_toml
from distbo.errors import ConfigError
from distbo.problems import TASKS
from distbo.registry import validate

KEYS = ["task", "algorithm", "compressor", "downlink", "workers", "rounds", "eval_every", "checkpoint_every",
        "seed", "procs", "timeout", "threads", "dtype", "clients", "name", "alpha", "beta", "d_x", "d_y",
        "fraction", "resources", "policy", "dataset", "noise"]
NAMES = ["quadratic", "hyperclean", "hyperrep", "soba", "ef-soba", "aggitd", "topk:0.1", "randk:3", "qsgd:4",
         "float32", "rolling", "identity"]
keys = st.sampled_from(KEYS) | st.sampled_from(KEYS) | st.text(max_size=8)
scalars = (st.integers() | st.integers(-3, 3) | st.floats() | st.booleans()
           | st.sampled_from(NAMES) | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(keys, inner, max_size=3), max_leaves=8)
documents = st.dictionaries(keys, values, max_size=6)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{_quote(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def _quote(s: str) -> str:
    """A JSON string is a TOML basic string (not escaping non-ASCII: JSON would write surrogate pairs)."""
    return json.dumps(s, ensure_ascii=False)


def toml_document(doc: dict) -> str:
    return "".join(f"{_quote(k)} = {toml_value(v)}\n" for k, v in doc.items())


set_items = st.builds(lambda k, v: f"{k}={toml_value(v)}", st.lists(keys, min_size=1, max_size=3).map(".".join),
                      values)  # a key of random text may hold '=', '.', or be empty
toml = documents.map(toml_document)
FOLDER = Path(tempfile.mkdtemp(prefix="distbo-fuzz-"))
atexit.register(shutil.rmtree, FOLDER, True)


def load_and_check(source, sets) -> None:
    """What `distbo run CONFIG --set ...` does before building anything."""
    path = FOLDER / "c.toml"
    path.write_bytes(source if isinstance(source, bytes) else source.encode("utf-8", "surrogatepass"))
    raw = load_toml(path)
    for item in sets:
        apply_set(raw, item)
    run = check_run(raw)
    alg = ALGORITHMS.get(run.algorithm["name"], "algorithm.name")
    validate(alg.params, {k: v for k, v in run.algorithm.items() if k != "name"}, "algorithm")
    task = TASKS.get(run.task["name"], "task.name")
    validate(task.params, {k: v for k, v in run.task.items() if k != "name"}, "task")
    make_compressor(run.compressor, "compressor")
    make_compressor(run.downlink, "downlink")


@settings(max_examples=80, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(toml, st.lists(set_items, max_size=3))
def test_only_config_errors_escape_the_loader(source, sets):
    try:
        load_and_check(source, sets)
    except ConfigError as exc:
        assert "\n" not in one_line(exc)  # a newline the user typed is shown escaped


@settings(max_examples=40, deadline=2000)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=40)), st.lists(st.text(max_size=20), max_size=2))
def test_any_file_and_any_set_text_is_at_most_a_config_error(source, sets):
    try:
        load_and_check(source, sets)
    except ConfigError:
        pass
