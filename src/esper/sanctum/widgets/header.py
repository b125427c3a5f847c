"""The header line: which run, how far, how fast, and in which state the dashboard is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.text import Text
from textual.reactive import reactive

from esper.sanctum.schema import SanctumSnapshot, WorkerState
from esper.sanctum.widgets.base import SnapshotPanel
from esper.sanctum.widgets.style import (
    CRITICAL,
    HEALTHY,
    NO_DATA,
    NO_VALUE,
    WARNING,
    fmt_duration,
)

#: A live run with no event for this long is flagged: the trainer may have stalled or died.
IDLE_AFTER_S = 10.0
#: Up to this many env workers are shown one by one; more are summarised (range, dead ones).
WORKERS_LISTED = 6
#: At most this many dead workers are named in the summary.
DEAD_NAMED = 8
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


def worker_field(worker: WorkerState) -> Text:
    """One worker: its env steps/s over the latest batch, or that it is dead (red)."""
    if not worker.alive:
        return Text(f"w{worker.worker} dead", style=f"bold {CRITICAL}")
    rate = NO_VALUE if worker.steps_per_second is None else f"{worker.steps_per_second:.1f}"
    return Text(f"w{worker.worker} {rate} steps/s", style=WARNING if worker.restarts else "")


def worker_fields(workers: Sequence[WorkerState]) -> list[Text]:
    """Header fields for the env workers; none for a single worker (nothing to compare)."""
    if len(workers) < 2:
        return []
    alive = sum(w.alive for w in workers)
    everyone = alive == len(workers)
    fields = [
        Text(f"workers {alive}/{len(workers)} alive", style=HEALTHY if everyone else CRITICAL)
    ]
    rates = [w.steps_per_second for w in workers if w.alive and w.steps_per_second is not None]
    if len(workers) <= WORKERS_LISTED:
        fields += [worker_field(w) for w in workers]
    else:
        if rates:
            fields.append(Text(f"{min(rates):.1f}–{max(rates):.1f} steps/s per worker"))
        dead = [f"w{w.worker}" for w in workers if not w.alive]
        if dead:
            more = "…" if len(dead) > DEAD_NAMED else ""
            fields.append(Text(f"dead: {', '.join(dead[:DEAD_NAMED])}{more}", style=CRITICAL))
    if rates:
        fields.append(Text(f"total {sum(rates):.1f} steps/s"))
    restarts = sum(w.restarts for w in workers)
    if restarts:
        fields.append(Text(f"{restarts} restart{'s' if restarts > 1 else ''}", style=WARNING))
    return fields


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
        *worker_fields(snapshot.workers),
    ]
    return FieldLine([field for field in fields if field.plain], _SEPARATOR)


class SanctumHeader(SnapshotPanel):
    """Run id, task, episode x/N, PPO updates, elapsed, episodes/s, run state, workers.

    Besides the snapshot it draws the dashboard's own state, its reactive `view` (the app
    binds it to its own): the clock moves and pausing changes the header while the
    snapshot stays the same.
    """

    WIDTH_ONLY = True

    view: reactive[HeaderView] = reactive(HeaderView, repaint=False, init=False)

    def __init__(
        self,
        snapshot: SanctumSnapshot | None = None,
        view: HeaderView | None = None,
        *,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(snapshot, id=id, classes=classes)
        if view is not None:
            self.set_reactive(SanctumHeader.view, view)
            self._draw()  # the base drew it under the default view

    def render_snapshot(self, snapshot: SanctumSnapshot) -> RenderableType:
        return render_header(snapshot, self.view)

    def drawn(self, snapshot: SanctumSnapshot) -> object:
        t = snapshot.tamiyo
        return (
            snapshot.run,
            snapshot.progress,
            t.ppo_updates_count,
            snapshot.events_read,
            snapshot.workers,
        )

    def _drawn_state(self) -> object:
        return self.drawn(self.snapshot), self.view

    def watch_view(self) -> None:
        self._redraw_soon()
