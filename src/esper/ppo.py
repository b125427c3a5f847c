"""PPO for the factored Tamiyo policy, with per-head ratio telemetry and no host syncs.

Ratios are taken against the per-head log-probs stored at rollout time (not recomputed
before the update), over several epochs and minibatches, so the per-head ratio maxima can
move away from 1.0 and warn.

Every decision inside `update` (KL early stop, the joint-ratio intervention, skipping a
non-finite minibatch) is taken on the device: a stopped or skipped minibatch still runs,
but its optimizer step is cancelled through Adam's `found_inf` (the mechanism
`torch.amp.GradScaler` uses with fused Adam) and its statistics are masked out. The price
is the compute of the minibatches after an early stop; the gain is exactly one
device->host transfer per update, the stacked metrics tensor at the end.

The ratio statistics are reduced once per update, over the log-ratios of all its
minibatches concatenated, not once per minibatch: on small minibatches an update is
kernel-launch bound, and per-minibatch reductions were most of what the per-head
telemetry cost.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from esper.config import ClipMode, PPOConfig
from esper.optim import FusedAdam
from esper.policy import N_HEADS, N_OPS, TamiyoPolicy
from esper.ratio_stats import (
    HeadRatioStats,
    head_ratio_stats,
    log_ratios,
)
from esper.telemetry.heads import LOG_RATIO_CLAMP, UpdateStats

__all__ = [
    "HeadRatioStats",
    "PPOAgent",
    "PPOConfig",
    "RolloutBuffer",
    "UpdateStats",
    "clipped_surrogate",
    "gae",
    "head_ratio_stats",
]


def gae(
    rewards: Tensor,
    values: Tensor,
    episode_starts: Tensor,
    last_values: Tensor,
    last_dones: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns of [T, E] rollouts.

    `episode_starts[t]` marks obs[t] as the first of an episode, so step t - 1 was terminal;
    `last_dones` says whether the last step was terminal (no bootstrap from `last_values`).
    """
    n_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_values)
    for t in reversed(range(n_steps)):
        if t == n_steps - 1:
            next_nonterminal = 1.0 - last_dones.to(rewards.dtype)
            next_values = last_values
        else:
            next_nonterminal = 1.0 - episode_starts[t + 1].to(rewards.dtype)
            next_values = values[t + 1]
        delta = rewards[t] + gamma * next_values * next_nonterminal - values[t]
        running = delta + gamma * gae_lambda * next_nonterminal * running
        advantages[t] = running
    return advantages, advantages + values


class Batch(NamedTuple):
    """Flat [B, ...] training samples; every field indexes by sample along dim 0."""

    obs: Tensor
    actions: Tensor
    old_log_probs: Tensor
    advantages: Tensor
    returns: Tensor
    op_mask: Tensor
    slot_by_op: Tensor

    def select(self, index: Tensor) -> Batch:
        return Batch(*(field.index_select(0, index) for field in self))


