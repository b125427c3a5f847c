"""Ratio-max history: one sparkline per head, and the joint, over recent PPO updates.

Heights and colours use the same log-deviation scale as the bars, so a flat low green
line is healthy and a tall red spike is the update where a head moved too far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from esper.actions import HEAD_NAMES
from esper.sanctum.schema import SanctumSnapshot
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.heads import head_stats
from esper.sanctum.widgets.style import (
    JOINT_WARNING,
    RATIO_BAR_FULL,
    TailSparkline,
    fmt_ratio,
    joint_ratio_color,
    no_value,
    ratio_color,
)


def worst_ratio(values: Sequence[float]) -> float | None:
    """The value farthest from 1 in log space (non-finite counts as farthest); None if empty."""
    if not values:
        return None
    lo, hi = min(values), max(values)
    if lo > 0.0 and math.isfinite(sum(values)):  # every value finite and > 0: the fast path
        # |ln v| grows with v above 1 and shrinks below it: the worst is the max or the min;
        # on a tie, the one met first, as max() with a key returns.
        up, down = math.log(hi), -math.log(lo)
        if up != down:
            return hi if up > down else lo
        return hi if values.index(hi) < values.index(lo) else lo

    def badness(v: float) -> tuple[bool, float]:
        finite = math.isfinite(v) and v > 0.0
        return (not finite, abs(math.log(v)) if finite else 0.0)

    return max(values, key=badness)


def history_row(
    values: Sequence[float], full_at: float, color: Callable[[float | None], str]
) -> tuple[RenderableType, Text]:
    """Sparkline (newest at the right) and worst value of one history, dashes when empty."""
    worst = worst_ratio(values)
    if worst is None:
        return no_value(), no_value()
    spark = TailSparkline(values, full_at, color)
    return spark, Text(fmt_ratio(worst), style=color(worst))


def render_ratio_history(snapshot: SanctumSnapshot) -> RenderableType:
    """Per-head and joint ratio-max sparklines with the worst value of each."""
    t = snapshot.tamiyo
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1, no_wrap=True, justify="right")
    grid.add_column(justify="right", no_wrap=True)
    grid.add_row(Text(""), Text("ratio max per update", style="dim"), Text("worst", style="dim"))
    for head in HEAD_NAMES:
        history = head_stats(t, head).ratio_max_history
        grid.add_row(head, *history_row(history, RATIO_BAR_FULL, ratio_color))
    grid.add_row("joint", *history_row(t.joint_ratio_max_history, JOINT_WARNING, joint_ratio_color))
    return grid


class RatioHistoryPanel(SnapshotPanel):
    """Ratio max of every head and of the joint over the recent updates."""

    BORDER_TITLE = "Ratio max history"
    WIDTH_ONLY = True

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.tamiyo

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_ratio_history(snapshot)
