"""SanctumAggregator: events in, the snapshot the dashboard draws out."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from factories import update_stats
from hypothesis import given
from hypothesis import strategies as st

from esper import __version__
from esper.morpho.actions import HEAD_NAMES
from esper.sanctum.aggregator import (
    SanctumAggregator,
    SanctumBackend,
    aggregate_file,
    replay_snapshots,
)
from esper.sanctum.schema import EventLogEntry, SanctumSnapshot, SlotState
from esper.telemetry.contracts import (
    EpisodeCompleted,
    PPOUpdateSkipped,
    SeedLifecycle,
    TelemetryDrops,
    TelemetryEvent,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
)
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import ExplosionReport, HeadStats, explosion_shares
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


def started(heads: Sequence[str] = HEAD_NAMES, slots: int = 3, **overrides: Any) -> TrainingStarted:
    """A start event declaring `heads` (the `slot` head, if any, sized `slots`)."""
    fields: dict[str, Any] = {
        "config": {},
        "task": "spirals",
        "head_names": list(heads),
        "head_sizes": {h: slots if h == "slot" else 3 for h in heads},
        "episodes_total": 4,
        "n_envs": 2,
        "device": "cpu",
        "esper_version": __version__,
    }
    return TrainingStarted(**(fields | overrides))


def update(
    emitter: TelemetryEmitter,
    batch: int,
    heads: Mapping[str, HeadStats] | None = None,
    names: Sequence[str] = HEAD_NAMES,
    **scalars: Any,
) -> None:
    """One completed update of heads `names`: `heads` as given, the others neutral."""
    mean_return = scalars.pop("mean_return", None)
    stats = update_stats(heads, names, **scalars)
    emit_update(emitter, stats, batch=batch, mean_return=mean_return)


def lifecycle(emitter: TelemetryEmitter, env: int, slot: int, to: str, alpha: float) -> None:
    emitter.emit(
        SeedLifecycle(
            env_index=env, slot=slot, from_stage="X", to_stage=to, blueprint="MLP", alpha=alpha
        )
    )


def episode(emitter: TelemetryEmitter, ret: float, grown: int = 0, killed: int = 0) -> None:
    emitter.emit(
        EpisodeCompleted(
            env_index=0,
            episode_return=ret,
            final_accuracy=ret / 10,
            seeds_grown=grown,
            seeds_fossilized=0,
            seeds_killed=killed,
            length=8,
        )
    )


def skipped(emitter: TelemetryEmitter, batch: int, nonfinite: dict[str, int] | None = None) -> None:
    emitter.emit(
        PPOUpdateSkipped(
            reason="all minibatches non-finite",
            batch=batch,
            update_index=emitter.take_update_index(),
            nonfinite=nonfinite or {},
        ),
        batch=batch,
    )


def finished(emitter: TelemetryEmitter, interrupted: bool = False) -> None:
    emitter.emit(
        TrainingFinished(
            episodes=2, updates=1, wall_seconds=1.0, run_dir="r", interrupted=interrupted
        )
    )


def explosion(log_ratios: dict[str, float], joint: float, hidden: bool) -> ExplosionReport:
    shares = explosion_shares(log_ratios)
    return ExplosionReport(
        joint_ratio_max=joint,
        worst_log_ratios=log_ratios,
        shares=shares,
        driver=max(shares, key=shares.__getitem__),
        hidden_by_heads=hidden,
    )


# ----------------------------------------------------------------------------- PPO updates


def test_snapshot_before_any_update_says_no_ppo_data() -> None:
    snap = SanctumAggregator().snapshot()
    assert snap == SanctumSnapshot()
    assert not snap.tamiyo.ppo_data_received
    assert snap.tamiyo.ppo_updates_count == 0
    assert snap.tamiyo.head_names == ()
    assert not snap.is_stale


def test_ppo_update_sets_every_heads_ratio_max() -> None:
    aggregator, emitter = wired()
    ratio_max = {h: 1.0 + 0.05 * (i + 1) for i, h in enumerate(HEAD_NAMES)}
    update(emitter, 0, {h: HeadStats(ratio_max=r, relevant=1) for h, r in ratio_max.items()})
    tamiyo = aggregator.snapshot().tamiyo
    assert tamiyo.head_names == HEAD_NAMES  # no start event: the update's order
    assert {h: tamiyo.ratio_max(h) for h in HEAD_NAMES} == ratio_max
    assert {h: tamiyo.heads[h].stats.ratio_max for h in HEAD_NAMES} == ratio_max  # type: ignore[union-attr]
    assert tamiyo.ppo_data_received


def test_ppo_update_keeps_each_heads_record_as_measured() -> None:
    aggregator, emitter = wired()
    update(emitter, 0, {"slot": HeadStats(ratio_max=1.4)})
    slot = HeadStats(
        ratio_max=1.3, ratio_min=0.7, clip_fraction=0.25, entropy=0.6, approx_kl=0.01, relevant=40
    )
    update(
        emitter,
        1,
        {"slot": slot},
        joint_ratio_max=2.5,
        approx_kl=0.02,
        clip_fraction=0.3,
        policy_loss=-0.1,
        value_loss=0.5,
        entropy=0.9,
        explained_variance=0.4,
        epochs_run=3,
        early_stopped=True,
        minibatches_run=4,
        minibatches_skipped=1,
    )
    snap = aggregator.snapshot()
    t = snap.tamiyo
    assert t.heads["slot"].stats == slot  # the record itself, nothing rebuilt by name
    assert t.heads["slot"].ratio_max_history == (1.4, 1.3)
    assert t.heads["op"].stats == HeadStats()  # relevant 0: the panel shows "no data"
    assert (t.ppo_updates_count, t.last_update_index, t.last_update_batch) == (2, 1, 1)
    u = t.update
    assert u is not None  # the update-wide values, as the update carried them
    assert (u.joint_ratio_max, u.approx_kl, u.clip_fraction) == (2.5, 0.02, 0.3)
    assert (u.policy_loss, u.value_loss, u.entropy, u.explained_variance) == (-0.1, 0.5, 0.9, 0.4)
    assert (u.epochs_run, u.early_stopped, u.minibatches_skipped) == (3, True, 1)
    assert snap.progress.batches_done == 2
    assert snap.events_read == 2


def test_nan_and_inf_latch_per_head_and_stay_latched() -> None:
    aggregator, emitter = wired()
    update(
        emitter,
        0,
        {
            "op": HeadStats(ratio_max=math.nan),
            "slot": HeadStats(ratio_min=math.inf),
            "tempo": HeadStats(nonfinite=2),
        },
    )
    update(emitter, 1)  # everything healthy again
    heads = aggregator.snapshot().tamiyo.heads
    assert (heads["op"].nan_latched, heads["op"].inf_latched) == (True, False)
    assert (heads["slot"].nan_latched, heads["slot"].inf_latched) == (False, True)
    assert (heads["tempo"].nan_latched, heads["tempo"].inf_latched) == (True, False)
    assert heads["tempo"].stats == HeadStats()  # the latest count, while the latch remembers
    latched = {h for h in HEAD_NAMES if heads[h].nan_latched or heads[h].inf_latched}
    assert latched == {"op", "slot", "tempo"}
    assert math.isnan(heads["op"].ratio_max_history[0])


def test_huge_finite_ratios_latch_nothing() -> None:
    """The fold's quick check sums the ratio ends; an overflowing sum is not a NaN."""
    aggregator, emitter = wired()
    update(emitter, 0, {h: HeadStats(ratio_max=1e308, ratio_min=1e308) for h in HEAD_NAMES})
    heads = aggregator.snapshot().tamiyo.heads
    assert not any(s.nan_latched or s.inf_latched for s in heads.values())


