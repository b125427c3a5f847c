"""A hand-written factored PPO in one file, watched head by head with `HeadRatioMonitor`.

The policy has one categorical head per action dimension of a discretised MuJoCo task
(HalfCheetah: six joints, 11 torque levels each). Like most single-file PPOs it clips the
joint ratio, the product of the heads' ratios; the monitor is told every minibatch's
per-head log-probs (the lines marked `# esper`) and records which head moved.

    python examples/cleanrl_style_ppo.py                    # 8192 steps, 4 PPO updates
    python examples/cleanrl_style_ppo.py --env Pendulum-v1
    sanctum runs/<run-id>

Needs gymnasium's MuJoCo tasks (the `sb3` extra brings them): pip install 'esper-ppo[sb3]'.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from esper.integrations.gym import DiscretizeActions
from esper.integrations.monitor import HeadRatioMonitor


@dataclass(frozen=True)
class Settings:
    """PPO's knobs, at the usual defaults for a small continuous-control task."""

    n_envs: int = 4
    n_steps: int = 512  # per env and update: 2048 samples per update
    epochs: int = 10
    minibatch: int = 64
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


class FactoredPolicy(nn.Module):
    """A tanh MLP trunk per role: logits for every head, and a state value."""

    def __init__(self, obs_dim: int, head_sizes: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.head_sizes = list(head_sizes)

        def trunk(out: int, gain: float) -> nn.Sequential:
            layers = [nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()]
            last = nn.Linear(hidden, out)
            nn.init.orthogonal_(last.weight, gain)
            nn.init.zeros_(last.bias)
            return nn.Sequential(*layers, last)

        self.actor = trunk(sum(self.head_sizes), 0.01)
        self.critic = trunk(1, 1.0)

    def heads(self, obs: Tensor) -> list[Categorical]:
        return [Categorical(logits=z) for z in self.actor(obs).split(self.head_sizes, dim=-1)]

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head log-probs and entropies of `actions`, each [batch, heads]."""
        dists = self.heads(obs)
        logp = torch.stack([d.log_prob(a) for d, a in zip(dists, actions.T, strict=True)], 1)
        return logp, torch.stack([d.entropy() for d in dists], dim=1)


def advantages_and_returns(
    rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, s: Settings
) -> tuple[Tensor, Tensor]:
    """GAE(lambda) over [steps, envs]; `dones[t]` ends the episode after step t."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(len(rewards))):
        next_value = last_value if t == len(rewards) - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + s.gamma * next_value * alive - values[t]
        running = delta + s.gamma * s.gae_lambda * alive * running
        adv[t] = running
    return adv, adv + values


def head_names_for(env: Any, dims: int) -> list[str]:
    """MuJoCo actuator names when the task has them, else a0, a1, ..."""
    model = getattr(env, "model", None)
    try:
        names = [re.sub(r"\W", "_", str(model.actuator(i).name))[:32] for i in range(dims)]
    except Exception:
        names = []
    if len(set(names)) == dims and all(n and not n[0].isdigit() for n in names):
        return names
    return [f"a{i}" for i in range(dims)]


def train(
    env_id: str, bins: int, updates: int, s: Settings, run_dir: Path | None, seed: int
) -> Path:
    torch.manual_seed(seed)
    envs = gymnasium.vector.SyncVectorEnv(
        [lambda: DiscretizeActions(gymnasium.make(env_id), bins) for _ in range(s.n_envs)],
        autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
    )
    sizes = [int(n) for n in envs.single_action_space.nvec]
    names = head_names_for(envs.envs[0].unwrapped, len(sizes))
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = FactoredPolicy(obs_dim, sizes)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.lr, eps=1e-5)
    T, N, H = s.n_steps, s.n_envs, len(sizes)  # the usual shape letters

    config = {"env": env_id, "bins": bins, **s.__dict__}
    # esper: one run directory, heads by name and size.
    with HeadRatioMonitor(
        run_dir, dict(zip(names, sizes, strict=True)), s.clip_eps, config=config, task=env_id,
        n_envs=N,
    ) as monitor:  # fmt: skip
        obs_np, _ = envs.reset(seed=seed)
        returns_seen: list[float] = []
        episode_return, episode_length = np.zeros(N), np.zeros(N, dtype=np.int64)
        for update in range(updates):
            obs = torch.zeros(T, N, obs_dim)
            actions = torch.zeros(T, N, H, dtype=torch.long)
            logp_old = torch.zeros(T, N, H)  # per head, as the policy acted
            rewards, dones, values = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
            for t in range(T):
                obs[t] = torch.as_tensor(obs_np, dtype=torch.float32)
                with torch.no_grad():
                    dists = policy.heads(obs[t])
                    actions[t] = torch.stack([d.sample() for d in dists], dim=1)
                    logp_old[t] = torch.stack(
                        [d.log_prob(a) for d, a in zip(dists, actions[t].T, strict=True)], 1
                    )
                    values[t] = policy.value(obs[t])
                obs_np, reward, terminated, truncated, _ = envs.step(actions[t].numpy())
                rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
                dones[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
                episode_return += reward
                episode_length += 1
                for i in np.flatnonzero(terminated | truncated):
                    returns_seen.append(float(episode_return[i]))
                    # esper: the episode, for the dashboard's return panel and the run's summary
                    monitor.end_episode(episode_return[i], length=episode_length[i], env_index=i)
                    episode_return[i], episode_length[i] = 0.0, 0
            with torch.no_grad():
                last_value = policy.value(torch.as_tensor(obs_np, dtype=torch.float32))
            adv, ret = advantages_and_returns(rewards, values, dones, last_value, s)

            flat = (obs.reshape(T * N, -1), actions.reshape(T * N, H), logp_old.reshape(T * N, H))
            b_obs, b_act, b_logp = flat
            b_adv, b_ret = adv.reshape(-1), ret.reshape(-1)
            for _epoch in range(s.epochs):
                for idx in torch.randperm(T * N).split(s.minibatch):
                    logp, entropy = policy.evaluate(b_obs[idx], b_act[idx])
                    monitor.observe(logp, b_logp[idx], entropy=entropy)  # esper: per minibatch
                    ratio = torch.exp(logp.sum(1) - b_logp[idx].sum(1))  # the joint ratio
                    a = b_adv[idx]
                    a = (a - a.mean()) / (a.std() + 1e-8)
                    clipped = ratio.clamp(1 - s.clip_eps, 1 + s.clip_eps)
                    policy_loss = -torch.min(ratio * a, clipped * a).mean()
                    value_loss = 0.5 * (policy.value(b_obs[idx]) - b_ret[idx]).pow(2).mean()
                    loss = policy_loss + s.vf_coef * value_loss - s.ent_coef * entropy.sum(1).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), s.max_grad_norm)
                    optimizer.step()
            recent = returns_seen[-20:]
            stats = monitor.end_update(  # esper: once per update
                policy_loss=policy_loss.item(),
                value_loss=value_loss.item(),
                grad_norm=grad_norm.item(),
                epochs_run=s.epochs,
                mean_return=float(np.mean(recent)) if recent else None,
            )
            print(f"update {update}: {stats.summary()}")
        envs.close()
        return monitor.run_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5", help="a Box-action gymnasium task")
    parser.add_argument("--bins", type=int, default=11, help="levels per action dimension")
    parser.add_argument("--timesteps", type=int, default=8192, help="environment steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, help="default runs/<run-id>")
    parser.add_argument("--tiny", action="store_true", help="a few seconds: CI's smoke run")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.tiny:
        settings = Settings(n_envs=2, n_steps=32, epochs=2, minibatch=32)
    per_update = settings.n_envs * settings.n_steps
    updates = 2 if args.tiny else max(1, args.timesteps // per_update)
    run = train(args.env, args.bins, updates, settings, args.run_dir, args.seed)
    print(f"recorded {updates} updates in {run}; watch them with: sanctum {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
