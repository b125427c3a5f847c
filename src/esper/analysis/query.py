"""SQL over recorded runs: the tidy tables of `runs` as DuckDB tables, then any query.

The tables are built from `runs.load_run`, not from DuckDB's own JSON reader, so a
damaged line is skipped exactly as the dashboard skips it and every value is the
payload's. Values cross into DuckDB as one typed list per column (`UNNEST`), which keeps
NaN apart from NULL (numpy and JSON paths would merge them) and needs neither pandas
nor Arrow. Tables: `ppo_updates`, `episodes`, `explosions`, `events` (one row per event,
any type) and `runs` (one row per run). Requires the `query` extra (duckdb).
"""

from __future__ import annotations

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


def tables(runs: Sequence[Run]) -> list[Table]:
    """The queryable tables of several runs, each run's rows after the previous run's."""
    return [
        concat([r.updates for r in runs]),
        concat([r.episodes for r in runs]),
        concat([r.explosions for r in runs]),
        concat([r.events for r in runs]),
        runs_table(runs),
    ]


def connect(runs: Sequence[Run]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database holding the tables of `runs`."""
    con = duckdb.connect(":memory:")
    for table in tables(runs):
        create_table(con, table)
    return con


def _one_line(message: str) -> str:
    """DuckDB's error text on one line, without its caret-diagram context lines."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept)


def execute(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql`; a bad query is an AnalysisError with DuckDB's reason."""
    try:
        result = con.execute(sql)
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
