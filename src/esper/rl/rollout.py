"""Rollout collection, acting in one batch over the envs.

Two shapes of batch share one step loop. `collect_batch` runs exactly one episode in
each env (an environment of fixed episode length, like the morphogenetic one: every batch
starts every env on a fresh, seeded episode). `ContinuingRollout` runs a fixed number of
steps per env and carries the envs over from batch to batch (an environment whose
episodes end when they end, like CartPole: it resets itself and reports the finished
episode in `info["episode"]`, as `esper.integrations.gym.FactoredGymEnv` does).

The per-head log-probs of the actions are stored as they were at rollout time: PPO's
ratios are taken against them, which is what lets the per-head ratio maxima move.
Where the envs step is the runner's business (`esper.rl.runners`); the acting, and so every
number of the batch, happens here in the driver whatever the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from esper.rl.ppo import PPOAgent, RolloutBuffer
from esper.rl.runners import EnvRunner, EnvStates, FactoredEnv, InProcessRunner

__all__ = ["ContinuingRollout", "FactoredEnv", "StepCallback", "collect_batch"]

StepCallback = Callable[[int, int, dict[str, Any]], None]


class _Steps(NamedTuple):
    """What `_run_steps` leaves: the filled buffer, the episodes that ended (env index,
    `info["episode"]`) in the order they ended, and the envs' state after the last step."""

    buffer: RolloutBuffer
    ended: list[tuple[int, dict[str, Any]]]
    last: EnvStates


def _run_steps(
    agent: PPOAgent,
    runner: EnvRunner,
    state: EnvStates,
    n_steps: int,
    first_starts: npt.NDArray[np.bool_],
    on_step: StepCallback | None,
    on_early_end: Callable[[int, int], None] | None,
) -> tuple[_Steps, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """`n_steps` steps of every active env from `state`, stored with rollout-time log-probs.

    `first_starts[i]` says whether env i's first observation opens an episode. An episode
    that ends before the last step calls `on_early_end(env, t)` (which may raise); the env
    is then expected to have started its next episode (its observation is that episode's
    first). GAE runs at the end: an env whose last step ended its episode is not
    bootstrapped; one still running is, from the value of its last observation. Also
    returns the last step's terminated and ended (terminated or truncated) flags.
    """
    n_envs = state.obs.shape[0]
    cfg = agent.config
    buffer = RolloutBuffer(
        n_steps,
        n_envs,
        runner.obs_dim,
        runner.actions,
        agent.device,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
    )
    ended: list[tuple[int, dict[str, Any]]] = []
    starts = first_starts
    done = np.zeros(n_envs, dtype=np.bool_)
    terminated = np.zeros(n_envs, dtype=np.bool_)
    for t in range(n_steps):
        actions, log_probs, values = agent.act(state.obs, state.legal)
        result = runner.step(actions)
        terminated = result.terminated
        done = terminated | result.truncated
        for i, info in enumerate(result.infos):
            if done[i] and t < n_steps - 1 and on_early_end is not None:
                on_early_end(i, t)
            if on_step is not None:
                on_step(i, t, info)
            if done[i]:
                ended.append((i, dict(info.get("episode", {}))))
        buffer.store(
            t,
            obs=state.obs,
            actions=actions,
            log_probs=log_probs,
            values=values,
            rewards=result.rewards,
            episode_starts=starts,
            legal=state.legal,
        )
        starts = done
        state = result
    return _Steps(buffer, ended, state), terminated, done


def _finish(agent: PPOAgent, steps: _Steps, no_bootstrap: npt.NDArray[np.bool_]) -> None:
    """GAE over the batch; envs flagged in `no_bootstrap` end with a terminal step."""
    n_envs = no_bootstrap.shape[0]
    last_values = (
        np.zeros(n_envs, dtype=np.float32)
        if no_bootstrap.all()
        else agent.predict_values(steps.last.obs)
    )
    steps.buffer.compute_returns_and_advantages(last_values, no_bootstrap)


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
    runner = _as_runner(envs, seeds)
    starts: Sequence[int | None] = [None] * runner.n_envs if seeds is None else seeds
    n_envs = len(starts)
    state = runner.reset(starts)

    def early_end(env: int, t: int) -> None:
        raise RuntimeError(
            f"env {env} ended its episode at step {t + 1} of {episode_length}; "
            "episode_length must match the environment's"
        )

    first = np.ones(n_envs, dtype=np.bool_)
    steps, terminated, _ = _run_steps(
        agent, runner, state, episode_length, first, on_step, early_end
    )
    _finish(agent, steps, terminated)
    episodes: list[dict[str, Any]] = [{} for _ in range(n_envs)]
    for i, summary in steps.ended:
        episodes[i] = summary
    return steps.buffer, episodes


def _as_runner(envs: EnvRunner | Sequence[FactoredEnv], seeds: Sequence[Any] | None) -> EnvRunner:
    if isinstance(envs, Sequence):
        if not envs:
            raise ValueError("a rollout needs at least one env")
        if seeds is not None and len(seeds) != len(envs):
            raise ValueError(f"{len(seeds)} seeds for {len(envs)} envs")
        return InProcessRunner(envs)
    return envs


class ContinuingRollout:
    """Batches of `n_steps` steps per env over envs that carry on from batch to batch.

    The envs are reset once, with `seeds`, on the first batch; after that an env whose
    episode ends resets itself (seeding its next episode from its own generator) and the
    rollout goes on with the next episode's first observation. An episode cut by the end
    of a batch is bootstrapped from the value of its last observation and continues in
    the next batch; an ended episode, truncated or terminated, is not bootstrapped (its
    last observation is gone with the reset).
    """

    def __init__(
        self,
        agent: PPOAgent,
        envs: EnvRunner | Sequence[FactoredEnv],
        n_steps: int,
        seeds: Sequence[int | None] | None = None,
    ) -> None:
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.agent = agent
        self.runner = _as_runner(envs, seeds)
        self.n_steps = n_steps
        self._seeds: Sequence[int | None] = (
            [None] * self.runner.n_envs if seeds is None else list(seeds)
        )
        self._state: EnvStates | None = None
        self._starts = np.ones(len(self._seeds), dtype=np.bool_)

    def collect(
        self, on_step: StepCallback | None = None
    ) -> tuple[RolloutBuffer, list[tuple[int, dict[str, Any]]]]:
        """One batch: the buffer (GAE included) and the episodes that ended in it, as
        (env index, `info["episode"]`) in the order they ended."""
        if self._state is None:
            self._state = self.runner.reset(self._seeds)
            self._starts = np.ones(len(self._seeds), dtype=np.bool_)
        steps, _, done = _run_steps(
            self.agent, self.runner, self._state, self.n_steps, self._starts, on_step, None
        )
        _finish(self.agent, steps, done)
        self._state, self._starts = steps.last, done
        return steps.buffer, steps.ended
