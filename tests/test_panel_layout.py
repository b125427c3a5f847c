"""A panel redraw that keeps its size skips the layout pass, and one that changes it does not."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text
from textual.app import App, ComposeResult

from esper.sanctum.schema import SanctumSnapshot
from esper.sanctum.widgets.base import RenderedOnce, SnapshotPanel


def _lines(n: int, tag: str = "x") -> Group:
    return Group(*(Text(f"{tag} line {i}") for i in range(n)))


def test_same_height_as_compares_lines_at_the_shown_width() -> None:
    console = Console(width=40, file=open("/dev/null", "w"))  # noqa: SIM115
    shown = RenderedOnce(_lines(2))
    assert not RenderedOnce(_lines(2)).same_height_as(shown)  # never drawn: unknown
    list(console.render(shown, console.options))
    assert shown.lines == 2
    assert RenderedOnce(_lines(2, "y")).same_height_as(shown)
    assert not RenderedOnce(_lines(3)).same_height_as(shown)
    wraps = RenderedOnce(Text("word " * 12))  # 60 cells at width 40: two lines
    assert wraps.same_height_as(shown) and wraps.lines == 2


class LinesPanel(SnapshotPanel):
    """As many lines as the snapshot has events read, each naming the count."""

    WIDTH_ONLY = True

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        n = snapshot.events_read
        return _lines(max(n, 1), f"n={n}")


class OneLinePanel(SnapshotPanel):
    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return Text(f"read {snapshot.events_read}")


class PanelApp(App[None]):
    CSS = "LinesPanel, OneLinePanel { height: auto; border: none; }"

    def compose(self) -> ComposeResult:
        yield LinesPanel(SanctumSnapshot(events_read=2))
        yield OneLinePanel(SanctumSnapshot(events_read=2))


async def test_layout_only_when_a_panel_changes_height() -> None:
    app = PanelApp()
    layouts: list[tuple[str, bool]] = []
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        for panel in app.query(SnapshotPanel):
            original = panel.update

            def spy(content: Any = "", *, layout: bool = True, _o: Any = original,
                    _n: str = type(panel).__name__) -> None:  # fmt: skip
                layouts.append((_n, layout))
                _o(content, layout=layout)

            panel.update = spy  # type: ignore[method-assign]
        lines, one = app.query_one(LinesPanel), app.query_one(OneLinePanel)
        assert lines.size.height == 2

        same = SanctumSnapshot(events_read=2, lines_skipped=1)  # a new snapshot, same size
        lines.snapshot = same
        one.snapshot = same
        await pilot.pause()
        assert ("LinesPanel", False) in layouts and ("OneLinePanel", False) in layouts
        assert "n=2 line 1" in app.export_screenshot().replace("&#160;", " ")

        layouts.clear()
        bigger = SanctumSnapshot(events_read=4)
        lines.snapshot = bigger
        one.snapshot = bigger
        await pilot.pause()
        assert layouts == [("LinesPanel", True), ("OneLinePanel", False)]
        assert lines.size.height == 4 and one.region.y == 4
        shown = app.export_screenshot().replace("&#160;", " ")
        assert "n=4 line 3" in shown and "read 4" in shown
