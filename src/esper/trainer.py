"""The trainer: wires environments, the PPO agent and the telemetry emitter.

This is the only place that knows both PPO internals and telemetry: it turns the
agent's metrics dict into events and never lets a downstream consumer see a tensor.
It also picks where the envs step (`config.backend`, see `esper.runners`); what workers
report (lifecycle changes, episode outcomes, restarts, throughput) is emitted here,
tagged with the worker, through the same emitter as everything else.
"""

from __future__ import annotations

import functools
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esper.actions import HEAD_NAMES, head_sizes
from esper.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from esper.config import TrainConfig, parse_fault
from esper.environment import MorphogeneticEnv, observation_layout
from esper.ppo import PPOAgent, PPOConfig, RatioExplosionReport
from esper.rollout import collect_batch
from esper.runners import (
    EnvRunner,
    FactoredEnv,
    InProcessRunner,
    RestartNotice,
    WorkerError,
    make_runner,
)
from esper.telemetry.contracts import EventType
from esper.telemetry.emitter import TelemetryEmitter
from esper.telemetry.recorder import EVENTS_FILE, read_events
from esper.threads import learner_threads

UPDATE_EVENTS = frozenset({EventType.PPO_UPDATE_COMPLETED, EventType.PPO_UPDATE_SKIPPED})


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite updates)."""


@dataclass(frozen=True)
class TrainResult:
    """How a run ended, for the CLI's exit code and final summary."""

    episodes: int
    updates: int
    wall_seconds: float
    interrupted: bool


def ppo_config(cfg: TrainConfig) -> PPOConfig:
    """The PPO part of a run configuration."""
    return PPOConfig(
        lr=cfg.lr,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_eps=cfg.clip,
        epochs=cfg.epochs,
        minibatches=cfg.minibatches,
        value_coef=cfg.value_coef,
        entropy_coef=cfg.entropy_coef,
        max_grad_norm=cfg.max_grad_norm,
        target_kl=cfg.target_kl,
        clip_mode=cfg.clip_mode,
        explosion_threshold=cfg.explosion_threshold,
        joint_ratio_limit=cfg.joint_ratio_limit,
        hidden=cfg.hidden,
    )


def observation_size(n_slots: int) -> int:
    """Length of the env's observation vector, known without building an env."""
    return sum(size for _, size, _, _ in observation_layout(n_slots))


