"""Ratio-max history: one sparkline per head, and the joint, over recent PPO updates.

Heights and colours use the same log-deviation scale as the bars, so a flat low green
line is healthy and a tall red spike is the update where a head moved too far. The heads
are the run's; past HISTORY_ROWS of them they are laid out in several groups side by
side (as many as the width allows), so many heads don't push the panels below away.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from esper.sanctum.schema import SanctumSnapshot, TamiyoState
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import (
    BAND_STYLES,
    RATIO_BAR_FULL,
    TailSparkline,
    fmt_ratio,
    no_value,
)
from esper.telemetry.heads import RatioBands


def worst_ratio(values: Sequence[float]) -> float | None:
    """The value farthest from 1 in log space (non-finite counts as farthest); None if empty."""
    if not values:
        return None

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


Color = Callable[[float | None], str]


@functools.lru_cache(maxsize=8)
def band_colors(bands: RatioBands) -> tuple[Color, Color]:
    """(per-head, joint) colour functions of the run's bands, one pair per run's bands.

    The same function objects each redraw: the sparkline cells are remembered by colour
    function, so a new function per redraw would recolour every cell.
    """

    def head(v: float | None) -> str:
        return BAND_STYLES[bands.band(v)]

    def joint(v: float | None) -> str:
        return BAND_STYLES[bands.joint_band(v)]

    return head, joint


#: Rows of heads in one group before the heads spread over several groups side by side.
HISTORY_ROWS = 12
#: Narrowest a group may get (name, a short sparkline, the worst value).
MIN_GROUP_WIDTH = 30


def history_groups(head_count: int, width: int) -> int:
    """How many groups side by side: enough to keep HISTORY_ROWS rows, as the width allows."""
    wanted = math.ceil(head_count / HISTORY_ROWS)
    return max(1, min(wanted, width // MIN_GROUP_WIDTH))


def history_grid(
    tamiyo: TamiyoState, heads: Sequence[str], joint: bool, title: str = "ratio max per update"
) -> Table:
    """Name, sparkline and worst value of each head in `heads` (and of the joint)."""
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1, no_wrap=True, justify="right")
    grid.add_column(justify="right", no_wrap=True)
    grid.add_row(Text(""), Text(title, style="dim"), Text("worst", style="dim"))
    head_color, joint_color = band_colors(tamiyo.bands)
    for head in heads:
        history = tamiyo.head(head).ratio_max_history
        grid.add_row(head, *history_row(history, RATIO_BAR_FULL, head_color))
    if joint:
        history = tamiyo.joint_ratio_max_history
        grid.add_row("joint", *history_row(history, tamiyo.bands.joint_warning, joint_color))
    return grid


class RatioHistory:
    """Rich renderable laying the heads out in the groups the width allows."""

    def __init__(self, tamiyo: TamiyoState) -> None:
        self.tamiyo = tamiyo

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        names = self.tamiyo.head_names
        groups = history_groups(len(names), options.max_width)
        if groups == 1:
            yield history_grid(self.tamiyo, names, joint=True)
            return
        per_group = math.ceil(len(names) / groups)
        chunks = [names[i : i + per_group] for i in range(0, len(names), per_group)]
        outer = Table.grid(padding=(0, 2), expand=True)
        for _ in chunks:
            outer.add_column(ratio=1)
        outer.add_row(
            *(
                history_grid(self.tamiyo, chunk, joint=i == 0, title="ratio max")
                for i, chunk in enumerate(chunks)
            )
        )
        yield outer


def render_ratio_history(snapshot: SanctumSnapshot) -> RenderableType:
    """Per-head and joint ratio-max sparklines with the worst value of each."""
    return RatioHistory(snapshot.tamiyo)


class RatioHistoryPanel(SnapshotPanel):
    """Ratio max of every head and of the joint over the recent updates."""

    BORDER_TITLE = "Ratio max history"
    WIDTH_ONLY = True

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.tamiyo

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_ratio_history(snapshot)
