"""The host: each slot's seed (stage, blueprint, alpha) and the latest episode outcome."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from esper.sanctum.schema import EpisodeStats, SanctumSnapshot, SlotState
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import (
    CRITICAL,
    HEALTHY,
    NO_DATA,
    NO_VALUE,
    fmt_percent,
    fraction_bar,
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
    """One slot: index, coloured stage, blueprint (dash if none), alpha."""
    return (
        Text(str(slot.index)),
        Text(slot.stage, style=STAGE_STYLES.get(slot.stage, "")),
        Text(slot.blueprint or NO_VALUE, style="" if slot.blueprint else NO_DATA),
        alpha_text(slot.alpha) if slot.stage != "DORMANT" else Text(NO_VALUE, style=NO_DATA),
    )


def _maybe(v: float | None, fmt: str) -> str:
    return NO_VALUE if v is None else format(v, fmt)


def episode_text(episodes: EpisodeStats) -> Text:
    """Latest and mean return, accuracy, and seed outcomes."""
    acc = episodes.last_accuracy
    accuracy = NO_VALUE if acc is None else fmt_percent(acc)
    return Text.assemble(
        ("return ", "bold"),
        f"{_maybe(episodes.last_return, '.3f')} (mean {_maybe(episodes.mean_return, '.3f')})",
        ("  acc ", "bold"),
        accuracy,
        ("\nseeds ", "bold"),
        f"grown {episodes.seeds_grown} · fossilized {episodes.seeds_fossilized}"
        f" · killed {episodes.seeds_killed}",
    )


def render_slots(snapshot: SanctumSnapshot) -> RenderableType:
    """Slot table above the episode summary."""
    if not snapshot.slots:
        slots: RenderableType = Text("no slots reported yet", style=NO_DATA)
    else:
        table = Table(box=box.SIMPLE_HEAD, expand=True, padding=0, show_edge=False)
        for title in ("#", "stage", "blueprint", "alpha"):
            table.add_column(title, no_wrap=True)
        for slot in sorted(snapshot.slots, key=lambda s: s.index):
            table.add_row(*slot_row(slot))
        slots = table
    return Group(slots, episode_text(snapshot.episodes))


class SlotsPanel(SnapshotPanel):
    """Stage, blueprint and alpha of each slot, plus episode outcomes."""

    BORDER_TITLE = "Host"

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_slots(snapshot)