def episode_seeds(base_seed: int, first_episode: int, count: int) -> list[int]:
    """Distinct, reproducible per-episode seeds: episode k of a run always gets the same."""
    return [base_seed * 1_000_003 + first_episode + i for i in range(count)]


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run picks up: checkpoint state and the numbering to continue."""

    checkpoint: dict[str, Any]
    next_seq: int
    start_update_index: int


def load_resume_point(run_dir: Path, map_location: str = "cpu") -> ResumePoint:
    """Read a run's checkpoint and event log and work out how to continue it.

    The checkpoint may hold one update whose event the kill prevented (`pending`); if the
    log already has that update it is dropped, otherwise it will be emitted on resume.
    """
    state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=map_location)
    last_seq = -1
    logged: set[int] = set()
    for event in read_events(run_dir / EVENTS_FILE):
        last_seq = max(last_seq, event.seq)
        index = getattr(event.payload, "update_index", None)
        if event.event_type in UPDATE_EVENTS and index is not None:
            logged.add(int(index))
    pending = state.get("pending")
    if pending is not None and int(pending["update_index"]) in logged:
        state = {**state, "pending": None}
        pending = None
    start = int(pending["update_index"]) if pending else int(state["next_update_index"])
    return ResumePoint(checkpoint=state, next_seq=last_seq + 1, start_update_index=start)


class Trainer:
    """Runs `config.episodes` episodes in batches of parallel envs, one PPO update each.

    After each update the checkpoint is written *before* the update's event: a kill in
    between leaves the event pending in the checkpoint, and `--resume` emits it then, so
    every completed update appears in the log exactly once.

    The env runner starts with the first batch and stops when `run` returns. With the
    in-process backend it steps `self.envs`, which a caller may wrap before `run`.
    """

    def __init__(
        self,
        config: TrainConfig,
        emitter: TelemetryEmitter,
        run_dir: Path,
        stop: threading.Event | None = None,
        resume: ResumePoint | None = None,
    ) -> None:
        self.config = config
        self.emitter = emitter
        self.run_dir = run_dir
        self.stop = stop or threading.Event()
        self.fault = parse_fault(config.fault) if config.fault else None
        torch.manual_seed(config.seed)
        torch.set_num_threads(learner_threads(config))  # the envs step at one (runners)
        self._make_env = functools.partial(
            MorphogeneticEnv,
            task=config.task,
            n_slots=config.slots,
            episode_length=config.episode_length,
            device=config.device,
        )
        in_process = config.backend == "inprocess"
        self.envs: list[FactoredEnv] = (
            [self._make_env() for _ in range(config.envs)] if in_process else []
        )
        self.runner: EnvRunner | None = None
        self.agent = PPOAgent(
            obs_dim=observation_size(config.slots),
            head_sizes=head_sizes(config.slots),
            config=ppo_config(config),
            device=config.device,
            seed=config.seed,
        )
        self.episodes_done = 0
        self.updates_done = 0
        self.batch = 0
        self._bad_updates = 0
        self._pending: dict[str, Any] | None = None
        self._resume = resume
        if resume is not None:
            self._restore(resume.checkpoint)

    def _restore(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.episodes_done = int(state["episodes_done"])
        self.updates_done = int(state["updates_done"])
        self.batch = int(state["batch"])
        self._bad_updates = int(state.get("bad_updates", 0))
        self._pending = state.get("pending")

    def _open_runner(self) -> EnvRunner:
        """The runner for the configured backend, started on first use."""
        if self.runner is None:
            cfg = self.config
            self.runner = (
                InProcessRunner(self.envs)
                if cfg.backend == "inprocess"
                else make_runner(
                    cfg.backend,
                    [self._make_env] * cfg.envs,
                    cfg.n_workers,
                    ray_address=cfg.ray_address,
                    on_restart=self._on_worker_restart,
                )
            )
        return self.runner

    def close(self) -> None:
        """Stop the env workers, if any were started; idempotent."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()

    def _worker_of(self, env_index: int) -> int | None:
        return None if self.runner is None else self.runner.worker_of(env_index)

    def _on_worker_restart(self, notice: RestartNotice) -> None:
        self.emitter.emit_worker_restarted(
            worker=notice.worker,
            backend=notice.backend,
            reason=notice.reason,
            restarts=notice.restarts,
            replayed_steps=notice.replayed_steps,
            batch=self.batch,
        )

    def _emit_worker_status(self, runner: EnvRunner) -> None:
        for info in runner.status():
            self.emitter.emit_worker_status(
                worker=info.worker,
                backend=runner.backend,
                alive=info.alive,
                restarts=info.restarts,
                envs=info.envs,
                steps=info.steps,
                steps_per_second=info.steps_per_second,
                batch=self.batch,
            )

    def _on_step(self, env_index: int, step: int, info: dict[str, Any]) -> None:
        for change in info.get("lifecycle_events", ()):
            self.emitter.emit_seed_lifecycle(
                env_index=env_index,
                worker=self._worker_of(env_index),
                slot=int(change["slot"]),
                from_stage=str(change["from_stage"]),
                to_stage=str(change["to_stage"]),
                blueprint=change.get("blueprint"),
                alpha=float(change["alpha"]),
                episode=self.episodes_done + env_index,
                batch=self.batch,
            )

    def _run_batch(self) -> None:
        cfg = self.config
        n = min(cfg.envs, cfg.episodes - self.episodes_done)
        seeds = episode_seeds(cfg.seed, self.episodes_done, n)
        runner = self._open_runner()
        buffer, episodes = collect_batch(
            self.agent, runner, cfg.episode_length, seeds, on_step=self._on_step
        )
        for i, ep in enumerate(episodes):
            self.emitter.emit_episode_completed(
                env_index=i,
                worker=runner.worker_of(i),
                episode_return=float(ep["return"]),
                final_accuracy=float(ep["final_accuracy"]),
                seeds_grown=int(ep["seeds_grown"]),
                seeds_fossilized=int(ep["seeds_fossilized"]),
                seeds_killed=int(ep["seeds_killed"]),
                length=int(ep["length"]),
                episode=self.episodes_done + i,
                batch=self.batch,
            )
        self._emit_worker_status(runner)
        faulty = self.fault is not None and self.fault.active(self.batch)
        if faulty:
            assert self.fault is not None
            self.agent.policy.inject_nonfinite = {self.fault.head: self.fault.value}
        try:
            metrics = self.agent.update(buffer)
        finally:
            self.agent.policy.inject_nonfinite = None
        self._pending = {
            "metrics": metrics,
            "batch": self.batch,
            "update_index": self.emitter.next_update_index,
            "mean_return": float(np.mean([ep["return"] for ep in episodes])),
            "host_accuracy": float(np.mean([ep["final_accuracy"] for ep in episodes])),
            "explosion": _explosion_dict(self.agent.last_explosion),
        }
        self.episodes_done += n
        self.batch += 1
        bad = metrics["minibatches_skipped"] > 0
        self._bad_updates = self._bad_updates + 1 if bad else 0
        if metrics["minibatches_run"] - metrics["minibatches_skipped"] > 0:
            self.updates_done += 1
        self._save_checkpoint()
        self._emit_pending()
        if self._bad_updates >= self.config.max_bad_updates:
            raise TrainingError(
                f"{self._bad_updates} consecutive PPO updates had non-finite values "
                f"(limit max_bad_updates={self.config.max_bad_updates}); stopping"
            )

    def _emit_pending(self) -> None:
        """Emit the last update's events (skipped, or completed plus any explosion)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        metrics: dict[str, float] = pending["metrics"]
        batch = int(pending["batch"])
        applied = metrics["minibatches_run"] - metrics["minibatches_skipped"]
        if applied <= 0:
            nonfinite = {h: int(metrics.get(f"head_{h}_nonfinite", 0)) for h in HEAD_NAMES}
            self.emitter.emit_ppo_skipped(
                reason=f"all {int(metrics['minibatches_run'])} minibatches had non-finite values",
                batch=batch,
                nonfinite=nonfinite,
            )
            return
        payload = self.emitter.emit_ppo_update(
            metrics,
            batch=batch,
            mean_return=pending["mean_return"],
            host_accuracy=pending["host_accuracy"],
        )
        report = pending["explosion"]
        if report is not None:
            self.emitter.emit_ratio_explosion(
                update_index=payload.update_index, batch=batch, **report
            )

    def _save_checkpoint(self) -> None:
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME,
            {
                "agent": self.agent.state_dict(),
                "episodes_done": self.episodes_done,
                "updates_done": self.updates_done,
                "batch": self.batch,
                "bad_updates": self._bad_updates,
                "next_update_index": self.emitter.next_update_index
                + (1 if self._pending is not None else 0),
                "pending": self._pending,
                "config": self.config.to_dict(),
            },
        )

    def _start(self) -> None:
        """Announce the run; a resumed run first emits an update its kill left pending."""
        cfg = self.config
        self.emitter.emit_training_started(
            config=cfg.to_dict(),
            task=cfg.task,
            head_names=list(HEAD_NAMES),
            head_sizes=head_sizes(cfg.slots),
            episodes_total=cfg.episodes,
            n_envs=cfg.envs,
            device=cfg.device,
            resumed_from_update=None if self._resume is None else self.emitter.next_update_index,
        )
        self._emit_pending()

    def _train(self) -> bool:
        """Batches until the run is done (False) or `stop` is set (True)."""
        try:
            while self.episodes_done < self.config.episodes:
                if self.stop.is_set():
                    return True
                self._run_batch()
        except WorkerError as exc:  # an infrastructure failure: one line, no traceback
            raise TrainingError(f"environment workers failed: {exc}") from exc
        return False

    def run(self) -> TrainResult:
        """Train to the end, to `stop`, or to Ctrl-C; always leaves telemetry complete."""
        start = time.perf_counter()
        interrupted = False
        try:
            self._start()
            interrupted = self._train()
        except KeyboardInterrupt:
            interrupted = True
        except BaseException as exc:
            self.emitter.emit_training_failed(
                error=f"{type(exc).__name__}: {exc}",
                traceback=None if isinstance(exc, TrainingError) else traceback.format_exc(),
            )
            raise
        finally:
            self.close()
        wall = time.perf_counter() - start
        self._save_checkpoint()
        self.emitter.emit_training_finished(
            episodes=self.episodes_done,
            updates=self.updates_done,
            wall_seconds=wall,
            run_dir=str(self.run_dir),
            interrupted=interrupted,
        )
        return TrainResult(self.episodes_done, self.updates_done, wall, interrupted)


def _explosion_dict(report: RatioExplosionReport | None) -> dict[str, Any] | None:
    """The explosion report as plain data, so a checkpoint can carry it unpickled."""
    if report is None:
        return None
    return {
        "joint_ratio_max": float(report.joint_ratio_max),
        "worst_log_ratios": {h: float(v) for h, v in report.worst_log_ratios.items()},
        "shares": {h: float(v) for h, v in report.shares.items()},
        "driver": report.driver,
        "hidden_by_heads": bool(report.hidden_by_heads),
    }
