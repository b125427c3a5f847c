"""Rollout collection: one full episode in each env, acting in one batch over the envs.

The per-head log-probs of the actions are stored as they were at rollout time: PPO's
ratios are taken against them, which is what lets the per-head ratio maxima move.
Where the envs step is the runner's business (`esper.rl.runners`); the acting, and so every
number of the batch, happens here in the driver whatever the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from esper.rl.ppo import PPOAgent, RolloutBuffer
from esper.rl.runners import EnvRunner, FactoredEnv, InProcessRunner

__all__ = ["FactoredEnv", "StepCallback", "collect_batch"]

StepCallback = Callable[[int, int, dict[str, Any]], None]


def collect_batch(
    agent: PPOAgent,
    envs: EnvRunner | Sequence[FactoredEnv],
    episode_length: int,
    seeds: Sequence[int | None] | None = None,
    on_step: StepCallback | None = None,
) -> tuple[RolloutBuffer, list[dict[str, Any]]]:
    """Run one episode of exactly `episode_length` steps in each env; GAE included.

    `envs` is a runner, or a list of envs to step in this process. The first `len(seeds)`
    envs are reset with `seeds` (all of them, unseeded, without seeds); a list of envs
    takes exactly one seed per env. `on_step(env_index, t, info)` is called for every env
    after every step. Returns the buffer and each env's `info["episode"]`. An episode that
    ends early raises; one still running at the end was truncated and is bootstrapped from
    the value of its last observation.
    """
    if isinstance(envs, Sequence):
        if not envs:
            raise ValueError("collect_batch needs at least one env")
        if seeds is not None and len(seeds) != len(envs):
            raise ValueError(f"{len(seeds)} seeds for {len(envs)} envs")
        runner: EnvRunner = InProcessRunner(envs)
    else:
        runner = envs
    starts: Sequence[int | None] = [None] * runner.n_envs if seeds is None else seeds
    n_envs = len(starts)
    cfg = agent.config
    buffer = RolloutBuffer(
        episode_length,
        n_envs,
        runner.obs_dim,
        runner.n_slots,
        agent.device,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
    )
    state = runner.reset(starts)
    episodes: list[dict[str, Any]] = [{} for _ in range(n_envs)]
    terminated = np.zeros(n_envs, dtype=np.bool_)
    for t in range(episode_length):
        actions, log_probs, values = agent.act(state.obs, state.op_mask, state.slot_by_op)
        result = runner.step(actions)
        terminated = result.terminated
        ended = terminated | result.truncated
        for i, info in enumerate(result.infos):
            if ended[i] and t < episode_length - 1:
                raise RuntimeError(
                    f"env {i} ended its episode at step {t + 1} of {episode_length}; "
                    "episode_length must match the environment's"
                )
            if on_step is not None:
                on_step(i, t, info)
            if ended[i]:
                episodes[i] = dict(info.get("episode", {}))
        buffer.store(
            t,
            obs=state.obs,
            actions=actions,
            log_probs=log_probs,
            values=values,
            rewards=result.rewards,
            episode_starts=np.full(n_envs, t == 0),
            op_mask=state.op_mask,
            slot_by_op=state.slot_by_op,
        )
        state = result
    last_values = (
        np.zeros(n_envs, dtype=np.float32) if terminated.all() else agent.predict_values(state.obs)
    )
    buffer.compute_returns_and_advantages(last_values, terminated)
    return buffer, episodes
