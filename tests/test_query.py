"""`esper query` and the tables under it: the same numbers as the aggregator, by SQL."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_run import (
    EXPLOSION_JOINT,
    EXPLOSION_UPDATE,
    HEAD_SETS,
    N_ENVS,
    N_EVENTS,
    N_UPDATES,
    NAN_AT,
    XYZ_HEADS,
    nan_head,
    ratio_max,
    record_synthetic_run,
)
from test_report import one_error_line

from esper.analysis import AnalysisError
from esper.analysis.runs import (
    HEAD_STATS,
    Table,
    load_run,
    load_runs,
    merged_columns,
    ratio_max_product,
    unique_labels,
    update_columns,
)
from esper.cli.main import main
from esper.morpho.actions import HEAD_NAMES
from esper.sanctum.aggregator import aggregate_file
from esper.telemetry.contracts import PPOUpdatePayload
from esper.telemetry.heads import HeadStats, UpdateStats, flat_key
from esper.telemetry.recorder import EVENTS_FILE

query = pytest.importorskip("esper.analysis.query")  # needs the `query` extra (duckdb)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_synthetic_run(tmp_path_factory.mktemp("query") / "run-a")


@pytest.fixture(scope="module")
def con(run_dir: Path) -> object:
    return query.connect(load_runs([run_dir]))


def sql(con: object, text: str) -> list[tuple[object, ...]]:
    return query.execute(con, text)[1]


def json_query(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["query", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_latest_matches_aggregator(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The latest update's per-head ratio max and joint, by SQL, equal the dashboard's.

    The heads are whatever the dashboard found in the run, so this holds for any set.
    """
    tamiyo = aggregate_file(run_dir / EVENTS_FILE).tamiyo
    assert tamiyo.ppo_data_received and tamiyo.head_names
    columns = {flat_key(h, "ratio_max"): h for h in tamiyo.head_names}
    (row,) = json_query(
        capsys,
        str(run_dir),
        f"SELECT {', '.join(columns)}, joint_ratio_max, update_index "
        "FROM ppo_updates ORDER BY update_index DESC LIMIT 1",
    )
    for name, head in columns.items():
        assert row[name] == tamiyo.ratio_max(head), name
    assert tamiyo.update is not None
    assert row["joint_ratio_max"] == tamiyo.update.joint_ratio_max
    assert row["update_index"] == tamiyo.last_update_index  # the panel's "PPO update N"


def test_query_gives_the_aggregators_numbers(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_latest_matches_aggregator(run_dir, capsys)


def test_tables_have_a_column_per_head_statistic(con: object) -> None:
    columns: dict[str, set[str]] = {}
    for table, column, _type in query.schema(con):
        columns.setdefault(table, set()).add(column)
    assert set(columns) == {"ppo_updates", "episodes", "explosions", "events", "runs"}
    expected = {flat_key(h, s) for h in HEAD_NAMES for s in HEAD_STATS}
    assert expected <= columns["ppo_updates"]
    assert {"run_id", "update_index", "batch", "timestamp", "joint_ratio_max"} <= columns[
        "ppo_updates"
    ]
    assert {flat_key(h, "share") for h in HEAD_NAMES} <= columns["explosions"]
    assert {"event_type", "seq", "timestamp", "run_id", "message"} <= columns["events"]


def test_row_counts_and_values_by_formula(con: object) -> None:
    counts = sql(
        con,
        "SELECT (SELECT count(*) FROM ppo_updates), (SELECT count(*) FROM episodes), "
        "(SELECT count(*) FROM explosions), (SELECT count(*) FROM events)",
    )
    assert counts == [(N_UPDATES, N_UPDATES * N_ENVS, 1, N_EVENTS)]
    rows = sql(con, "SELECT update_index, head_slot_ratio_max FROM ppo_updates ORDER BY 1")
    assert rows == [(k, ratio_max(k, "slot")) for k in range(N_UPDATES)]
    assert sql(con, "SELECT sum(episode_return), max(episode) FROM episodes") == [
        (pytest.approx(sum(0.25 * e - 0.5 for e in range(8))), 7)
    ]


def test_nan_stays_nan_and_absent_stays_null(con: object) -> None:
    update, head = NAN_AT
    ratio, nonfinite = flat_key(head, "ratio_max"), flat_key(head, "nonfinite")
    (row,) = sql(
        con,
        f"SELECT {ratio} IS NULL, isnan({ratio}), {nonfinite}, ratio_max_product "
        f"FROM ppo_updates WHERE update_index = {update}",
    )
    assert row[:3] == (False, True, 1) and math.isnan(row[3])
    assert sql(con, "SELECT update_index FROM ppo_updates WHERE mean_return IS NULL") == [(0,)]


def test_explosions_are_flattened_per_head(con: object) -> None:
    (row,) = sql(
        con,
        "SELECT update_index, joint_ratio_max, driver, hidden_by_heads, head_slot_share, "
        "head_slot_log_ratio, head_tempo_share, summary FROM explosions",
    )
    # Shares of the positive log-ratios 0.3 (op), 0.9 (slot), 0.1 (blueprint): slot 0.9/1.3.
    assert row[:6] == (
        EXPLOSION_UPDATE,
        EXPLOSION_JOINT,
        "slot",
        True,
        pytest.approx(0.9 / 1.3),
        0.9,
    )
    assert row[6] is None  # tempo took no part in the sample
    assert row[7].startswith(f"update {EXPLOSION_UPDATE}: joint 3.00 driven by slot (69%)")


def test_ratio_max_product_counts_only_relevant_heads() -> None:
    heads = {
        "op": HeadStats(ratio_max=1.2, relevant=5),
        "slot": HeadStats(ratio_max=1.5, relevant=2),
        "style": HeadStats(ratio_max=7.0),  # not relevant: left out
    }
    payload = PPOUpdatePayload(update_index=0, stats=UpdateStats(heads=heads))
    assert ratio_max_product(payload) == pytest.approx(1.8)
    idle = UpdateStats(heads={"x": HeadStats(ratio_max=3.0)})
    assert ratio_max_product(PPOUpdatePayload(update_index=0, stats=idle)) == 1.0


def test_two_runs_in_one_query(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = record_synthetic_run(tmp_path / "run-b", run_id="other")
    rows = json_query(
        capsys,
        str(run_dir),
        str(other),
        "SELECT run_id, count(*) AS n FROM ppo_updates GROUP BY run_id ORDER BY run_id",
    )
    assert rows == [{"run_id": "other", "n": N_UPDATES}, {"run_id": "synthetic", "n": N_UPDATES}]


def test_csv_round_trips_floats_exactly(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(run_dir), "SELECT head_op_ratio_max FROM ppo_updates", "--csv"]) == 0
    header, *rows = csv.reader(io.StringIO(capsys.readouterr().out))
    assert header == ["head_op_ratio_max"]
    assert [float(r[0]) for r in rows] == [ratio_max(k, "op") for k in range(N_UPDATES)]


def test_table_output_lists_rows(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(run_dir), "SELECT driver FROM explosions"]) == 0
    out = capsys.readouterr().out
    assert "driver" in out and "slot" in out and "1 row" in out


