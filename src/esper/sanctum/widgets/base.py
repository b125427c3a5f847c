"""The one pattern every panel follows: a reactive snapshot, and content drawn from it."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from esper.sanctum.schema import SanctumSnapshot


def _height_free(options: ConsoleOptions) -> ConsoleOptions:
    """`options` with the offered height left out (the cache key of `RenderedOnce`)."""
    return dataclasses.replace(options, height=None, max_height=0)


class RenderedOnce:
    """A Rich renderable whose lines depend on the width only, rendered once per width.

    Textual draws an auto-height panel twice per refresh, at one width: once to count its
    lines (layout) and once to paint them. Wrapping the panel's content here serves the
    second pass from the first; the segments are the very ones the content yields. Not for
    content that fits itself to the height it is offered.
    """

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable
        self._key: ConsoleOptions | None = None
        self._console: Console | None = None
        self._segments: list[Segment] = []

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.renderable)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._render(console, options)
        yield from self._segments

    def _render(self, console: Console, options: ConsoleOptions) -> None:
        key = _height_free(options)
        if key != self._key:
            self._segments = list(console.render(self.renderable, options))
            self._key, self._console = key, console

    @property
    def lines(self) -> int | None:
        """Lines of the last rendering (None before the first)."""
        if self._key is None:
            return None
        return sum(segment.text.count("\n") for segment in self._segments)

    def same_height_as(self, shown: RenderedOnce) -> bool:
        """Whether this content takes as many lines as `shown` did at `shown`'s width.

        Renders this content at that width, the rendering the next paint then reuses.
        """
        if shown._key is None or shown._console is None:
            return False
        self._render(shown._console, shown._key)
        return self.lines == shown.lines


class SnapshotPanel(Static):
    """A Static whose content is a pure function of its reactive `snapshot`.

    The app binds `snapshot` to its own (`data_bind`), so assigning the app's snapshot
    reaches every panel with no hand-written fan-out; a panel built alone (a test) is
    driven by assigning its `snapshot` directly. Subclasses implement `render_snapshot`,
    so every panel can also be tested by rendering a snapshot without a running app.

    Changes are coalesced: a watcher only schedules a redraw (`call_next`), which runs once
    for however many reactives changed in the meantime (the header's snapshot and view
    arrive together on each poll), so no panel renders twice for one frame. The redraw
    compares what the content depends on (`drawn`, plus any view of a subclass, see
    `_drawn_state`) with what it last drew: a live dashboard polls four times a second and
    most polls bring only lifecycle events, so most new snapshots cost a comparison and no
    render. A subclass whose content depends on the width alone sets `WIDTH_ONLY` so that
    each redraw renders it once, not twice (see `RenderedOnce`), and a redraw that keeps
    its number of lines skips the screen's layout pass (a tenth of a frame): only a panel
    whose height changes moves the others.
    """

    WIDTH_ONLY: ClassVar[bool] = False

    #: The snapshot shown. Every assignment reaches the watcher: the redraw compares the
    #: drawn parts, cheaper than comparing whole snapshots; repaint is the redraw's job.
    snapshot: reactive[SanctumSnapshot] = reactive(
        SanctumSnapshot, always_update=True, repaint=False, init=False
    )

    def __init__(
        self,
        snapshot: SanctumSnapshot | None = None,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        # The initial snapshot is drawn now, so the first frame is right before any binding
        # has delivered a value (a binding delivering the same one then costs nothing).
        super().__init__(id=id, classes=classes)
        if snapshot is not None:
            self.set_reactive(SnapshotPanel.snapshot, snapshot)
        self._redraw_pending = False
        self._drawn: object = None
        self._shown: RenderableType = ""
        self._draw()

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        """The panel's content for `snapshot`."""
        raise NotImplementedError

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        """Everything of `snapshot` that `render_snapshot` reads (compared by ==)."""
        return snapshot

    def _drawn_state(self) -> object:
        """Everything the content depends on now; a subclass with more reactives adds them."""
        return self.drawn(self.snapshot)

    def watch_snapshot(self) -> None:
        self._redraw_soon()

    def _redraw_soon(self) -> None:
        """Redraw once this panel's turn comes, however many changes arrive before it."""
        if not self._redraw_pending:
            self._redraw_pending = True
            self.call_next(self._redraw_if_changed)

    def _redraw_if_changed(self) -> None:
        self._redraw_pending = False
        if self._drawn_state() != self._drawn:
            self._draw()

    def _content(self) -> RenderableType:
        content = self.render_snapshot(self.snapshot)
        if self.WIDTH_ONLY and not isinstance(content, (str, Text)):
            return RenderedOnce(content)
        return content

    def _draw(self) -> None:
        """Rebuild the content from the current reactives and show it."""
        shown, content = self._shown, self._content()
        self._shown, self._drawn = content, self._drawn_state()
        self.update(content, layout=not self._same_size(shown, content))

    def _same_size(self, shown: RenderableType, content: RenderableType) -> bool:
        """Whether `content` is sure to take the size `shown` took, so no layout is needed:
        a size the stylesheet fixes, one line of text that fits, or as many lines."""
        width, height = self.styles.width, self.styles.height
        if width is not None and height is not None and not (width.is_auto or height.is_auto):
            return True
        if isinstance(shown, Text) and isinstance(content, Text):
            room = self.content_size.width
            return all("\n" not in t.plain and 0 < t.cell_len <= room for t in (shown, content))
        if isinstance(shown, RenderedOnce) and isinstance(content, RenderedOnce):
            return content.same_height_as(shown)
        return False
