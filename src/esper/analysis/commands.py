"""`esper report` and `esper query`: argument parsing and the one-line error contract.

`add_analysis_commands` registers both on the `esper` sub-parsers; each sets `handler`,
a function of the parsed arguments returning the exit code. Bad input (no such run, no
event log, a missing optional extra, bad SQL, an unwritable output) is one line on
stderr, `esper <command>: error: ...`, and exit code 2. The plotting and SQL libraries
load only after the arguments and runs are known to be good.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from esper.analysis import AnalysisError, require_extra
from esper.analysis.runs import Run, load_runs

EXIT_USAGE = 2
REPORT_HTML = "report.html"
REPORT_PNG = "report.png"
#: The only suffixes --out may have (compared case-insensitively).
REPORT_SUFFIXES = (".html", ".png")

Handler = Callable[[argparse.Namespace], int]


def _guarded(prog: str, body: Handler) -> Handler:
    """`body` with AnalysisError turned into the one-line message and exit code 2."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except AnalysisError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return handler


def _note_skipped(prog: str, runs: Sequence[Run]) -> None:
    """Say on stderr which runs had damaged lines (skipped, so the numbers are partial)."""
    for run in runs:
        if run.lines_skipped:
            print(
                f"{prog}: note: {run.label}: {run.lines_skipped} damaged line(s) of "
                "events.jsonl skipped",
                file=sys.stderr,
            )


# --------------------------------------------------------------------------- report


def report_target(
    run_dirs: Sequence[Path], out: Path | None, png: bool
) -> tuple[Path, Literal["html", "png"]]:
    """Where the report goes and as what ("html" or "png").

    One run: `RUN_DIR/report.html` (or `report.png` with --png) unless --out says. Several
    runs: --out is required, so a comparison never overwrites one run's own report. An
    --out ending in .png means PNG, one ending in .html means HTML (either case); any
    other suffix is an error rather than a guess, so the report can never land on a run's
    recorded data (events.jsonl, run.json, checkpoint.pt) nor write HTML into a .pdf.
    --png with an --out that is not .png is an error.
    """
    if out is None:
        if len(run_dirs) > 1:
            raise AnalysisError("a report of several runs needs --out FILE (.html or .png)")
        return run_dirs[0] / (REPORT_PNG if png else REPORT_HTML), "png" if png else "html"
    suffix = out.suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise AnalysisError(f"--out must end in .html or .png, not {out}")
    if suffix == ".png":
        return out, "png"
    if png:
        raise AnalysisError(f"--png writes a .png file, not {out}")
    return out, "html"


def run_report(args: argparse.Namespace) -> int:
    """`esper report`: render the runs' report and say where it went."""
    runs = load_runs(args.run_dirs)
    out, fmt = report_target([r.run_dir for r in runs], args.out, args.png)
    require_extra("matplotlib", "report")
    from esper.analysis.report import write_report

    write_report(runs, out, fmt)
    _note_skipped("esper report", runs)
    counts = "; ".join(
        f"{r.label}: {len(r.updates)} updates, {len(r.episodes)} episodes, "
        f"{len(r.explosions)} explosions"
        for r in runs
    )
    print(f"wrote {out} ({counts})")
    return 0


# --------------------------------------------------------------------------- query


def _cell(value: Any) -> str:
    """A value as the table shows it: NULL spelled out, floats to 6 significant digits."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_value(value: Any) -> Any:
    """JSON-ready value: Python's JSON numbers and NaN/Infinity tokens as in events.jsonl."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # Decimal, dates, lists: their text


