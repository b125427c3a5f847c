"""End to end on the real environment (task "spirals"): the per-head ratios are taken
against rollout-time log-probs, so they sit at 1 before the first step and move after it.

The origin computed them against log-probs recomputed just before a one-epoch update, so
every per-head ratio max was 1.0 and the panel could never warn (BRIEF section 3.1).
"""

from __future__ import annotations

from typing import Any

import pytest

from esper.morpho.actions import HEAD_NAMES, factored_actions
from esper.morpho.environment import MorphogeneticEnv
from esper.rl.ppo import PPOAgent, PPOConfig, RolloutBuffer
from esper.rl.rollout import collect_batch
from esper.telemetry.heads import UpdateStats

N_ENVS, LENGTH, SEED = 2, 12, 0
Collected = tuple[RolloutBuffer, list[dict[str, Any]]]


def agent(obs_dim: int, **overrides: Any) -> PPOAgent:
    """Agents of one seed share their initial weights, whatever the PPO settings."""
    return PPOAgent(obs_dim, factored_actions(3), PPOConfig(**overrides), seed=SEED)


def make_envs() -> list[MorphogeneticEnv]:
    return [
        MorphogeneticEnv(task="spirals", episode_length=LENGTH, epochs_per_step=1)
        for _ in range(N_ENVS)
    ]


@pytest.fixture(scope="module")
def spirals_batch() -> Collected:
    envs = make_envs()
    return collect_batch(agent(envs[0].obs_dim), envs, LENGTH, seeds=list(range(N_ENVS)))


def relevant_heads(stats: UpdateStats) -> list[str]:
    return [h for h, s in stats.heads.items() if s.measured]


def test_batch_is_a_full_episode_per_env(spirals_batch: Collected) -> None:
    buffer, episodes = spirals_batch
    assert buffer.actions.shape == (LENGTH, N_ENVS, 8)
    assert [ep["length"] for ep in episodes] == [LENGTH] * N_ENVS


def test_one_epoch_one_minibatch_sees_ratios_of_one(spirals_batch: Collected) -> None:
    """Sanity: before any step the policy equals the rollout policy.

    Not bit-exact: the rollout scores N_ENVS states per forward pass and the update all
    of them at once, and float32 matrix kernels round differently per batch shape (one
    ulp, 1.2e-7, observed). A policy step moves ratios by 1e-3 or more.
    """
    buffer, _ = spirals_batch
    metrics = agent(buffer.obs.shape[-1], epochs=1, minibatches=1).update(buffer)
    heads = relevant_heads(metrics)
    assert "op" in heads and len(heads) > 1
    for h in heads:
        assert metrics.heads[h].ratio_max == pytest.approx(1.0, abs=1e-6)
        assert metrics.heads[h].ratio_min == pytest.approx(1.0, abs=1e-6)
        assert metrics.heads[h].clip_fraction == 0.0
    assert metrics.joint_ratio_max == pytest.approx(1.0, abs=1e-6)


def test_a_short_training_run_moves_every_relevant_head_in_every_update() -> None:
    envs = make_envs()
    trainee = agent(envs[0].obs_dim, epochs=4, minibatches=4)
    for update in range(3):
        seeds = [100 * update + i for i in range(N_ENVS)]
        buffer, _ = collect_batch(trainee, envs, LENGTH, seeds)
        metrics = trainee.update(buffer)
        heads = relevant_heads(metrics)
        assert "op" in heads and len(heads) > 1
        for h in heads:
            assert metrics.heads[h].ratio_max > 1.0 + 1e-4, (update, h)
            assert metrics.heads[h].ratio_min < 1.0 - 1e-4, (update, h)
        for h in set(HEAD_NAMES) - set(heads):
            assert metrics.heads[h].ratio_max == 1.0  # neutral, flagged by relevant == 0
        largest_head = max(metrics.heads[h].ratio_max for h in heads)
        assert metrics.joint_ratio_max >= largest_head - 1e-6
