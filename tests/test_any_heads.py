"""Heads are data: a run with heads x, y, z and one with 24 heads, end to end.

Each run is recorded through the real emitter, hub and recorder, then read back by every
consumer through its command-line entry point: `sanctum DIR --screenshot`, `esper report`,
`esper query`, and the console's final per-head table. No consumer is told the heads:
they come from the run itself, so these tests pass with no special case for any set.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from synthetic_run import (
    MANY_HEADS,
    N_UPDATES,
    XYZ_HEADS,
    nan_head,
    ratio_max,
    record_synthetic_run,
    update_stats,
)

from esper.cli.console import head_table, update_line
from esper.cli.main import main as esper_main
from esper.cli.main import sanctum_main
from esper.telemetry.contracts import PPOUpdatePayload
from esper.telemetry.heads import flat_key

HEAD_SETS = {"xyz": XYZ_HEADS, "24": MANY_HEADS}


@pytest.fixture(scope="module", params=list(HEAD_SETS))
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    heads = HEAD_SETS[request.param]
    return record_synthetic_run(tmp_path_factory.mktemp(request.param) / "run", heads=heads)


def heads_of(run_dir: Path) -> tuple[str, ...]:
    return XYZ_HEADS if run_dir.parent.name.startswith("xyz") else MANY_HEADS


def test_sanctum_screenshot_shows_every_head(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shot.svg"
    assert sanctum_main([str(recorded), "--screenshot", str(out), "--size", "160x60"]) == 0
    assert "0 lines skipped" in capsys.readouterr().out
    text = html.unescape(out.read_text(encoding="utf-8")).replace("\xa0", " ")
    heads = heads_of(recorded)
    for head in heads:  # 160 columns: no name needs breaking
        assert f">{head}<" in text.replace(" ", "") or f" {head} " in text, head
    assert "PPO update 3 · batch 3" in text  # the last update's index, as `esper query` says
    assert "☢ NaN" in text  # the head that went NaN in update 2 stays latched


def test_esper_report_draws_every_head(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert esper_main(["report", str(recorded)]) == 0
    capsys.readouterr()
    page = (recorded / "report.html").read_text(encoding="utf-8")
    for head in heads_of(recorded):
        for stat in ("ratio_max", "entropy", "approx_kl", "clip_fraction"):
            assert f'id="run0-{stat}-{head}"' in page, (head, stat)


def test_esper_query_has_a_column_per_head_statistic(
    recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = heads_of(recorded)
    columns = ", ".join(flat_key(h, "ratio_max") for h in heads)
    sql = f"SELECT update_index, {columns} FROM ppo_updates ORDER BY update_index"
    assert esper_main(["query", str(recorded), sql, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["update_index"] for r in rows] == list(range(N_UPDATES))
    last = rows[-1]
    for head in heads:
        assert last[flat_key(head, "ratio_max")] == ratio_max(N_UPDATES - 1, head, heads)


@pytest.mark.parametrize("heads", list(HEAD_SETS.values()), ids=list(HEAD_SETS))
def test_console_lists_every_head_of_the_update(heads: tuple[str, ...]) -> None:
    payload = PPOUpdatePayload(update_index=2, stats=update_stats(2, heads))
    console = Console(width=120, color_system=None, file=io.StringIO())
    console.print(head_table(payload))
    rows = [line.split() for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    named = [row[1] for row in rows if len(row) > 2 and row[1] in heads]
    assert named == list(heads)  # one row a head, in the run's order
    line = update_line(payload)
    assert line.startswith("update    2 | worst head ") and f"{nan_head(heads)} nan" in line
