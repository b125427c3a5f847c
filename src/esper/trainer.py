"""The trainer: wires environments, the PPO agent and the telemetry emitter.

This is the only place that knows both PPO internals and telemetry: it turns the
agent's metrics dict into events and never lets a downstream consumer see a tensor.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from esper.actions import HEAD_NAMES, head_sizes
from esper.checkpoint import CHECKPOINT_NAME, save_checkpoint
from esper.config import TrainConfig
from esper.environment import MorphogeneticEnv
from esper.ppo import PPOAgent, PPOConfig
from esper.rollout import collect_batch
from esper.telemetry.emitter import TelemetryEmitter


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


def episode_seeds(base_seed: int, first_episode: int, count: int) -> list[int]:
    """Distinct, reproducible per-episode seeds: episode k of a run always gets the same."""
    return [base_seed * 1_000_003 + first_episode + i for i in range(count)]


class Trainer:
    """Runs `config.episodes` episodes in batches of parallel envs, one PPO update each."""

    def __init__(
        self,
        config: TrainConfig,
        emitter: TelemetryEmitter,
        run_dir: Path,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.emitter = emitter
        self.run_dir = run_dir
        self.stop = stop or threading.Event()
        torch.manual_seed(config.seed)
        self.envs: list[MorphogeneticEnv] = [
            MorphogeneticEnv(
                task=config.task,
                n_slots=config.slots,
                episode_length=config.episode_length,
                device=config.device,
            )
            for _ in range(config.envs)
        ]
        self.agent = PPOAgent(
            obs_dim=self.envs[0].obs_dim,
            head_sizes=head_sizes(config.slots),
            config=ppo_config(config),
            device=config.device,
            seed=config.seed,
        )
        self.episodes_done = 0
        self.updates_done = 0
        self.batch = 0
        self._bad_updates = 0

    def _on_step(self, env_index: int, step: int, info: dict) -> None:
        for change in info.get("lifecycle_events", ()):
            self.emitter.emit_seed_lifecycle(
                env_index=env_index,
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
        buffer, episodes = collect_batch(
            self.agent, self.envs[:n], cfg.episode_length, seeds, on_step=self._on_step
        )
        for i, ep in enumerate(episodes):
            self.emitter.emit_episode_completed(
                env_index=i,
                episode_return=float(ep["return"]),
                final_accuracy=float(ep["final_accuracy"]),
                seeds_grown=int(ep["seeds_grown"]),
                seeds_fossilized=int(ep["seeds_fossilized"]),
                seeds_killed=int(ep["seeds_killed"]),
                length=int(ep["length"]),
                episode=self.episodes_done + i,
                batch=self.batch,
            )
        self.episodes_done += n
        metrics = self.agent.update(buffer)
        mean_return = float(np.mean([ep["return"] for ep in episodes]))
        accuracy = float(np.mean([ep["final_accuracy"] for ep in episodes]))
        self._report_update(metrics, mean_return, accuracy)
        self.batch += 1
        self._save_checkpoint()

    def _report_update(self, metrics: dict[str, float], mean_return: float, acc: float) -> None:
        """Emit the update, or a skipped-update event when no minibatch could step."""
        applied = metrics["minibatches_run"] - metrics["minibatches_skipped"]
        if applied <= 0:
            self._bad_updates += 1
            self.emitter.emit_ppo_skipped(
                reason=(f"all {int(metrics['minibatches_run'])} minibatches had non-finite values"),
                batch=self.batch,
            )
            if self._bad_updates >= self.config.max_bad_updates:
                raise TrainingError(
                    f"{self._bad_updates} consecutive PPO updates were non-finite; stopping"
                )
            return
        self._bad_updates = 0
        payload = self.emitter.emit_ppo_update(
            metrics, batch=self.batch, mean_return=mean_return, host_accuracy=acc
        )
        self.updates_done += 1
        report = self.agent.last_explosion
        if report is not None:
            self.emitter.emit_ratio_explosion(
                update_index=payload.update_index,
                joint_ratio_max=report.joint_ratio_max,
                worst_log_ratios=dict(report.worst_log_ratios),
                shares=dict(report.shares),
                driver=report.driver,
                hidden_by_heads=report.hidden_by_heads,
                batch=self.batch,
            )

    def _save_checkpoint(self) -> None:
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME,
            {
                "agent": self.agent.state_dict(),
                "episodes_done": self.episodes_done,
                "updates_done": self.updates_done,
                "batch": self.batch,
                "config": self.config.to_dict(),
            },
        )

    def run(self) -> TrainResult:
        """Train to the end, to `stop`, or to Ctrl-C; always leaves telemetry complete."""
        cfg = self.config
        start = time.perf_counter()
        interrupted = False
        self.emitter.emit_training_started(
            config=cfg.to_dict(),
            task=cfg.task,
            head_names=list(HEAD_NAMES),
            head_sizes=head_sizes(cfg.slots),
            episodes_total=cfg.episodes,
            n_envs=cfg.envs,
            device=cfg.device,
        )
        try:
            while self.episodes_done < cfg.episodes:
                if self.stop.is_set():
                    interrupted = True
                    break
                self._run_batch()
        except KeyboardInterrupt:
            interrupted = True
        except BaseException as exc:
            import traceback

            self.emitter.emit_training_failed(
                error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
            )
            raise
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