class RolloutBuffer:
    """[T, E] rollout storage on the device, with the per-head log-probs at rollout time.

    Episode boundaries are stored as `episode_starts[t]` (obs[t] opens an episode, so step
    t - 1 ended one), the convention of Stable-Baselines3; the terminal flag of the last
    step goes to `compute_returns_and_advantages` as `last_dones`.
    """

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        obs_dim: int,
        n_slots: int,
        device: torch.device | str = "cpu",
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
    ) -> None:
        self.n_steps, self.n_envs = n_steps, n_envs
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.device = torch.device(device)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros(n_steps, n_envs, *shape, dtype=dtype, device=self.device)

        self.obs = zeros(obs_dim)
        self.actions = zeros(N_HEADS, dtype=torch.int64)
        self.log_probs = zeros(N_HEADS)
        self.values = zeros()
        self.rewards = zeros()
        self.episode_starts = zeros(dtype=torch.bool)
        self.op_mask = zeros(N_OPS, dtype=torch.bool)
        self.slot_by_op = zeros(N_OPS, n_slots, dtype=torch.bool)
        self.advantages: Tensor | None = None
        self.returns: Tensor | None = None

    def store(
        self,
        t: int,
        *,
        obs: npt.ArrayLike | Tensor,
        actions: npt.ArrayLike | Tensor,
        log_probs: npt.ArrayLike | Tensor,
        values: npt.ArrayLike | Tensor,
        rewards: npt.ArrayLike | Tensor,
        episode_starts: npt.ArrayLike | Tensor,
        op_mask: npt.ArrayLike | Tensor,
        slot_by_op: npt.ArrayLike | Tensor,
    ) -> None:
        """Write step `t` of every env (arrays with a leading env axis)."""
        given = {
            "obs": obs,
            "actions": actions,
            "log_probs": log_probs,
            "values": values,
            "rewards": rewards,
            "episode_starts": episode_starts,
            "op_mask": op_mask,
            "slot_by_op": slot_by_op,
        }
        for name, value in given.items():
            target: Tensor = getattr(self, name)
            target[t] = torch.as_tensor(value, dtype=target.dtype, device=self.device)
        self.advantages = self.returns = None

    def compute_returns_and_advantages(
        self, last_values: npt.ArrayLike | Tensor, last_dones: npt.ArrayLike | Tensor
    ) -> None:
        """GAE over the stored steps; `last_*` describe the state after the last step."""
        self.advantages, self.returns = gae(
            self.rewards,
            self.values,
            self.episode_starts,
            torch.as_tensor(last_values, dtype=torch.float32, device=self.device),
            torch.as_tensor(last_dones, dtype=torch.bool, device=self.device),
            self.gamma,
            self.gae_lambda,
        )

    def batch(self) -> Batch:
        """All samples flattened to [T * E, ...] for minibatching."""
        if self.advantages is None or self.returns is None:
            raise RuntimeError("call compute_returns_and_advantages before training on the buffer")
        fields = (
            self.obs,
            self.actions,
            self.log_probs,
            self.advantages,
            self.returns,
            self.op_mask,
            self.slot_by_op,
        )
        return Batch(*(f.flatten(0, 1) for f in fields))


def clipped_surrogate(
    log_ratio: Tensor, advantages: Tensor, relevant: Tensor, clip_eps: float, mode: ClipMode
) -> Tensor:
    """PPO clipped policy loss (to minimise) of [N, H] log-ratios.

    "joint" clips the ratio of the whole action, exp(sum of the relevant heads' log-ratios),
    as Stable-Baselines3 does for MultiDiscrete (which sums every head). "per_head" clips
    each head's ratio separately on its relevant samples; each head's surrogate is summed
    over its relevant samples and divided by N, then the heads are summed. With every ratio
    at 1 this has the joint gradient, so both modes take steps of one scale, and a head
    relevant at few samples is not up-weighted (a mean over its own samples would multiply
    a rare head's step).
    """
    zero = torch.zeros_like(log_ratio)
    masked = torch.where(relevant, log_ratio, zero)
    if mode == "joint":
        masked = masked.sum(dim=1, keepdim=True)
    ratio = torch.exp(masked)
    adv = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    if mode == "per_head":
        surrogate = torch.where(relevant, surrogate, zero)
    return -surrogate.sum() / log_ratio.shape[0]


def _explained_variance(predicted: Tensor, target: Tensor) -> Tensor:
    """1 - Var(target - predicted) / Var(target); 0 when the target is constant."""
    variance = target.var(correction=0)
    ev = 1.0 - (target - predicted).var(correction=0) / variance.clamp(min=1e-12)
    return torch.where(variance > 0, ev, torch.zeros_like(ev))


