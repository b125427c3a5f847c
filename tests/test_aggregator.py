"""SanctumAggregator: events in, the snapshot the dashboard draws out."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from esper.actions import HEAD_NAMES
from esper.sanctum.aggregator import (
    SanctumAggregator,
    SanctumBackend,
    aggregate_file,
    replay_snapshots,
)
from esper.sanctum.schema import EventLogEntry, SanctumSnapshot, SlotState
from esper.telemetry.contracts import TelemetryEvent
from esper.telemetry.emitter import TelemetryEmitter
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import EVENTS_FILE, RunRecorder


class Direct:
    """An event sink feeding an aggregator in the caller's thread (no hub)."""

    def __init__(self, aggregator: SanctumAggregator) -> None:
        self.aggregator = aggregator

    def publish(self, event: TelemetryEvent) -> None:
        self.aggregator.handle_event(event)


def wired(history_len: int = 120) -> tuple[SanctumAggregator, TelemetryEmitter]:
    aggregator = SanctumAggregator(history_len)
    ticks = itertools.count(1000)
    emitter = TelemetryEmitter(Direct(aggregator), "run-a", clock=lambda: float(next(ticks)))
    return aggregator, emitter


def lifecycle(emitter: TelemetryEmitter, env: int, slot: int, to: str, alpha: float) -> None:
    emitter.emit_seed_lifecycle(
        env_index=env, slot=slot, from_stage="X", to_stage=to, blueprint="MLP", alpha=alpha
    )


def episode(emitter: TelemetryEmitter, ret: float, grown: int = 0, killed: int = 0) -> None:
    emitter.emit_episode_completed(
        env_index=0,
        episode_return=ret,
        final_accuracy=ret / 10,
        seeds_grown=grown,
        seeds_fossilized=0,
        seeds_killed=killed,
        length=8,
    )


# ----------------------------------------------------------------------------- PPO updates


def test_snapshot_before_any_update_says_no_ppo_data() -> None:
    snap = SanctumAggregator().snapshot()
    assert snap == SanctumSnapshot()
    assert not snap.tamiyo.ppo_data_received
    assert snap.tamiyo.ppo_updates_count == 0
    assert not snap.is_stale


def test_ppo_update_sets_tamiyo_head_ratio_max() -> None:
    aggregator, emitter = wired()
    ratio_max = {h: 1.0 + 0.05 * (i + 1) for i, h in enumerate(HEAD_NAMES)}
    emitter.emit_ppo_update({f"head_{h}_ratio_max": r for h, r in ratio_max.items()}, batch=0)
    tamiyo = aggregator.snapshot().tamiyo
    assert tamiyo.head_op_ratio_max == ratio_max["op"]
    assert tamiyo.head_slot_ratio_max == ratio_max["slot"]
    assert tamiyo.head_blueprint_ratio_max == ratio_max["blueprint"]
    assert tamiyo.head_style_ratio_max == ratio_max["style"]
    assert tamiyo.head_tempo_ratio_max == ratio_max["tempo"]
    assert tamiyo.head_alpha_target_ratio_max == ratio_max["alpha_target"]
    assert tamiyo.head_alpha_speed_ratio_max == ratio_max["alpha_speed"]
    assert tamiyo.head_alpha_curve_ratio_max == ratio_max["alpha_curve"]
    assert {h: tamiyo.ratio_max(h) for h in HEAD_NAMES} == ratio_max
    assert tamiyo.ppo_data_received


def test_ppo_update_fills_head_stats_counts_and_update_wide_values() -> None:
    aggregator, emitter = wired()
    emitter.emit_ppo_update({"head_slot_ratio_max": 1.4}, batch=0)
    emitter.emit_ppo_update(
        {
            "head_slot_ratio_max": 1.3,
            "head_slot_ratio_min": 0.7,
            "head_slot_clip_fraction": 0.25,
            "head_slot_entropy": 0.6,
            "head_slot_approx_kl": 0.01,
            "head_slot_relevant": 40.0,
            "joint_ratio_max": 2.5,
            "approx_kl": 0.02,
            "clip_fraction": 0.3,
            "policy_loss": -0.1,
            "value_loss": 0.5,
            "entropy": 0.9,
            "explained_variance": 0.4,
            "epochs_run": 3.0,
            "early_stopped": 1.0,
            "minibatches_skipped": 1.0,
        },
        batch=1,
    )
    snap = aggregator.snapshot()
    t = snap.tamiyo
    slot = t.heads["slot"]
    assert (slot.ratio_min, slot.clip_fraction, slot.entropy) == (0.7, 0.25, 0.6)
    assert (slot.approx_kl, slot.relevant, slot.nonfinite) == (0.01, 40, 0)
    assert slot.ratio_max_history == (1.4, 1.3)
    assert t.heads["op"].relevant == 0  # the panel shows "no data" for it
    assert (t.ppo_updates_count, t.last_update_index, t.last_update_batch) == (2, 1, 1)
    assert t.last_update_time == 1001.0  # the event's timestamp (clock ticks from 1000)
    assert (t.joint_ratio_max, t.joint_ratio_max_history) == (2.5, (1.0, 2.5))
    assert (t.approx_kl, t.clip_fraction, t.policy_loss, t.value_loss) == (0.02, 0.3, -0.1, 0.5)
    assert (t.entropy, t.explained_variance) == (0.9, 0.4)
    assert (t.epochs_run, t.early_stopped, t.minibatches_skipped) == (3, True, 1)
    assert snap.progress.batches_done == 2
    assert snap.events_read == 2


