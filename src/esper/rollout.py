"""Rollout collection: one full episode in each env, acting in one batch over the envs.

The per-head log-probs of the actions are stored as they were at rollout time: PPO's
ratios are taken against them, which is what lets the per-head ratio maxima move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from esper.actions import ActionMasks
from esper.ppo import PPOAgent, RolloutBuffer

StepCallback = Callable[[int, int, dict[str, Any]], None]


class FactoredEnv(Protocol):
    """What a rollout needs from an environment (MorphogeneticEnv satisfies it)."""

    obs_dim: int
    n_slots: int

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]: ...

    def step(self, action: npt.ArrayLike) -> tuple[Any, Any, bool, bool, dict[str, Any]]: ...

    def structured_masks(self) -> ActionMasks: ...


def _stack_masks(envs: Sequence[FactoredEnv]) -> tuple[npt.NDArray[np.bool_], ...]:
    masks = [env.structured_masks() for env in envs]
    return np.stack([m.op for m in masks]), np.stack([m.slot_by_op for m in masks])


def collect_batch(
    agent: PPOAgent,
    envs: Sequence[FactoredEnv],
    episode_length: int,
    seeds: Sequence[int] | None = None,
    on_step: StepCallback | None = None,
) -> tuple[RolloutBuffer, list[dict[str, Any]]]:
    """Run one episode of exactly `episode_length` steps in every env; GAE included.

    Envs are reset with `seeds` (or unseeded). `on_step(env_index, t, info)` is called
    after every env step. Returns the buffer and each env's `info["episode"]`. An episode
    that ends early raises; one still running at the end was truncated and is
    bootstrapped from the value of its last observation.
    """
    if not envs:
        raise ValueError("collect_batch needs at least one env")
    if seeds is not None and len(seeds) != len(envs):
        raise ValueError(f"{len(seeds)} seeds for {len(envs)} envs")
    n_envs = len(envs)
    cfg = agent.config
    buffer = RolloutBuffer(
        episode_length,
        n_envs,
        envs[0].obs_dim,
        envs[0].n_slots,
        agent.device,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
    )
    obs = np.stack(
        [env.reset(seed=None if seeds is None else seeds[i])[0] for i, env in enumerate(envs)]
    )
    episodes: list[dict[str, Any]] = [{} for _ in envs]
    ended = np.zeros(n_envs, dtype=np.bool_)
    terminated = np.zeros(n_envs, dtype=np.bool_)
    for t in range(episode_length):
        op_mask, slot_by_op = _stack_masks(envs)
        actions, log_probs, values = agent.act(obs, op_mask, slot_by_op)
        rewards = np.zeros(n_envs, dtype=np.float32)
        next_obs = []
        for i, env in enumerate(envs):
            ob, reward, terminated[i], truncated, info = env.step(actions[i])
            ended[i] = terminated[i] or truncated
            if ended[i] and t < episode_length - 1:
                raise RuntimeError(
                    f"env {i} ended its episode at step {t + 1} of {episode_length}; "
                    "episode_length must match the environment's"
                )
            rewards[i] = float(reward)
            next_obs.append(ob)
            if on_step is not None:
                on_step(i, t, info)
            if ended[i]:
                episodes[i] = dict(info.get("episode", {}))
        buffer.store(
            t,
            obs=obs,
            actions=actions,
            log_probs=log_probs,
            values=values,
            rewards=rewards,
            episode_starts=np.full(n_envs, t == 0),
            op_mask=op_mask,
            slot_by_op=slot_by_op,
        )
        obs = np.stack(next_obs)
    last_values = (
        np.zeros(n_envs, dtype=np.float32) if terminated.all() else agent.predict_values(obs)
    )
    buffer.compute_returns_and_advantages(last_values, terminated)
    return buffer, episodes