def test_skipped_update_makes_the_snapshot_stale() -> None:
    aggregator, emitter = wired()
    update(emitter, 0, {"op": HeadStats(ratio_max=1.1)})
    assert not aggregator.snapshot().is_stale
    skipped(emitter, 1)
    snap = aggregator.snapshot()
    assert snap.is_stale
    assert snap.progress.batches_done == 2
    assert snap.tamiyo.last_update_batch == 0
    assert snap.tamiyo.ratio_max("op") == 1.1  # kept, but flagged stale
    assert snap.events[-1].severity == "warning"
    assert "skipped" in snap.events[-1].message
    update(emitter, 2)
    assert not aggregator.snapshot().is_stale


def test_update_index_not_count_names_the_shown_update() -> None:
    """A skipped update takes an index: the next completed one is update 2, the 2nd shown."""
    aggregator, emitter = wired()
    update(emitter, 0)
    skipped(emitter, 1)
    update(emitter, 2)
    t = aggregator.snapshot().tamiyo
    assert (t.last_update_index, t.ppo_updates_count) == (2, 2)


def test_skipped_update_latches_its_nonfinite_heads_at_once() -> None:
    aggregator, emitter = wired()
    update(emitter, 0, {"slot": HeadStats(ratio_max=1.1)})
    skipped(emitter, 1, nonfinite={"slot": 12, "op": 0})
    heads = aggregator.snapshot().tamiyo.heads
    assert heads["slot"].nan_latched
    assert not heads["op"].nan_latched  # a zero count latches nothing
    update(emitter, 2)  # latches stay after a healthy update
    assert aggregator.snapshot().tamiyo.heads["slot"].nan_latched