def test_nan_and_inf_latch_per_head_and_stay_latched() -> None:
    aggregator, emitter = wired()
    emitter.emit_ppo_update(
        {
            "head_op_ratio_max": math.nan,
            "head_slot_ratio_min": math.inf,
            "head_tempo_nonfinite": 2.0,
        },
        batch=0,
    )
    emitter.emit_ppo_update({}, batch=1)  # everything healthy again
    heads = aggregator.snapshot().tamiyo.heads
    assert (heads["op"].nan_latched, heads["op"].inf_latched) == (True, False)
    assert (heads["slot"].nan_latched, heads["slot"].inf_latched) == (False, True)
    assert (heads["tempo"].nan_latched, heads["tempo"].inf_latched) == (True, False)
    assert heads["tempo"].nonfinite == 0  # the latest count, while the latch remembers
    latched = {h for h in HEAD_NAMES if heads[h].nan_latched or heads[h].inf_latched}
    assert latched == {"op", "slot", "tempo"}
    assert math.isnan(heads["op"].ratio_max_history[0])


def test_skipped_update_makes_the_snapshot_stale() -> None:
    aggregator, emitter = wired()
    emitter.emit_ppo_update({"head_op_ratio_max": 1.1}, batch=0)
    assert not aggregator.snapshot().is_stale
    emitter.emit_ppo_skipped(reason="all minibatches non-finite", batch=1)
    snap = aggregator.snapshot()
    assert snap.is_stale
    assert snap.progress.batches_done == 2
    assert snap.tamiyo.last_update_batch == 0
    assert snap.tamiyo.head_op_ratio_max == 1.1  # kept, but flagged stale
    assert snap.events[-1].severity == "warning"
    assert "skipped" in snap.events[-1].message
    emitter.emit_ppo_update({}, batch=2)
    assert not aggregator.snapshot().is_stale


def test_skipped_update_latches_its_nonfinite_heads_at_once() -> None:
    aggregator, emitter = wired()
    emitter.emit_ppo_update({"head_slot_ratio_max": 1.1}, batch=0)
    emitter.emit_ppo_skipped(reason="non-finite", batch=1, nonfinite={"slot": 12, "op": 0})
    heads = aggregator.snapshot().tamiyo.heads
    assert heads["slot"].nan_latched
    assert not heads["op"].nan_latched  # a zero count latches nothing
    emitter.emit_ppo_update({}, batch=2)  # latches stay after a healthy update
    assert aggregator.snapshot().tamiyo.heads["slot"].nan_latched


def test_resumed_run_is_live_again_after_its_interrupted_end() -> None:
    aggregator, emitter = wired()
    started = {"config": {}, "task": "spirals", "head_sizes": {"slot": 3}, "episodes_total": 4,
               "n_envs": 2, "device": "cpu"}  # fmt: skip
    emitter.emit_training_started(**started)
    emitter.emit_training_finished(
        episodes=2, updates=1, wall_seconds=1.0, run_dir="r", interrupted=True
    )
    assert aggregator.snapshot().progress.finished
    emitter.emit_training_started(**started, resumed_from_update=1)
    snap = aggregator.snapshot()
    assert not snap.progress.finished
    assert "resumed at update 1" in snap.events[-1].message


@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=40), st.integers(1, 8))
def test_histories_are_bounded_rings_of_the_latest_updates(values: list[float], n: int) -> None:
    aggregator, emitter = wired(history_len=n)
    for batch, value in enumerate(values):
        emitter.emit_ppo_update(
            {"head_blueprint_ratio_max": value, "joint_ratio_max": value}, batch=batch
        )
    t = aggregator.snapshot().tamiyo
    assert t.heads["blueprint"].ratio_max_history == tuple(values[-n:])
    assert t.joint_ratio_max_history == tuple(values[-n:])
    assert t.head_blueprint_ratio_max == values[-1]
    assert t.ppo_updates_count == len(values)


