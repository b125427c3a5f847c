"""A CleanRL-style factored PPO trained data-parallel (DDP), watched head by head.

Every rank steps its own envs, computes its own share of each minibatch and lets
DistributedDataParallel average the gradients; `HeadRatioMonitor` is built on every rank
and told each rank's per-head log-probs (the lines marked `# esper`). At the end of an
update it combines the ranks' statistics exactly (the max over every rank's samples, not
an average of per-rank maxima), one collective per update, and rank 0 alone writes the
run directory.

    torchrun --nproc_per_node 2 examples/ddp_factored_ppo.py          # 2 learners
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 examples/ddp_factored_ppo.py        # on each of 2 machines
    python examples/ddp_factored_ppo.py                               # 1 learner, no torchrun
    sanctum runs/<run-id>

The task is a small MultiDiscrete one (two heads: what to do, and to which cell) in
which the `cell` head is causally relevant only when the `kind` head picks or drops, so
the monitor is told which head acted on which sample.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributions import Categorical
from torch.nn.parallel import DistributedDataParallel

from esper.integrations.monitor import HeadRatioMonitor

WAIT, PICK, DROP = 0, 1, 2
HEADS = {"kind": 3, "cell": 4}


@dataclass(frozen=True)
class Settings:
    """PPO's knobs. Sizes are per rank: 2 ranks x 4 envs x 128 steps = 1024 samples."""

    n_envs: int = 4
    n_steps: int = 128
    epochs: int = 4
    minibatch: int = 128  # per rank: DDP steps once per minibatch of every rank
    lr: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


class Cells:
    """`n` copies of a 4-cell task stepped as arrays, MultiDiscrete([3, 4]) actions.

    Each cell holds an item or not. PICK from a full cell earns 1 and empties it, DROP
    into an empty cell earns 0.1 and fills it; a pick from an empty cell or a drop into
    a full one costs 0.2; WAIT does nothing (and reads no cell). 16 steps an episode.
    """

    LENGTH = 16
    CELLS = HEADS["cell"]

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.n = n
        self.cells = np.zeros((n, self.CELLS), dtype=np.bool_)
        self.t = 0

    @property
    def obs_dim(self) -> int:
        return self.CELLS + 1

    def observe(self) -> Tensor:
        clock = np.full((self.n, 1), self.t / self.LENGTH)
        return torch.as_tensor(np.hstack([self.cells, clock]), dtype=torch.float32)

    def reset(self) -> Tensor:
        self.cells = self.rng.random((self.n, self.CELLS)) < 0.5
        self.t = 0
        return self.observe()

    def step(self, actions: np.ndarray) -> tuple[Tensor, np.ndarray, bool]:
        kind, cell = actions[:, 0], actions[:, 1]
        rows = np.arange(self.n)
        full = self.cells[rows, cell]
        picked, dropped = (kind == PICK) & full, (kind == DROP) & ~full
        wasted = ((kind == PICK) & ~full) | ((kind == DROP) & full)
        reward = 1.0 * picked + 0.1 * dropped - 0.2 * wasted
        self.cells[rows[picked], cell[picked]] = False
        self.cells[rows[dropped], cell[dropped]] = True
        self.t += 1
        done = self.t >= self.LENGTH  # every copy ends together
        return (self.reset() if done else self.observe()), reward, done


def relevance(actions: Tensor) -> Tensor:
    """[batch, heads] bool: `kind` always acts, `cell` unless the kind is WAIT."""
    return torch.stack([torch.ones_like(actions[:, 0], dtype=torch.bool), actions[:, 0] != WAIT], 1)


