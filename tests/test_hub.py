"""TelemetryHub: synchronous and queued backends, drops and failures reported, clean close."""

from __future__ import annotations

import threading

import pytest
from factories import update_stats

from esper.telemetry.contracts import EventType, TelemetryDrops, TelemetryEvent, TrainingFailed
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.hub import BackendHealth, TelemetryHub

#: Safety net for waits in these tests; never reached when the hub works.
WAIT = 10.0


def event(seq: int) -> TelemetryEvent:
    return TelemetryEvent(
        EventType.TRAINING_FAILED,
        1.0,
        "r",
        seq,
        None,
        None,
        "error",
        "m",
        TrainingFailed(error="e"),
    )


class Recording:
    """A backend that remembers what it got and on which thread."""

    def __init__(self, name: str, *, synchronous: bool) -> None:
        self.name = name
        self.synchronous = synchronous
        self.events: list[TelemetryEvent] = []
        self.threads: set[int] = set()
        self.flushes = 0
        self.closed = False

    def handle(self, event: TelemetryEvent) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(event)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


class Gated(Recording):
    """A queued backend whose first `handle` blocks until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__("slow", synchronous=False)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def handle(self, event: TelemetryEvent) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT)
        super().handle(event)


class Failing(Recording):
    def handle(self, event: TelemetryEvent) -> None:
        raise OSError(f"disk full at {event.seq}")


def test_synchronous_backend_runs_in_the_callers_thread_and_queued_one_does_not() -> None:
    sync, queued = Recording("rec", synchronous=True), Recording("live", synchronous=False)
    hub = TelemetryHub([sync, queued])
    for seq in range(5):
        hub.publish(event(seq))
    assert [e.seq for e in sync.events] == list(range(5))  # before any flush
    hub.flush()
    assert [e.seq for e in queued.events] == list(range(5))
    assert sync.threads == {threading.get_ident()}
    assert len(queued.threads) == 1
    assert threading.get_ident() not in queued.threads
    hub.close()


def test_full_queue_drops_and_counts_and_reports_without_blocking() -> None:
    slow = Gated()
    reports: list[tuple[str, int, int, str | None]] = []
    hub = TelemetryHub([slow], queue_size=2, clock=lambda: 0.0, report_interval=1.0)
    hub.set_drop_reporter(lambda *args: reports.append(args))
    hub.publish(event(0))
    assert slow.entered.wait(WAIT)  # the worker holds event 0; the queue is empty
    for seq in range(1, 6):  # 1 and 2 fill the queue, 3, 4, 5 are dropped
        hub.publish(event(seq))  # returns although the backend is blocked
    assert hub.health() == [BackendHealth("slow", dropped=3, failed=0, last_error=None)]
    assert reports == [("slow", 1, 0, None)]  # first drop at once, then rate-limited
    slow.gate.set()
    hub.flush()
    assert reports == [("slow", 1, 0, None), ("slow", 3, 0, None)]  # flush reports the rest
    assert [e.seq for e in slow.events] == [0, 1, 2]
    hub.close()


def test_drops_become_warning_events_for_every_backend() -> None:
    slow, recorder = Gated(), Recording("rec", synchronous=True)
    hub = TelemetryHub([slow, recorder], queue_size=1)
    emitter = TelemetryEmitter(hub, "run")
    emit_update(emitter, update_stats(), batch=0)
    assert slow.entered.wait(WAIT)
    emit_update(emitter, update_stats(), batch=1)  # queued
    emit_update(emitter, update_stats(), batch=2)  # dropped -> reported
    slow.gate.set()
    hub.close()
    drops = [e for e in recorder.events if e.event_type is EventType.TELEMETRY_DROPS]
    # The first report was itself lost on the full queue, so the final one counts it too.
    assert [e.payload for e in drops] == [
        TelemetryDrops(backend="slow", dropped=1),
        TelemetryDrops(backend="slow", dropped=2),
    ]
    assert {e.severity for e in drops} == {"warning"}
    assert [e.seq for e in recorder.events] == list(range(5))  # reports are numbered too
    # the queued backend got the final report once its queue had room again
    assert [e.event_type for e in slow.events] == [
        EventType.PPO_UPDATE_COMPLETED,
        EventType.PPO_UPDATE_COMPLETED,
        EventType.TELEMETRY_DROPS,
    ]
    assert slow.events[-1].payload == drops[-1].payload


@pytest.mark.parametrize("synchronous", [True, False])
def test_failing_backend_is_counted_reported_and_does_not_stop_others(synchronous: bool) -> None:
    bad, good = Failing("bad", synchronous=synchronous), Recording("good", synchronous=True)
    reports: list[tuple[str, int, int, str | None]] = []
    hub = TelemetryHub([bad, good], report_interval=float("inf"))
    hub.set_drop_reporter(lambda *args: reports.append(args))
    for seq in range(3):
        hub.publish(event(seq))  # does not raise
    hub.close()
    assert [e.seq for e in good.events] == [0, 1, 2]
    assert reports[-1] == ("bad", 0, 3, "OSError: disk full at 2")
    assert bad.closed


def test_close_drains_flushes_and_closes_every_backend_once() -> None:
    sync, queued = Recording("rec", synchronous=True), Recording("live", synchronous=False)
    with TelemetryHub([sync, queued]) as hub:
        for seq in range(100):
            hub.publish(event(seq))
    assert len(queued.events) == 100
    assert sync.closed and queued.closed
    assert queued.flushes >= 1
    hub.close()  # idempotent
    hub.publish(event(100))  # ignored after close
    assert len(sync.events) == 100


def test_without_a_reporter_losses_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    hub = TelemetryHub([Failing("bad", synchronous=True)])
    hub.publish(event(0))
    hub.close()
    assert "telemetry backend bad: 0 dropped, 1 failed" in caplog.text
