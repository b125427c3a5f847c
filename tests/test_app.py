"""SanctumApp under Textual's pilot: live polling, pause, quit, replay stepping, layouts."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import RenderableType
from textual.containers import VerticalScroll
from textual.geometry import Region
from textual.widget import Widget

from esper import __version__
from esper.morpho.actions import HEAD_NAMES, head_sizes
from esper.sanctum.aggregator import SanctumAggregator
from esper.sanctum.app import SanctumApp, render_screenshot, screenshot_svg
from esper.sanctum.schema import (
    EventLogEntry,
    HeadState,
    Progress,
    RunInfo,
    SanctumSnapshot,
    SlotState,
    TamiyoState,
)
from esper.sanctum.widgets import (
    ActionHeadsPanel,
    EventLogPanel,
    SanctumHeader,
    SnapshotPanel,
    StatusFooter,
)
from esper.sanctum.widgets.style import NO_VALUE
from esper.telemetry.contracts import (
    PPOUpdateSkipped,
    TelemetryEvent,
    TrainingFinished,
    TrainingStarted,
)
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import ExplosionReport, HeadStats, UpdateStats, explosion_shares

START = 1_000.0
RUN = RunInfo(run_id="run-7", task="spirals", episodes_total=40, n_envs=2, started_at=START)


def after_update(n: int, op_ratio: float, names: tuple[str, ...] = HEAD_NAMES) -> SanctumSnapshot:
    """The run after its n-th PPO update (batch n - 1), first head at `op_ratio`, others 1.05."""
    heads = {
        h: HeadState(
            HeadStats(
                ratio_max=op_ratio if i == 0 else 1.05, ratio_min=0.95, entropy=0.5, relevant=16
            )
        )
        for i, h in enumerate(names)
    }
    tamiyo = TamiyoState(
        head_names=names,
        heads=heads,
        update=UpdateStats(heads={}, joint_ratio_max=op_ratio * 1.05),
        ppo_updates_count=n,
        last_update_index=n - 1,
        last_update_batch=n - 1,
    )
    progress = Progress(episodes_done=2 * n, batches_done=n, last_event_time=START + 10.0 * n)
    events = tuple(EventLogEntry(START + 10.0 * i, "info", f"PPO update {i}") for i in range(n))
    return SanctumSnapshot(run=RUN, progress=progress, tamiyo=tamiyo, events=events)


BEFORE = SanctumSnapshot(run=RUN, progress=Progress(last_event_time=START), events_read=1)


class Feed:
    """A snapshot source the test advances by hand, counting how often it is polled."""

    def __init__(self, *snapshots: SanctumSnapshot) -> None:
        self.snapshots = snapshots
        self.index = 0
        self.calls = 0

    def __call__(self) -> SanctumSnapshot:
        self.calls += 1
        return self.snapshots[self.index]


def shown(widget: Widget) -> str:
    """The text a mounted widget currently draws, one line per row."""
    width, height = widget.outer_size
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, width, height)))


def fixed_clock() -> float:
    return START + 15.0


async def test_live_app_shows_each_ppo_update_as_it_is_polled() -> None:
    feed = Feed(BEFORE, after_update(1, 1.1), after_update(2, 1.6))
    app = SanctumApp(feed, refresh_interval=60.0, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        heads = app.query_one(ActionHeadsPanel)
        header = app.query_one(SanctumHeader)
        assert "waiting for the first PPO update" in shown(heads)  # polled once on mount
        assert "1.050" not in shown(heads)

        feed.index = 1
        app.poll()
        await pilot.pause()
        assert "1.100" in shown(heads) and "PPO updates 1" in shown(header)

        feed.index = 2
        app.poll()
        await pilot.pause()
        text = shown(heads)
        assert "1.600" in text and "1.100" not in text and "✖" in text
        assert "PPO updates 2" in shown(header) and "elapsed 0:00:15" in shown(header)


async def test_app_polls_the_source_on_its_interval() -> None:
    feed = Feed(BEFORE)
    app = SanctumApp(feed, refresh_interval=0.01, clock=fixed_clock)
    async with app.run_test() as pilot:
        for _ in range(500):  # generous bound; the test waits for polls, it does not time them
            if feed.calls >= 3:
                break
            await pilot.pause(0.01)
        assert feed.calls >= 3


async def test_q_quits() -> None:
    app = SanctumApp(Feed(BEFORE), clock=fixed_clock)
    async with app.run_test() as pilot:
        assert app.return_code is None
        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0


async def test_p_pauses_and_resumes_refresh() -> None:
    feed = Feed(BEFORE, after_update(1, 1.3))
    app = SanctumApp(feed, refresh_interval=60.0, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("p")
        feed.index = 1
        app.poll()
        await pilot.pause()
        assert "PAUSED" in shown(app.query_one(SanctumHeader))
        assert "waiting for the first PPO update" in shown(app.query_one(ActionHeadsPanel))

        await pilot.press("p")  # resuming fetches the latest snapshot at once
        await pilot.pause()
        assert "PAUSED" not in shown(app.query_one(SanctumHeader))
        assert "1.300" in shown(app.query_one(ActionHeadsPanel))


async def test_replay_steps_through_snapshots_without_polling() -> None:
    frames = [after_update(n, ratio) for n, ratio in ((1, 1.11), (2, 1.22), (3, 1.33))]
    source = Feed(frames[-1])
    app = SanctumApp(source, replay=frames, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        header = app.query_one(SanctumHeader)
        heads = app.query_one(ActionHeadsPanel)

        async def expect(keys: tuple[str, ...], position: int, ratio: str) -> None:
            await pilot.press(*keys)
            await pilot.pause()
            assert f"REPLAY {position}/3" in shown(header), keys
            assert ratio in shown(heads), keys

        await expect((), 3, "1.330")  # starts at the end: the whole history is on screen
        await expect(("b",), 2, "1.220")
        await expect(("left",), 1, "1.110")
        await expect(("left",), 1, "1.110")  # clamped at the first frame
        await expect(("n",), 2, "1.220")
        await expect(("right", "right"), 3, "1.330")  # clamped at the last frame
        await expect(("home",), 1, "1.110")
        await expect(("end",), 3, "1.330")
        assert source.calls == 0


async def test_replay_elapsed_time_comes_from_the_recorded_events() -> None:
    frames = [after_update(1, 1.1), after_update(2, 1.1)]
    app = SanctumApp(Feed(frames[-1]), replay=frames, clock=lambda: 9e9)
    async with app.run_test(size=(120, 40)) as pilot:
        header = app.query_one(SanctumHeader)
        assert "elapsed 0:00:20" in shown(header)
        await pilot.press("b")
        await pilot.pause()
        assert "elapsed 0:00:10" in shown(header)


# ---------------------------------------------------------------- reactive wiring


def count_renders(*panels: SnapshotPanel) -> dict[str, int]:
    """How often each panel builds its content from now on, by panel id."""
    counts = {str(panel.id): 0 for panel in panels}
    for panel in panels:
        original = panel.render_snapshot

        def counted(
            snapshot: SanctumSnapshot,
            _original: Callable[[SanctumSnapshot], RenderableType] = original,
            _id: str = str(panel.id),
        ) -> RenderableType:
            counts[_id] += 1
            return _original(snapshot)

        panel.render_snapshot = counted  # type: ignore[method-assign]
    return counts


async def test_assigning_the_app_snapshot_reaches_the_bound_panels() -> None:
    app = SanctumApp(Feed(BEFORE), refresh_interval=60.0, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        heads, header = app.query_one(ActionHeadsPanel), app.query_one(SanctumHeader)
        assert heads.snapshot is BEFORE and header.snapshot is BEFORE  # the mount's poll
        update = after_update(1, 1.234)
        app.snapshot = update
        await pilot.pause()
        assert heads.snapshot is update and header.snapshot is update
        assert all(panel.snapshot is update for panel in app.query(SnapshotPanel))
        assert "1.234" in shown(heads) and "PPO updates 1" in shown(header)


async def test_an_equal_new_snapshot_is_delivered_but_not_redrawn() -> None:
    """Every assignment reaches the panels (the app's reactive always updates); a panel
    whose drawn part is unchanged does not render it again."""
    update = after_update(1, 1.234)
    app = SanctumApp(Feed(update), refresh_interval=60.0, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        heads = app.query_one(ActionHeadsPanel)
        counts = count_renders(heads)
        again = replace(update)
        assert again == update and again is not update
        app.snapshot = again
        await pilot.pause()
        assert heads.snapshot is again and counts == {"heads": 0}
        assert "1.234" in shown(heads)


async def test_each_panel_renders_once_per_poll_when_snapshot_and_clock_both_move() -> None:
    """A poll renews the header's view (the clock) and its snapshot: one render, not two."""
    now = [START + 15.0]
    feed = Feed(BEFORE, after_update(1, 1.1), after_update(2, 1.6))
    app = SanctumApp(feed, refresh_interval=60.0, clock=lambda: now[0])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        header, heads = app.query_one(SanctumHeader), app.query_one(ActionHeadsPanel)
        counts = count_renders(header, heads)
        for index in (1, 2):
            feed.index, now[0] = index, now[0] + 1.0
            app.poll()
            await pilot.pause()
            assert counts == {"header": index, "heads": index}
        assert header.view.now == START + 17.0 and "elapsed 0:00:17" in shown(header)

        now[0] += 1.0  # the same snapshot, a second later: only the header changes
        app.poll()
        await pilot.pause()
        assert counts == {"header": 3, "heads": 2} and "elapsed 0:00:18" in shown(header)


async def test_paused_poll_assigns_nothing_and_resume_assigns_the_latest() -> None:
    feed = Feed(BEFORE, after_update(1, 1.3))
    app = SanctumApp(feed, refresh_interval=60.0, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        heads, header = app.query_one(ActionHeadsPanel), app.query_one(SanctumHeader)
        await pilot.press("p")
        assert app.paused and header.view.paused
        calls = feed.calls
        feed.index = 1
        app.poll()
        await pilot.pause()
        assert feed.calls == calls  # the source is not even asked
        assert app.snapshot is BEFORE and heads.snapshot is BEFORE
        assert "PAUSED" in shown(header)

        app.paused = False  # what the second p does; resuming polls at once
        await pilot.pause()
        assert app.snapshot is feed.snapshots[1] and heads.snapshot is feed.snapshots[1]
        assert not header.view.paused and "1.300" in shown(heads)


async def test_replay_actions_move_the_position_which_selects_the_snapshot() -> None:
    frames = [after_update(n, ratio) for n, ratio in ((1, 1.11), (2, 1.22), (3, 1.33))]
    app = SanctumApp(Feed(frames[-1]), replay=frames, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        heads, header = app.query_one(ActionHeadsPanel), app.query_one(SanctumHeader)

        async def expect(position: int) -> None:
            await pilot.pause()
            assert app.position == position
            assert app.snapshot is frames[position] and heads.snapshot is frames[position]
            assert header.view.replay == (position + 1, 3)
            assert f"1.{position + 1}{position + 1}0" in shown(heads)

        await expect(2)
        await pilot.press("b")
        await expect(1)
        await pilot.press("home")
        await expect(0)
        await pilot.press("left")  # clamped: stays on the first frame
        await expect(0)
        await pilot.press("end")
        await expect(2)
        app.position = 99  # assigned directly, the position is clamped as by the keys
        await expect(2)
        app.position = -4
        await expect(0)


class IntoAggregator:
    """Event sink that folds each event into an aggregator at once (no hub thread)."""

    def __init__(self, aggregator: SanctumAggregator) -> None:
        self.aggregator = aggregator

    def publish(self, event: TelemetryEvent) -> None:
        self.aggregator.handle_event(event)


def update_stats(
    ratios: dict[str, float],
    relevant: dict[str, int],
    explosion: ExplosionReport | None = None,
) -> UpdateStats:
    """What a PPO update returns for the given heads (the others neutral, unused)."""
    heads = {
        h: HeadStats(ratio_max=ratios.get(h, 1.0), relevant=relevant.get(h, 0)) for h in HEAD_NAMES
    }
    return UpdateStats(heads=heads, joint_ratio_max=1.0, epochs_run=4, explosion=explosion)


def skipped(emitter: TelemetryEmitter, batch: int) -> None:
    reason = "every minibatch non-finite"
    index = emitter.take_update_index()
    emitter.emit(PPOUpdateSkipped(reason=reason, batch=batch, update_index=index), batch=batch)


async def test_real_telemetry_through_the_aggregator_reaches_the_panels() -> None:
    aggregator = SanctumAggregator()
    ticks = iter(range(1_000, 2_000, 5))
    emitter = TelemetryEmitter(
        IntoAggregator(aggregator), "run-e2e", clock=lambda: float(next(ticks))
    )
    app = SanctumApp(aggregator.snapshot, refresh_interval=60.0, clock=lambda: 1_010.0)
    async with app.run_test(size=(120, 40)) as pilot:
        heads, header = app.query_one(ActionHeadsPanel), app.query_one(SanctumHeader)
        log = app.query_one(EventLogPanel)

        async def poll() -> None:
            app.poll()
            await pilot.pause()

        emitter.emit(
            TrainingStarted(
                config={},
                task="spirals",
                head_names=list(HEAD_NAMES),
                head_sizes=head_sizes(),
                episodes_total=8,
                n_envs=2,
                device="cpu",
                esper_version=__version__,
            )
        )
        await poll()
        assert "run run-e2e" in shown(header) and "task spirals" in shown(header)
        assert "waiting for the first PPO update" in shown(heads)

        # a WAIT-only batch: only op is relevant, so every other head must read "—"
        log_ratios = {"op": 0.2, "slot": 1.2}
        shares = explosion_shares(log_ratios)
        explosion = ExplosionReport(4.0, log_ratios, shares, "slot", hidden_by_heads=False)
        emit_update(emitter, update_stats({"op": 1.3}, {"op": 64}, explosion), batch=0)
        await poll()
        ratio_line = next(line for line in shown(heads).splitlines() if "ratio max" in line)
        assert ratio_line.split()[3:6] == ["1.300", "██░░░", NO_VALUE]
        assert ratio_line.count(NO_VALUE) == 7 and "1.000" not in ratio_line

        skipped(emitter, batch=1)
        skipped(emitter, batch=2)
        await poll()
        assert "STALE — last update from batch 0" in shown(heads)
        assert "driven by slot" in shown(log)

        emitter.emit(TrainingFinished(episodes=8, updates=1, wall_seconds=1.0, run_dir="r"))
        await poll()
        assert "FINISHED" in shown(header)


def busy_snapshot() -> SanctumSnapshot:
    """A snapshot filling every panel: slots, many events, histories, a stale update."""
    snap = after_update(12, 1.7)
    heads = {
        h: replace(s, ratio_max_history=tuple(1.0 + 0.05 * i for i in range(12)))
        for h, s in snap.tamiyo.heads.items()
    }
    events = tuple(
        EventLogEntry(START + i, "warning" if i % 5 == 0 else "info", f"event {i} " + "x" * 90)
        for i in range(60)
    )
    return replace(
        snap,
        tamiyo=replace(snap.tamiyo, heads=heads),
        progress=replace(snap.progress, batches_done=14),  # two batches past the update: stale
        slots=tuple(SlotState(i, "BLENDING", "WIDE_MLP", 0.5) for i in range(3)),
        events=events,
        events_read=500,
    )


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_layout_keeps_the_heads_table_whole_and_the_footer_visible(
    size: tuple[int, int],
) -> None:
    app = SanctumApp(Feed(busy_snapshot()), clock=fixed_clock)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        width, height = size
        heads = app.query_one(ActionHeadsPanel)
        assert heads.region.right <= width and heads.region.bottom <= height - 1
        text = shown(heads)
        assert "STALE — last update from batch 11" in text
        assert all(name[:5] in text for name in HEAD_NAMES)  # split over two lines if narrow
        assert "1.700" in text and "☢" not in text
        assert app.query_one(StatusFooter).region.y == height - 1
        assert "events read 500" in shown(app.query_one(StatusFooter))
        log = app.query_one(EventLogPanel)
        assert log.region.height >= 3 and "event 59" in shown(log)  # newest event shown


@pytest.mark.parametrize(
    ("count", "size"), [(1, (80, 24)), (3, (120, 40)), (24, (120, 40)), (32, (80, 24))]
)
async def test_any_number_of_heads_wraps_within_the_width(
    count: int, size: tuple[int, int]
) -> None:
    names = tuple(f"h{i}" for i in range(count))
    app = SanctumApp(Feed(after_update(3, 1.7, names)), clock=fixed_clock)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        width, height = size
        heads = app.query_one(ActionHeadsPanel)
        assert heads.region.right <= width
        words = shown(heads).split()
        assert all(words.count(name) == 1 for name in names)
        assert words.count("1.700") == 1 and words.count("1.050") == count - 1
        assert app.query_one(StatusFooter).region.y == height - 1


async def test_wide_terminal_fits_everything_without_scrolling() -> None:
    app = SanctumApp(Feed(busy_snapshot()), clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.query_one("#body", VerticalScroll).max_scroll_y == 0
        assert app.screen.has_class("-wide")


async def test_narrow_terminal_stacks_panels_and_scrolls_with_live_keys() -> None:
    app = SanctumApp(Feed(busy_snapshot()), clock=fixed_clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        body = app.query_one("#body", VerticalScroll)
        assert app.screen.has_class("-narrow") and body.max_scroll_y > 0
        await pilot.press("end")  # live: replay's end key falls through to scrolling
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y


async def test_header_shows_finished_and_failed_runs() -> None:
    done = after_update(3, 1.0)
    finished = replace(done, progress=replace(done.progress, finished=True))
    failed = replace(done, progress=replace(done.progress, failed=True, failure="loss is NaN"))
    feed = Feed(finished, failed)
    app = SanctumApp(feed, refresh_interval=60.0, clock=fixed_clock)
    async with app.run_test(size=(120, 40)) as pilot:
        assert "FINISHED" in shown(app.query_one(SanctumHeader))
        feed.index = 1
        app.poll()
        await pilot.pause()
        assert "FAILED: loss is NaN" in shown(app.query_one(SanctumHeader))


def _normalise(svg: str) -> str:
    return re.sub(r"terminal-\d+-", "terminal-", svg)


def test_render_screenshot_writes_a_deterministic_svg(tmp_path: Path) -> None:
    snap = after_update(2, 1.234)
    out = tmp_path / "shot.svg"
    render_screenshot(snap, out, size=(120, 40))
    svg = out.read_text(encoding="utf-8").replace("&#160;", " ")
    assert svg.startswith("<svg") and "1.234" in svg
    assert all(head in svg for head in HEAD_NAMES)
    assert "elapsed 0:00:20" in svg  # "now" is the last event: no wall clock involved
    again = tmp_path / "again.svg"
    render_screenshot(snap, again, size=(120, 40))
    assert _normalise(again.read_text(encoding="utf-8")) == _normalise(out.read_text("utf-8"))


async def test_screenshot_size_is_respected() -> None:
    svg = await screenshot_svg(after_update(1, 1.0), size=(80, 24))
    assert 'viewBox="0 0 994' in svg  # 80 columns at 12.2 px plus the window frame


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"refresh_interval": 0.0}, "refresh_interval"), ({"replay": []}, "at least one")],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SanctumApp(Feed(BEFORE), **kwargs)  # type: ignore[arg-type]


def test_dashboard_imports_no_torch() -> None:
    """`sanctum` must start fast anywhere a run directory is copied: torch stays out."""
    code = "import sys, esper.sanctum.app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_an_exit_before_the_app_runs_ends_it_at_once() -> None:
    """`esper ppo`'s SIGTERM handler calls `app.exit()`; a SIGTERM that lands before the
    dashboard's loop has started must still end the app, not leave it waiting for `q`."""
    app = SanctumApp(SanctumAggregator().snapshot)
    app.exit()
    # returns instead of running until a key is pressed (bounded, so a regression fails)
    asyncio.run(asyncio.wait_for(app.run_async(headless=True), timeout=10))
    assert app.return_code == 0