def test_resumed_run_is_live_again_after_its_interrupted_end() -> None:
    aggregator, emitter = wired()
    emitter.emit(started())
    finished(emitter, interrupted=True)
    assert aggregator.snapshot().progress.finished
    emitter.emit(started(resumed_from_update=1))
    snap = aggregator.snapshot()
    assert not snap.progress.finished
    assert "resumed at update 1" in snap.events[-1].message
    assert snap.tamiyo.head_names == HEAD_NAMES  # declared twice, listed once


@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=40), st.integers(1, 8))
def test_histories_are_bounded_rings_of_the_latest_updates(values: list[float], n: int) -> None:
    aggregator, emitter = wired(history_len=n)
    for batch, value in enumerate(values):
        update(emitter, batch, {"blueprint": HeadStats(ratio_max=value)}, joint_ratio_max=value)
    t = aggregator.snapshot().tamiyo
    assert t.heads["blueprint"].ratio_max_history == tuple(values[-n:])
    assert t.joint_ratio_max_history == tuple(values[-n:])
    assert t.ratio_max("blueprint") == values[-1]
    assert t.ppo_updates_count == len(values)


def test_event_log_is_bounded() -> None:
    aggregator = SanctumAggregator(event_log_len=3)
    ticks = itertools.count()
    emitter = TelemetryEmitter(Direct(aggregator), "r", clock=lambda: float(next(ticks)))
    for batch in range(5):
        update(emitter, batch)
    events = aggregator.snapshot().events
    assert [e.timestamp for e in events] == [2.0, 3.0, 4.0]


# ----------------------------------------------------------------------------- any heads


def test_heads_are_the_runs_in_the_declared_order() -> None:
    """TRAINING_STARTED declares the heads: their order wins over an update's."""
    aggregator, emitter = wired()
    emitter.emit(started(("z", "y", "x")))
    t = aggregator.snapshot().tamiyo
    assert t.head_names == ("z", "y", "x") and not t.ppo_data_received
    assert all(t.heads[h].stats is None for h in t.head_names)  # declared, not yet measured
    update(emitter, 0, {"x": HeadStats(ratio_max=1.3, relevant=2)}, names=("x", "y", "z"))
    t = aggregator.snapshot().tamiyo
    assert t.head_names == ("z", "y", "x")
    assert t.ratio_max("x") == 1.3 and t.heads["y"].stats == HeadStats()


