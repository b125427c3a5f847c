"""TelemetryEmitter: metrics dict -> typed payload -> numbered event."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper.actions import HEAD_NAMES
from esper.telemetry.contracts import (
    ContractError,
    EventType,
    PPOUpdatePayload,
    TelemetryEvent,
)
from esper.telemetry.emitter import TelemetryEmitter, explosion_shares


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


def test_emit_ppo_update_carries_all_head_ratio_max() -> None:
    emitter, sink = make_emitter()
    ratio_max = {h: 1.0 + 0.1 * (i + 1) for i, h in enumerate(HEAD_NAMES)}  # 1.1 .. 1.8
    metrics = {f"head_{h}_ratio_max": r for h, r in ratio_max.items()}
    payload = emitter.emit_ppo_update(metrics, batch=7)
    (event,) = sink.events
    assert event.event_type is EventType.PPO_UPDATE_COMPLETED
    assert event.payload is payload
    assert event.batch == 7
    assert payload.head_op_ratio_max == ratio_max["op"]
    assert payload.head_slot_ratio_max == ratio_max["slot"]
    assert payload.head_blueprint_ratio_max == ratio_max["blueprint"]
    assert payload.head_style_ratio_max == ratio_max["style"]
    assert payload.head_tempo_ratio_max == ratio_max["tempo"]
    assert payload.head_alpha_target_ratio_max == ratio_max["alpha_target"]
    assert payload.head_alpha_speed_ratio_max == ratio_max["alpha_speed"]
    assert payload.head_alpha_curve_ratio_max == ratio_max["alpha_curve"]


def test_emit_ppo_update_copies_every_metric_field() -> None:
    """Each metric key lands in the payload field of the same name, with its type."""
    emitter, _ = make_emitter()
    specs = {s.name: s.tp for s in PPOUpdatePayload._specs()}
    metrics = {
        name: (1.0 if specs[name] is bool else float(i + 2))
        for i, name in enumerate(PPOUpdatePayload.METRIC_FIELDS)
    }
    payload = emitter.emit_ppo_update(metrics, batch=0, mean_return=0.5, host_accuracy=0.9)
    for name, value in metrics.items():
        got = getattr(payload, name)
        assert got == value
        assert type(got) is specs[name]
    assert (payload.mean_return, payload.host_accuracy) == (0.5, 0.9)


def test_emit_ppo_update_missing_keys_take_payload_defaults() -> None:
    emitter, _ = make_emitter()
    payload = emitter.emit_ppo_update({"approx_kl": 0.02}, batch=0)
    assert payload == PPOUpdatePayload(update_index=0, approx_kl=0.02)
    assert payload.head_tempo_ratio_max == 1.0
    assert payload.head_tempo_relevant == 0


def test_emit_ppo_update_converts_counts_and_flags_and_ignores_unknown_keys() -> None:
    emitter, _ = make_emitter()
    payload = emitter.emit_ppo_update(
        {
            "head_op_relevant": 12.0,
            "minibatches_skipped": 2.0,
            "early_stopped": 2.0,  # minibatches that tripped the KL stop: any sets the flag
            "intervened": 0.0,
            "ratio_std": 0.3,  # not a payload field
        },
        batch=0,
    )
    assert payload.head_op_relevant == 12
    assert type(payload.head_op_relevant) is int
    assert payload.minibatches_skipped == 2
    assert payload.early_stopped is True
    assert payload.intervened is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("head_op_relevant", 2.5),
        ("head_op_nonfinite", math.nan),
        ("epochs_run", math.inf),
        ("early_stopped", -1.0),
        ("intervened", math.nan),
        ("approx_kl", "small"),
    ],
)
def test_emit_ppo_update_rejects_values_that_do_not_fit(key: str, value: object) -> None:
    emitter, sink = make_emitter()
    with pytest.raises(ContractError, match=key):
        emitter.emit_ppo_update({key: value}, batch=0)  # type: ignore[dict-item]
    assert sink.events == []


def test_non_finite_ratios_pass_through_unchanged() -> None:
    emitter, _ = make_emitter()
    payload = emitter.emit_ppo_update(
        {"head_slot_ratio_max": math.nan, "head_op_ratio_min": math.inf}, batch=0
    )
    assert math.isnan(payload.head_slot_ratio_max)
    assert payload.head_op_ratio_min == math.inf


def test_update_index_counts_from_zero_and_a_skip_uses_one_up() -> None:
    emitter, _ = make_emitter()
    assert emitter.emit_ppo_update({}, batch=0).update_index == 0
    assert emitter.emit_ppo_update({}, batch=1).update_index == 1
    assert emitter.emit_ppo_skipped(reason="all minibatches non-finite", batch=2).update_index == 2
    assert emitter.emit_ppo_update({}, batch=3).update_index == 3
    assert emitter.next_update_index == 4


def test_resumed_run_continues_update_index_and_seq() -> None:
    emitter, sink = make_emitter(start_update_index=40, start_seq=500)
    assert emitter.emit_ppo_update({}, batch=40).update_index == 40
    assert sink.events[0].seq == 500


@given(st.lists(st.sampled_from(["episode", "update", "skip", "lifecycle"]), max_size=30))
def test_seq_and_timestamps_increase_by_one_per_event(kinds: list[str]) -> None:
    emitter, sink = make_emitter()
    emit = {
        "episode": lambda: emitter.emit_episode_completed(
            env_index=0,
            episode_return=1.0,
            final_accuracy=0.5,
            seeds_grown=1,
            seeds_fossilized=0,
            seeds_killed=0,
            length=8,
        ),
        "update": lambda: emitter.emit_ppo_update({}, batch=0),
        "skip": lambda: emitter.emit_ppo_skipped(reason="r", batch=0),
        "lifecycle": lambda: emitter.emit_seed_lifecycle(
            env_index=0,
            slot=1,
            from_stage="DORMANT",
            to_stage="GERMINATED",
            blueprint="MLP",
            alpha=0.0,
        ),
    }
    for kind in kinds:
        emit[kind]()
    assert [e.seq for e in sink.events] == list(range(len(kinds)))
    assert [e.timestamp for e in sink.events] == [100.0 + i for i in range(len(kinds))]
    assert {e.run_id for e in sink.events} <= {"run-1"}


def test_ppo_message_names_worst_head_joint_and_kl() -> None:
    emitter, sink = make_emitter()
    emitter.emit_ppo_update(
        {
            "head_op_ratio_max": 1.1,
            "head_op_relevant": 32.0,
            "head_slot_ratio_max": 1.9,
            "head_slot_relevant": 20.0,
            "joint_ratio_max": 2.4,
            "approx_kl": 0.031,
        },
        batch=0,
    )
    assert sink.events[0].message == (
        "update 0: worst head slot ratio max 1.900, joint 2.400, KL 0.0310"
    )


def test_severities_follow_the_event_kind() -> None:
    emitter, sink = make_emitter()
    emitter.emit_ppo_update({}, batch=0)
    emitter.emit_ppo_skipped(reason="nan", batch=1)
    emitter.emit_ratio_explosion(
        joint_ratio_max=3.0, worst_log_ratios={"op": 1.1}, hidden_by_heads=False, batch=1
    )
    emitter.emit_telemetry_drops("sanctum", 3)
    emitter.emit_training_failed("RuntimeError: x")
    emitter.emit_training_finished(episodes=1, updates=1, wall_seconds=1.0, run_dir="runs/a")
    assert [(e.event_type, e.severity) for e in sink.events] == [
        (EventType.PPO_UPDATE_COMPLETED, "info"),
        (EventType.PPO_UPDATE_SKIPPED, "warning"),
        (EventType.RATIO_EXPLOSION, "warning"),
        (EventType.TELEMETRY_DROPS, "warning"),
        (EventType.TRAINING_FAILED, "error"),
        (EventType.TRAINING_FINISHED, "info"),
    ]


def test_explosion_shares_split_the_positive_log_ratios() -> None:
    shares, driver = explosion_shares({"op": 0.3, "slot": 0.9, "blueprint": -0.2})
    assert shares == pytest.approx({"op": 0.25, "slot": 0.75, "blueprint": 0.0})
    assert driver == "slot"


def test_explosion_shares_of_a_collapse_use_magnitudes() -> None:
    shares, driver = explosion_shares({"op": -0.5, "tempo": -1.5})
    assert shares == pytest.approx({"op": 0.25, "tempo": 0.75})
    assert driver == "tempo"


def test_ratio_explosion_defaults_to_the_latest_update_and_names_drivers() -> None:
    emitter, sink = make_emitter()
    with pytest.raises(ValueError, match="update_index"):
        emitter.emit_ratio_explosion(
            joint_ratio_max=2.0, worst_log_ratios={"op": 0.7}, hidden_by_heads=True, batch=0
        )
    emitter.emit_ppo_update({}, batch=0)
    emitter.emit_ppo_update({}, batch=1)
    payload = emitter.emit_ratio_explosion(
        joint_ratio_max=4.3,
        worst_log_ratios={"slot": 0.6, "op": 0.4, "style": 0.0},
        hidden_by_heads=True,
        batch=1,
    )
    assert payload.update_index == 1
    assert payload.driver == "slot"
    assert sink.events[-1].message == (
        "update 1: joint 4.30 driven by slot (60%), op (40%) — every head inside clip"
    )


def test_training_failed_keeps_the_exception_and_its_traceback() -> None:
    emitter, _ = make_emitter()
    try:
        raise RuntimeError("loss is NaN")
    except RuntimeError as exc:
        payload = emitter.emit_training_failed(exc, batch=3)
    assert payload.error == "RuntimeError: loss is NaN"
    assert payload.traceback is not None
    assert "raise RuntimeError" in payload.traceback


def test_training_started_records_heads_and_config() -> None:
    emitter, sink = make_emitter()
    payload = emitter.emit_training_started(
        config={"lr": 3e-4},
        task="spirals",
        head_sizes={"op": 4, "slot": 3},
        episodes_total=10,
        n_envs=2,
        device="cpu",
    )
    assert payload.head_names == list(HEAD_NAMES)
    assert sink.events[0].event_type is EventType.TRAINING_STARTED
    assert payload.config == {"lr": 3e-4}


def test_ratio_explosion_keeps_an_attribution_made_by_the_caller() -> None:
    emitter, _ = make_emitter()
    payload = emitter.emit_ratio_explosion(
        joint_ratio_max=3.0,
        worst_log_ratios={"op": 0.2, "slot": 0.9},
        shares={"op": 0.6, "slot": 0.4},
        driver="op",
        hidden_by_heads=False,
        batch=0,
        update_index=5,
    )
    assert (payload.shares, payload.driver, payload.update_index) == (
        {"op": 0.6, "slot": 0.4},
        "op",
        5,
    )


def test_training_finished_says_whether_it_was_interrupted() -> None:
    emitter, sink = make_emitter()
    emitter.emit_training_finished(episodes=3, updates=1, wall_seconds=2.0, run_dir="r")
    payload = emitter.emit_training_finished(
        episodes=3, updates=1, wall_seconds=2.0, run_dir="r", interrupted=True
    )
    assert payload.interrupted
    assert [e.message for e in sink.events] == [
        "training finished: 3 episodes, 1 updates in 2.0 s",
        "training interrupted: 3 episodes, 1 updates in 2.0 s",
    ]