class _Tally:
    """Per-minibatch named sums, masked on the device and reduced once at the end.

    `add` only keeps references (no kernel per minibatch: on small minibatches an update
    is launch-bound, and per-minibatch bookkeeping was most of what the telemetry cost);
    `totals` stacks each entry over the minibatches, zeroes those whose flag did not hold
    and sums them, a few kernels per entry per update. A value is a tensor (scalar or
    vector) or a plain number; sums are float64.
    """

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor | float]] = {}
        self.flags: dict[str, list[Tensor]] = {}

    def add(self, name: str, value: Tensor | float, flag: Tensor) -> None:
        if isinstance(value, Tensor) and value.requires_grad:
            value = value.detach()  # keep the number, not the minibatch's graph
        self.values.setdefault(name, []).append(value)
        self.flags.setdefault(name, []).append(flag)

    def totals(self) -> dict[str, Tensor]:
        """Every entry's masked sum; entries of one kind (plain numbers, or tensors of one
        dtype and shape) are stacked and reduced together, a few kernels per kind."""
        kinds: dict[tuple[torch.dtype, tuple[int, ...]] | str, list[str]] = {}
        for name, values in self.values.items():
            first = values[0]
            kind = (first.dtype, tuple(first.shape)) if isinstance(first, Tensor) else "number"
            kinds.setdefault(kind, []).append(name)
        out: dict[str, Tensor] = {}
        for kind, names in kinds.items():
            flags = torch.stack([f for name in names for f in self.flags[name]])
            if kind == "number":
                numbers = [v for name in names for v in self.values[name]]
                stacked = torch.tensor(numbers, dtype=torch.float64, device=flags.device)
            else:
                tensors = [v for name in names for v in self.values[name]]
                stacked = torch.stack(tensors).to(torch.float64)  # type: ignore[arg-type]
            stacked = stacked.reshape(len(names), -1, *stacked.shape[1:])  # [kind, minibatch, ...]
            flags = flags.reshape(len(names), -1, *(1,) * (stacked.dim() - 2))
            sums = torch.where(flags, stacked, 0.0).sum(dim=1)
            out.update(zip(names, sums.unbind(0), strict=True))
        return out


