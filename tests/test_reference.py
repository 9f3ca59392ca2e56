"""The configuration reference (reference.py): `distbo list NAME`, `distbo list --markdown`, and the
committed docs/reference.md kept current."""
from pathlib import Path

import pytest
from pydantic import Field

from distbo import reference
from distbo.algorithms import ALGORITHMS
from distbo.cli import main
from distbo.registry import Params

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference.md"


def test_docs_reference_md_is_current():
    assert DOC.read_text() == reference.markdown(), (
        "docs/reference.md is out of date: run `distbo list --markdown > docs/reference.md`")


class _Schema(Params):
    step: float | None = Field(None, gt=0, le=1, json_schema_extra={"derived": "1/L_g"}, description="a step")
    count: int = Field(3, ge=1, description="how many")
    mode: str = Field("a", description="a mode")
    sizes: list[float] = Field([1.0, 0.5], min_length=1)


def test_a_field_row_has_type_default_or_rule_range_and_description():
    assert reference.field_rows(_Schema, "algorithm.") == [
        ["algorithm.step", "float", "derived: 1/L_g", "(0, 1]", "a step"],
        ["algorithm.count", "int", "3", ">= 1", "how many"],
        ["algorithm.mode", "str", '"a"', "", "a mode"],
        ["algorithm.sizes", "list of float", "[1, 0.5]", "at least 1 item", ""]]


def test_list_ef_soba_shows_theta_and_rho_and_what_it_accepts(capsys):
    assert main(["list", "ef-soba"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[4:]}
    fields = ALGORITHMS.get("ef-soba").params.model_fields
    for name in ("theta", "rho"):  # type, the schema's default (or its derived rule), range
        assert lines[name].split()[1] == "float" and "(0, 1]" in lines[name]
        assert reference.default_text(fields[name]) in lines[name]
    assert "compressors: exact, unbiased, contractive" in out


def test_what_an_algorithm_accepts_is_found_by_building_it():
    ok = reference.accepts("c-soba")  # C-SOBA averages compressed directions: unbiased ones only
    assert ok["exact"] and ok["unbiased"] and not ok["contractive"]
    assert all(reference.accepts("ef-soba")[k] for k in reference.PROBES)
    assert reference.accepts("soba")["clients.fraction < 1"] is False  # SOBA refuses what it would ignore
    assert reference.accepts("aggitd")["clients.resources < 1"] is False  # no sub-models in AggITD


@pytest.mark.parametrize("argv,needle", [
    (["list", "efsoba"], "did you mean 'ef-soba'"),
    (["list", "--bogus"], "unrecognized arguments"),
])
def test_list_bad_name_is_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_run_help_points_to_list(capsys):
    assert main(["run", "--help"]) == 0
    assert "distbo list ALGORITHM" in " ".join(capsys.readouterr().out.split())
