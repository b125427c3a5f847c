"""The trainer's one door into telemetry: typed payloads in, numbered events out.

The emitter owns the per-run sequence number, the timestamps and the PPO update index, so
every backend sees the same numbering. `emit` is its one entry point: the payload's type
says which event it is, how loud, and what its message reads. Downstream code sees
payloads only, never PPO internals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from esper.telemetry.contracts import (
    Payload,
    PPOUpdatePayload,
    PPOUpdateSkipped,
    RatioExplosion,
    TelemetryDrops,
    TelemetryEvent,
)
from esper.telemetry.heads import UpdateStats


class EventSink(Protocol):
    """Where the emitter sends events (a `TelemetryHub`, or a list-like fake in tests)."""

    def publish(self, event: TelemetryEvent) -> None: ...


class TelemetryEmitter:
    """Builds typed events with a per-run `seq`, a timestamp and the PPO update index.

    `start_seq` and `start_update_index` let a resumed run continue its numbering.
    A skipped update consumes an update index too: indices count update attempts (one per
    batch), so a gap between completed updates shows a skip.
    """

    def __init__(
        self,
        hub: EventSink,
        run_id: str,
        clock: Callable[[], float] = time.time,
        *,
        start_update_index: int = 0,
        start_seq: int = 0,
    ) -> None:
        self._hub = hub
        self.run_id = run_id
        self._clock = clock
        self._seq = start_seq
        self._next_update_index = start_update_index
        self._lock = threading.Lock()
        bind = getattr(hub, "set_drop_reporter", None)
        if bind is not None:
            bind(self._report_drops)

    @property
    def next_update_index(self) -> int:
        """The index the next PPO update (completed or skipped) will get."""
        return self._next_update_index

    def take_update_index(self) -> int:
        """Reserve the next update index (for a completed or a skipped update)."""
        with self._lock:
            index = self._next_update_index
            self._next_update_index = index + 1
        return index

    def emit(
        self, payload: Payload, *, episode: int | None = None, batch: int | None = None
    ) -> TelemetryEvent:
        """Publish one payload as the event its type stands for; returns the event."""
        with self._lock:
            seq = self._seq
            self._seq += 1
        event = TelemetryEvent(  # positional: this runs for every event of every worker
            payload.EVENT_TYPE,
            self._clock(),
            self.run_id,
            seq,
            episode,
            batch,
            payload.severity(),
            payload.summary(),
            payload,
        )
        self._hub.publish(event)
        return event

    def _report_drops(
        self, backend: str, dropped: int, failed: int = 0, last_error: str | None = None
    ) -> None:
        """The hub's callback: a backend's cumulative losses are never silent."""
        self.emit(
            TelemetryDrops(backend=backend, dropped=dropped, failed=failed, last_error=last_error)
        )


def update_payloads(
    stats: UpdateStats,
    update_index: int,
    *,
    batch: int,
    mean_return: float | None = None,
    host_accuracy: float | None = None,
    skip_reason: str | None = None,
) -> list[Payload]:
    """The events one PPO update makes: skipped, or completed plus any explosion report.

    An update all of whose minibatches were skipped (no optimizer step applied) is
    recorded as skipped, with the heads whose log-probs went non-finite, so the dashboard
    shows it as stale. Zero minibatches run means a trainer that does not count them.
    A trainer that undid an update for another reason says why in `skip_reason`.
    """
    all_skipped = 0 < stats.minibatches_skipped >= stats.minibatches_run
    if skip_reason is not None or all_skipped:
        reason = skip_reason or f"all {stats.minibatches_run} minibatches had non-finite values"
        return [
            PPOUpdateSkipped(
                reason=reason, batch=batch, update_index=update_index, nonfinite=stats.nonfinite()
            )
        ]
    payloads: list[Payload] = [
        PPOUpdatePayload(
            update_index=update_index,
            stats=stats,
            mean_return=mean_return,
            host_accuracy=host_accuracy,
        )
    ]
    if stats.explosion is not None:
        payloads.append(RatioExplosion(update_index=update_index, report=stats.explosion))
    return payloads


def emit_update(
    emitter: TelemetryEmitter,
    stats: UpdateStats,
    *,
    batch: int | None = None,
    mean_return: float | None = None,
    host_accuracy: float | None = None,
) -> list[TelemetryEvent]:
    """Number one PPO update and publish its events (see `update_payloads`).

    Every trainer (esper's own, the SB3 classes, `HeadRatioMonitor`) records an update
    through `update_payloads`, so they number, skip and attribute updates alike.
    """
    index = emitter.take_update_index()
    payloads = update_payloads(
        stats,
        index,
        batch=index if batch is None else batch,
        mean_return=mean_return,
        host_accuracy=host_accuracy,
    )
    return [emitter.emit(payload, batch=batch) for payload in payloads]