class Agent(nn.Module):
    """A tanh MLP per role: logits for both heads, and a state value."""

    def __init__(self, obs_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.sizes = list(HEADS.values())

        def mlp(out: int, gain: float) -> nn.Sequential:
            last = nn.Linear(hidden, out)
            nn.init.orthogonal_(last.weight, gain)
            nn.init.zeros_(last.bias)
            layers = [nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()]
            return nn.Sequential(*layers, last)

        self.actor, self.critic = mlp(sum(self.sizes), 0.01), mlp(1, 1.0)

    def heads(self, obs: Tensor) -> list[Categorical]:
        return [Categorical(logits=z) for z in self.actor(obs).split(self.sizes, dim=-1)]

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)

    def forward(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head log-probs and entropies of `actions` ([batch, heads]) and the values.

        The update goes through here, so that DDP's backward hooks average the gradients.
        """
        dists = self.heads(obs)
        logp = torch.stack([d.log_prob(a) for d, a in zip(dists, actions.T, strict=True)], 1)
        entropy = torch.stack([d.entropy() for d in dists], 1)
        return logp, entropy, self.value(obs)


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


def train(updates: int, s: Settings, run_dir: Path | None, seed: int) -> Path:
    distributed = "WORLD_SIZE" in os.environ  # torchrun sets it, with RANK and MASTER_*
    cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=5))
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's)
    envs = Cells(s.n_envs, seed + 1000 * rank)  # but every rank its own episodes
    agent = Agent(envs.obs_dim).to(device)
    model = DistributedDataParallel(agent) if distributed else agent
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr, eps=1e-5)
    torch.manual_seed(seed + rank)  # and its own action samples
    T, N, H = s.n_steps, s.n_envs, len(HEADS)

    config = {"task": "cells", **s.__dict__}
    # esper: on every rank; rank 0 writes the run directory, every rank observes its own
    with HeadRatioMonitor(
        run_dir, HEADS, s.clip_eps, config=config, task="cells", n_envs=N * world,
        device=str(device),
    ) as monitor:  # fmt: skip
        obs_t = envs.reset().to(device)
        returns_seen: list[float] = []
        episode_return = np.zeros(N)
        for update in range(updates):
            obs = torch.zeros(T, N, envs.obs_dim, device=device)
            actions = torch.zeros(T, N, H, dtype=torch.long, device=device)
            logp_old = torch.zeros(T, N, H, device=device)  # per head, as the agent acted
            rewards, dones, values = (torch.zeros(T, N, device=device) for _ in range(3))
            for t in range(T):
                obs[t] = obs_t
                with torch.no_grad():
                    dists = agent.heads(obs_t)
                    actions[t] = torch.stack([d.sample() for d in dists], dim=1)
                    logp_old[t] = torch.stack(
                        [d.log_prob(a) for d, a in zip(dists, actions[t].T, strict=True)], 1
                    )
                    values[t] = agent.value(obs_t)
                next_obs, reward, done = envs.step(actions[t].cpu().numpy())
                obs_t = next_obs.to(device)
                rewards[t] = torch.as_tensor(reward, dtype=torch.float32, device=device)
                dones[t] = float(done)
                episode_return += reward
                if done:
                    for i in range(N):
                        returns_seen.append(float(episode_return[i]))
                        # esper: each rank's episodes, under a global env index
                        monitor.end_episode(
                            episode_return[i], length=envs.LENGTH, env_index=rank * N + i
                        )
                    episode_return[:] = 0.0
            with torch.no_grad():
                last_value = agent.value(obs_t)
            adv, ret = advantages_and_returns(rewards, values, dones, last_value, s)

            b_obs, b_act = obs.reshape(T * N, -1), actions.reshape(T * N, H)
            b_logp, b_adv, b_ret = logp_old.reshape(T * N, H), adv.reshape(-1), ret.reshape(-1)
            b_rel = relevance(b_act)
            for _epoch in range(s.epochs):
                for idx in torch.randperm(T * N, device=device).split(s.minibatch):
                    logp, entropy, value = model(b_obs[idx], b_act[idx])
                    # esper: this rank's minibatch, with which head acted on which sample
                    monitor.observe(logp, b_logp[idx], b_rel[idx], entropy)
                    rel = b_rel[idx].float()
                    # the joint ratio of the heads that acted (a WAIT's cell is not a choice)
                    ratio = torch.exp(((logp - b_logp[idx]) * rel).sum(1))
                    a = b_adv[idx]
                    a = (a - a.mean()) / (a.std() + 1e-8)
                    clipped = ratio.clamp(1 - s.clip_eps, 1 + s.clip_eps)
                    policy_loss = -torch.min(ratio * a, clipped * a).mean()
                    value_loss = 0.5 * (value - b_ret[idx]).pow(2).mean()
                    entropy_bonus = (entropy * rel).sum(1).mean()
                    loss = policy_loss + s.vf_coef * value_loss - s.ent_coef * entropy_bonus
                    optimizer.zero_grad()
                    loss.backward()  # DDP averages the gradients over the ranks here
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
                    optimizer.step()
            recent = returns_seen[-20:]
            # esper: on every rank; the stats come back the same everywhere
            stats = monitor.end_update(
                policy_loss=policy_loss.item(),  # this rank's; the monitor averages them
                value_loss=value_loss.item(),
                grad_norm=grad_norm.item(),  # the same on every rank after DDP
                epochs_run=s.epochs,
                mean_return=float(np.mean(recent)) if recent else None,
            )
            if rank == 0:
                print(f"update {update}: {stats.summary()}", flush=True)
        run = monitor.run_dir
    if distributed:
        # Every rank past its last collective before any tears the group down: a gloo peer
        # whose connection closes under it can abort the process ("terminate called
        # without an active exception"), seen on a loaded machine.
        dist.barrier()
        dist.destroy_process_group()
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20, help="PPO updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, help="default runs/<run-id> (rank 0's)")
    parser.add_argument("--tiny", action="store_true", help="a few seconds: CI's smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a process per learner: one core each
    settings = Settings()
    if args.tiny:
        settings = Settings(n_envs=2, n_steps=16, epochs=2, minibatch=16)
    updates = 2 if args.tiny else args.updates
    run = train(updates, settings, args.run_dir, args.seed)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"recorded {updates} updates in {run}; watch them with: sanctum {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