def test_event_log_is_bounded() -> None:
    aggregator = SanctumAggregator(event_log_len=3)
    ticks = itertools.count()
    emitter = TelemetryEmitter(Direct(aggregator), "r", clock=lambda: float(next(ticks)))
    for batch in range(5):
        emitter.emit_ppo_update({}, batch=batch)
    events = aggregator.snapshot().events
    assert [e.timestamp for e in events] == [2.0, 3.0, 4.0]


# ----------------------------------------------------------------------------- other events


def test_ratio_explosion_log_names_the_driving_heads() -> None:
    aggregator, emitter = wired()
    emitter.emit_ppo_update({}, batch=0)
    emitter.emit_ratio_explosion(
        joint_ratio_max=4.3,
        worst_log_ratios={"slot": 0.6, "op": 0.32, "tempo": 0.54},
        hidden_by_heads=True,
        batch=0,
    )
    entry = aggregator.snapshot().events[-1]
    assert entry == EventLogEntry(
        1001.0,
        "warning",
        "update 0: joint 4.30 driven by slot (41%), tempo (37%), op (22%) — every head inside clip",
    )


def test_slots_show_environment_zero_only() -> None:
    aggregator, emitter = wired()
    emitter.emit_training_started(
        config={}, task="spirals", head_sizes={"slot": 3}, episodes_total=4, n_envs=2, device="cpu"
    )
    lifecycle(emitter, env=0, slot=1, to="TRAINING", alpha=0.0)
    lifecycle(emitter, env=1, slot=2, to="BLENDING", alpha=0.5)  # another env's host
    lifecycle(emitter, env=0, slot=1, to="BLENDING", alpha=0.25)
    assert aggregator.snapshot().slots == (
        SlotState(index=0),
        SlotState(index=1, stage="BLENDING", blueprint="MLP", alpha=0.25),
        SlotState(index=2),
    )


def test_run_info_and_episode_stats() -> None:
    aggregator, emitter = wired()
    emitter.emit_training_started(
        config={}, task="digits", head_sizes={"slot": 2}, episodes_total=8, n_envs=4, device="cpu"
    )
    episode(emitter, 1.0, grown=2)
    episode(emitter, 2.0, killed=1)
    episode(emitter, 6.0, grown=1)
    snap = aggregator.snapshot()
    assert (snap.run.run_id, snap.run.task, snap.run.episodes_total) == ("run-a", "digits", 8)
    assert (snap.run.n_envs, snap.run.started_at) == (4, 1000.0)
    e = snap.episodes
    assert (e.last_return, e.mean_return, e.last_accuracy) == (6.0, 3.0, 0.6)
    assert e.return_history == (1.0, 2.0, 6.0)
    assert (e.seeds_grown, e.seeds_fossilized, e.seeds_killed) == (3, 0, 1)
    assert snap.progress.episodes_done == 3
    assert snap.progress.batches_done == 0  # episodes do not advance batches


def test_drops_sum_the_latest_count_of_each_backend() -> None:
    aggregator, emitter = wired()
    emitter.emit_telemetry_drops("sanctum", 3)
    emitter.emit_telemetry_drops("sanctum", 5, failed=1)  # cumulative: replaces 3
    emitter.emit_telemetry_drops("console", 2)
    snap = aggregator.snapshot()
    assert snap.drops == 8
    assert snap.events[-1].severity == "warning"


def test_finish_and_failure_end_the_run() -> None:
    aggregator, emitter = wired()
    emitter.emit_training_failed("RuntimeError: boom")
    snap = aggregator.snapshot()
    assert (snap.progress.failed, snap.progress.failure) == (True, "RuntimeError: boom")
    assert snap.events[-1].severity == "error"
    emitter.emit_training_finished(episodes=0, updates=0, wall_seconds=1.0, run_dir="r")
    assert aggregator.snapshot().progress.finished
    assert aggregator.snapshot().progress.last_event_time == 1001.0


def test_snapshot_is_a_copy_unaffected_by_later_events_or_by_its_readers() -> None:
    aggregator, emitter = wired()
    emitter.emit_ppo_update({"head_op_ratio_max": 1.1}, batch=0)
    first = aggregator.snapshot()
    first.tamiyo.heads.clear()  # a careless reader
    emitter.emit_ppo_update({"head_op_ratio_max": 1.9}, batch=1)
    assert first.tamiyo.head_op_ratio_max == 1.1
    assert first.tamiyo.heads == {}
    second = aggregator.snapshot()
    assert set(second.tamiyo.heads) == set(HEAD_NAMES)
    assert second.tamiyo.heads["op"].ratio_max_history == (1.1, 1.9)


