"""The header line: which run, how far, how fast, and in which state the dashboard is."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.text import Text

from esper.sanctum.schema import SanctumSnapshot
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import CRITICAL, HEALTHY, NO_DATA, WARNING, fmt_duration

#: A live run with no event for this long is flagged: the trainer may have stalled or died.
IDLE_AFTER_S = 10.0
_SEPARATOR = Text(" │ ", style=NO_DATA)


@dataclass(frozen=True)
class HeaderView:
    """What the header shows besides the snapshot: the dashboard's own state.

    `now` is the wall clock for a live run (from the app's injectable clock) and None when
    replaying, where only the recorded event times mean anything.
    """

    now: float | None = None
    paused: bool = False
    replay: tuple[int, int] | None = None  # (position, count), position counted from 1


def elapsed_seconds(snapshot: SanctumSnapshot, now: float | None) -> float | None:
    """Run time so far: to `now` while live, to the last event once over or when replaying."""
    started = snapshot.run.started_at
    progress = snapshot.progress
    over = progress.finished or progress.failed
    end = progress.last_event_time if now is None or over else now
    if started is None or end is None:
        return None
    return max(0.0, end - started)


def episodes_per_second(snapshot: SanctumSnapshot) -> float | None:
    """Throughput over the recorded span (first to last event), independent of the clock."""
    started = snapshot.run.started_at
    last = snapshot.progress.last_event_time
    if started is None or last is None or last <= started:
        return None
    return snapshot.progress.episodes_done / (last - started)


def idle_seconds(snapshot: SanctumSnapshot, now: float | None) -> float | None:
    """How long a live, unfinished run has been silent; None when not applicable."""
    progress = snapshot.progress
    if now is None or progress.finished or progress.failed or progress.last_event_time is None:
        return None
    return max(0.0, now - progress.last_event_time)


def run_state(snapshot: SanctumSnapshot, view: HeaderView) -> Text:
    """The right-most status: REPLAY/PAUSED prefix, then FAILED, FINISHED, idle, LIVE."""
    parts: list[Text] = []
    if view.replay is not None:
        position, count = view.replay
        parts.append(Text(f"REPLAY {position}/{count}", style="bold cyan"))
    if view.paused:
        parts.append(Text("PAUSED", style=f"bold {WARNING}"))
    progress = snapshot.progress
    idle = idle_seconds(snapshot, view.now)
    if progress.failed:
        failure = progress.failure or "unknown error"
        parts.append(Text(f"FAILED: {failure}", style=f"bold {CRITICAL}"))
    elif progress.finished:
        parts.append(Text("FINISHED", style=f"bold {HEALTHY}"))
    elif snapshot.events_read == 0:
        parts.append(Text("waiting for events", style=NO_DATA))
    elif idle is not None and idle >= IDLE_AFTER_S:
        parts.append(Text(f"no events for {fmt_duration(idle)}", style=f"bold {WARNING}"))
    elif view.replay is None:
        parts.append(Text("LIVE", style=HEALTHY))
    return Text(" ").join(parts)


def pack_fields(widths: list[int], max_width: int, separator: int) -> list[list[int]]:
    """Greedy line packing: indices of the fields on each line, never splitting a field.

    A field wider than a whole line gets a line of its own (and is cut there).
    """
    lines: list[list[int]] = []
    used = 0
    for index, width in enumerate(widths):
        if lines and lines[-1] and used + separator + width <= max_width:
            lines[-1].append(index)
            used += separator + width
        else:
            lines.append([index])
            used = width
    return lines


class FieldLine:
    """Rich renderable of fields joined by a separator, wrapping only between fields.

    Word wrapping would break "0.08 ep/s" into "0.08" and "ep/s" on a narrow terminal.
    """

    def __init__(self, fields: list[Text], separator: Text) -> None:
        self.fields = fields
        self.separator = separator

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = [field.cell_len for field in self.fields]
        for indices in pack_fields(widths, options.max_width, self.separator.cell_len):
            line = self.separator.join(self.fields[i] for i in indices)
            line.no_wrap = True
            line.overflow = "ellipsis"
            yield line


def render_header(snapshot: SanctumSnapshot, view: HeaderView) -> RenderableType:
    """One line (wrapping on narrow terminals) of run state, identity and progress."""
    run, progress = snapshot.run, snapshot.progress
    episodes = f"episode {progress.episodes_done}"
    if run.episodes_total:
        episodes += f"/{run.episodes_total}"
    elapsed = elapsed_seconds(snapshot, view.now)
    rate = episodes_per_second(snapshot)
    fields = [
        Text("SANCTUM", style="bold"),
        run_state(snapshot, view),  # first, so a narrow terminal can never push it away
        Text(f"run {run.run_id or '—'}"),
        Text(f"task {run.task or '—'}"),
        Text(episodes),
        Text(f"PPO updates {snapshot.tamiyo.ppo_updates_count}"),
        Text(f"elapsed {fmt_duration(elapsed)}" if elapsed is not None else "elapsed —"),
        Text(f"{rate:.2f} ep/s" if rate is not None else "— ep/s"),
    ]
    return FieldLine([field for field in fields if field.plain], _SEPARATOR)


class SanctumHeader(SnapshotPanel):
    """Run id, task, episode x/N, PPO updates, elapsed, episodes/s and run state."""

    WIDTH_ONLY = True

    def __init__(
        self,
        snapshot: SanctumSnapshot | None = None,
        view: HeaderView | None = None,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        self.view = view if view is not None else HeaderView()
        super().__init__(snapshot, id=id, classes=classes)

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_header(snapshot, self.view)

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        t = snapshot.tamiyo
        return snapshot.run, snapshot.progress, t.ppo_updates_count, snapshot.events_read

    def update_snapshot(self, snapshot: SanctumSnapshot, view: HeaderView | None = None) -> None:
        """Show `snapshot` under `view` (the clock moves even when the snapshot does not)."""
        if view is not None and view != self.view:
            self.view = view
            self.snapshot = snapshot
            self.redraw()
            return
        super().update_snapshot(snapshot)
