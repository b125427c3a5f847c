"""TelemetryEmitter: typed payload -> numbered event, one entry point for every kind."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper.morpho.actions import HEAD_NAMES
from esper.telemetry.contracts import (
    EpisodeCompleted,
    EventType,
    Payload,
    PPOUpdatePayload,
    PPOUpdateSkipped,
    RatioExplosion,
    SeedLifecycle,
    TelemetryDrops,
    TelemetryEvent,
    TrainingFailed,
    TrainingFinished,
)
from esper.telemetry.emitter import TelemetryEmitter, emit_update, update_payloads
from esper.telemetry.heads import (
    ExplosionReport,
    HeadStats,
    UpdateStats,
    explain_explosion,
    explosion_shares,
)


class ListSink:
    """Collects published events in order."""

    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []

    def publish(self, event: TelemetryEvent) -> None:
        self.events.append(event)


def make_emitter(**kwargs: int) -> tuple[TelemetryEmitter, ListSink]:
    sink = ListSink()
    ticks = itertools.count(100)
    return TelemetryEmitter(sink, "run-1", clock=lambda: float(next(ticks)), **kwargs), sink


def stats(**changes: object) -> UpdateStats:
    """An applied update (16 minibatches run) of the eight heads, unmeasured by default."""
    base: dict[str, object] = {
        "heads": {h: HeadStats() for h in HEAD_NAMES},
        "minibatches_run": 16,
    }
    return UpdateStats(**(base | changes))  # type: ignore[arg-type]


def test_emit_update_carries_every_head_record_as_it_is() -> None:
    emitter, sink = make_emitter()
    heads = {
        h: HeadStats(ratio_max=1.0 + 0.1 * (i + 1), relevant=i) for i, h in enumerate(HEAD_NAMES)
    }
    (event,) = emit_update(emitter, stats(heads=heads), batch=7, mean_return=0.5)
    assert sink.events == [event]
    assert event.event_type is EventType.PPO_UPDATE_COMPLETED
    assert event.batch == 7
    payload = event.payload
    assert isinstance(payload, PPOUpdatePayload)
    assert payload.heads == heads
    assert list(payload.heads) == list(HEAD_NAMES)
    assert (payload.update_index, payload.mean_return, payload.host_accuracy) == (0, 0.5, None)


def test_any_heads_travel_without_special_cases() -> None:
    emitter, sink = make_emitter()
    heads = {name: HeadStats(ratio_max=1.3, relevant=5) for name in ("x", "y", "z")}
    emit_update(emitter, UpdateStats(heads=heads, minibatches_run=1), batch=0)
    payload = sink.events[0].payload
    assert isinstance(payload, PPOUpdatePayload)
    assert list(payload.heads) == ["x", "y", "z"]
    assert payload.to_dict()["head_y_ratio_max"] == 1.3


def test_non_finite_ratios_pass_through_unchanged() -> None:
    emitter, sink = make_emitter()
    heads = {h: HeadStats() for h in HEAD_NAMES} | {
        "slot": HeadStats(ratio_max=math.nan, relevant=1),
        "op": HeadStats(ratio_min=math.inf, relevant=1),
    }
    emit_update(emitter, stats(heads=heads), batch=0)
    payload = sink.events[0].payload
    assert isinstance(payload, PPOUpdatePayload)
    assert math.isnan(payload.heads["slot"].ratio_max)
    assert payload.heads["op"].ratio_min == math.inf


def test_an_update_with_no_applied_minibatch_is_recorded_as_skipped() -> None:
    heads = {h: HeadStats() for h in HEAD_NAMES} | {"style": HeadStats(nonfinite=6)}
    (payload,) = update_payloads(
        stats(heads=heads, minibatches_run=4, minibatches_skipped=4), 3, batch=2
    )
    assert isinstance(payload, PPOUpdateSkipped)
    assert (payload.update_index, payload.batch, payload.nonfinite) == (3, 2, {"style": 6})
    assert payload.reason == "all 4 minibatches had non-finite values"


def test_update_index_counts_from_zero_and_a_skip_uses_one_up() -> None:
    emitter, sink = make_emitter()
    emit_update(emitter, stats(), batch=0)
    emit_update(emitter, stats(), batch=1)
    emit_update(emitter, stats(minibatches_skipped=16), batch=2)
    emit_update(emitter, stats(), batch=3)
    kinds = [(e.event_type, e.payload.update_index) for e in sink.events]  # type: ignore[attr-defined]
    assert kinds == [
        (EventType.PPO_UPDATE_COMPLETED, 0),
        (EventType.PPO_UPDATE_COMPLETED, 1),
        (EventType.PPO_UPDATE_SKIPPED, 2),
        (EventType.PPO_UPDATE_COMPLETED, 3),
    ]
    assert emitter.next_update_index == 4


def test_resumed_run_continues_update_index_and_seq() -> None:
    emitter, sink = make_emitter(start_update_index=40, start_seq=500)
    emit_update(emitter, stats(), batch=40)
    assert (sink.events[0].payload.update_index, sink.events[0].seq) == (40, 500)  # type: ignore[attr-defined]


def test_an_explosion_follows_its_update_with_the_same_index() -> None:
    emitter, sink = make_emitter()
    report = explain_explosion(
        {"op": HeadStats(ratio_max=1.1, ratio_min=0.95, relevant=4)}, 3.0, {"op": 1.1}, 0.2
    )
    emit_update(emitter, stats(), batch=0)
    emit_update(
        emitter,
        UpdateStats(heads={"op": HeadStats(relevant=4)}, minibatches_run=1, explosion=report),
        batch=1,
    )
    update, explosion = sink.events[1:]
    assert explosion.event_type is EventType.RATIO_EXPLOSION
    assert isinstance(explosion.payload, RatioExplosion)
    assert explosion.payload.update_index == update.payload.update_index == 1  # type: ignore[attr-defined]
    assert explosion.payload.report == report
    assert explosion.severity == "warning"


EPISODE = EpisodeCompleted(
    env_index=0,
    episode_return=1.0,
    final_accuracy=0.5,
    seeds_grown=1,
    seeds_fossilized=0,
    seeds_killed=0,
    length=8,
)
LIFECYCLE = SeedLifecycle(
    env_index=0, slot=1, from_stage="DORMANT", to_stage="GERMINATED", blueprint="MLP", alpha=0.0
)


@given(st.lists(st.sampled_from(["episode", "update", "skip", "lifecycle"]), max_size=30))
def test_seq_and_timestamps_increase_by_one_per_event(kinds: list[str]) -> None:
    emitter, sink = make_emitter()
    emit = {
        "episode": lambda: emitter.emit(EPISODE),
        "update": lambda: emit_update(emitter, stats(), batch=0),
        "skip": lambda: emit_update(emitter, stats(minibatches_skipped=16), batch=0),
        "lifecycle": lambda: emitter.emit(LIFECYCLE),
    }
    for kind in kinds:
        emit[kind]()
    assert [e.seq for e in sink.events] == list(range(len(kinds)))
    assert [e.timestamp for e in sink.events] == [100.0 + i for i in range(len(kinds))]
    assert {e.run_id for e in sink.events} <= {"run-1"}


def test_ppo_message_names_worst_head_joint_and_kl() -> None:
    emitter, sink = make_emitter()
    heads = {h: HeadStats() for h in HEAD_NAMES} | {
        "op": HeadStats(ratio_max=1.1, relevant=32),
        "slot": HeadStats(ratio_max=1.9, relevant=20),
    }
    emit_update(emitter, stats(heads=heads, joint_ratio_max=2.4, approx_kl=0.031), batch=0)
    assert sink.events[0].message == (
        "update 0: worst head slot ratio max 1.900, joint 2.400, KL 0.0310"
    )


def test_severity_and_message_come_from_the_payload_type() -> None:
    emitter, sink = make_emitter()
    report = ExplosionReport(3.0, {"op": 1.1}, {"op": 1.0}, "op", False)
    payloads: list[Payload] = [
        update_payloads(stats(), 0, batch=0)[0],
        PPOUpdateSkipped(reason="nan", batch=1, update_index=1),
        RatioExplosion(update_index=1, report=report),
        TelemetryDrops(backend="sanctum", dropped=3),
        TrainingFailed(error="RuntimeError: x"),
        TrainingFinished(episodes=1, updates=1, wall_seconds=1.0, run_dir="runs/a"),
    ]
    for payload in payloads:
        emitter.emit(payload, batch=1)
    assert [(e.event_type, e.severity) for e in sink.events] == [
        (EventType.PPO_UPDATE_COMPLETED, "info"),
        (EventType.PPO_UPDATE_SKIPPED, "warning"),
        (EventType.RATIO_EXPLOSION, "warning"),
        (EventType.TELEMETRY_DROPS, "warning"),
        (EventType.TRAINING_FAILED, "error"),
        (EventType.TRAINING_FINISHED, "info"),
    ]
    assert [e.message for e in sink.events] == [p.summary() for p in payloads]
    assert sink.events[3].message == "telemetry backend sanctum: 3 events dropped, 0 failed"


def test_explosion_shares_split_the_positive_log_ratios() -> None:
    shares = explosion_shares({"op": 0.3, "slot": 0.9, "blueprint": -0.2})
    assert shares == pytest.approx({"op": 0.25, "slot": 0.75, "blueprint": 0.0})


def test_explosion_shares_of_a_collapse_use_magnitudes() -> None:
    assert explosion_shares({"op": -0.5, "tempo": -1.5}) == pytest.approx(
        {"op": 0.25, "tempo": 0.75}
    )


def test_explosion_report_names_its_drivers() -> None:
    heads = {
        h: HeadStats(ratio_max=1.15, ratio_min=0.9, relevant=8) for h in ("slot", "op", "style")
    }
    report = explain_explosion(heads, 4.3, {"slot": 0.6, "op": 0.4, "style": 0.0}, clip_eps=0.2)
    assert report.driver == "slot"
    assert report.hidden_by_heads  # every head inside [0.8, 1.2], the joint far outside
    assert RatioExplosion(update_index=1, report=report).summary() == (
        "update 1: joint 4.30 driven by slot (60%), op (40%) — every head inside clip"
    )


def test_training_failed_keeps_the_exception_and_its_traceback() -> None:
    try:
        raise RuntimeError("loss is NaN")
    except RuntimeError as exc:
        payload = TrainingFailed.from_exception(exc)
    assert payload.error == "RuntimeError: loss is NaN"
    assert payload.traceback is not None
    assert "raise RuntimeError" in payload.traceback


def test_the_hub_reports_drops_through_the_emitter() -> None:
    class DropHub(ListSink):
        def set_drop_reporter(self, report):  # type: ignore[no-untyped-def]
            self.report = report

    hub = DropHub()
    TelemetryEmitter(hub, "r")
    hub.report("sanctum", 5, 1, "queue full")
    (event,) = hub.events
    assert event.event_type is EventType.TELEMETRY_DROPS
    assert event.message.endswith("(last error: queue full)")


def test_training_finished_says_whether_it_was_interrupted() -> None:
    emitter, sink = make_emitter()
    emitter.emit(TrainingFinished(episodes=3, updates=1, wall_seconds=2.0, run_dir="r"))
    emitter.emit(
        TrainingFinished(episodes=3, updates=1, wall_seconds=2.0, run_dir="r", interrupted=True)
    )
    assert [e.message for e in sink.events] == [
        "training finished: 3 episodes, 1 updates in 2.0 s",
        "training interrupted: 3 episodes, 1 updates in 2.0 s",
    ]
