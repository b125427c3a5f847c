"""The ratio-history panel's line-by-line drawing is segment for segment its Rich grid."""

from __future__ import annotations

import math

import pytest
from rich.console import Console
from rich.segment import Segment

from esper.actions import HEAD_NAMES
from esper.sanctum.schema import HeadStats, SanctumSnapshot, TamiyoState
from esper.sanctum.widgets.history import HistoryGrid, history_rows, history_table


def _snapshot(kind: str) -> SanctumSnapshot:
    if kind == "empty":
        return SanctumSnapshot()
    n = 150 if kind == "long" else 7
    heads = {
        h: HeadStats(
            ratio_max_history=tuple(1.0 + 0.9 * math.sin(i * (k + 1) / 7) ** 2 for i in range(n))
            + ((math.nan,) if h == "slot" else ())
            + ((math.inf,) if h == "style" else ()),
        )
        for k, h in enumerate(HEAD_NAMES)
    }
    joint = tuple(1.0 + i / n for i in range(n))
    return SanctumSnapshot(tamiyo=TamiyoState(heads=heads, joint_ratio_max_history=joint))


def _lines(console: Console, renderable: object, width: int) -> list[list[Segment]]:
    lines = console.render_lines(renderable, console.options.update_width(width))
    return [list(Segment.simplify(line)) for line in lines]


@pytest.mark.parametrize("kind", ["empty", "short", "long"])
def test_grid_draws_exactly_what_the_table_draws(kind: str) -> None:
    console = Console(width=220, color_system="truecolor", file=open("/dev/null", "w"))  # noqa: SIM115
    rows = history_rows(_snapshot(kind))
    for width in range(8, 220, 3):
        grid = _lines(console, HistoryGrid(rows), width)
        assert grid == _lines(console, history_table(rows), width), width