def _write_text_rows(names: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    """CSV or a JSON array of objects, straight to stdout."""
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
    else:
        records = [{n: _json_value(v) for n, v in zip(names, row, strict=True)} for row in rows]
        json.dump(records, sys.stdout, allow_nan=True)
        sys.stdout.write("\n")
    sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit


def print_rows(names: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    """Write a query result to stdout as a Rich table, CSV or a JSON array of objects.

    A reader that closes the pipe early (`| head`) ends the command the same way for every
    format: the table is printed by Rich, which on a broken pipe points stdout at devnull
    and exits 1 with no traceback; CSV and JSON hand a broken pipe to that same handler.
    """
    from rich.console import Console

    if fmt in ("csv", "json"):
        try:
            _write_text_rows(names, rows, fmt)
        except BrokenPipeError:
            Console().on_broken_pipe()
    else:
        from rich.table import Table

        table = Table(show_lines=False, header_style="bold")
        for i, name in enumerate(names):
            numeric = all(_is_number(row[i]) for row in rows if row[i] is not None)
            table.add_column(name, justify="right" if numeric and rows else "left")
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        console = Console()
        console.print(table)
        console.print(f"{len(rows)} row{'' if len(rows) == 1 else 's'}", style="dim")


def split_query_args(items: Sequence[str], schema: bool) -> tuple[list[Path], str | None]:
    """RUN_DIR... and the SQL from the positionals (all run dirs with --schema)."""
    if schema:
        return [Path(p) for p in items], None
    if len(items) < 2:
        raise AnalysisError('give RUN_DIR [RUN_DIR ...] and then the SQL, e.g. "SELECT 1"')
    return [Path(p) for p in items[:-1]], items[-1]


def run_query(args: argparse.Namespace) -> int:
    """`esper query`: load the runs into DuckDB, run the SQL, print the result."""
    run_dirs, sql = split_query_args(args.items, args.schema)
    runs = load_runs(run_dirs)
    require_extra("duckdb", "query")
    from esper.analysis import query

    con = query.connect(runs)
    _note_skipped("esper query", runs)
    if sql is None:
        print_rows(["table", "column", "type"], query.schema(con), args.format)
        return 0
    names, rows = query.execute(con, sql)
    print_rows(names, rows, args.format)
    return 0


# --------------------------------------------------------------------------- wiring


def add_analysis_commands(subparsers: Any) -> None:
    """Register `report` and `query` on the `esper` sub-parsers (each sets `handler`)."""
    report_parser = subparsers.add_parser(
        "report",
        allow_abbrev=False,
        help="render a recorded run (or several side by side) to HTML or PNG",
        description="Render recorded runs to one self-contained HTML page (or a PNG).",
    )
    report_parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="recorded run directory"
    )
    report_parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help=f"output .html or .png file (default RUN_DIR/{REPORT_HTML}; needed for several runs)",
    )
    report_parser.add_argument("--png", action="store_true", help="write a PNG instead of HTML")
    report_parser.set_defaults(handler=_guarded("esper report", run_report))

    query_parser = subparsers.add_parser(
        "query",
        allow_abbrev=False,
        help="run SQL (DuckDB) over recorded runs",
        usage="%(prog)s [-h] [--csv | --json] [--schema] RUN_DIR [RUN_DIR ...] SQL",
        description=(
            "SQL over recorded runs. Tables: ppo_updates (one row per PPO update, a column "
            "per statistic, e.g. head_slot_ratio_max), episodes, explosions, events, runs. "
            "--schema lists every column. The SQL sees only these tables: it cannot read or "
            "write files."
        ),
    )
    query_parser.add_argument(
        "items", nargs="+", metavar="RUN_DIR|SQL", help="run directories, then the SQL (last)"
    )
    formats = query_parser.add_mutually_exclusive_group()
    formats.add_argument(
        "--csv", dest="format", action="store_const", const="csv", help="print CSV"
    )
    formats.add_argument(
        "--json", dest="format", action="store_const", const="json", help="print a JSON array"
    )
    query_parser.add_argument(
        "--schema", action="store_true", help="list the tables and their columns (no SQL)"
    )
    query_parser.set_defaults(handler=_guarded("esper query", run_query), format="table")
