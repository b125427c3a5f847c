"""A log recorded before heads became data still loads, renders and queries the same.

`data/pre_heads_as_data/` holds a run recorded by esper at commit 515288d, when every PPO
update was a flat object of the 8 heads x 7 statistics, and what that code showed for it
(`make_fixture.py` says how). The new code must show the same: the same dashboard SVGs,
the same SQL columns and rows. Two differences are intended and named here: the panel's
"PPO update N" now gives the update index (the old code gave the count, one more), and
an explosion's `driver` column may be NULL (a report where no head moved has no driver).
A third is new, not changed: the Host panel's line of recent returns beside the best so
far, which the old code did not have; the comparisons leave it out (`_as_old_code_drew`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from esper.analysis.runs import Table, load_run
from esper.morpho.actions import HEAD_NAMES
from esper.sanctum.aggregator import aggregate_file, replay_snapshots
from esper.sanctum.app import screenshot_svg
from esper.sanctum.schema import SanctumSnapshot
from esper.telemetry.recorder import EVENTS_FILE

FIXTURE = Path(__file__).parent / "data" / "pre_heads_as_data"
EXPECTED = FIXTURE / "expected"
#: The replay frame the old code rendered too (update 4: blueprint red, alpha_curve idle).
REPLAY_FRAME = 4


def _as_old_code_drew(snapshot: SanctumSnapshot) -> SanctumSnapshot:
    """The snapshot without the best return, so the Host panel omits the line it added."""
    assert snapshot.episodes.best_return is not None  # the new line is there to leave out
    episodes = dataclasses.replace(snapshot.episodes, best_return=None)
    return dataclasses.replace(snapshot, episodes=episodes)


def _same_svg(svg: str) -> str:
    """An SVG without the id Textual derives from its content hash."""
    return re.sub(r"terminal-\d+", "terminal", svg)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_old_log_renders_the_same_dashboard(size: tuple[int, int]) -> None:
    snapshot = aggregate_file(FIXTURE / EVENTS_FILE)
    assert snapshot.tamiyo.head_names == HEAD_NAMES  # declared by the old start event
    assert snapshot.lines_skipped == 0
    cols, rows = size
    old = (EXPECTED / f"dashboard_{cols}x{rows}.svg").read_text(encoding="utf-8")
    new = await screenshot_svg(_as_old_code_drew(snapshot), size=size)
    assert _same_svg(new) == _same_svg(old)


async def test_old_log_replays_the_same_but_names_the_update_by_its_index() -> None:
    frame = replay_snapshots(FIXTURE / EVENTS_FILE)[REPLAY_FRAME]
    assert (frame.tamiyo.last_update_index, frame.tamiyo.ppo_updates_count) == (4, 5)
    old = (EXPECTED / f"replay_frame_{REPLAY_FRAME}_120x40.svg").read_text(encoding="utf-8")
    assert "PPO&#160;update&#160;5&#160;·&#160;batch&#160;4" in old  # the count, off by one
    fixed = old.replace("PPO&#160;update&#160;5", "PPO&#160;update&#160;4")
    new = await screenshot_svg(_as_old_code_drew(frame), size=(120, 40))
    assert _same_svg(new) == _same_svg(fixed)


def _columns(table: Table) -> list[list[Any]]:
    return [[c.name, c.type.__name__, c.nullable] for c in table.columns]


def test_old_log_gives_the_same_tables() -> None:
    run = load_run(FIXTURE)
    assert run.head_names == HEAD_NAMES
    expected = json.loads((EXPECTED / "tables.json").read_text(encoding="utf-8"))
    updates, explosions = expected["ppo_updates"], expected["explosions"]
    assert _columns(run.updates) == updates["columns"]
    assert repr([list(r) for r in run.updates.rows]) == repr(updates["rows"])  # NaN too
    driver_now_nullable = [
        [name, tp, nullable or name == "driver"] for name, tp, nullable in explosions["columns"]
    ]
    assert _columns(run.explosions) == driver_now_nullable
    assert repr([list(r) for r in run.explosions.rows]) == repr(explosions["rows"])
