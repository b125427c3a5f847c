"""ActionHeadsPanel: the TELE-151 per-head ratio table, one column per action head.

The heads are the run's (any number, any names, in the order the run declared them).
When they do not fit the width side by side, the panel wraps them into several tables
stacked one above the other, each with the row labels, and the dashboard's body scrolls.

The panel's whole point is to warn, so it never shows a reading it does not have: before
the first PPO update, and for a head no sample of the update used, every cell is a dim
dash rather than the schema's neutral 1.0 (which would otherwise read as healthy green).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from esper.sanctum.schema import SanctumSnapshot, TamiyoState
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import (
    CRITICAL,
    GLYPH_CRITICAL,
    GLYPH_HEALTHY,
    GLYPH_LATCHED,
    GLYPH_WARNING,
    HEALTHY,
    NO_DATA,
    WARNING,
    entropy_bar,
    fmt_percent,
    fmt_ratio,
    is_finite,
    no_value,
    ratio_color,
    ratio_text,
)
from esper.telemetry.heads import HeadStats

_SEVERITY = {NO_DATA: 0, HEALTHY: 1, WARNING: 2, CRITICAL: 3}
_GLYPHS = {HEALTHY: GLYPH_HEALTHY, WARNING: GLYPH_WARNING, CRITICAL: GLYPH_CRITICAL}


def measured_stats(tamiyo: TamiyoState, head: str) -> HeadStats | None:
    """The head's latest record if it is a reading: data arrived and a sample used it."""
    stats = tamiyo.stats(head)
    if not tamiyo.ppo_data_received or stats is None or stats.relevant == 0:
        return None
    return stats


def head_has_data(tamiyo: TamiyoState, head: str) -> bool:
    """Whether the latest update measured this head (data arrived and a sample used it)."""
    return measured_stats(tamiyo, head) is not None


def worst_color(*colors: str) -> str:
    """The most severe of several health colours."""
    return max(colors, key=_SEVERITY.__getitem__)


def head_health(tamiyo: TamiyoState, head: str) -> str:
    """A head's health colour from both ends of its ratio range, in the run's bands
    (NO_DATA when unmeasured)."""
    stats = measured_stats(tamiyo, head)
    if stats is None:
        return NO_DATA
    bands = tamiyo.bands
    return worst_color(ratio_color(stats.ratio_max, bands), ratio_color(stats.ratio_min, bands))


def head_state(tamiyo: TamiyoState, head: str) -> Text:
    """The state glyph: ✓ / ▲ / ✖ by health, ☢ once a NaN or Inf was latched, — unmeasured.

    A latch outranks everything after data arrived: it records that this run already saw a
    non-finite log-prob for the head, even if the latest update happened not to use it.
    """
    if not tamiyo.ppo_data_received:
        return no_value()
    state = tamiyo.head(head)
    if state.nan_latched or state.inf_latched:
        kind = "NaN" if state.nan_latched else "Inf"
        return Text(f"{GLYPH_LATCHED} {kind}", style=f"bold {CRITICAL}")
    health = head_health(tamiyo, head)
    if health == NO_DATA:
        return no_value()
    return Text(_GLYPHS[health], style=health)


def _entropy_cell(tamiyo: TamiyoState, head: str) -> Text:
    stats = tamiyo.stats(head)
    if not tamiyo.ppo_data_received or stats is None:
        return no_value()
    entropy = stats.entropy
    if not is_finite(entropy):
        return Text(f"{fmt_ratio(entropy)} {entropy_bar(entropy)}", style=CRITICAL)
    return Text.assemble(f"{entropy:.2f} ", (entropy_bar(entropy), "cyan"))


def _ratio_max_cell(tamiyo: TamiyoState, head: str) -> Text:
    stats = measured_stats(tamiyo, head)
    return ratio_text(None if stats is None else stats.ratio_max, tamiyo.bands)


def _ratio_min_cell(tamiyo: TamiyoState, head: str) -> Text:
    stats = measured_stats(tamiyo, head)
    if stats is None:
        return no_value()
    return Text(fmt_ratio(stats.ratio_min), style=ratio_color(stats.ratio_min, tamiyo.bands))


def _clip_cell(tamiyo: TamiyoState, head: str) -> Text:
    stats = measured_stats(tamiyo, head)
    if stats is None:
        return no_value()
    return Text(fmt_percent(stats.clip_fraction))


def _samples_cell(tamiyo: TamiyoState, head: str) -> Text:
    stats = tamiyo.stats(head)
    if not tamiyo.ppo_data_received or stats is None:
        return no_value()
    return Text(str(stats.relevant), style=NO_DATA if stats.relevant == 0 else "")


