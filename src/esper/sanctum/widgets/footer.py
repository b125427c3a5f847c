"""The footer: how much telemetry was read, lost or skipped, and the keys."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text

from esper.sanctum.schema import SanctumSnapshot
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import NO_DATA, WARNING


def _counter(label: str, count: int, bad_if_nonzero: bool) -> Text:
    style = WARNING if bad_if_nonzero and count else ""
    return Text.assemble((f"{label} ", NO_DATA), (str(count), style))


def render_footer(snapshot: SanctumSnapshot, keys: str) -> RenderableType:
    """Counters first (lost data must be visible), key help last."""
    return Text("  ").join(
        [
            _counter("events read", snapshot.events_read, bad_if_nonzero=False),
            _counter("lines skipped", snapshot.lines_skipped, bad_if_nonzero=True),
            _counter("drops", snapshot.drops, bad_if_nonzero=True),
            Text(f"│ {keys}", style=NO_DATA),
        ]
    )


class StatusFooter(SnapshotPanel):
    """Events read, malformed lines skipped, events dropped, and the key bindings."""

    def __init__(
        self,
        snapshot: SanctumSnapshot | None = None,
        keys: str = "",
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        self.keys = keys
        super().__init__(snapshot, id=id, classes=classes)

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_footer(snapshot, self.keys)

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        return snapshot.events_read, snapshot.lines_skipped, snapshot.drops
