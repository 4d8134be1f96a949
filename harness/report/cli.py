"""The reporting subcommands: `table`, `report`, `compare`.

`add_commands(subparsers)` adds them to the harness CLI; each parser's `func(args)` returns the exit
code. Mistakes a user can fix (unknown run ids, bad lengths, unwritable paths) raise UserError,
which the harness CLI prints as one line. Warnings (damaged records, unreadable manifests) print as
one `warning: ...` line each; --quiet hides them. Shared flags (--results-dir, --quiet, --json,
--include) come from `harness.config.RunConfig`, the one source of defaults and help text.

--results-dir may also be a folder of run folders' folders (results/reference: one subfolder per
machine), read through `harness.store.run_folders`. Without --results-dir, when the default folder
holds no runs (a fresh clone), `table` and `report` read the committed reference results and say so
in one info line. With no runs to read in a folder the user named, they say which folders below hold
runs and where the committed reference results are (`no_runs_hint`).
`compare` takes a run id of --results-dir or the path of a run folder for each side.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import warnings
from pathlib import Path

from harness.config import add_arguments, parse_int_list, positive_float
from harness.errors import UserError

log = logging.getLogger(__name__)

# pandas, plotly and jinja2 are imported inside the commands: building the parser stays cheap for
# every other harness command.
FORMATS = ("markdown", "latex", "html")


def _length(args) -> int:
    lengths = parse_int_list("length", str(args.length))
    if len(lengths) > 1:  # the efficiency table is one length; the by-length tables show them all
        raise UserError(f"--length {args.length!r}: give one sequence length, e.g. --length 4096 "
                        f"(the by-length tables already show every measured length)")
    return lengths[0]


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def no_runs_hint(results_dir) -> str:
    """Where runs are when `results_dir` has none to read: its subfolders that hold run folders
    (give one, or their parent, as --results-dir), and the committed reference results."""
    from harness.store import folders_with_runs, reference_results, run_folders

    hints = []
    reference = reference_results()
    inside = (lambda f: f.resolve().is_relative_to(reference.resolve())) if reference else (lambda f: False)
    below = [f for f in folders_with_runs(results_dir) if not inside(f)]  # the reference is named below
    if below:
        hints.append("runs are in folders below it: " + ", ".join(_shown(f) for f in below[:6])
                     + (f" (and {len(below) - 6} more)" if len(below) > 6 else "")
                     + "; give one of them (or the folder holding them) as --results-dir")
    if reference is not None:
        newest = max(folders_with_runs(reference, depth=2), key=lambda f: max(run_folders(f), default=""))
        hints.append(f"the committed reference results are in {_shown(reference)}: try --results-dir "
                     f"{_shown(newest)} (the newest machine) or --results-dir {_shown(reference)} (all)")
    return "".join(f"; {h}" for h in hints)


class DefaultDir(str):
    """The --results-dir default: tells a folder the user named from the one nobody named."""


def _results_dir(args) -> str:
    """--results-dir; left at its default in a folder with no runs (a fresh clone), the committed
    reference results instead, said in one info line."""
    from harness.store import reference_results, run_folders

    if not isinstance(args.results_dir, DefaultDir) or run_folders(args.results_dir):
        return args.results_dir
    reference = reference_results()
    if reference is None:
        return args.results_dir
    log.info("no runs in %s: showing the committed reference results in %s (give --results-dir to choose)",
             args.results_dir, _shown(reference))
    return str(reference)


def _prepare(command):
    """Shared start of the report commands: no warnings with --quiet, and the --include files
    imported as `run` imports them (a missing file is a one-line error)."""
    @functools.wraps(command)
    def wrapped(args) -> int:
        with warnings.catch_warnings():
            if args.quiet:
                warnings.simplefilter("ignore")
            if args.include:  # importing the registry costs seconds: only when asked
                from harness.registry import load_plugins

                load_plugins(args.include)
            return command(args)
    return wrapped


def _runs_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", metavar="RUN", default=None,
                        help="run ids to include (space or comma separated; default: every run)")


def _length_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", default="4096", metavar="L",
                        help="sequence length of the efficiency table (default: 4096; the nearest "
                             "measured length is used, and stated, when it was not measured)")


def _aggregate_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aggregate", action="store_true",
                        help="pool a cell measured by several runs (median over runs, seeds pooled) "
                             "instead of showing the latest run's record")


@_prepare
def cmd_table(args) -> int:
    from harness.report import tables
    from harness.report.html import banner_line, resolve_runs
    from harness.report.render import render
    from harness.store import RunStore, load_records

    length = _length(args)
    args.results_dir = _results_dir(args)
    run_ids = resolve_runs(args.results_dir, args.runs)
    records = load_records(args.results_dir, run_ids or None)
    if records.empty:
        raise UserError(f"no results in {args.results_dir}: nothing to tabulate; run `python -m harness run` "
                        f"or `bench` first, or point --results-dir at a results folder"
                        + no_runs_hint(args.results_dir), exit_code=1)
    table_list = tables.all_tables(records, length=length, aggregate=args.aggregate)
    if args.json:
        print(json.dumps([tables.to_json(t) for t in table_list], indent=2))
        return 0
    if args.quiet:  # the tables were built (so bad records still fail), not printed
        return 0
    # load_records has already warned about unreadable manifests
    manifests = RunStore(args.results_dir).manifests(sorted(set(records["run_id"].dropna())), warn=False)
    banner = "\n".join(banner_line(m) for m in manifests)
    if args.format == "markdown":
        print("\n".join(f"> {line}" for line in banner.splitlines()) + "\n")
    elif args.format == "latex":
        print("\n".join(f"% {line}" for line in banner.splitlines()) + "\n")
    else:
        print("<!-- " + banner.replace("--", "- -") + " -->")
    print("\n".join(render(t, args.format) for t in table_list))
    return 0


@_prepare
def cmd_report(args) -> int:
    from harness.report.html import resolve_runs, write_report

    length = _length(args)
    args.results_dir = _results_dir(args)
    run_ids = resolve_runs(args.results_dir, args.runs)
    if not run_ids:
        raise UserError(f"no results in {args.results_dir}: nothing to report; run `python -m harness "
                        f"run` first or point --results-dir at a results folder"
                        + no_runs_hint(args.results_dir), exit_code=1)
    path = write_report(args.results_dir, run_ids, args.out, length=length, aggregate=args.aggregate,
                        quiet=args.quiet)
    print(json.dumps({"report": str(path)}) if args.json else path)
    return 0


@_prepare
def cmd_compare(args) -> int:
    from harness.report.compare import compare_runs, comparison_json, format_comparison

    threshold = positive_float("threshold", args.threshold)
    comparison = compare_runs(args.results_dir, args.run_a, args.run_b, threshold)
    if args.json:  # numbers and run ids: accuracy in points, times in ms, memory in bytes
        print(json.dumps(comparison_json(comparison, args.run_a, args.run_b, threshold), indent=2,
                         allow_nan=False, default=str))
    else:
        text = format_comparison(comparison, args.run_a, args.run_b, threshold)
        print(text.strip().splitlines()[-1] if args.quiet else text.rstrip())
    return 1 if comparison.n_regressions else 0


def _tables_command(subparsers, name: str, func, own_argument, **texts) -> None:
    """`table` or `report`: --runs, the command's own argument, --length, --aggregate, the shared
    flags; --results-dir's default marked as nobody's choice (`DefaultDir`)."""
    parser = subparsers.add_parser(name, **texts)
    _runs_arg(parser)
    own_argument(parser)
    _length_arg(parser)
    _aggregate_arg(parser)
    add_arguments(parser, name)
    parser.set_defaults(func=func, results_dir=DefaultDir(parser.get_default("results_dir")))


def add_commands(subparsers) -> None:
    """Add `table`, `report` and `compare` to the harness's argparse subparsers."""
    _tables_command(
        subparsers, "table", cmd_table,
        lambda p: p.add_argument("--format", choices=FORMATS, default="markdown",
                                 help="output format (default: markdown)"),
        help="print the accuracy, efficiency and by-length tables of stored results",
        description="Print LRA-style accuracy, paper Table 2 efficiency and speed/memory by length "
                    "tables from stored results (latest run per cell unless --aggregate).")
    _tables_command(
        subparsers, "report", cmd_report,
        lambda p: p.add_argument("--out", default=None, metavar="reports/NAME.html",
                                 help="where to write the report: an .html path outside --results-dir; NAME.md "
                                      "and NAME.tex go beside it (default: reports/report-<latest run id>.html)"),
        help="write a self-contained HTML report (plus .md and .tex tables)",
        description="Write a self-contained HTML report with environment banner, methodology, "
                    "tables, plots and provenance; Markdown and LaTeX copies of the tables go next to it.")

    compare = subparsers.add_parser(
        "compare", help="compare two runs cell by cell; exit 1 on a regression",
        description="Per matching cell: change of accuracy (absolute points, over seeds), median time "
                    "and peak memory from RUN_A to RUN_B with a verdict (better / worse / within "
                    "noise / not comparable). Accuracy regresses when the drop is significant "
                    "(Welch's t-test over seeds, p < 0.05; with one seed, beyond twice the test "
                    "sets' combined standard error); time when the p20-p80 intervals are apart and "
                    "the median is more than --threshold percent slower. Eager and compiled runs of "
                    "one architecture are compared, their differing settings named. The run settings "
                    "that differ (options, environment, protocol) are listed first as `key: old → new`. "
                    "A run is a run id of --results-dir or the path of a run folder, so runs of two "
                    "results folders compare directly. Exit status 1 on any regression.")
    compare.add_argument("run_a", metavar="RUN_A",
                         help="the baseline: a run id of --results-dir, or the path of a run folder")
    compare.add_argument("run_b", metavar="RUN_B",
                         help="the run to check against it: a run id of --results-dir, or the path of a run folder")
    compare.add_argument("--threshold", default=10.0, metavar="PCT",
                         help="speed and memory only: percent change beyond which 'worse' is a "
                              "regression (default: 10); accuracy is judged in points over seeds")
    add_arguments(compare, "compare")
    compare.set_defaults(func=cmd_compare)


def main(argv=None) -> int:
    """Stand-alone entry for these three commands (the harness CLI wires the same parsers)."""
    parser = argparse.ArgumentParser(prog="python -m harness.report.cli")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