def test_heads_first_seen_later_join_at_the_end() -> None:
    aggregator, emitter = wired()
    emitter.emit(started(("a", "b")))
    update(emitter, 0, {"a": HeadStats(ratio_max=1.1)}, names=("a", "b"))
    update(emitter, 1, {"c": HeadStats(ratio_max=1.2)}, names=("a", "c"))
    t = aggregator.snapshot().tamiyo
    assert t.head_names == ("a", "b", "c")
    assert t.heads["b"].stats is None  # the latest update did not carry b: no data
    assert t.heads["b"].ratio_max_history == (1.0, 1.0)  # neutral, aligned with the joint
    assert t.heads["c"].ratio_max_history == (1.2,)
    assert len(t.joint_ratio_max_history) == 2


def test_a_skip_names_heads_before_any_update() -> None:
    aggregator, emitter = wired()
    skipped(emitter, 0, nonfinite={"grip": 4})
    t = aggregator.snapshot().tamiyo
    assert t.head_names == ("grip",) and t.heads["grip"].nan_latched
    assert t.heads["grip"].stats is None and not t.ppo_data_received


@given(
    st.lists(
        st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True), min_size=1, max_size=32, unique=True
    ),
    st.integers(1, 4),
)
def test_any_heads_fold_like_esper_heads(names: list[str], updates: int) -> None:
    """1 to 32 heads under any names: each one's record, history and order come through."""
    aggregator, emitter = wired()
    emitter.emit(started(names))
    for k in range(updates):
        heads = {
            h: HeadStats(ratio_max=1.0 + 0.01 * i + k, relevant=i) for i, h in enumerate(names)
        }
        update(emitter, k, heads, names=names, joint_ratio_max=2.0 + k)
    t = aggregator.snapshot().tamiyo
    assert t.head_names == tuple(names)
    for i, h in enumerate(names):
        assert t.heads[h].stats == HeadStats(ratio_max=1.0 + 0.01 * i + (updates - 1), relevant=i)
        assert t.heads[h].ratio_max_history == tuple(1.0 + 0.01 * i + k for k in range(updates))
    assert t.last_update_index == updates - 1


# ----------------------------------------------------------------------------- other events


def test_ratio_explosion_log_names_the_driving_heads() -> None:
    aggregator, emitter = wired()
    report = explosion({"slot": 0.6, "op": 0.32, "tempo": 0.54}, joint=4.3, hidden=True)
    update(emitter, 0, explosion=report)
    entry = aggregator.snapshot().events[-1]
    assert entry == EventLogEntry(
        1001.0,
        "warning",
        "update 0: joint 4.30 driven by slot (41%), tempo (37%), op (22%) — every head inside clip",
    )


def test_slots_show_environment_zero_only() -> None:
    aggregator, emitter = wired()
    emitter.emit(started())
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
    emitter.emit(started(slots=2, task="digits", episodes_total=8, n_envs=4))
    episode(emitter, 1.0, grown=2)
    episode(emitter, 2.0, killed=1)
    episode(emitter, 6.0, grown=1)
    snap = aggregator.snapshot()
    assert (snap.run.run_id, snap.run.task, snap.run.episodes_total) == ("run-a", "digits", 8)
    assert (snap.run.n_envs, snap.run.started_at, snap.run.host_slots) == (4, 1000.0, 2)
    e = snap.episodes
    assert (e.last_return, e.mean_return, e.last_accuracy) == (6.0, 3.0, 0.6)
    assert e.return_history == (1.0, 2.0, 6.0)
    assert (e.seeds_grown, e.seeds_fossilized, e.seeds_killed) == (3, 0, 1)
    assert snap.progress.episodes_done == 3
    assert snap.progress.batches_done == 0  # episodes do not advance batches


def test_drops_sum_the_latest_count_of_each_backend() -> None:
    aggregator, emitter = wired()
    emitter.emit(TelemetryDrops(backend="sanctum", dropped=3))
    emitter.emit(TelemetryDrops(backend="sanctum", dropped=5, failed=1))  # cumulative
    emitter.emit(TelemetryDrops(backend="console", dropped=2))
    snap = aggregator.snapshot()
    assert snap.drops == 8
    assert snap.events[-1].severity == "warning"


