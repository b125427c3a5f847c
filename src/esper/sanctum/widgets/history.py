"""Ratio-max history: one sparkline per head, and the joint, over recent PPO updates.

Heights and colours use the same log-deviation scale as the bars, so a flat low green
line is healthy and a tall red spike is the update where a head moved too far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
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


Row = tuple[Text, RenderableType, Text]


def history_rows(snapshot: SanctumSnapshot) -> list[Row]:
    """(label, sparkline, worst) of the header, every head and the joint."""
    t = snapshot.tamiyo
    rows: list[Row] = [
        (Text(""), Text("ratio max per update", style="dim"), Text("worst", style="dim"))
    ]
    for head in HEAD_NAMES:
        history = head_stats(t, head).ratio_max_history
        rows.append((Text(head), *history_row(history, RATIO_BAR_FULL, ratio_color)))
    joint = history_row(t.joint_ratio_max_history, JOINT_WARNING, joint_ratio_color)
    rows.append((Text("joint"), *joint))
    return rows


def history_table(rows: Sequence[Row]) -> Table:
    """The rows as a Rich grid: bold labels, sparklines filling the width, worst values."""
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1, no_wrap=True, justify="right")
    grid.add_column(justify="right", no_wrap=True)
    for row in rows:
        grid.add_row(*row)
    return grid


class HistoryGrid:
    """`history_table(rows)`, drawn line by line where everything fits (the usual case).

    Rich's Table measures and pads every cell through its general layout, a third of a
    dashboard frame's content cost; here the layout is known: label, a space, the
    sparkline right-aligned in the rest, a space, the worst value right-aligned. Widths
    where a column would have to shrink go to the Table, which knows how.
    """

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = rows

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, history_table(self.rows))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        label = max(row[0].cell_len for row in self.rows)
        worst = max(row[2].cell_len for row in self.rows)
        middle = width - label - worst - 2
        texts = [row[1] for row in self.rows if isinstance(row[1], Text)]
        if middle < max([1, *(t.cell_len for t in texts)]):
            yield history_table(self.rows)
            return
        for name, spark, value in self.rows:
            line = Text()
            line.append_text(_padded(name, label + 1, "left", "bold"))  # bold separator too
            if isinstance(spark, Text):
                line.append_text(_padded(spark, middle, "right"))
            else:
                (shown,) = spark.__rich_console__(console, options.update_width(middle))
                line.append_text(_padded(shown, middle, "right"))
            line.append(" ")
            line.append_text(_padded(value, worst, "right"))
            yield line


def _padded(text: Text, width: int, side: str, style: str = "") -> Text:
    """`text` styled `style` and padded to `width` cells on the other side with spaces in
    its own base style, as a table cell justifies it."""
    out = Text(style=style)
    gap = " " * (width - text.cell_len)
    if side == "right":
        out.append(gap, style=text.style)
    out.append_text(text)
    if side == "left":
        out.append(gap, style=text.style)
    return out


def render_ratio_history(snapshot: SanctumSnapshot) -> RenderableType:
    """Per-head and joint ratio-max sparklines with the worst value of each."""
    return HistoryGrid(history_rows(snapshot))


class RatioHistoryPanel(SnapshotPanel):
    """Ratio max of every head and of the joint over the recent updates."""

    BORDER_TITLE = "Ratio max history"
    WIDTH_ONLY = True

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.tamiyo

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_ratio_history(snapshot)
