"""Result commands: ``distbo plot``, ``distbo compare`` and ``distbo reproduce``.

Only argument handling lives here: run folders are read by rundirs.py, figures drawn by
plotting.py, tables built by tables.py and suites run by suites.py. They are imported inside the
commands, so that ``distbo run`` does not pay for matplotlib.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import command
from .errors import ConfigError


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by 'distbo run'")
    p.add_argument("--x", default="bits_up", help="x field: bits_up, rounds, wall_s or any metrics field")
    p.add_argument("--y", default="hypergrad_norm", help="y field: test_acc, upper_loss, hypergrad_norm, ...")
    p.add_argument("-o", "--out", required=True, help="image file to write (.png, .pdf, .svg)")
    p.add_argument("--xscale", choices=("auto", "linear", "log"), default="auto")
    p.add_argument("--yscale", choices=("auto", "linear", "log"), default="auto")
    p.add_argument("--title")
    p.add_argument("--dpi", type=int, default=100)


def plot_runs(paths: list[str], x: str, y: str, out: str | None = None, xscale: str = "auto",
              yscale: str = "auto", title: str | None = None, dpi: int = 100):
    """The figure of ``y`` against ``x`` for these run folders (written to ``out`` if given)."""
    from . import plotting, rundirs

    if out is not None:
        check_image_path(out)
    if not 0 < dpi <= MAX_DPI:
        raise ConfigError("--dpi", f"must be 1 .. {MAX_DPI} dots per inch, got {dpi}")
    runs = rundirs.load_all(paths)
    x, y = rundirs.field_name(runs, x, "--x"), rundirs.field_name(runs, y, "--y")
    fig = plotting.figure(runs, x, y, rundirs.labels(runs), xscale, yscale, title)
    if out is not None:
        plotting.save(fig, out, dpi)
    return fig


IMAGE_TYPES = (".png", ".pdf", ".svg", ".eps", ".ps")
MAX_DPI = 2400


def check_image_path(out: str) -> None:
    """-o must name an image type matplotlib writes, and not lie under a file."""
    from .folders import check_link, check_out

    suffix = Path(out).suffix.lower()
    if suffix not in IMAGE_TYPES:
        raise ConfigError("-o", f"cannot tell the image type of '{out}' ({suffix or 'no suffix'}); "
                          f"allowed: {', '.join(IMAGE_TYPES)}")
    check_out(Path(out).parent, "-o")
    check_link(Path(out), "-o")


@command("plot", "plot a metric against bits, rounds or time for several runs", _plot_args)
def cmd_plot(a: argparse.Namespace) -> int:
    plot_runs(a.runs, a.x, a.y, a.out, a.xscale, a.yscale, a.title, a.dpi)
    print(f"wrote {a.out}")
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by 'distbo run'")
    p.add_argument("--target", help="FIELD<=VALUE or FIELD>=VALUE (default: the best level every run reaches)")
    p.add_argument("--fields", help="comma-separated metrics fields to show (default: the quality metrics present)")
    p.add_argument("-o", "--out", action="append", default=[], metavar="FILE", help="write the table to FILE "
                   "(repeatable): .md for Markdown, .csv for CSV; a file distbo did not write is never replaced")
    p.add_argument("--csv", help="write the table as CSV to this file (as -o FILE.csv)")
    p.add_argument("--md", help="write the table as Markdown to this file (as -o FILE.md)")


def compare_runs(paths: list[str], target: str | None = None, fields: list[str] | None = None):
    """(header, rows, target) of the comparison table of these run folders."""
    from . import rundirs, tables

    runs = rundirs.load_all(paths)
    tgt = tables.parse_target(target) if target else tables.default_target(runs)
    if tgt is not None:
        rundirs.field_name(runs, tgt.field, "--target")
    if fields:
        fields = [rundirs.field_name(runs, f, "--fields") for f in fields]
    header, body = tables.build(runs, rundirs.labels(runs), tgt, fields)
    return header + ["folder"], [row + [str(r.path)] for row, r in zip(body, runs)], tgt


TABLE_TYPES = {".md": "to_markdown", ".csv": "to_csv"}


def table_files(a: argparse.Namespace) -> list[tuple[Path, str]]:
    """(file, tables.py writer) for each of -o/--out, --csv and --md, every one checked first."""
    from . import owned

    files = [(a.csv, "to_csv", "--csv")] if a.csv else []
    files += [(a.md, "to_markdown", "--md")] if a.md else []
    for p in a.out:
        kind = TABLE_TYPES.get(Path(p).suffix.lower())
        if kind is None:
            raise ConfigError("-o", f"cannot tell the table type of '{p}' ({Path(p).suffix or 'no suffix'}); "
                              f"allowed: {', '.join(TABLE_TYPES)}")
        files.append((p, kind, "-o"))
    return [(owned.check(p, flag), kind) for p, kind, flag in files]


@command("compare", "a table of final metrics, costs, and the cost to reach a target", _compare_args)
def cmd_compare(a: argparse.Namespace) -> int:
    from . import owned, tables

    files = table_files(a)  # before any work: a file distbo may not replace is refused at once
    fields = [f.strip() for f in a.fields.split(",") if f.strip()] if a.fields else None
    header, body, tgt = compare_runs(a.runs, a.target, fields)
    print(tables.to_text(header, body), end="")
    if tgt is not None and not a.target:
        print(f"target {tgt}: the best level every run reaches (set one with --target)")
    for path, kind in files:
        owned.write(path, getattr(tables, kind)(header, body))
        print(f"wrote {path}")
    return 0


def _reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="a suite in configs/suites (see --list)")
    p.add_argument("--out", help="output folder (default: runs/NAME)")
    p.add_argument("--list", action="store_true", help="list the suites")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--quick", action="store_true",
                   help="a scaled-down version for a first look (default output: runs/NAME-quick)")
    p.add_argument("--no-run", action="store_true", dest="no_run",
                   help="run nothing: draw the figures and tables from the runs already finished in the output folder")


@command("reproduce", "run a named suite of runs and draw its figure and table", _reproduce_args)
def cmd_reproduce(a: argparse.Namespace) -> int:
    from . import suites

    if a.list or not a.name:
        found = suites.describe_all()
        if not found:
            print("no suites found (looked for configs/suites/*.toml)")
        for name, desc in found:
            print(f"  {name:<20} {desc}")
        if not a.list:
            raise ConfigError("NAME", "give a suite name (listed above)")
        return 0
    if a.out is not None:
        from .folders import check_out

        check_out(a.out)  # before the suite's imports and runs
    suites.reproduce(a.name, a.out, progress=not a.quiet, quick=a.quick, run=not a.no_run)
    return 0