def test_finish_and_failure_end_the_run() -> None:
    aggregator, emitter = wired()
    emitter.emit(TrainingFailed(error="RuntimeError: boom"))
    snap = aggregator.snapshot()
    assert (snap.progress.failed, snap.progress.failure) == (True, "RuntimeError: boom")
    assert snap.events[-1].severity == "error"
    finished(emitter)
    assert aggregator.snapshot().progress.finished
    assert aggregator.snapshot().progress.last_event_time == 1001.0


def test_snapshot_is_a_copy_unaffected_by_later_events_or_by_its_readers() -> None:
    aggregator, emitter = wired()
    update(emitter, 0, {"op": HeadStats(ratio_max=1.1)})
    first = aggregator.snapshot()
    first.tamiyo.heads.clear()  # type: ignore[attr-defined]  # a careless reader
    update(emitter, 1, {"op": HeadStats(ratio_max=1.9)})
    assert first.tamiyo.ratio_max("op") == 1.0  # its heads were cleared, not refilled
    assert first.tamiyo.heads == {}
    second = aggregator.snapshot()
    assert set(second.tamiyo.heads) == set(HEAD_NAMES)
    assert second.tamiyo.heads["op"].ratio_max_history == (1.1, 1.9)


# ----------------------------------------------------------------------------- live == replay


def emit_a_run(emitter: TelemetryEmitter) -> None:
    """A small but complete run touching every handler."""
    emitter.emit(started(config={"lr": 0.001}))
    for batch in range(4):
        lifecycle(emitter, env=0, slot=batch % 3, to="TRAINING", alpha=0.1 * batch)
        lifecycle(emitter, env=1, slot=0, to="BLENDING", alpha=0.3)
        episode(emitter, 1.0 + batch)
        episode(emitter, 0.5 * batch, grown=1)
        if batch == 2:
            skipped(emitter, batch)
            continue
        heads = {
            h: HeadStats(
                ratio_max=1.0 + 0.01 * i * (batch + 1),
                relevant=4 * i,
                nonfinite=int(batch == 3 and h == "alpha_curve"),
            )
            for i, h in enumerate(HEAD_NAMES)
        }
        report = explosion({"op": 0.5, "slot": 0.9}, joint=4.2, hidden=False)
        update(
            emitter,
            batch,
            heads,
            joint_ratio_max=1.2 + batch,
            approx_kl=0.001 * batch,
            mean_return=1.0,
            explosion=report if batch == 3 else None,
        )
    emitter.emit(TrainingFinished(episodes=8, updates=4, wall_seconds=2.0, run_dir="runs/live"))


def test_replayed_run_gives_the_same_snapshot_as_the_live_one(tmp_path: Path) -> None:
    live = SanctumAggregator()
    hub = TelemetryHub([RunRecorder(tmp_path, {"lr": 0.001}), SanctumBackend(live)])
    ticks = itertools.count(5000)
    emit_a_run(TelemetryEmitter(hub, "run-live", clock=lambda: float(next(ticks))))
    hub.close()
    live_snapshot = live.snapshot()
    replayed = aggregate_file(tmp_path / EVENTS_FILE)
    assert replayed == live_snapshot
    assert replayed.tamiyo.head_names == live_snapshot.tamiyo.head_names == HEAD_NAMES
    # start + 4 x (2 lifecycle + 2 episodes) + 3 updates + skip + explosion + finished
    assert replayed.events_read == 23
    assert replayed.is_stale is False and replayed.progress.finished
    assert replayed.tamiyo.heads["alpha_curve"].nan_latched


def test_replay_counts_lines_it_skipped(tmp_path: Path) -> None:
    with TelemetryHub([RunRecorder(tmp_path, {})]) as hub:
        update(TelemetryEmitter(hub, "r"), 0)
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
    assert [f.tamiyo.last_update_index for f in frames] == [0, 1, 1, 3]  # 2 was skipped
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