class PPOAgent:
    """The Tamiyo policy, its Adam optimizer and the PPO update with per-head telemetry."""

    def __init__(
        self,
        obs_dim: int,
        head_sizes: Mapping[str, int],
        config: PPOConfig | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.config = config or PPOConfig()
        self.device = torch.device(device)
        self.obs_dim = obs_dim
        self.head_sizes = dict(head_sizes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = TamiyoPolicy(obs_dim, head_sizes, self.config.hidden)
        self.policy = policy.to(self.device)
        # Fused Adam honours `found_inf` on the device: the sync-free skip of a minibatch.
        self.optimizer = FusedAdam(self.policy.parameters(), lr=self.config.lr)
        sample_seed, perm_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
        self._sample_gen = torch.Generator(self.device).manual_seed(int(sample_seed))
        self._perm_gen = torch.Generator(self.device).manual_seed(int(perm_seed))

    def _tensor(self, array: npt.ArrayLike | Tensor, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def act(
        self,
        obs: npt.ArrayLike,
        op_mask: npt.ArrayLike,
        slot_by_op: npt.ArrayLike,
        deterministic: bool = False,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Actions [N, 8], per-head log-probs [N, 8] and values [N] for a batch of states."""
        actions, log_probs, values = self.policy.act(
            self._tensor(obs, torch.float32),
            self._tensor(op_mask, torch.bool),
            self._tensor(slot_by_op, torch.bool),
            deterministic=deterministic,
            generator=self._sample_gen,
        )
        return actions.cpu().numpy(), log_probs.cpu().numpy(), values.cpu().numpy()

    def predict_values(self, obs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """State values [N], for bootstrapping a truncated rollout."""
        with torch.no_grad():
            _, values = self.policy(self._tensor(obs, torch.float32))
        return values.cpu().numpy()

    @property
    def head_names(self) -> tuple[str, ...]:
        """The policy's heads, in the order of its action vectors."""
        return tuple(self.policy.head_sizes)

    def update(self, buffer: RolloutBuffer) -> UpdateStats:
        """K epochs x M minibatches of PPO on `buffer`; returns what the update measured.

        The minibatch that trips the KL early stop or the joint-ratio intervention enters
        the statistics but takes no optimizer step (as in Stable-Baselines3); later
        minibatches neither count nor step.
        """
        cfg = self.config
        data = buffer.batch()
        n_samples = data.obs.shape[0]
        mb_size = math.ceil(n_samples / cfg.minibatches)
        perms = [
            torch.randperm(n_samples, generator=self._perm_gen, device=self.device)
            for _ in range(cfg.epochs)
        ]
        parts: list[tuple[Tensor, Tensor, Tensor]] = []  # per minibatch: new, old, relevant
        tally = _Tally()
        epoch_active: list[Tensor] = []
        active = torch.ones((), dtype=torch.bool, device=self.device)
        self.policy.train()
        try:
            for perm in perms:
                epoch_active.append(active)
                for index in perm.split(mb_size):
                    mb_ratios, active = self._minibatch(data.select(index), active, tally)
                    parts.append(mb_ratios)
        finally:
            vars(self.optimizer).pop("found_inf", None)
        # The statistics' masks and clamps run once, over every minibatch's samples.
        new, old, relevant = (torch.cat(column) for column in zip(*parts, strict=True))
        ratios = log_ratios(new, old, relevant)
        sums = tally.totals()
        stats = HeadRatioStats.from_log_ratios(
            ratios,
            cfg.clip_eps,
            self.head_names,
            entropy_sum=sums["head_entropy"],
            entropy_count=sums["entropy_samples"],
        )
        scalars = self._scalars(sums, torch.stack(epoch_active), data, buffer)
        tensor = torch.cat(
            [stats.reading_tensor(self.policy.log_head_sizes), torch.stack(list(scalars.values()))]
        )
        values = tensor.tolist()  # the single device->host transfer of the update
        reading = stats.read(values[: stats.reading_size])
        host = dict(zip(scalars, values[stats.reading_size :], strict=True))
        entropies = [head.entropy for head in reading.heads.values()]
        return UpdateStats(
            heads=reading.heads,
            joint_ratio_max=reading.joint_ratio_max,
            approx_kl=host["approx_kl"],
            clip_fraction=reading.joint_clip_fraction,
            policy_loss=host["policy_loss"],
            value_loss=host["value_loss"],
            entropy=sum(entropies) / len(entropies),
            explained_variance=host["explained_variance"],
            grad_norm=host["grad_norm"],
            epochs_run=int(host["epochs_run"]),
            minibatches_run=int(host["minibatches_run"]),
            minibatches_skipped=int(host["minibatches_skipped"]),
            early_stopped=host["early_stopped"] > 0,  # a count of the minibatches that tripped
            intervened=host["intervened"] > 0,
            explosion=reading.explosion(cfg.clip_eps, cfg.explosion_threshold),
        )

    def _minibatch(
        self, mb: Batch, active: Tensor, tally: _Tally
    ) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """One minibatch: loss, backward, a step unless stopped or non-finite, statistics.

        Returns the minibatch's new and old log-probs with their relevance (none relevant
        once the update stopped), for the statistics reduced at the end of the update, and
        whether the update is still active after it, all on the device. Only the joint
        KL (for the early stop) is computed here.
        """
        cfg = self.config
        log_probs, entropies, values, relevant = self.policy.evaluate_actions(
            mb.obs, mb.actions, mb.op_mask, mb.slot_by_op
        )
        # Masking relevance by `active` empties the statistics of a stopped update.
        counted_heads = relevant & active
        advantages = mb.advantages
        if cfg.normalize_advantage and advantages.shape[0] > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        n = log_probs.shape[0]
        policy_loss = clipped_surrogate(
            log_probs - mb.old_log_probs, advantages, relevant, cfg.clip_eps, cfg.clip_mode
        )
        value_loss = F.mse_loss(values, mb.returns)
        entropy_bonus = torch.where(relevant, entropies, torch.zeros_like(entropies)).sum() / n
        loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy_bonus
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)

        # The joint log-ratio of the relevant heads, clamped as in the statistics; a
        # non-finite log-prob makes it NaN, and such a minibatch counts nowhere (`counted`).
        new = log_probs.detach()
        raw = torch.clamp(new - mb.old_log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        joint = torch.where(counted_heads, raw, 0.0).sum(dim=1)
        joint = torch.clamp(joint, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        joint_kl = torch.special.expm1(joint) - joint  # 0 at a sample with no relevant head
        joint_kl_sum = joint_kl.sum()
        finite = torch.isfinite(log_probs).all() & torch.isfinite(loss) & torch.isfinite(grad_norm)
        trips = []
        if cfg.target_kl:
            kl_trip = active & (joint_kl_sum > 1.5 * cfg.target_kl * n)
            tally.add("early_stopped", 1.0, kl_trip)
            trips.append(kl_trip)
        if cfg.joint_ratio_limit:
            # exp is monotone: compare the largest joint log-ratio with log(limit).
            largest = torch.where(counted_heads.any(dim=1), joint, -math.inf).amax()
            limit_trip = active & (largest > math.log(cfg.joint_ratio_limit))
            tally.add("intervened", 1.0, limit_trip)
            trips.append(limit_trip)
        go_on = active & ~functools.reduce(operator.or_, trips) if trips else active
        step = go_on & finite
        vars(self.optimizer)["found_inf"] = (~step).to(torch.float32)
        self.optimizer.step()

        counted = active & finite
        tally.add("minibatches_run", 1.0, active)
        tally.add("loss_minibatches", 1.0, counted)
        tally.add("steps", 1.0, step)
        tally.add("policy_loss", policy_loss, counted)
        tally.add("value_loss", value_loss, counted)
        tally.add("grad_norm", grad_norm, step)
        tally.add("joint_kl", joint_kl_sum, counted)
        # approx KL is the mean over the minibatch's samples, as SB3 logs it (every sample
        # has a relevant head: the op is always used).
        tally.add("joint_kl_count", float(n), counted)
        tally.add("entropy_samples", float(n), counted)
        tally.add("head_entropy", entropies.sum(dim=0), counted)
        return (new, mb.old_log_probs, counted_heads), go_on

    def _scalars(
        self, sums: Mapping[str, Tensor], epoch_active: Tensor, data: Batch, buffer: RolloutBuffer
    ) -> dict[str, Tensor]:
        """The update's global scalars as float64 0-d device tensors (no host sync)."""

        def mean(total: Tensor, count: Tensor) -> Tensor:
            return total / count.clamp(min=1)

        n_mb = sums["loss_minibatches"]
        scalars = {
            "approx_kl": mean(sums["joint_kl"], sums["joint_kl_count"]),
            "policy_loss": mean(sums["policy_loss"], n_mb),
            "value_loss": mean(sums["value_loss"], n_mb),
            "explained_variance": _explained_variance(buffer.values.flatten(), data.returns),
            "grad_norm": mean(sums["grad_norm"], sums["steps"]),
            "epochs_run": epoch_active.sum(),
            "minibatches_run": sums["minibatches_run"],
            "minibatches_skipped": sums["minibatches_run"] - n_mb,  # run, but not finite
            # Minibatches that tripped the stop; a check not configured never trips.
            "early_stopped": sums.get("early_stopped", torch.zeros_like(n_mb)),
            "intervened": sums.get("intervened", torch.zeros_like(n_mb)),
        }
        return {name: v.to(torch.float64).reshape(()) for name, v in scalars.items()}

    def state_dict(self) -> dict[str, Any]:
        """Policy, optimizer and RNG state as plain tensors and dicts (weights_only loadable)."""
        return {
            "obs_dim": self.obs_dim,
            "head_sizes": dict(self.head_sizes),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sample_generator": self._sample_gen.get_state(),
            "perm_generator": self._perm_gen.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict` saved by an agent of the same shape."""
        if state["obs_dim"] != self.obs_dim or dict(state["head_sizes"]) != self.head_sizes:
            raise ValueError(
                f"checkpoint is for obs_dim={state['obs_dim']}, head_sizes={state['head_sizes']}; "
                f"this agent has obs_dim={self.obs_dim}, head_sizes={self.head_sizes}"
            )
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._sample_gen.set_state(state["sample_generator"])
        self._perm_gen.set_state(state["perm_generator"])
