"""Folds telemetry events into the `SanctumSnapshot` the dashboard draws.

One entry point, `handle_event`, dispatches by event type. The state depends on the
events only (their timestamps, never the wall clock), so a run followed live and the same
run replayed from `events.jsonl` give equal snapshots. Every history is a bounded ring:
memory does not grow with the length of the run. `snapshot()` may be called from another
thread (the TUI's) while events arrive; both sides take the same lock.

An update event only records its payload, appends to the histories and folds the
latches; the `TamiyoState` (a `HeadState` per head and the history tuples) is built when a
snapshot asks for it and kept until the next PPO event. Events arrive far more often
than the dashboard polls, so copying (heads + 1) x `history_len` floats per event (as
building the state per event would) dominated the ingest cost.

Decisions the widgets rely on:

- The heads are the run's: TRAINING_STARTED declares them in display order; a log
  without one takes them from its first update (in the update's order). A head first
  seen later (in an update or a skip's non-finite counts) joins at the end. A declared
  head that an update does not carry shows "no data" for that update and its history
  gets the neutral 1.0 (as for an update that had no relevant sample of it), so every
  head's sparkline stays aligned with the joint's.

- The health bands are the run's: TRAINING_STARTED records its clip range, and a log
  without one (or whose start records none) gets the spec's eps 0.2 bands.
- Per-head NaN/Inf latches stay set for the rest of the run. A head latches NaN when its
  ratio max or min is NaN or its `nonfinite` count is positive (a count cannot tell NaN
  from inf, and both mean "skipped as unusable"); it latches Inf when its ratio max or
  min is +-inf.
- The slots panel shows environment 0's host: SEED_LIFECYCLE events of other envs
  are ignored here (episode totals come from EPISODE_COMPLETED).
- `Progress.batches_done` advances on PPO_UPDATE_COMPLETED and PPO_UPDATE_SKIPPED only
  (batch + 1), so a skipped update makes `SanctumSnapshot.is_stale` true.
- `EpisodeStats.seeds_*` are run totals; `mean_return` is over the last
  `RETURN_MEAN_WINDOW` episodes, `return_history` the last `history_len`.
- `SanctumSnapshot.drops` sums, over backends, the latest cumulative count of events
  each lost (dropped on a full queue or failed on).
- `SanctumSnapshot.workers` holds each env worker's latest WORKER_STATUS; a
  WORKER_RESTARTED marks the worker alive with its new restart count at once. Statuses
  go to the event log only for a dead worker, restarts always.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from esper.sanctum.schema import (
    EVENT_LOG_LEN,
    HISTORY_LEN,
    EpisodeStats,
    EventLogEntry,
    HeadState,
    Progress,
    RunInfo,
    SanctumSnapshot,
    SlotState,
    TamiyoState,
    WorkerState,
)
from esper.telemetry.contracts import (
    EpisodeCompleted,
    EventType,
    PPOUpdatePayload,
    PPOUpdateSkipped,
    RatioExplosion,
    SeedLifecycle,
    TelemetryDrops,
    TelemetryEvent,
    TrainingFailed,
    TrainingStarted,
    WorkerRestarted,
    WorkerStatus,
)
from esper.telemetry.heads import NEUTRAL_RATIO, SPEC_BANDS, HeadStats, RatioBands
from esper.telemetry.recorder import ReadStats, committed_events, read_events

#: How many recent episodes `EpisodeStats.mean_return` averages.
RETURN_MEAN_WINDOW = 20
#: The environment whose host the slots panel shows.
SLOTS_ENV = 0
#: Events that begin the next batch's activity and so close a replay frame; the others
#: (explosions, drops, the run's end) annotate the update before them.
_NEXT_BATCH_EVENTS: frozenset[EventType] = frozenset(
    {
        EventType.EPISODE_COMPLETED,
        EventType.SEED_LIFECYCLE,
        EventType.PPO_UPDATE_COMPLETED,
        EventType.PPO_UPDATE_SKIPPED,
        EventType.WORKER_STATUS,
        EventType.WORKER_RESTARTED,
    }
)
_UPDATE_EVENTS = frozenset({EventType.PPO_UPDATE_COMPLETED, EventType.PPO_UPDATE_SKIPPED})


def nonfinite_latches(ratio_max: float, ratio_min: float, nonfinite: int) -> tuple[bool, bool]:
    """(NaN seen, Inf seen) for one head in one update; see the module docstring."""
    nan = nonfinite > 0 or math.isnan(ratio_max) or math.isnan(ratio_min)
    inf = math.isinf(ratio_max) or math.isinf(ratio_min)
    return nan, inf


def _best(best: float | None, value: float) -> float | None:
    """The larger of the best so far and a new return; a NaN return is never the best."""
    if math.isnan(value):
        return best
    return value if best is None or value > best else best


def _mean(values: deque[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


class SanctumAggregator:
    """Thread-safe fold of telemetry events into a `SanctumSnapshot`."""

    def __init__(
        self,
        history_len: int = HISTORY_LEN,
        *,
        event_log_len: int = EVENT_LOG_LEN,
        return_window: int = RETURN_MEAN_WINDOW,
    ) -> None:
        self._lock = threading.Lock()
        self._run = RunInfo()
        self._episodes_done = 0
        self._batches_done = 0
        self._last_event_time: float | None = None
        self._finished = False
        self._failed = False
        self._failure: str | None = None
        self._ppo: PPOUpdatePayload | None = None  # the latest completed update
        self._ppo_batch: int | None = None
        self._ppo_time: float | None = None
        self._ppo_count = 0
        self._tamiyo: TamiyoState | None = TamiyoState()  # None: rebuild on the next snapshot
        self._history_len = history_len
        self._head_names: tuple[str, ...] = ()  # the run's heads, in display order
        self._bands = SPEC_BANDS  # the run's health bands (from its start event)
        self._histories: dict[str, deque[float]] = {}  # head -> ratio max per update
        self._joint_history = deque[float](maxlen=history_len)
        self._nan_latched: set[str] = set()
        self._inf_latched: set[str] = set()
        self._episodes = EpisodeStats()
        self._returns = deque[float](maxlen=history_len)
        self._recent_returns = deque[float](maxlen=return_window)
        self._slots: dict[int, SlotState] = {}
        self._log = deque[EventLogEntry](maxlen=event_log_len)
        self._events_read = 0
        self._lines_skipped = 0
        self._lost: dict[str, int] = {}
        self._workers: dict[int, WorkerState] = {}
        self._handlers: dict[EventType, Callable[[TelemetryEvent], None]] = {
            EventType.TRAINING_STARTED: self._handle_training_started,
            EventType.EPISODE_COMPLETED: self._handle_episode_completed,
            EventType.SEED_LIFECYCLE: self._handle_seed_lifecycle,
            EventType.PPO_UPDATE_COMPLETED: self._handle_ppo_update,
            EventType.PPO_UPDATE_SKIPPED: self._handle_ppo_skipped,
            EventType.RATIO_EXPLOSION: self._handle_ratio_explosion,
            EventType.TELEMETRY_DROPS: self._handle_drops,
            EventType.WORKER_STATUS: self._handle_worker_status,
            EventType.WORKER_RESTARTED: self._handle_worker_restarted,
            EventType.TRAINING_FINISHED: self._handle_finished,
            EventType.TRAINING_FAILED: self._handle_failed,
        }
        assert set(self._handlers) == set(EventType), "every event type needs a handler"

    # ------------------------------------------------------------------ entry points

    def handle_event(self, event: TelemetryEvent) -> None:
        """Fold one event into the state (the only way state changes, bar lines_skipped)."""
        with self._lock:
            self._events_read += 1
            self._last_event_time = event.timestamp
            self._handlers[event.event_type](event)

    def set_lines_skipped(self, count: int) -> None:
        """Record how many lines the file reader passed over (ReadStats.skipped)."""
        with self._lock:
            self._lines_skipped = count

    def snapshot(self) -> SanctumSnapshot:
        """An immutable copy of the current state, safe to keep and read from any thread."""
        with self._lock:
            tamiyo = self._tamiyo_state()
            return SanctumSnapshot(
                run=self._run,
                progress=Progress(
                    episodes_done=self._episodes_done,
                    batches_done=self._batches_done,
                    last_event_time=self._last_event_time,
                    finished=self._finished,
                    failed=self._failed,
                    failure=self._failure,
                ),
                tamiyo=dataclasses.replace(tamiyo, heads=dict(tamiyo.heads)),
                episodes=self._episodes,
                slots=tuple(self._slots[i] for i in sorted(self._slots)),
                events=tuple(self._log),
                events_read=self._events_read,
                lines_skipped=self._lines_skipped,
                drops=sum(self._lost.values()),
                workers=tuple(self._workers[w] for w in sorted(self._workers)),
            )

    # ------------------------------------------------------------------ handlers

    def _log_event(self, event: TelemetryEvent, message: str | None = None) -> None:
        self._log.append(EventLogEntry(event.timestamp, event.severity, message or event.message))

    def _handle_training_started(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, TrainingStarted)
        self._run = RunInfo(
            run_id=event.run_id,
            task=p.task,
            episodes_total=p.episodes_total,
            n_envs=p.n_envs,
            device=p.device,
            started_at=event.timestamp,
            host_slots=p.head_sizes.get("slot", 0),
            clip_eps=p.clip_eps,
        )
        bands = RatioBands.for_clip(p.clip_eps)
        if bands != self._bands:
            self._bands = bands
            self._tamiyo = None
        self._finished = False  # a resumed run starts again after its interrupted end
        self._declare_heads(p.head_names)
        for index in range(self._run.host_slots or 0):
            self._slots.setdefault(index, SlotState(index=index))
        self._log_event(event)

    def _handle_episode_completed(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, EpisodeCompleted)
        self._episodes_done += 1
        self._returns.append(p.episode_return)
        self._recent_returns.append(p.episode_return)
        e = self._episodes
        self._episodes = EpisodeStats(
            last_return=p.episode_return,
            mean_return=_mean(self._recent_returns),
            last_accuracy=p.final_accuracy,
            return_history=tuple(self._returns),
            seeds_grown=e.seeds_grown + p.seeds_grown,
            seeds_fossilized=e.seeds_fossilized + p.seeds_fossilized,
            seeds_killed=e.seeds_killed + p.seeds_killed,
            best_return=_best(e.best_return, p.episode_return),
        )

    def _handle_seed_lifecycle(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, SeedLifecycle)
        if p.env_index != SLOTS_ENV:
            return
        self._slots[p.slot] = SlotState(
            index=p.slot, stage=p.to_stage, blueprint=p.blueprint, alpha=p.alpha
        )
        self._log_event(event)

    # ------------------------------------------------------------------ heads

    def _declare_heads(self, names: Iterable[str]) -> None:
        """Put the run's declared heads first, in their order; heads seen before keep
        their histories and follow."""
        declared = tuple(names)
        for name in declared:
            self._add_head(name)
        rest = tuple(h for h in self._head_names if h not in declared)
        if declared + rest != self._head_names:
            self._head_names = declared + rest
            self._tamiyo = None

    def _add_head(self, name: str) -> deque[float]:
        """The ratio-max history of `name`, registering a head not seen before at the end."""
        history = self._histories.get(name)
        if history is None:
            history = self._histories[name] = deque(maxlen=self._history_len)
            self._head_names += (name,)
            self._tamiyo = None
        return history

    def _tamiyo_state(self) -> TamiyoState:
        """The policy state of the latest PPO events, built once per change."""
        if self._tamiyo is None:
            p = self._ppo
            latest: Mapping[str, HeadStats] = {} if p is None else p.stats.heads
            heads = {
                h: HeadState(
                    stats=latest.get(h),
                    nan_latched=h in self._nan_latched,
                    inf_latched=h in self._inf_latched,
                    ratio_max_history=tuple(self._histories[h]),
                )
                for h in self._head_names
            }
            if p is None:  # only heads declared, or latches from skipped updates, so far
                self._tamiyo = TamiyoState(
                    head_names=self._head_names, heads=heads, bands=self._bands
                )
            else:
                self._tamiyo = TamiyoState(
                    head_names=self._head_names,
                    heads=heads,
                    update=p.stats,
                    ppo_updates_count=self._ppo_count,
                    last_update_index=p.update_index,
                    last_update_batch=self._ppo_batch,
                    last_update_time=self._ppo_time,
                    joint_ratio_max_history=tuple(self._joint_history),
                    bands=self._bands,
                )
        return self._tamiyo

    def _handle_ppo_update(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, PPOUpdatePayload)
        heads = p.stats.heads
        histories = self._histories
        ends = 0.0  # sum of every ratio end: finite exactly when all of them are (bar overflow)
        nonfinite = 0
        for name, stats in heads.items():
            history = histories.get(name)
            if history is None:
                history = self._add_head(name)
            history.append(stats.ratio_max)
            ends += stats.ratio_max + stats.ratio_min
            nonfinite += stats.nonfinite
        # A healthy update (every ratio finite, no count) latches nothing: skip the fold.
        if nonfinite or not math.isfinite(ends):
            self._fold_latches(heads)
        if len(heads) < len(histories):  # a declared head this update did not carry
            for name, history in histories.items():
                if name not in heads:
                    history.append(NEUTRAL_RATIO)
        self._joint_history.append(p.stats.joint_ratio_max)
        self._ppo, self._ppo_batch, self._ppo_time = p, event.batch, event.timestamp
        self._ppo_count += 1
        self._tamiyo = None
        self._advance_batches(event.batch)
        self._log_event(event)

    def _fold_latches(self, heads: Mapping[str, HeadStats]) -> None:
        """Fold one update's per-head values into the run's latches."""
        for head, stats in heads.items():
            nan, inf = nonfinite_latches(stats.ratio_max, stats.ratio_min, stats.nonfinite)
            if nan:
                self._nan_latched.add(head)
            if inf:
                self._inf_latched.add(head)

    def _advance_batches(self, batch: int | None) -> None:
        if batch is not None:
            self._batches_done = max(self._batches_done, batch + 1)

    def _handle_ppo_skipped(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, PPOUpdateSkipped)
        for head, count in p.nonfinite.items():
            if count > 0:  # counts cannot tell NaN from inf: latch as NaN
                self._add_head(head)
                self._nan_latched.add(head)
                self._tamiyo = None  # show the latch now, not only with the next update
        self._advance_batches(p.batch)
        self._log_event(event)

    def _handle_ratio_explosion(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, RatioExplosion)
        self._log_event(event, p.summary())

    def _handle_drops(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, TelemetryDrops)
        self._lost[p.backend] = max(self._lost.get(p.backend, 0), p.dropped + p.failed)
        self._log_event(event)

    def _handle_worker_status(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, WorkerStatus)
        self._workers[p.worker] = WorkerState(
            worker=p.worker,
            backend=p.backend,
            alive=p.alive,
            restarts=p.restarts,
            envs=p.envs,
            steps_per_second=p.steps_per_second,
            batch=event.batch,
        )
        if not p.alive:
            self._log_event(event)

    def _handle_worker_restarted(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, WorkerRestarted)
        known = self._workers.get(p.worker, WorkerState(worker=p.worker, backend=p.backend))
        self._workers[p.worker] = dataclasses.replace(known, alive=True, restarts=p.restarts)
        self._log_event(event)

    def _handle_finished(self, event: TelemetryEvent) -> None:
        self._finished = True
        self._log_event(event)

    def _handle_failed(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, TrainingFailed)
        self._failed = True
        self._failure = p.error
        self._log_event(event)


class SanctumBackend:
    """Hub backend feeding an aggregator live; queued, so a slow dashboard never blocks."""

    synchronous = False
    name = "sanctum"

    def __init__(self, aggregator: SanctumAggregator) -> None:
        self.aggregator = aggregator

    def handle(self, event: TelemetryEvent) -> None:
        self.aggregator.handle_event(event)

    def flush(self) -> None:
        """Nothing buffered: every handled event is already in the aggregator."""

    def close(self) -> None:
        """Nothing to release; the aggregator stays readable after the run."""


def aggregate_file(path: Path | str, history_len: int = HISTORY_LEN) -> SanctumSnapshot:
    """Replay a recorded `events.jsonl` into a fresh aggregator and return its snapshot."""
    aggregator = SanctumAggregator(history_len)
    stats = ReadStats()
    for event in committed_events(read_events(path, stats=stats)):
        aggregator.handle_event(event)
    aggregator.set_lines_skipped(stats.skipped)
    return aggregator.snapshot()


def replay_snapshots(path: Path | str, history_len: int = HISTORY_LEN) -> list[SanctumSnapshot]:
    """One snapshot per PPO update (completed or skipped) of a recorded run, for stepping.

    A frame shows the run as it stood after that update and what annotated it (a ratio
    explosion, drops, the run's end), before the next batch's episodes began. Memory is
    about one set of histories ((heads + 1) x `history_len` floats) per update.
    """
    aggregator = SanctumAggregator(history_len)
    stats = ReadStats()
    frames: list[SanctumSnapshot] = []

    def close_frame() -> None:
        aggregator.set_lines_skipped(stats.skipped)
        frames.append(aggregator.snapshot())

    frame_open = False
    for event in committed_events(read_events(path, stats=stats)):
        if frame_open and event.event_type in _NEXT_BATCH_EVENTS:
            close_frame()
            frame_open = False
        aggregator.handle_event(event)
        if event.event_type in _UPDATE_EVENTS:
            frame_open = True
    if frame_open:
        close_frame()
    return frames
