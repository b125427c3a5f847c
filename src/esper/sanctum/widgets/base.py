"""The one pattern every panel follows: keep the latest snapshot, redraw from it."""

from __future__ import annotations

from rich.console import RenderableType
from textual.widgets import Static

from esper.sanctum.schema import SanctumSnapshot


class SnapshotPanel(Static):
    """A Static whose content is a pure function of the latest snapshot.

    Subclasses implement `render_snapshot`; the widget only stores the snapshot and
    redraws, so every panel can be tested by rendering a snapshot without a running app.
    """

    def __init__(
        self,
        snapshot: SanctumSnapshot | None = None,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        self.snapshot = snapshot if snapshot is not None else SanctumSnapshot()
        super().__init__(self.render_snapshot(self.snapshot), id=id, classes=classes)

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        """The panel's content for `snapshot`."""
        raise NotImplementedError

    def update_snapshot(self, snapshot: SanctumSnapshot) -> None:
        """Show `snapshot`; a snapshot already shown (same object) costs nothing."""
        if snapshot is self.snapshot:
            return
        self.snapshot = snapshot
        self.redraw()

    def redraw(self) -> None:
        """Rebuild the content from the stored snapshot (e.g. after view options change)."""
        self.update(self.render_snapshot(self.snapshot))
