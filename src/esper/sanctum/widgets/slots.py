"""The host: each slot's seed (stage, blueprint, alpha) and the latest episode outcome."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from esper.sanctum.schema import EpisodeStats, SanctumSnapshot, SlotState
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import (
    CRITICAL,
    HEALTHY,
    NO_DATA,
    NO_VALUE,
    SPARK_LEVELS,
    fmt_percent,
    fraction_bar,
    no_value,
)

#: Stage colours: idle dim, growing in cool hues (fixed hex values, so no terminal theme can
#: turn them into the yellow/red of the health bands), kept green, removed red.
STAGE_STYLES: dict[str, str] = {
    "DORMANT": NO_DATA,
    "GERMINATED": "#7fdbca",
    "TRAINING": "#82aaff",
    "BLENDING": "#c792ea",
    "HOLDING": "#89ddff",
    "FOSSILIZED": HEALTHY,
    "KILLED": CRITICAL,
}


def alpha_text(alpha: float) -> Text:
    """Blend weight with a 5-cell bar (full at alpha = 1)."""
    return Text(f"{alpha:.2f} {fraction_bar(alpha)}")


def slot_row(slot: SlotState) -> tuple[Text, Text, Text, Text]:
    """One slot: index, coloured stage, blueprint and alpha (dashes for an empty slot).

    A DORMANT slot holds no seed; the blueprint of the seed it last held is not shown.
    """
    stage = Text(slot.stage, style=STAGE_STYLES.get(slot.stage, ""))
    if slot.stage == "DORMANT" or slot.blueprint is None:
        blueprint = no_value()
    else:
        blueprint = Text(slot.blueprint)
    alpha = no_value() if slot.stage == "DORMANT" else alpha_text(slot.alpha)
    return Text(str(slot.index)), stage, blueprint, alpha


def _maybe(v: float | None, fmt: str) -> str:
    return NO_VALUE if v is None else format(v, fmt)


def episode_text(episodes: EpisodeStats) -> Text:
    """Latest and mean return, and the latest final accuracy."""
    acc = episodes.last_accuracy
    accuracy = NO_VALUE if acc is None else fmt_percent(acc)
    return Text.assemble(
        ("return ", "bold"),
        f"{_maybe(episodes.last_return, '.3f')} (mean {_maybe(episodes.mean_return, '.3f')})",
        ("  acc ", "bold"),
        accuracy,
    )


#: Episodes the return sparkline shows (the most recent ones).
RETURN_SPARK_WIDTH = 24


def return_sparkline(values: Sequence[float], top: float) -> str:
    """Recent returns, one cell each, on a linear scale from their minimum to `top`.

    `top` is the best return so far, so a full cell means "as good as the run has ever
    been": a learning policy's line climbs and stays high; a flat low line means no
    learning. Non-finite returns draw as the lowest cell.
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return SPARK_LEVELS[0] * len(values)
    low, top_level = min(finite), len(SPARK_LEVELS) - 1
    span = top - low

    def level(v: float) -> int:
        if not math.isfinite(v):
            return 0
        if span <= 0:
            return top_level
        return round(top_level * min(max((v - low) / span, 0.0), 1.0))

    return "".join(SPARK_LEVELS[level(v)] for v in values)


def return_history_text(episodes: EpisodeStats, width: int = 80) -> Text | None:
    """The last episodes' returns as a sparkline beside the best return so far, in one line
    of `width` cells (the sparkline shows as many recent episodes as fit, at most
    RETURN_SPARK_WIDTH)."""
    if not episodes.return_history or episodes.best_return is None:
        return None
    best = f"{episodes.best_return:.3f}"
    room = width - len("recent ") - len("  best ") - len(best)
    recent = list(episodes.return_history[-max(1, min(RETURN_SPARK_WIDTH, room)) :])
    return Text.assemble(
        ("recent ", "bold"),
        return_sparkline(recent, episodes.best_return),
        ("  best ", "bold"),
        best,
    )


class ReturnHistory:
    """`return_history_text` for the width the layout grants (never wrapped)."""

    def __init__(self, episodes: EpisodeStats) -> None:
        self.episodes = episodes

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = return_history_text(self.episodes, options.max_width)
        if text is not None:
            yield text


def seeds_table(episodes: EpisodeStats) -> Table:
    """Seed outcomes over the run, counts under their names (no wrap splits a pair)."""
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style=NO_DATA)
    table.add_column("", style="bold")
    for title in ("grown", "fossilized", "killed"):
        table.add_column(title, justify="right")
    counts = (episodes.seeds_grown, episodes.seeds_fossilized, episodes.seeds_killed)
    table.add_row("seeds", *(str(count) for count in counts))
    return table


def render_slots(snapshot: SanctumSnapshot) -> RenderableType:
    """Slot table above the episode and seed summary.

    A run with no slot head (an SB3 or hand-written run) has no host: it says so, and
    shows seed counts only if its episodes reported any (zeros would read as a host that
    grew nothing).
    """
    history = ReturnHistory(snapshot.episodes)
    if snapshot.run.host_slots == 0:
        e = snapshot.episodes
        parts: list[RenderableType] = [
            Text("no host slots in this run", style=NO_DATA),
            episode_text(e),
            history,
        ]
        if e.seeds_grown or e.seeds_fossilized or e.seeds_killed:
            parts.append(seeds_table(e))
        return Group(*parts)
    if not snapshot.slots:
        slots: RenderableType = Text("no slots reported yet", style=NO_DATA)
    else:
        table = Table(box=box.SIMPLE_HEAD, expand=True, padding=0, show_edge=False)
        for title in ("#", "stage", "blueprint", "alpha"):
            table.add_column(title, no_wrap=True)
        for slot in sorted(snapshot.slots, key=lambda s: s.index):
            table.add_row(*slot_row(slot))
        slots = table
    return Group(slots, episode_text(snapshot.episodes), history, seeds_table(snapshot.episodes))


class SlotsPanel(SnapshotPanel):
    """Stage, blueprint and alpha of each slot, plus episode outcomes."""

    BORDER_TITLE = "Host"
    WIDTH_ONLY = True

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.slots, snapshot.episodes

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_slots(snapshot)
