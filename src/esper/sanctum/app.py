"""SanctumApp: the Textual dashboard that polls a snapshot source into its reactive state.

The app does no file I/O and knows nothing about telemetry events: it is handed a
callable that returns the latest `SanctumSnapshot` (live) or a sequence of snapshots
(replay). That keeps it testable with plain dataclasses and free of torch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive

from esper.sanctum.schema import SanctumSnapshot
from esper.sanctum.widgets import (
    ActionHeadsPanel,
    EventLogPanel,
    HeaderView,
    PPOHealthPanel,
    RatioHistoryPanel,
    SanctumHeader,
    SlotsPanel,
    StatusFooter,
)

Clock = Callable[[], float]
LIVE_KEYS = "q quit · p pause"
REPLAY_KEYS = "q quit · n/→ next · b/← previous · home/end"


class SanctumApp(App[None]):
    """Live or replayed view of one run's telemetry.

    Live: `source()` is polled every `refresh_interval` seconds (p pauses polling).
    Replay: `replay` holds one snapshot per step; n / right and b / left move through it,
    starting at the last step so the whole history is on screen; `source` is not polled.
    `clock` supplies "now" for elapsed time and silence detection; inject a fixed one for
    deterministic screenshots.

    The dashboard's state is four reactives, and the panels are bound to them in
    `compose`: polling and the actions only assign state, the watchers derive the rest
    (a replay position selects the snapshot, a snapshot or a pause renews the header's
    view) and the bindings carry it to the panels, which redraw what changed.
    """

    CSS_PATH = "sanctum.tcss"
    TITLE = "Sanctum"
    #: Narrow terminals stack the middle and bottom panels instead of placing them side by side.
    # Textual declares it on instances but reads the class's; a ClassVar says what we mean.
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (100, "-wide")]  # type: ignore[misc]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        # Operators expect Ctrl-C to stop a run; Textual's default only hints at ctrl+q.
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("p", "toggle_pause", "pause"),
        # Priority, or the focused scroll container would take the arrows and home/end;
        # check_action disables them when live so they fall through to scrolling again.
        Binding("n,right", "step(1)", "next", show=False, priority=True),
        Binding("b,left", "step(-1)", "previous", show=False, priority=True),
        Binding("home", "jump(0)", "first", show=False, priority=True),
        Binding("end", "jump(-1)", "last", show=False, priority=True),
    ]

    # No reactive repaints the app: that would repaint the whole screen on every poll.
    # The panels repaint themselves, and only when what they draw changed.

    #: The snapshot on screen. Every assignment counts, even of an equal snapshot or the
    #: same one (an idle run's aggregator hands back the one it built): the clock in the
    #: header moves on, and comparing whole snapshots here would cost what the panels'
    #: own comparison of their parts saves.
    snapshot: reactive[SanctumSnapshot] = reactive(
        SanctumSnapshot, always_update=True, repaint=False, init=False
    )
    #: Live only: polling is suspended, the screen holds still to be read.
    paused: reactive[bool] = reactive(False, repaint=False, init=False)
    #: Replay only: the index of the snapshot shown (clamped to the replay).
    position: reactive[int] = reactive(0, repaint=False, init=False)
    #: The dashboard's own state as the header draws it (clock, pause, replay position).
    view: reactive[HeaderView] = reactive(HeaderView, repaint=False, init=False)

    def __init__(
        self,
        source: Callable[[], SanctumSnapshot],
        refresh_interval: float = 0.25,
        title: str = "Sanctum",
        *,
        replay: Sequence[SanctumSnapshot] | None = None,
        clock: Clock = time.time,
    ) -> None:
        if refresh_interval <= 0:
            raise ValueError(f"refresh_interval must be > 0, got {refresh_interval}")
        if replay is not None and len(replay) == 0:
            raise ValueError("replay needs at least one snapshot")
        super().__init__()
        self.title = title
        self.source = source
        self.refresh_interval = refresh_interval
        self.replay = replay
        self.clock = clock
        # Initial values without watchers: there are no panels to update yet.
        if replay is not None:
            self.set_reactive(SanctumApp.position, len(replay) - 1)
            self.set_reactive(SanctumApp.snapshot, replay[-1])
        self.set_reactive(SanctumApp.view, self._view())

    @property
    def is_replay(self) -> bool:
        return self.replay is not None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Stepping exists only in replay, pausing only live."""
        if action in ("step", "jump"):
            return self.is_replay
        if action == "toggle_pause":
            return not self.is_replay
        return True

    def compose(self) -> ComposeResult:
        # Each panel starts from the current state (so the first frame is right) and is
        # bound to the app's reactives for every change after.
        snapshot = SanctumApp.snapshot
        yield SanctumHeader(self.snapshot, self.view, id="header").data_bind(
            snapshot=snapshot, view=SanctumApp.view
        )
        with VerticalScroll(id="body"):
            yield ActionHeadsPanel(self.snapshot, id="heads").data_bind(snapshot=snapshot)
            with Horizontal(id="middle"):
                yield PPOHealthPanel(self.snapshot, id="ppo").data_bind(snapshot=snapshot)
                yield RatioHistoryPanel(self.snapshot, id="history").data_bind(snapshot=snapshot)
            with Horizontal(id="bottom"):
                yield SlotsPanel(self.snapshot, id="slots").data_bind(snapshot=snapshot)
                yield EventLogPanel(self.snapshot, id="events").data_bind(snapshot=snapshot)
        keys = REPLAY_KEYS if self.is_replay else LIVE_KEYS
        yield StatusFooter(self.snapshot, keys, id="footer").data_bind(snapshot=snapshot)

    def on_mount(self) -> None:
        if not self.is_replay:
            self.poll()
            self.set_interval(self.refresh_interval, self.poll)

    def _view(self) -> HeaderView:
        if self.replay is not None:
            return HeaderView(paused=self.paused, replay=(self.position + 1, len(self.replay)))
        return HeaderView(now=self.clock(), paused=self.paused)

    def poll(self) -> None:
        """Fetch the latest snapshot from the source and show it, unless paused.

        A timer tick can land while the app shuts down and its panels are being removed;
        `is_running` turns False before that starts, so such a tick does nothing.
        """
        if self.is_running and not self.paused:
            self.snapshot = self.source()

    def watch_snapshot(self) -> None:
        """A new snapshot is a new moment: the header's clock and position follow it.

        Runs before the bindings pass the snapshot on, and the panels coalesce, so the
        header still draws once for both.
        """
        self.view = self._view()

    def watch_paused(self, paused: bool) -> None:
        """Show the pause at once; on resume, fetch the latest snapshot rather than wait."""
        self.view = self._view()
        if not paused:
            self.poll()

    def validate_position(self, position: int) -> int:
        """Clamp to the replay, so stepping past either end stays on it."""
        if self.replay is None:
            return 0
        return max(0, min(len(self.replay) - 1, position))

    def watch_position(self, position: int) -> None:
        """The replay position selects the snapshot shown."""
        if self.replay is not None:
            self.snapshot = self.replay[position]

    def action_toggle_pause(self) -> None:
        """Freeze a live display (polling stops) to read it; press again to resume."""
        self.paused = not self.paused

    def action_step(self, delta: int) -> None:
        """Move `delta` snapshots through the replay (clamped at both ends)."""
        self.position += delta

    def action_jump(self, position: int) -> None:
        """Go to a replay position; negative counts from the end."""
        assert self.replay is not None  # check_action enables jumping only in replay
        self.position = position % len(self.replay)


async def screenshot_svg(
    snapshot: SanctumSnapshot, size: tuple[int, int] = (120, 40), now: float | None = None
) -> str:
    """One headless frame of the dashboard showing `snapshot`, as SVG text.

    `now` defaults to the snapshot's last event time, so the same run renders the same
    picture whenever it is rendered (elapsed time ends at the last event).
    """
    at = now if now is not None else snapshot.progress.last_event_time
    app = SanctumApp(lambda: snapshot, clock=(lambda: at) if at is not None else time.time)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        return app.export_screenshot()


def render_screenshot(
    snapshot: SanctumSnapshot, path: str | Path, size: tuple[int, int] = (120, 40)
) -> None:
    """Render one frame of the dashboard to an SVG file (for `sanctum DIR --screenshot`)."""
    svg = asyncio.run(screenshot_svg(snapshot, size))
    Path(path).write_text(svg, encoding="utf-8")
