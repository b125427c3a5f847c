"""SQL over recorded runs: the tidy tables of `runs` as DuckDB tables, then any query.

The tables are built from `runs.load_run`, not from DuckDB's own JSON reader, so a
damaged line is skipped exactly as the dashboard skips it and every value is the
payload's. Values cross into DuckDB as one typed list per column (`UNNEST`), which keeps
NaN apart from NULL (numpy and JSON paths would merge them) and needs neither pandas
nor Arrow. Tables: `ppo_updates`, `episodes`, `explosions`, `events` (one row per event,
any type) and `runs` (one row per run). Requires the `query` extra (duckdb).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import duckdb

from esper.analysis import AnalysisError
from esper.analysis.runs import Column, Run, Table, concat, runs_table

#: SQL type of each column type.
SQL_TYPES: dict[type, str] = {float: "DOUBLE", int: "BIGINT", bool: "BOOLEAN", str: "VARCHAR"}


def _declaration(column: Column) -> str:
    null = "" if column.nullable else " NOT NULL"
    return f'"{column.name}" {SQL_TYPES[column.type]}{null}'


def create_table(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Create `table.name` with typed columns and insert every row in one statement."""
    con.execute(f'CREATE TABLE "{table.name}" ({", ".join(map(_declaration, table.columns))})')
    if not table.rows:
        return
    columns = [list(values) for values in zip(*table.rows, strict=True)]
    select = ", ".join(
        f"UNNEST(${i}::{SQL_TYPES[c.type]}[])" for i, c in enumerate(table.columns, start=1)
    )
    con.execute(f'INSERT INTO "{table.name}" SELECT {select}', columns)


#: BIGINT's range: a log line holding an int outside it (JSON allows any size) is skipped.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _fits(row: tuple[Any, ...], int_columns: Sequence[int]) -> bool:
    return all(row[i] is None or INT64_MIN <= row[i] <= INT64_MAX for i in int_columns)


def _without_huge_ints(table: Table) -> tuple[Table, set[Any]]:
    """`table` less its rows holding an int beyond 64 bits, and those rows' `seq` values."""
    ints = [i for i, c in enumerate(table.columns) if c.type is int]
    kept = [row for row in table.rows if _fits(row, ints)]
    if len(kept) == len(table.rows):
        return table, set()
    seq = table.names.index("seq") if "seq" in table.names else None
    dropped = {
        row[seq] if seq is not None else id(row) for row in table.rows if not _fits(row, ints)
    }
    return Table(table.name, table.columns, kept), dropped


def _checked_run(run: Run) -> Run:
    """`run` with every row an int64 column cannot hold skipped and counted, as the
    dashboard and the report skip a line they cannot use: one skipped line per event."""
    updates, episodes, explosions, events = (
        _without_huge_ints(table)
        for table in (run.updates, run.episodes, run.explosions, run.events)
    )
    dropped: set[Any] = updates[1] | episodes[1] | explosions[1] | events[1]
    if not dropped:
        return run
    run.stats.skipped += len(dropped)
    run.stats.malformed.append((0, f"{len(dropped)} event(s) hold an integer beyond 64 bits"))
    return dataclasses.replace(
        run,
        updates=updates[0],
        episodes=episodes[0],
        explosions=explosions[0],
        events=events[0],
    )


def tables(runs: Sequence[Run]) -> list[Table]:
    """The queryable tables of several runs, each run's rows after the previous run's."""
    runs = [_checked_run(r) for r in runs]
    return [
        concat([r.updates for r in runs]),
        concat([r.episodes for r in runs]),
        concat([r.explosions for r in runs]),
        concat([r.events for r in runs]),
        runs_table(runs),
    ]


def connect(runs: Sequence[Run]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database holding the tables of `runs`, cut off from files.

    The tables are filled from Python values, never from a file, so once they are in,
    file access is switched off and the configuration locked: a query cannot `COPY ... TO`
    over a run's events.jsonl, `ATTACH` a database, read another file or switch access
    back on. The query is a reader, like the dashboard and the report.
    """
    con = duckdb.connect(":memory:")
    for table in tables(runs):
        create_table(con, table)
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _one_line(message: str) -> str:
    """DuckDB's error text on one line, without its caret-diagram context lines."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept)


def execute(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql`; a bad query is an AnalysisError with DuckDB's reason.

    SQL holding no statement at all (empty, blank, only comments) is an error too: DuckDB
    runs it as nothing and returns no result object.
    """
    try:
        result = con.execute(sql)
        if result is None:
            raise AnalysisError('the SQL holds no statement; give one, e.g. "SELECT 1"')
        if result.description is None:  # a statement with no result set (e.g. CREATE VIEW)
            return [], []
        names = [d[0] for d in result.description]
        return names, result.fetchall()
    except duckdb.Error as exc:
        raise AnalysisError(_one_line(str(exc))) from None


def schema(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """(table, column, SQL type) of every table, for `esper query --schema`."""
    return con.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "ORDER BY table_name, ordinal_position"
    ).fetchall()