# ----------------------------------------------------------------------------- live == replay


def emit_a_run(emitter: TelemetryEmitter) -> None:
    """A small but complete run touching every handler."""
    emitter.emit_training_started(
        config={"lr": 0.001}, task="spirals", head_sizes={"slot": 3}, episodes_total=4,
        n_envs=2, device="cpu",
    )  # fmt: skip
    for batch in range(4):
        lifecycle(emitter, env=0, slot=batch % 3, to="TRAINING", alpha=0.1 * batch)
        lifecycle(emitter, env=1, slot=0, to="BLENDING", alpha=0.3)
        episode(emitter, 1.0 + batch)
        episode(emitter, 0.5 * batch, grown=1)
        if batch == 2:
            emitter.emit_ppo_skipped(reason="all minibatches non-finite", batch=batch)
            continue
        emitter.emit_ppo_update(
            {
                **{
                    f"head_{h}_ratio_max": 1.0 + 0.01 * i * (batch + 1)
                    for i, h in enumerate(HEAD_NAMES)
                },
                **{f"head_{h}_relevant": float(4 * i) for i, h in enumerate(HEAD_NAMES)},
                "head_alpha_curve_nonfinite": float(batch == 3),
                "joint_ratio_max": 1.2 + batch,
                "approx_kl": 0.001 * batch,
            },
            batch=batch,
            mean_return=1.0,
        )
        if batch == 3:
            emitter.emit_ratio_explosion(
                joint_ratio_max=4.2,
                worst_log_ratios={"op": 0.5, "slot": 0.9},
                hidden_by_heads=False,
                batch=3,
            )
    emitter.emit_training_finished(episodes=8, updates=4, wall_seconds=2.0, run_dir="runs/live")


def test_replayed_run_gives_the_same_snapshot_as_the_live_one(tmp_path: Path) -> None:
    live = SanctumAggregator()
    hub = TelemetryHub([RunRecorder(tmp_path, {"lr": 0.001}), SanctumBackend(live)])
    ticks = itertools.count(5000)
    emit_a_run(TelemetryEmitter(hub, "run-live", clock=lambda: float(next(ticks))))
    hub.close()
    live_snapshot = live.snapshot()
    replayed = aggregate_file(tmp_path / EVENTS_FILE)
    assert replayed == live_snapshot
    # start + 4 x (2 lifecycle + 2 episodes) + 3 updates + skip + explosion + finished
    assert replayed.events_read == 23
    assert replayed.is_stale is False and replayed.progress.finished
    assert replayed.tamiyo.heads["alpha_curve"].nan_latched


def test_replay_counts_lines_it_skipped(tmp_path: Path) -> None:
    with TelemetryHub([RunRecorder(tmp_path, {})]) as hub:
        TelemetryEmitter(hub, "r").emit_ppo_update({}, batch=0)
    with open(tmp_path / EVENTS_FILE, "a") as f:
        f.write("garbage\n{}\n" + '{"event_type": "PPO_')  # two bad lines and a torn one
    snap = aggregate_file(tmp_path / EVENTS_FILE)
    assert (snap.events_read, snap.lines_skipped) == (1, 3)
    assert snap.tamiyo.ppo_updates_count == 1


def test_replay_gives_one_frame_per_update_with_its_annotations(tmp_path: Path) -> None:
    with TelemetryHub([RunRecorder(tmp_path, {})]) as hub:
        ticks = itertools.count(5000)
        emit_a_run(TelemetryEmitter(hub, "run-live", clock=lambda: float(next(ticks))))
    with open(tmp_path / EVENTS_FILE, "a") as f:
        f.write("torn")
    frames = replay_snapshots(tmp_path / EVENTS_FILE)
    assert [f.progress.batches_done for f in frames] == [1, 2, 3, 4]
    assert [f.tamiyo.last_update_batch for f in frames] == [0, 1, 1, 3]
    assert [f.is_stale for f in frames] == [False, False, True, False]  # batch 2 was skipped
    assert [f.episodes.return_history[-1] for f in frames] == [0.0, 0.5, 1.0, 1.5]
    last = frames[-1]  # the explosion and the end belong to the last update's frame
    assert "driven by slot" in last.events[-2].message
    assert last.progress.finished
    assert last == aggregate_file(tmp_path / EVENTS_FILE)
    assert last.lines_skipped == 1


def test_best_return_is_the_running_maximum_and_skips_nan() -> None:
    from esper.sanctum.aggregator import _best

    best = None
    for value, expected in ((0.5, 0.5), (0.3, 0.5), (float("nan"), 0.5), (0.9, 0.9)):
        best = _best(best, value)
        assert best == expected
