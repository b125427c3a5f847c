"""Which environment a run trains on: the morphogenetic task, or any gymnasium env.

The one place that turns a `TrainConfig` into the `EnvSpec` the trainer takes, so the
algorithm never learns which environment it is training: `--env-id` (a gymnasium id, or
`module:callable`, with `--bins` for a Box action space) picks a gymnasium env, anything
else the morphogenetic task with its `task`, `slots`, `episode_length` and
`epochs_per_step`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from esper.morpho.tasks import TASKS
from esper.rl.config import DEFAULT_ROLLOUT_STEPS, ConfigError, TrainConfig

if TYPE_CHECKING:
    from esper.rl.trainer import EnvSpec


def check_task(config: TrainConfig) -> TrainConfig:
    """The morphogenetic task must exist; checked here, where the environment is known.

    A run on an `env_id` env has no task, so its `task` setting is not looked at.
    """
    if config.env_id is None and config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; known tasks: {', '.join(TASKS)}")
    return config


def env_id_of(config: TrainConfig) -> str | None:
    """The gymnasium env a run trains on, or None for the morphogenetic task."""
    return config.env_id


def batch_steps(config: TrainConfig) -> int:
    """Steps each env adds to a batch: an episode on the morphogenetic task, else
    `rollout_steps`."""
    if env_id_of(config) is None:
        return config.episode_length
    return config.rollout_steps or DEFAULT_ROLLOUT_STEPS


def env_spec(config: TrainConfig) -> EnvSpec:
    """The environment of `config`, checked by building one (ConfigError if it cannot be)."""
    from esper.rl.trainer import EnvSpec

    env_id = env_id_of(config)
    if env_id is None:
        from esper.morpho.actions import factored_actions
        from esper.morpho.environment import MorphogeneticEnv, observation_layout

        check_task(config)

        return EnvSpec(
            make=functools.partial(
                MorphogeneticEnv,
                task=config.task,
                n_slots=config.slots,
                episode_length=config.episode_length,
                epochs_per_step=config.epochs_per_step,
                device=config.device,
            ),
            obs_dim=sum(size for _, size, _, _ in observation_layout(config.slots)),
            actions=factored_actions(config.slots),
            name=config.task,
            episode_length=config.episode_length,
            batch_steps=config.episode_length,
        )
    from esper.integrations.gym import EnvIdError, make_factored_env

    try:
        probe = make_factored_env(env_id, config.bins)
    except EnvIdError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return EnvSpec(
            make=functools.partial(make_factored_env, env_id, config.bins),
            obs_dim=probe.obs_dim,
            actions=probe.factored_actions,
            name=env_id,
            episode_length=None,
            batch_steps=batch_steps(config),
        )
    finally:
        probe.close()
