"""The event log: the newest events that fit, newest last, coloured by severity."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.text import Text

from esper.sanctum.schema import EventLogEntry, SanctumSnapshot
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import CRITICAL, NO_DATA, WARNING, fmt_duration

SEVERITY_STYLES: dict[str, str] = {"info": "", "warning": WARNING, "error": f"bold {CRITICAL}"}
SEVERITY_GLYPHS: dict[str, str] = {"info": "·", "warning": "▲", "error": "✖"}


def event_time(timestamp: float, started_at: float | None) -> str:
    """Offset into the run (+H:MM:SS) when its start is known, else UTC time of day.

    Both are independent of the viewer's time zone, so a copied run reads the same anywhere.
    """
    if started_at is not None:
        return "+" + fmt_duration(timestamp - started_at)
    return time.strftime("%H:%M:%S", time.gmtime(timestamp))


def event_line(entry: EventLogEntry, started_at: float | None) -> Text:
    """One event on one line; long messages end in an ellipsis rather than wrapping."""
    style = SEVERITY_STYLES.get(entry.severity, "")
    glyph = SEVERITY_GLYPHS.get(entry.severity, "?")
    line = Text.assemble(
        (event_time(entry.timestamp, started_at), NO_DATA), " ", (f"{glyph} {entry.message}", style)
    )
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


class TailLines:
    """Rich renderable of one-line entries that keeps the last ones fitting the height.

    The log grows at the bottom; a fixed-height panel must drop the oldest lines, which
    plain cropping would keep. Lines are made only for the entries shown: the log holds
    `EVENT_LOG_LEN` entries and a panel shows a dozen, on every frame.
    """

    def __init__(
        self, entries: Sequence[EventLogEntry], line: Callable[[EventLogEntry], Text]
    ) -> None:
        self.entries = entries
        self.line = line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height
        shown = (
            self.entries if height is None else self.entries[max(0, len(self.entries) - height) :]
        )
        for entry in shown:
            yield self.line(entry)


def render_events(snapshot: SanctumSnapshot) -> RenderableType:
    """The event log, newest last."""
    if not snapshot.events:
        return Text("no events yet", style=NO_DATA)
    started = snapshot.run.started_at
    return TailLines(snapshot.events, lambda entry: event_line(entry, started))


class EventLogPanel(SnapshotPanel):
    """Recent events (warnings such as ratio explosions name the heads that drove them)."""

    BORDER_TITLE = "Events"

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.events, snapshot.run.started_at

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_events(snapshot)
