"""ActionHeadsPanel: the TELE-151 per-head ratio table, one column per action head.

The panel's whole point is to warn, so it never shows a reading it does not have: before
the first PPO update, and for a head no sample of the update used, every cell is a dim
dash rather than the schema's neutral 1.0 (which would otherwise read as healthy green).
"""

from __future__ import annotations

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from esper.actions import HEAD_NAMES
from esper.sanctum.schema import HeadStats, SanctumSnapshot, TamiyoState
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

_SEVERITY = {NO_DATA: 0, HEALTHY: 1, WARNING: 2, CRITICAL: 3}
_GLYPHS = {HEALTHY: GLYPH_HEALTHY, WARNING: GLYPH_WARNING, CRITICAL: GLYPH_CRITICAL}


def head_stats(tamiyo: TamiyoState, head: str) -> HeadStats:
    """The head's statistics, or empty ones if the snapshot lacks the head."""
    return tamiyo.heads.get(head, HeadStats())


def head_has_data(tamiyo: TamiyoState, head: str) -> bool:
    """Whether the latest update measured this head (data arrived and a sample used it)."""
    return tamiyo.ppo_data_received and head_stats(tamiyo, head).relevant > 0


def worst_color(*colors: str) -> str:
    """The most severe of several health colours."""
    return max(colors, key=_SEVERITY.__getitem__)


def head_health(tamiyo: TamiyoState, head: str) -> str:
    """A head's health colour from both ends of its ratio range (NO_DATA when unmeasured)."""
    if not head_has_data(tamiyo, head):
        return NO_DATA
    stats = head_stats(tamiyo, head)
    return worst_color(ratio_color(tamiyo.ratio_max(head)), ratio_color(stats.ratio_min))


def head_state(tamiyo: TamiyoState, head: str) -> Text:
    """The state glyph: ✓ / ▲ / ✖ by health, ☢ once a NaN or Inf was latched, — unmeasured.

    A latch outranks everything after data arrived: it records that this run already saw a
    non-finite log-prob for the head, even if the latest update happened not to use it.
    """
    if not tamiyo.ppo_data_received:
        return no_value()
    stats = head_stats(tamiyo, head)
    if stats.nan_latched or stats.inf_latched:
        kind = "NaN" if stats.nan_latched else "Inf"
        return Text(f"{GLYPH_LATCHED} {kind}", style=f"bold {CRITICAL}")
    health = head_health(tamiyo, head)
    if health == NO_DATA:
        return no_value()
    return Text(_GLYPHS[health], style=health)


def _entropy_cell(tamiyo: TamiyoState, head: str) -> Text:
    entropy = head_stats(tamiyo, head).entropy
    if not tamiyo.ppo_data_received or entropy is None:
        return no_value()
    if not is_finite(entropy):
        return Text(f"{fmt_ratio(entropy)} {entropy_bar(entropy)}", style=CRITICAL)
    return Text.assemble(f"{entropy:.2f} ", (entropy_bar(entropy), "cyan"))


def _ratio_max_cell(tamiyo: TamiyoState, head: str) -> Text:
    return ratio_text(tamiyo.ratio_max(head) if head_has_data(tamiyo, head) else None)


def _ratio_min_cell(tamiyo: TamiyoState, head: str) -> Text:
    if not head_has_data(tamiyo, head):
        return no_value()
    v = head_stats(tamiyo, head).ratio_min
    return Text(fmt_ratio(v), style=ratio_color(v))


def _clip_cell(tamiyo: TamiyoState, head: str) -> Text:
    if not head_has_data(tamiyo, head):
        return no_value()
    return Text(fmt_percent(head_stats(tamiyo, head).clip_fraction))


def _samples_cell(tamiyo: TamiyoState, head: str) -> Text:
    if not tamiyo.ppo_data_received:
        return no_value()
    relevant = head_stats(tamiyo, head).relevant
    return Text(str(relevant), style=NO_DATA if relevant == 0 else "")


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
    return Text(f"PPO update {t.ppo_updates_count} · batch {batch}", style=NO_DATA)


#: Width of the row-label column ("ratio max" and "clip frac" are the longest labels).
LABEL_WIDTH = max(len(label) for label, _ in ROWS)


def head_label(name: str, width: int) -> str:
    """A head's column title, broken over two lines at its underscore when too narrow.

    Breaking "alpha_target" as "alpha_ / target" keeps it readable where letter-folding
    would give "alpha_t / arget"; names without an underscore are hyphenated.
    """
    if len(name) <= width:
        return name
    first, sep, rest = name.partition("_")
    if sep:
        return f"{first}_\n{rest}"
    cut = max(1, width - 1)
    return f"{name[:cut]}-\n{name[cut:]}"


def head_column_width(total_width: int) -> int:
    """Width each of the eight equal head columns gets in a table `total_width` wide."""
    gaps = len(HEAD_NAMES)  # one separator space left of each head column
    return max(1, (total_width - LABEL_WIDTH - gaps) // len(HEAD_NAMES))


def heads_table(tamiyo: TamiyoState, width: int) -> Table:
    """One column per head in HEAD_NAMES order, one row per statistic, `width` cells wide."""
    column_width = head_column_width(width)
    table = Table(
        box=box.SIMPLE_HEAD,
        expand=True,
        pad_edge=False,
        padding=0,  # the box's one-space column separator is the only gap
        show_edge=False,
    )
    table.add_column("", style="bold", no_wrap=True)
    for head in HEAD_NAMES:
        table.add_column(head_label(head, column_width), justify="right", ratio=1)
    for label, cell in ROWS:
        table.add_row(label, *(cell(tamiyo, head) for head in HEAD_NAMES))
    return table


class HeadsTable:
    """Rich renderable that builds the table for the width the layout grants it."""

    def __init__(self, tamiyo: TamiyoState) -> None:
        self.tamiyo = tamiyo

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield heads_table(self.tamiyo, options.max_width)


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