@pytest.mark.parametrize("fmt", [[], ["--csv"], ["--json"]], ids=["table", "csv", "json"])
def test_a_reader_closing_the_pipe_early_ends_the_query_quietly(
    fmt: list[str], run_dir: Path
) -> None:
    """`esper query ... | head -c 100`: every format exits 1 with nothing on stderr."""
    rows = "SELECT range AS x, 'padding to overflow the pipe' AS y FROM range(5000)"  # > 64 KiB
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "esper"), "query", str(run_dir), rows, *fmt],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(100)) == 100  # the reader takes a little and goes away
    proc.stdout.close()
    assert proc.wait(timeout=120) == 1
    assert proc.stderr.read().decode() == ""


def test_bad_sql_is_one_line_and_exit_2(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(run_dir), "SELEC * FROM ppo_updates"]) == 2
    assert "syntax error" in one_error_line(capsys, "query")
    assert main(["query", str(run_dir), "SELECT * FROM no_such_table"]) == 2
    assert "no_such_table" in one_error_line(capsys, "query")


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO '{run}/events.jsonl'",
        "COPY ppo_updates TO '{run}/run.json' (FORMAT json)",
        "COPY (SELECT 1) TO '{tmp}/new.csv'",
        "ATTACH '{tmp}/other.duckdb' AS other",
        "SELECT * FROM read_csv('{run}/run.json')",
        "SELECT * FROM '{run}/events.jsonl'",
        "SET enable_external_access = true",  # cannot be switched back on
        "SET lock_configuration = false",
    ],
)
def test_queries_cannot_touch_files(
    statement: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    sql = statement.format(run=run_dir, tmp=tmp_path)
    assert main(["query", str(run_dir), sql]) == 2
    one_error_line(capsys, "query")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert list(tmp_path.iterdir()) == []
    # The tables themselves still load and answer.
    assert main(["query", str(run_dir), "SELECT count(*) AS n FROM ppo_updates", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", str(N_UPDATES)]


@pytest.mark.parametrize("sql", ["", "   \n\t", "-- only a comment", "/* a comment */ ;"])
def test_sql_without_a_statement_is_one_line_and_exit_2(
    sql: str, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", str(run_dir), sql]) == 2
    assert "holds no statement" in one_error_line(capsys, "query")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["SELECT 1"], "give RUN_DIR"),
        (["/nonexistent/run", "SELECT 1"], "no run directory at /nonexistent/run"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", *args]) == 2
    assert fragment in one_error_line(capsys, "query")


def test_missing_duckdb_names_the_extra(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert main(["query", str(run_dir), "SELECT 1"]) == 2
    assert "pip install 'esper-ppo[query]'" in one_error_line(capsys, "query")


def test_damaged_lines_are_skipped_and_counted(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    lines = (run_dir / EVENTS_FILE).read_bytes().splitlines(keepends=True)
    garbage = [b"{not json\n", b'{"event_type": "PPO_UPDATE_COMPLETED"}\n', b"\xff\xfe\n"]
    torn = b'{"event_type":"EPISODE_COMP'
    (damaged / EVENTS_FILE).write_bytes(b"".join(lines[:5] + garbage + lines[5:]) + torn)
    run = load_run(damaged)
    assert run.lines_skipped == 4 and run.stats.torn_tail
    assert repr(run.updates.rows) == repr(load_run(run_dir).updates.rows)  # NaN != NaN
    assert_latest_matches_aggregator(damaged, capsys)
    assert main(["query", str(damaged), "SELECT lines_skipped FROM runs", "--csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["lines_skipped", "4"]
    assert "4 damaged line(s)" in captured.err


def test_labels_of_repeated_runs_are_numbered() -> None:
    assert unique_labels(["a", "b", "a", "a"]) == ["a", "b", "a (2)", "a (3)"]
    with pytest.raises(AnalysisError):
        load_runs([])


def test_a_real_training_run_queries_like_the_aggregator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One short real run (torch): the payloads PPOAgent writes load and match too."""
    torch = pytest.importorskip("torch")
    from esper.cli import main as cli

    run_dir = tmp_path / "real"
    args = ["ppo", "--task", "spirals", "--episodes", "2", "--episode-length", "3", "--no-tui"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny run: threads only contend with the other test worker
    try:
        assert cli.main([*args, "--run-dir", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    assert_latest_matches_aggregator(run_dir, capsys)


# ----------------------------------------------------------------------------- any heads


@pytest.mark.parametrize("heads", list(HEAD_SETS.values()), ids=list(HEAD_SETS))
def test_columns_are_the_runs_own_heads(
    heads: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = record_synthetic_run(tmp_path / "run", heads=heads)
    con = query.connect(load_runs([run_dir]))
    names = [n for t, n, _ in query.schema(con) if t == "ppo_updates"]
    per_head = [n for n in names if n.startswith("head_")]
    assert per_head == [flat_key(h, s) for h in heads for s in HEAD_STATS]  # nothing else
    shares = [n for t, n, _ in query.schema(con) if t == "explosions" and n.endswith("_share")]
    assert shares == [flat_key(h, "share") for h in heads]
    first = heads[0]
    rows = sql(con, f"SELECT update_index, {flat_key(first, 'ratio_max')} FROM ppo_updates")
    assert rows == [(k, ratio_max(k, first, heads)) for k in range(N_UPDATES)]
    nan = flat_key(nan_head(heads), "ratio_max")
    assert sql(con, f"SELECT update_index FROM ppo_updates WHERE isnan({nan})") == [(2,)]
    assert_latest_matches_aggregator(run_dir, capsys)


def test_runs_with_different_heads_share_one_table(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each run's head columns are NULL in the other run's rows; nothing is dropped."""
    xyz = record_synthetic_run(tmp_path / "xyz", run_id="xyz", heads=XYZ_HEADS)
    rows = json_query(
        capsys,
        str(run_dir),
        str(xyz),
        "SELECT run_id, head_op_ratio_max AS op, head_x_ratio_max AS x FROM ppo_updates "
        "WHERE update_index = 0 ORDER BY run_id",
    )
    assert rows == [
        {"run_id": "synthetic", "op": ratio_max(0, "op"), "x": None},
        {"run_id": "xyz", "op": None, "x": ratio_max(0, "x", XYZ_HEADS)},
    ]


def test_merged_columns_keep_heads_together_and_scalars_last() -> None:
    a = Table("ppo_updates", update_columns(("op", "slot")))
    b = Table("ppo_updates", update_columns(("x", "op")))
    merged = merged_columns([a, b])
    heads = [c.name.removesuffix("_ratio_max") for c in merged if c.name.endswith("_ratio_max")]
    assert heads == ["head_x", "head_op", "head_slot", "joint"]  # x before op, as in b
    nullable = {c.name: c.nullable for c in merged}
    assert nullable["head_x_relevant"] and nullable["head_slot_relevant"]  # one run lacks it
    assert not nullable["head_op_relevant"] and not nullable["joint_ratio_max"]
    assert [c.name for c in merged][-3:] == ["mean_return", "host_accuracy", "ratio_max_product"]


def test_an_integer_beyond_64_bits_is_skipped_and_counted_not_a_crash(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON allows any int and the contract takes it; BIGINT cannot: skip that line."""
    damaged = tmp_path / "huge"
    damaged.mkdir()
    lines = (run_dir / EVENTS_FILE).read_text().splitlines(keepends=True)
    episode = next(i for i, line in enumerate(lines) if '"EPISODE_COMPLETED"' in line)
    record = json.loads(lines[episode])
    record["data"]["length"] = 10**30
    lines[episode] = json.dumps(record) + "\n"
    (damaged / EVENTS_FILE).write_text("".join(lines))
    expected = len(load_run(run_dir).episodes.rows) - 1
    assert main(["query", str(damaged), "SELECT count(*) AS n FROM episodes", "--csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["n", str(expected)]
    assert "1 damaged line(s)" in captured.err and "Traceback" not in captured.err
    assert main(["query", str(damaged), "SELECT lines_skipped FROM runs", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["lines_skipped", "1"]
