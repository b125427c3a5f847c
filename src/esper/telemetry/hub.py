"""Fan-out of telemetry events to backends, without ever blocking or crashing training.

A backend marked `synchronous = True` (the run recorder: durability matters and a write
is fast) is called in the publisher's thread. Every other backend gets a bounded queue
and a daemon worker thread; when its queue is full the event is dropped and counted.
Backend exceptions are caught and counted. Losses are never silent: the hub hands the
cumulative counts to a drop reporter (the emitter binds `emit_telemetry_drops`), which
publishes a TELEMETRY_DROPS warning to every backend, at most once per `report_interval`
while training runs and always on `flush()` and `close()`.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from esper.telemetry.contracts import TelemetryEvent

logger = logging.getLogger(__name__)

#: Default capacity of each queued backend's queue, in events.
DEFAULT_QUEUE_SIZE = 4096
#: How long flush/close wait for a queued backend before giving up on it, in seconds.
DEFAULT_DRAIN_TIMEOUT = 10.0


class TelemetryBackend(Protocol):
    """Receives events. May also define `name: str` and `synchronous: bool` (default False)."""

    def handle(self, event: TelemetryEvent) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


#: Called with (backend name, dropped, failed, last error), cumulative counts.
DropReporter = Callable[[str, int, int, str | None], object]


@dataclass(frozen=True)
class BackendHealth:
    """A backend's losses so far: events dropped on a full queue, events it raised on."""

    name: str
    dropped: int
    failed: int
    last_error: str | None


def backend_name(backend: TelemetryBackend) -> str:
    return str(getattr(backend, "name", type(backend).__name__))


class _Lane:
    """One backend and its loss counters; delivers in the caller's thread."""

    def __init__(self, backend: TelemetryBackend) -> None:
        self.backend = backend
        self._handle = backend.handle  # bound once: `deliver` runs for every event
        self.name = backend_name(backend)
        self._lock = threading.Lock()
        self.dropped = 0
        self.failed = 0
        self.last_error: str | None = None
        self.reported = (0, 0)
        #: Called when a loss is counted, so the hub looks for losses only when there are.
        self.on_loss: Callable[[], None] = lambda: None

    def _call(self, method: Callable[..., object], *args: object) -> None:
        try:
            method(*args)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """Count a backend exception (called inside its `except`, so the log has it)."""
        with self._lock:
            self.failed += 1
            first = self.failed == 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        self.on_loss()
        if first:
            logger.exception("telemetry backend %s failed", self.name)

    def _count_drop(self) -> None:
        with self._lock:
            self.dropped += 1
        self.on_loss()

    def health(self) -> BackendHealth:
        with self._lock:
            return BackendHealth(self.name, self.dropped, self.failed, self.last_error)

    def take_unreported(self) -> BackendHealth | None:
        """The current counts if they grew since the last report, marking them reported."""
        with self._lock:
            counts = (self.dropped, self.failed)
            if counts == self.reported:
                return None
            self.reported = counts
            return BackendHealth(self.name, self.dropped, self.failed, self.last_error)

    def deliver(self, event: TelemetryEvent) -> None:
        try:
            self._handle(event)
        except Exception as exc:
            self._failed(exc)

    def flush(self, timeout: float) -> bool:
        self._call(self.backend.flush)
        return True

    def stop(self, timeout: float) -> bool:
        return True


class _Barrier:
    """Queue marker: the worker flushes the backend and sets `done`."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class _QueuedLane(_Lane):
    """A backend behind a bounded queue and its own daemon worker thread."""

    def __init__(self, backend: TelemetryBackend, maxsize: int) -> None:
        super().__init__(backend)
        self._queue: queue.Queue[object] = queue.Queue(maxsize)
        self._thread = threading.Thread(
            target=self._run, name=f"telemetry-{self.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Barrier):
                self._call(self.backend.flush)
                item.done.set()
            else:
                self._call(self.backend.handle, item)

    def deliver(self, event: TelemetryEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._count_drop()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued before now is handled and the backend flushed."""
        barrier = _Barrier()
        try:
            self._queue.put(barrier, timeout=timeout)
        except queue.Full:
            return False
        return barrier.done.wait(timeout)

    def stop(self, timeout: float) -> bool:
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()


class TelemetryHub:
    """Publishes each event to every backend; see the module docstring for the guarantees."""

    def __init__(
        self,
        backends: Iterable[TelemetryBackend] = (),
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        report_interval: float = 1.0,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue_size = queue_size
        self._report_interval = report_interval
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._lanes: list[_Lane] = []
        self._reporter: DropReporter | None = None
        self._last_report = -math.inf
        self._reporting = False
        self._loss_pending = False  # set by a lane that counted a loss not yet reported
        self._closed = False
        self._warned_closed = False
        for backend in backends:
            self.add_backend(backend)

    def add_backend(self, backend: TelemetryBackend) -> None:
        if getattr(backend, "synchronous", False):
            lane = _Lane(backend)
        else:
            lane = _QueuedLane(backend, self._queue_size)
        lane.on_loss = self._mark_loss
        self._lanes.append(lane)

    def _mark_loss(self) -> None:
        self._loss_pending = True

    def set_drop_reporter(self, reporter: DropReporter) -> None:
        """Who turns losses into TELEMETRY_DROPS events (without one they are logged)."""
        self._reporter = reporter

    def health(self) -> list[BackendHealth]:
        return [lane.health() for lane in self._lanes]

    def publish(self, event: TelemetryEvent) -> None:
        """Hand `event` to every backend; returns without waiting for queued ones."""
        if self._closed:
            if not self._warned_closed:
                logger.warning(
                    "telemetry published after hub.close(); ignored from seq %s", event.seq
                )
                self._warned_closed = True
            return
        for lane in self._lanes:
            lane.deliver(event)
        self._report(force=False)

    def _report(self, *, force: bool) -> None:
        # Without a loss since the last report there is nothing to do: this runs for every
        # published event, so it costs one attribute test then.
        if self._reporting or not (force or self._loss_pending):
            return  # (the report is itself published: don't recurse)
        now = self._clock()
        if not force and now - self._last_report < self._report_interval:
            return
        self._loss_pending = False  # before taking the counts: a later loss sets it again
        pending = [h for lane in self._lanes if (h := lane.take_unreported()) is not None]
        if not pending:
            return
        self._last_report = now
        self._reporting = True
        try:
            for h in pending:
                if self._reporter is None:
                    logger.warning(
                        "telemetry backend %s: %d dropped, %d failed (last error: %s)",
                        h.name, h.dropped, h.failed, h.last_error,
                    )  # fmt: skip
                else:
                    self._reporter(h.name, h.dropped, h.failed, h.last_error)
        finally:
            self._reporting = False

    def flush(self) -> None:
        """Wait for queued backends to catch up, flush every backend, report any losses."""
        self._drain()
        self._report(force=True)

    def _drain(self) -> None:
        for lane in self._lanes:
            if not lane.flush(self._drain_timeout):
                logger.warning("telemetry backend %s did not drain in time", lane.name)

    def close(self) -> None:
        """Drain, report, stop the workers and close every backend; idempotent."""
        if self._closed:
            return
        self.flush()
        self._drain()  # the final report itself must reach the queued backends
        self._closed = True
        for lane in self._lanes:
            if lane.stop(self._drain_timeout):
                lane._call(lane.backend.close)
            else:
                logger.warning("telemetry backend %s is stuck; not closed", lane.name)

    def __enter__(self) -> TelemetryHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