#: The table's rows: label and how to draw one head's cell.
ROWS = (
    ("entropy", _entropy_cell),
    ("ratio max", _ratio_max_cell),
    ("ratio min", _ratio_min_cell),
    ("clip frac", _clip_cell),
    ("samples", _samples_cell),
    ("state", head_state),
)


def status_line(snapshot: SanctumSnapshot) -> Text:
    """Which update the table shows, or why it shows nothing / something old."""
    t = snapshot.tamiyo
    if not t.ppo_data_received:
        return Text("waiting for the first PPO update", style=NO_DATA)
    batch = "?" if t.last_update_batch is None else str(t.last_update_batch)
    if snapshot.is_stale:
        return Text(
            f"STALE — last update from batch {batch} "
            f"({snapshot.progress.batches_done} batches done)",
            style=f"bold {WARNING} reverse",
        )
    return Text(f"PPO update {t.last_update_index} · batch {batch}", style=NO_DATA)


#: Width of the row-label column ("ratio max" and "clip frac" are the longest labels).
LABEL_WIDTH = max(len(label) for label, _ in ROWS)


def head_label(name: str, width: int) -> str:
    """A head's column title, broken over lines at its underscores when too narrow.

    Breaking "alpha_target" as "alpha_ / target" keeps it readable where letter-folding
    would give "alpha_t / arget"; a part still too long is hyphenated.
    """
    if len(name) <= width:
        return name
    width = max(2, width)
    parts = [part + "_" for part in name.split("_")]
    parts[-1] = parts[-1][:-1]
    lines: list[str] = []
    line = ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        while len(line) + len(part) > width:  # a part longer than a line: hyphenate
            cut = width - 1 - len(line)
            lines.append(f"{line}{part[:cut]}-")
            line, part = "", part[cut:]
        line += part
    return "\n".join([*lines, line] if line else lines)


#: Narrowest head column: "1.234" and a wrapped bar below it; narrower, heads wrap.
MIN_HEAD_COLUMN = 7


def head_column_width(total_width: int, columns: int) -> int:
    """Width each of `columns` equal head columns gets in a table `total_width` wide."""
    gaps = columns  # one separator space left of each head column
    return max(1, (total_width - LABEL_WIDTH - gaps) // columns)


def head_rows(names: Sequence[str], width: int) -> list[tuple[str, ...]]:
    """The heads split into as few tables as keep every column MIN_HEAD_COLUMN wide.

    Tables share the heads as evenly as possible (24 heads that fit 10 abreast make
    three tables of 8, not 10 + 10 + 4), in display order.
    """
    if not names:
        return []
    fit = max(1, (width - LABEL_WIDTH) // (MIN_HEAD_COLUMN + 1))
    tables = math.ceil(len(names) / fit)
    per_table = math.ceil(len(names) / tables)
    return [tuple(names[i : i + per_table]) for i in range(0, len(names), per_table)]


def heads_table(tamiyo: TamiyoState, width: int, names: Sequence[str] | None = None) -> Table:
    """One column per head (`names`, default all), one row per statistic, `width` wide."""
    heads = tamiyo.head_names if names is None else tuple(names)
    column_width = head_column_width(width, max(1, len(heads)))
    table = Table(
        box=box.SIMPLE_HEAD,
        expand=True,
        pad_edge=False,
        padding=0,  # the box's one-space column separator is the only gap
        show_edge=False,
    )
    table.add_column("", style="bold", no_wrap=True)
    for head in heads:
        table.add_column(head_label(head, column_width), justify="right", ratio=1)
    for label, cell in ROWS:
        table.add_row(label, *(cell(tamiyo, head) for head in heads))
    return table


def heads_tables(tamiyo: TamiyoState, width: int) -> list[Table]:
    """The run's heads as one table, or several stacked when they don't fit abreast."""
    return [heads_table(tamiyo, width, row) for row in head_rows(tamiyo.head_names, width)]


class HeadsTable:
    """Rich renderable that builds the table for the width the layout grants it."""

    def __init__(self, tamiyo: TamiyoState) -> None:
        self.tamiyo = tamiyo

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        tables = heads_tables(self.tamiyo, options.max_width)
        if not tables:
            yield Text("no heads declared yet", style=NO_DATA)
        for i, table in enumerate(tables):
            if i:
                yield Text("")  # a blank line between the rows of heads
            yield table


def render_action_heads(snapshot: SanctumSnapshot) -> RenderableType:
    """The panel's content: status line above the per-head table."""
    return Group(status_line(snapshot), HeadsTable(snapshot.tamiyo))


class ActionHeadsPanel(SnapshotPanel):
    """Per-head entropy, ratio max/min, clip fraction and state (TELE-151)."""

    BORDER_TITLE = "Action heads"
    WIDTH_ONLY = True

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.tamiyo, snapshot.progress.batches_done  # the latter for staleness

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_action_heads(snapshot)
