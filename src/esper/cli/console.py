"""Headless console output: a Rich progress bar and one line per PPO update.

A hub backend like the recorder and the dashboard, so the console shows exactly what
was recorded. It reads payloads only; it knows nothing of PPO internals.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from esper.telemetry.contracts import EventType, PPOUpdatePayload, TelemetryEvent


def update_line(payload: PPOUpdatePayload) -> str:
    """One-line summary of a PPO update for logs and terminals."""
    stats = payload.stats
    head = stats.worst_head()
    worst = f"{head} {stats.heads[head].ratio_max:.3f}" if head is not None else "—"
    ret = "—" if payload.mean_return is None else f"{payload.mean_return:+.3f}"
    acc = "—" if payload.host_accuracy is None else f"{payload.host_accuracy:.3f}"
    return (
        f"update {payload.update_index:>4} | worst head {worst}"
        f" | joint {stats.joint_ratio_max:.3f} | KL {stats.approx_kl:.4f}"
        f" | clip {stats.clip_fraction:.3f}"
        f" | return {ret} | acc {acc}"
    )


def head_table(payload: PPOUpdatePayload) -> Table:
    """The final per-head table: the TELE-151 record and its siblings, one row a head.

    One row per head the update carries, in the run's order, whatever their number.
    """
    table = Table(title=f"Per-head statistics, update {payload.update_index}")
    for column in ("head", "ratio max", "ratio min", "clip frac", "entropy", "relevant"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for head, stats in payload.heads.items():
        entropy = f"{stats.entropy:.3f}"
        if stats.relevant == 0:  # neutral defaults, not a healthy reading
            table.add_row(head, "—", "—", "—", entropy, "0")
            continue
        table.add_row(
            head,
            *(f"{v:.3f}" for v in (stats.ratio_max, stats.ratio_min, stats.clip_fraction)),
            entropy,
            str(stats.relevant),
        )
    return table


class PipeSafeConsole(Console):
    """A Rich console that falls silent when its reader goes away (`esper ppo | head`).

    Rich's own handling of a closed pipe raises SystemExit(1) from whatever thread was
    printing: the training thread, which then recorded the run as failed. A run's record
    is its directory, not its console; training goes on without the console.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)  # later writes go nowhere, quietly
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class ConsoleBackend:
    """Progress bar over episodes plus a summary line per update; synchronous (cheap)."""

    synchronous = True

    def __init__(
        self, episodes_total: int, console: Console | None = None, completed: int = 0
    ) -> None:
        self.console = console or PipeSafeConsole(stderr=False)
        self._progress = Progress(
            TextColumn("[bold]episodes"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task("episodes", total=episodes_total, completed=completed)
        self.last_update: PPOUpdatePayload | None = None
        self._progress.start()

    def handle(self, event: TelemetryEvent) -> None:
        kind = event.event_type
        if kind is EventType.EPISODE_COMPLETED:
            self._progress.advance(self._task)
        elif kind is EventType.PPO_UPDATE_COMPLETED:
            assert isinstance(event.payload, PPOUpdatePayload)
            self.last_update = event.payload
            self._progress.console.print(update_line(event.payload), soft_wrap=True)
        elif event.severity != "info":
            style = "red" if event.severity == "error" else "yellow"
            # the message is text, not markup: an error quoting "[file:line]" must print
            self._progress.console.print(f"[{style}]{escape(event.message)}[/{style}]")

    def flush(self) -> None:
        """Nothing buffered: every line is printed as it comes."""

    def close(self) -> None:
        self._progress.stop()
        if self.last_update is not None:
            self.console.print(head_table(self.last_update))
