"""The trainer's one door into telemetry: typed payloads in, numbered events out.

The emitter owns the per-run sequence number, the timestamps and the PPO update index, so
every backend sees the same numbering. It turns `PPOAgent.update()`'s metrics dict into a
strict `PPOUpdatePayload`; downstream code sees payloads only, never PPO internals.
"""

from __future__ import annotations

import math
import threading
import time
import traceback as tb
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from esper import __version__
from esper.actions import HEAD_NAMES
from esper.telemetry.contracts import (
    ContractError,
    EpisodeCompleted,
    EventType,
    Payload,
    PPOUpdatePayload,
    PPOUpdateSkipped,
    RatioExplosion,
    SeedLifecycle,
    Severity,
    TelemetryDrops,
    TelemetryEvent,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
    WorkerRestarted,
    WorkerStatus,
)


class EventSink(Protocol):
    """Where the emitter sends events (a `TelemetryHub`, or a list-like fake in tests)."""

    def publish(self, event: TelemetryEvent) -> None: ...


def _metric_value(name: str, tp: Any, value: object) -> object:
    """A metrics-dict float as the payload field's type: counts and flags arrive as floats."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ContractError(f"metrics[{name!r}]: expected a number, got {value!r}") from None
    if tp is float:
        return number
    if tp is bool:  # 0/1, or a count of minibatches that tripped it: any trip sets it
        if not number >= 0.0 or math.isinf(number):
            raise ContractError(f"metrics[{name!r}]: expected a 0/1 flag, got {value!r}")
        return number > 0.0
    if not math.isfinite(number) or number != int(number):
        raise ContractError(f"metrics[{name!r}]: expected a whole count, got {value!r}")
    return int(number)


#: Payload field -> type for every PPOUpdatePayload field filled from the metrics dict.
_PPO_METRIC_TYPES: dict[str, Any] = {
    spec.name: spec.tp
    for spec in PPOUpdatePayload._specs()
    if spec.name in PPOUpdatePayload.METRIC_FIELDS
}


def explosion_shares(log_ratios: Mapping[str, float]) -> tuple[dict[str, float], str]:
    """Each head's share of a joint log-ratio, and the head with the largest share.

    Only heads pushing the ratio up count (a head at log-ratio -0.1 does not "drive" an
    explosion); shares of the positive parts sum to 1. With no positive part (a collapse
    rather than an explosion) the magnitudes are shared instead.
    """
    if not log_ratios:
        raise ValueError("explosion_shares needs at least one head")
    positive = {h: max(lr, 0.0) for h, lr in log_ratios.items()}
    weights = positive if sum(positive.values()) > 0 else {h: abs(v) for h, v in log_ratios.items()}
    total = sum(weights.values())
    shares = {h: (w / total if total > 0 else 0.0) for h, w in weights.items()}
    return shares, max(shares, key=lambda h: shares[h])


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
            bind(self.emit_telemetry_drops)

    @property
    def next_update_index(self) -> int:
        """The index the next PPO update (completed or skipped) will get."""
        return self._next_update_index

    def _emit(
        self,
        event_type: EventType,
        payload: Payload,
        message: str,
        *,
        severity: Severity = "info",
        episode: int | None = None,
        batch: int | None = None,
    ) -> None:
        with self._lock:
            seq = self._seq
            self._seq += 1
        event = TelemetryEvent(
            event_type=event_type,
            timestamp=self._clock(),
            run_id=self.run_id,
            seq=seq,
            episode=episode,
            batch=batch,
            severity=severity,
            message=message,
            payload=payload,
        )
        self._hub.publish(event)

    def _take_update_index(self, update_index: int | None) -> int:
        with self._lock:
            index = self._next_update_index if update_index is None else update_index
            self._next_update_index = index + 1
        return index

    def emit_training_started(
        self,
        *,
        config: Mapping[str, Any],
        task: str,
        head_sizes: Mapping[str, int],
        episodes_total: int,
        n_envs: int,
        device: str,
        head_names: tuple[str, ...] | list[str] = HEAD_NAMES,
        esper_version: str = __version__,
        resumed_from_update: int | None = None,
        resumed_from_batch: int | None = None,
    ) -> TrainingStarted:
        payload = TrainingStarted(
            config=dict(config),
            task=task,
            head_names=list(head_names),
            head_sizes=dict(head_sizes),
            episodes_total=episodes_total,
            n_envs=n_envs,
            device=device,
            esper_version=esper_version,
            resumed_from_update=resumed_from_update,
            resumed_from_batch=resumed_from_batch,
        )
        message = f"training started: {task}, {episodes_total} episodes on {n_envs} envs ({device})"
        if resumed_from_update is not None:
            message = f"training resumed at update {resumed_from_update}: {task} ({device})"
        if resumed_from_batch is not None:
            message += f"; uncommitted events of batch {resumed_from_batch} on are discarded"
        self._emit(EventType.TRAINING_STARTED, payload, message)
        return payload

    def emit_episode_completed(
        self,
        *,
        env_index: int,
        episode_return: float,
        final_accuracy: float,
        seeds_grown: int,
        seeds_fossilized: int,
        seeds_killed: int,
        length: int,
        episode: int | None = None,
        batch: int | None = None,
        worker: int | None = None,
    ) -> EpisodeCompleted:
        payload = EpisodeCompleted(
            env_index=env_index,
            episode_return=episode_return,
            final_accuracy=final_accuracy,
            seeds_grown=seeds_grown,
            seeds_fossilized=seeds_fossilized,
            seeds_killed=seeds_killed,
            length=length,
            worker=worker,
        )
        message = (
            f"env {env_index} episode done: return {episode_return:.3f}, "
            f"accuracy {final_accuracy:.3f}"
        )
        self._emit(EventType.EPISODE_COMPLETED, payload, message, episode=episode, batch=batch)
        return payload

    def emit_seed_lifecycle(
        self,
        *,
        env_index: int,
        slot: int,
        from_stage: str,
        to_stage: str,
        blueprint: str | None,
        alpha: float,
        episode: int | None = None,
        batch: int | None = None,
        worker: int | None = None,
    ) -> SeedLifecycle:
        payload = SeedLifecycle(
            env_index=env_index,
            slot=slot,
            from_stage=from_stage,
            to_stage=to_stage,
            blueprint=blueprint,
            alpha=alpha,
            worker=worker,
        )
        message = f"env {env_index} slot {slot}: {from_stage} -> {to_stage}" + (
            f" ({blueprint})" if blueprint else ""
        )
        self._emit(EventType.SEED_LIFECYCLE, payload, message, episode=episode, batch=batch)
        return payload

    def emit_ppo_update(
        self,
        metrics: Mapping[str, float],
        *,
        batch: int,
        mean_return: float | None = None,
        host_accuracy: float | None = None,
    ) -> PPOUpdatePayload:
        """Publish one completed PPO update from `PPOAgent.update()`'s metrics.

        Keys are the payload's field names; an absent key takes the payload default (the
        neutral value), an unknown key is ignored, counts become int and flags bool (a flag
        may arrive as 0/1 or as a count of trips: any positive value sets it).
        """
        values = {
            name: _metric_value(name, tp, metrics[name])
            for name, tp in _PPO_METRIC_TYPES.items()
            if name in metrics
        }
        payload = PPOUpdatePayload(
            update_index=self._take_update_index(None),
            mean_return=mean_return,
            host_accuracy=host_accuracy,
            **values,
        )
        self._emit(EventType.PPO_UPDATE_COMPLETED, payload, payload.summary(), batch=batch)
        return payload

    def emit_ppo_skipped(
        self, *, reason: str, batch: int, nonfinite: Mapping[str, int] | None = None
    ) -> PPOUpdateSkipped:
        """Publish a batch whose update applied no optimizer step (it uses up an index)."""
        payload = PPOUpdateSkipped(
            reason=reason,
            batch=batch,
            update_index=self._take_update_index(None),
            nonfinite={h: int(n) for h, n in (nonfinite or {}).items() if n > 0},
        )
        message = f"update {payload.update_index} skipped (batch {batch}): {reason}"
        self._emit(EventType.PPO_UPDATE_SKIPPED, payload, message, severity="warning", batch=batch)
        return payload

    def emit_ratio_explosion(
        self,
        *,
        joint_ratio_max: float,
        worst_log_ratios: Mapping[str, float],
        hidden_by_heads: bool,
        batch: int,
        update_index: int | None = None,
        shares: Mapping[str, float] | None = None,
        driver: str | None = None,
    ) -> RatioExplosion:
        """Publish a joint-ratio explosion attributed to heads.

        `update_index` defaults to the latest update emitted (detection follows the update).
        `shares` and `driver` default to `explosion_shares(worst_log_ratios)`; a caller
        that attributed the explosion itself (the PPO agent) passes its own.
        """
        if update_index is None:
            if self._next_update_index == 0:
                raise ValueError("emit_ratio_explosion before any PPO update needs update_index")
            update_index = self._next_update_index - 1
        if shares is None or driver is None:
            computed_shares, computed_driver = explosion_shares(worst_log_ratios)
            shares = computed_shares if shares is None else shares
            driver = computed_driver if driver is None else driver
        payload = RatioExplosion(
            update_index=update_index,
            joint_ratio_max=joint_ratio_max,
            worst_log_ratios=dict(worst_log_ratios),
            shares=dict(shares),
            driver=driver,
            hidden_by_heads=hidden_by_heads,
        )
        self._emit(
            EventType.RATIO_EXPLOSION, payload, payload.summary(), severity="warning", batch=batch
        )
        return payload

    def emit_telemetry_drops(
        self, backend: str, dropped: int, failed: int = 0, last_error: str | None = None
    ) -> TelemetryDrops:
        """Publish a backend's cumulative losses (the hub calls this; never silent)."""
        payload = TelemetryDrops(
            backend=backend, dropped=dropped, failed=failed, last_error=last_error
        )
        message = f"telemetry backend {backend}: {dropped} events dropped, {failed} failed" + (
            f" (last error: {last_error})" if last_error else ""
        )
        self._emit(EventType.TELEMETRY_DROPS, payload, message, severity="warning")
        return payload

    def emit_worker_status(
        self,
        *,
        worker: int,
        backend: str,
        alive: bool,
        restarts: int,
        envs: int,
        steps: int,
        steps_per_second: float,
        batch: int | None = None,
    ) -> WorkerStatus:
        """Publish one env worker's state after a rollout; a dead worker is a warning."""
        payload = WorkerStatus(
            worker=worker,
            backend=backend,
            alive=alive,
            restarts=restarts,
            envs=envs,
            steps=steps,
            steps_per_second=steps_per_second,
        )
        state = f"{steps_per_second:.1f} env steps/s" if alive else "DEAD"
        message = f"worker {worker} ({backend}, {envs} envs): {state}, {restarts} restarts"
        severity: Severity = "info" if alive else "warning"
        self._emit(EventType.WORKER_STATUS, payload, message, severity=severity, batch=batch)
        return payload

    def emit_worker_restarted(
        self,
        *,
        worker: int,
        backend: str,
        reason: str,
        restarts: int,
        replayed_steps: int,
        batch: int | None = None,
    ) -> WorkerRestarted:
        """Publish the replacement of a lost env worker (always a warning)."""
        payload = WorkerRestarted(
            worker=worker,
            backend=backend,
            reason=reason,
            restarts=restarts,
            replayed_steps=replayed_steps,
        )
        message = (
            f"worker {worker} ({backend}) lost ({reason}); replaced and "
            f"{replayed_steps} env steps replayed (restart {restarts})"
        )
        self._emit(EventType.WORKER_RESTARTED, payload, message, severity="warning", batch=batch)
        return payload

    def emit_training_finished(
        self,
        *,
        episodes: int,
        updates: int,
        wall_seconds: float,
        run_dir: str | Path,
        interrupted: bool = False,
    ) -> TrainingFinished:
        payload = TrainingFinished(
            episodes=episodes,
            updates=updates,
            wall_seconds=wall_seconds,
            run_dir=str(run_dir),
            interrupted=interrupted,
        )
        ended = "interrupted" if interrupted else "finished"
        message = (
            f"training {ended}: {episodes} episodes, {updates} updates in {wall_seconds:.1f} s"
        )
        self._emit(EventType.TRAINING_FINISHED, payload, message)
        return payload

    def emit_training_failed(
        self,
        error: BaseException | str,
        *,
        traceback: str | None = None,
        batch: int | None = None,
    ) -> TrainingFailed:
        """Publish a failure; given an exception, its type, message and traceback are kept."""
        if isinstance(error, BaseException):
            if traceback is None and error.__traceback__ is not None:
                traceback = "".join(tb.format_exception(error))
            error = f"{type(error).__name__}: {error}"
        payload = TrainingFailed(error=error, traceback=traceback)
        self._emit(
            EventType.TRAINING_FAILED,
            payload,
            f"training failed: {error}",
            severity="error",
            batch=batch,
        )
        return payload
