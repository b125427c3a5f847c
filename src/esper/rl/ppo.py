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

With several learners (`esper.rl.learners`) each minibatch's gradients are averaged over
the ranks in one all-reduce that also carries the sums the stop decisions read, so the
ranks decide alike; the statistics and loss sums are combined once per update.

The ratio statistics are reduced once per update, over the log-ratios of all its
minibatches concatenated, not once per minibatch: on small minibatches an update is
kernel-launch bound, and per-minibatch reductions were most of what the per-head
telemetry cost. What a minibatch adds for them is two references (its log-ratios and
their relevance); the few divisions that turn the update's sums into means run on the
host after the one transfer.
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

from esper.common.optim import FusedAdam
from esper.common.spaces import FactoredActions
from esper.rl.config import ClipMode, PPOConfig
from esper.rl.learners import Learners, LocalStatsHook
from esper.rl.policy import FactoredPolicy
from esper.rl.ratio_stats import HeadRatioStats, RatioReading, head_log_ratios, head_ratio_stats
from esper.telemetry.heads import LOG_RATIO_CLAMP, UpdateStats

__all__ = [
    "HeadRatioStats",
    "PPOAgent",
    "PPOConfig",
    "RolloutBuffer",
    "Surrogate",
    "UpdateStats",
    "all_finite",
    "clipped_objective",
    "clipped_surrogate",
    "explained_variance",
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
    legal: Tensor  # [B, cases, heads, width] (esper.common.spaces)

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
        actions: FactoredActions,
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
        self.actions = zeros(actions.n_heads, dtype=torch.int64)
        self.log_probs = zeros(actions.n_heads)
        self.values = zeros()
        self.rewards = zeros()
        self.episode_starts = zeros(dtype=torch.bool)
        self.legal = zeros(*actions.legal_shape, dtype=torch.bool)
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
        legal: npt.ArrayLike | Tensor,
    ) -> None:
        """Write step `t` of every env (arrays with a leading env axis)."""
        given = {
            "obs": obs,
            "actions": actions,
            "log_probs": log_probs,
            "values": values,
            "rewards": rewards,
            "episode_starts": episode_starts,
            "legal": legal,
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
            self.legal,
        )
        return Batch(*(f.flatten(0, 1) for f in fields))


class Surrogate(NamedTuple):
    """The clipped policy loss and, as a by-product, the masked per-head log-ratios."""

    loss: Tensor  # [] to minimise
    masked_log_ratio: Tensor  # [N, H] detached log-ratios, 0 where a head is irrelevant


def clipped_surrogate(
    log_ratio: Tensor, advantages: Tensor, relevant: Tensor, clip_eps: float, mode: ClipMode
) -> Surrogate:
    """PPO clipped policy loss (to minimise) of [N, H] log-ratios.

    "joint" clips the ratio of the whole action, exp(sum of the relevant heads' log-ratios),
    as Stable-Baselines3 does for MultiDiscrete (which sums every head). "per_head" clips
    each head's ratio separately on its relevant samples; each head's surrogate is summed
    over its relevant samples and divided by N, then the heads are summed. With every ratio
    at 1 this has the joint gradient, so both modes take steps of one scale, and a head
    relevant at few samples is not up-weighted (a mean over its own samples would multiply
    a rare head's step).

    The masked log-ratios come back too, for the KL early stop's joint (one masking for
    both).
    """
    zero = torch.zeros_like(log_ratio)
    masked = torch.where(relevant, log_ratio, zero)
    adv = advantages.unsqueeze(1)
    if mode == "joint":
        joint = masked.sum(dim=1, keepdim=True)
        surrogate = clipped_objective(torch.exp(joint), adv, clip_eps)
    else:  # masking the advantage, which needs no gradient, is cheaper than the objective
        bounded = torch.clamp(torch.exp(masked), *_clip_bounds(adv, clip_eps, masked.dtype))
        surrogate = bounded * torch.where(relevant, adv, zero)
    return Surrogate(-surrogate.sum() / log_ratio.shape[0], masked.detach())


def _clip_bounds(advantages: Tensor, clip_eps: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-sample bounds of the ratio in the clipped objective (see `clipped_objective`)."""
    positive = advantages >= 0
    inf = torch.full_like(advantages, torch.inf, dtype=dtype)  # bounds in the ratio's dtype
    return torch.where(positive, -inf, 1.0 - clip_eps), torch.where(positive, 1.0 + clip_eps, inf)


def clipped_objective(ratio: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """PPO's min(r A, clip(r, 1 - eps, 1 + eps) A), elementwise (`advantages` broadcast).

    That is A min(r, 1 + eps) where A >= 0 and A max(r, 1 - eps) where A < 0: one clamp
    with per-sample bounds. Same values bit for bit (multiplying by A is monotone) and the
    same gradient (zero outside the bounds; ties aside), for half the kernels of the
    textbook form, forward and backward.
    """
    return torch.clamp(ratio, *_clip_bounds(advantages, clip_eps, ratio.dtype)) * advantages


def all_finite(*values: Tensor) -> Tensor:
    """Whether every value is finite, as one device bool (no host sync).

    One isfinite of their sum: a NaN or an infinity anywhere makes the sum non-finite (an
    overflow to infinity counts as non-finite too, which is what a guard wants).
    """
    return torch.isfinite(functools.reduce(operator.add, (v.detach() for v in values)))


def explained_variance(target_variance: float, residual_variance: float) -> float:
    """1 - Var(target - predicted) / Var(target); 0 when the target is constant."""
    if not target_variance > 0:
        return 0.0
    return 1.0 - residual_variance / max(target_variance, 1e-12)


class _Minibatches:
    """What each minibatch of an update measured, kept as device references.

    Per minibatch: its size, its flags (bool 0-d, `FLAGS`), its losses and KL sum (0-d,
    `VALUES`) and its per-head entropy sums. `stacked` stacks each kind once per update:
    on small minibatches an update is launch-bound, and a kernel or two per minibatch was
    most of what this bookkeeping cost. Flags and values travel to the host raw, in the
    update's one transfer, where `host_totals` masks and sums them.
    """

    FLAGS = ("active", "counted", "step", "kl_trip", "limit_trip")
    VALUES = ("policy_loss", "value_loss", "grad_norm", "joint_kl")

    def __init__(self, per_epoch: int, device: torch.device) -> None:
        self.per_epoch = per_epoch  # minibatches per epoch, all of one size but the last
        #: The flag of a check that is not configured: it never trips.
        self.never = torch.zeros((), dtype=torch.bool, device=device)
        self.sizes: list[int] = []
        self.flags: list[Tensor] = []
        self.values: list[Tensor] = []
        self.entropies: list[Tensor] = []

    def add(
        self, size: int, flags: tuple[Tensor, ...], values: tuple[Tensor, ...], entropy: Tensor
    ) -> None:
        self.sizes.append(size)
        self.flags.extend(flags)
        self.values.extend(v.detach() for v in values)  # the number, not the graph
        self.entropies.append(entropy.detach())

    def stacked(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flags [M, F], values [M, V], and the entropy sums [H] and sample count [] of
        the minibatches that count (float64), all on the device.

        Every epoch splits the same samples alike, so the count needs no sizes copied to
        the device (a copy from the host would wait for the device).
        """
        n, per_epoch = len(self.sizes), self.per_epoch
        flags = torch.stack(self.flags).view(n, len(self.FLAGS))
        values = torch.stack(self.values).view(n, len(self.VALUES))
        counted = flags[:, self.FLAGS.index("counted")]
        entropies = torch.stack(self.entropies)
        entropy_sum = torch.where(counted.unsqueeze(1), entropies, 0.0).sum(0, dtype=torch.float64)
        full, last = self.sizes[0], self.sizes[per_epoch - 1]
        if self.sizes != ([full] * (per_epoch - 1) + [last]) * (n // per_epoch):
            raise ValueError(f"minibatch sizes {self.sizes} are not one split per epoch")
        by_epoch = counted.to(torch.float64).view(-1, per_epoch)
        count = by_epoch.sum() * full - by_epoch[:, -1].sum() * (full - last)
        return flags, values, entropy_sum, count

    def host_totals(
        self, flags: list[float], values: list[float], ranks: int = 1
    ) -> dict[str, float]:
        """Masked sums of the host copies of `stacked`'s flags and values (pure Python).

        A value counts where its flag holds (losses and KL: the minibatch counted; the
        gradient norm: it stepped), so a NaN of a skipped minibatch never enters a sum. An
        epoch ran if the update was still active at its first minibatch. With `ranks`
        learners every minibatch is `ranks` shards of its size (`values` already reduced).
        """
        f, v = len(self.FLAGS), len(self.VALUES)
        totals = dict.fromkeys(
            ("epochs_run", "minibatches_run", "counted", "steps", "early_stopped",
             "intervened", "samples", *self.VALUES), 0.0,
        )  # fmt: skip
        for i, size in enumerate(self.sizes):
            active, counted, step, kl_trip, limit_trip = (x > 0 for x in flags[i * f : (i + 1) * f])
            policy_loss, value_loss, grad_norm, joint_kl = values[i * v : (i + 1) * v]
            totals["epochs_run"] += active and i % self.per_epoch == 0
            totals["minibatches_run"] += active
            totals["early_stopped"] += kl_trip
            totals["intervened"] += limit_trip
            if step:
                totals["steps"] += 1
                totals["grad_norm"] += grad_norm
            if counted:
                totals["counted"] += 1
                totals["samples"] += size * ranks
                totals["policy_loss"] += policy_loss
                totals["value_loss"] += value_loss
                totals["joint_kl"] += joint_kl
        return totals


class PPOAgent:
    """A factored policy, its Adam optimizer and the PPO update with per-head telemetry.

    It trains on any `FactoredActions` declaration; on the morphogenetic env it is Tamiyo.
    """

    def __init__(
        self,
        obs_dim: int,
        actions: FactoredActions,
        config: PPOConfig | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        learners: Learners | None = None,
    ) -> None:
        self.config = config or PPOConfig()
        #: The ranks this agent trains with (None: alone). Every rank builds the same
        #: policy from `seed`; only the sampling generator differs by rank.
        self.learners = learners if learners is not None and learners.world > 1 else None
        #: Debugging and tests: sees each update's statistics of this rank alone.
        self.local_stats_hook: LocalStatsHook | None = None
        self.device = torch.device(device)
        self.obs_dim = obs_dim
        self.actions = actions
        self.head_sizes = actions.head_sizes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = FactoredPolicy(obs_dim, actions, self.config.hidden)
        self.policy = policy.to(self.device)
        # Fused Adam honours `found_inf` on the device: the sync-free skip of a minibatch.
        self.optimizer = FusedAdam(self.policy.parameters(), lr=self.config.lr)
        sample_seed, perm_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
        if self.learners is not None and self.learners.rank > 0:  # its own actions
            sample_seed = np.random.SeedSequence([seed, self.learners.rank]).generate_state(
                1, dtype=np.uint64
            )[0]
        self._sample_gen = torch.Generator(self.device).manual_seed(int(sample_seed))
        self._perm_gen = torch.Generator(self.device).manual_seed(int(perm_seed))

    def _tensor(self, array: npt.ArrayLike | Tensor, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def act(
        self,
        obs: npt.ArrayLike,
        legal: npt.ArrayLike,
        deterministic: bool = False,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Actions [N, H], per-head log-probs [N, H] and values [N] for a batch of states
        with legal values `legal` [N, cases, H, W]."""
        actions, log_probs, values = self.policy.act(
            self._tensor(obs, torch.float32),
            self._tensor(legal, torch.bool),
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
        return self.actions.names

    def minibatch_indices(self, n_samples: int) -> list[tuple[Tensor, ...]]:
        """Each epoch's minibatches as sample-index tensors: a fresh permutation per epoch
        from the agent's generator, split into `minibatches` of one size (the last may be
        smaller). All permutations are drawn up front, so they never wait on the device."""
        cfg = self.config
        mb_size = math.ceil(n_samples / cfg.minibatches)
        return [
            torch.randperm(n_samples, generator=self._perm_gen, device=self.device).split(mb_size)
            for _ in range(cfg.epochs)
        ]

    def update(self, buffer: RolloutBuffer) -> UpdateStats:
        """K epochs x M minibatches of PPO on `buffer`; returns what the update measured.

        The minibatch that trips the KL early stop or the joint-ratio intervention enters
        the statistics but takes no optimizer step (as in Stable-Baselines3); later
        minibatches neither count nor step.
        """
        cfg = self.config
        data = buffer.batch()
        epochs = self.minibatch_indices(data.obs.shape[0])
        parts: list[tuple[Tensor, Tensor]] = []  # per minibatch: log-ratios, counted heads
        record = _Minibatches(len(epochs[0]), self.device)
        active = torch.ones((), dtype=torch.bool, device=self.device)
        self.policy.train()
        try:
            for minibatches in epochs:
                for index in minibatches:
                    mb_ratios, active = self._minibatch(data.select(index), active, record)
                    parts.append(mb_ratios)
        finally:
            vars(self.optimizer).pop("found_inf", None)
        # The statistics run once, head-major, over every minibatch's samples.
        diffs, counted = (torch.cat(column).t() for column in zip(*parts, strict=True))
        flags, mb_values, entropy_sum, entropy_count = record.stacked()
        stats = HeadRatioStats.from_log_ratios(
            head_log_ratios(diffs, counted),
            cfg.clip_eps,
            self.head_names,
            entropy_sum=entropy_sum,
            entropy_count=entropy_count,
        )
        residual = data.returns - buffer.values.flatten()
        if self.local_stats_hook is not None:
            self.local_stats_hook(stats)
        if self.learners is not None:
            reduced = self._reduced(stats, data.returns, residual, flags, mb_values, record)
            return self._finish_update(*reduced)
        # Explained variance of the rollout's value predictions: its two variances.
        variances = torch.stack([data.returns.var(correction=0), residual.var(correction=0)])
        tensor = torch.cat(
            [stats.reading_tensor(), variances, flags.flatten(), mb_values.flatten()]
        )
        values = tensor.tolist()  # the single device->host transfer of the update
        k = stats.reading_size
        reading = stats.read(values[:k], head_sizes=list(self.head_sizes.values()))
        n_flags = flags.numel()
        totals = record.host_totals(values[k + 2 : k + 2 + n_flags], values[k + 2 + n_flags :])
        return self._finish_update(reading, totals, values[k], values[k + 1])

    def _reduced(
        self,
        stats: HeadRatioStats,
        returns: Tensor,
        residual: Tensor,
        flags: Tensor,
        mb_values: Tensor,
        record: _Minibatches,
    ) -> tuple[RatioReading, dict[str, float], float, float]:
        """What `update` reports, over every rank's samples: the statistics combined in
        one all-gather that carries each rank's loss sums and value moments along.

        The flags are the same on every rank (each was decided on all-reduced values), so
        they stay local. Losses are the mean over the ranks' (equal) shards, the KL sums
        add, the gradient norm is the same everywhere; the explained variance comes from
        summed moments (n, sum y, sum y^2 of the returns and of the residuals), since
        variances do not reduce.
        """
        assert self.learners is not None
        f64 = torch.float64
        r, y = residual.to(f64), returns.to(f64)
        n = torch.tensor([float(y.numel())], dtype=f64, device=y.device)
        moments = torch.cat([n, torch.stack([y.sum(), (y * y).sum(), r.sum(), (r * r).sum()])])
        extra = torch.cat([moments, mb_values.flatten().to(f64)])
        reduced = self.learners.reduce_stats(stats, extra)
        combined = reduced.stats
        tensor = torch.cat(
            [combined.reading_tensor(), reduced.extras.flatten(), flags.flatten().to(f64)]
        )
        values = tensor.tolist()  # the single device->host transfer of the update
        k, width, ranks = combined.reading_size, extra.numel(), self.learners.world
        reading = combined.read(values[:k], head_sizes=list(self.head_sizes.values()))
        rows = [values[k + i * width : k + (i + 1) * width] for i in range(ranks)]
        flag_values = values[k + ranks * width :]
        m = [sum(row[i] for row in rows) for i in range(5)]
        count = max(m[0], 1.0)
        target_variance = m[2] / count - (m[1] / count) ** 2
        residual_variance = m[4] / count - (m[3] / count) ** 2
        n_values = len(_Minibatches.VALUES)
        mb: list[float] = []
        for j in range((width - 5) // n_values):
            column = [row[5 + j * n_values : 5 + (j + 1) * n_values] for row in rows]
            policy, value, grad, kl = zip(*column, strict=True)
            mb += [sum(policy) / ranks, sum(value) / ranks, grad[0], sum(kl)]
        totals = record.host_totals(flag_values, mb, ranks=ranks)
        return reading, totals, target_variance, residual_variance

    def _finish_update(
        self,
        reading: RatioReading,
        totals: dict[str, float],
        target_variance: float,
        residual_variance: float,
    ) -> UpdateStats:
        """The `UpdateStats` of an update from its reading and host totals."""
        cfg = self.config

        def mean(name: str, count: str) -> float:
            return totals[name] / max(totals[count], 1.0)

        entropies = [head.entropy for head in reading.heads.values()]
        return UpdateStats(
            heads=reading.heads,
            joint_ratio_max=reading.joint_ratio_max,
            approx_kl=mean("joint_kl", "samples"),
            clip_fraction=reading.joint_clip_fraction,
            policy_loss=mean("policy_loss", "counted"),
            value_loss=mean("value_loss", "counted"),
            entropy=sum(entropies) / len(entropies),
            explained_variance=explained_variance(target_variance, residual_variance),
            grad_norm=mean("grad_norm", "steps"),
            epochs_run=int(totals["epochs_run"]),
            minibatches_run=int(totals["minibatches_run"]),
            minibatches_skipped=int(totals["minibatches_run"] - totals["counted"]),  # not finite
            early_stopped=totals["early_stopped"] > 0,  # a count of the minibatches that tripped
            intervened=totals["intervened"] > 0,
            explosion=reading.explosion(cfg.clip_eps, cfg.explosion_threshold),
        )

    def _minibatch(
        self, mb: Batch, active: Tensor, record: _Minibatches
    ) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """One minibatch: loss, backward, a step unless stopped or non-finite, statistics.

        Returns the minibatch's per-head log-ratios with the heads that count (relevant,
        and none once the update stopped), for the statistics reduced at the end of the
        update, and whether the update is still active after it, all on the device. Only
        the joint KL (for the early stop) is computed here.
        """
        cfg = self.config
        log_probs, entropies, values, relevant = self.policy.evaluate_actions(
            mb.obs, mb.actions, mb.legal
        )
        advantages = mb.advantages
        if cfg.normalize_advantage and advantages.shape[0] > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        n = log_probs.shape[0]
        log_ratio = log_probs - mb.old_log_probs
        policy_loss, masked = clipped_surrogate(
            log_ratio, advantages, relevant, cfg.clip_eps, cfg.clip_mode
        )
        value_loss = F.mse_loss(values, mb.returns)
        entropy_bonus = torch.where(relevant, entropies, torch.zeros_like(entropies)).sum() / n
        loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy_bonus
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

        # The joint log-ratio of the relevant heads, each clamped and then the sum, as in
        # the statistics (TELE-150): the early stop and the intervention read what the
        # telemetry reports.
        joint = masked.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).sum(dim=1)
        joint = joint.clamp_(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        joint_kl_sum = (torch.special.expm1(joint) - joint).sum()  # 0 with no relevant head
        if self.learners is not None:
            grad_norm, finite, kl_trip, limit_trip = self._decide_together(
                n, loss, log_probs, joint, joint_kl_sum, active, record
            )
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self.policy.parameters(), cfg.max_grad_norm
            )
            # A minibatch with a non-finite log-prob (relevant or not), loss or gradient
            # neither steps nor counts (`counted`).
            finite = all_finite(loss, grad_norm, log_probs.detach().sum())
            kl_trip = limit_trip = record.never
            if cfg.target_kl:
                kl_trip = active & (joint_kl_sum > 1.5 * cfg.target_kl * n)
            if cfg.joint_ratio_limit:
                # exp is monotone: compare the largest joint log-ratio with log(limit) > 0
                # (a sample with no relevant head has joint 0 and never trips it).
                limit_trip = active & (joint.amax() > math.log(cfg.joint_ratio_limit))
        go_on = active
        if cfg.target_kl:
            go_on = go_on & ~kl_trip
        if cfg.joint_ratio_limit:
            go_on = go_on & ~limit_trip
        step = go_on & finite
        vars(self.optimizer)["found_inf"] = (~step).to(torch.float32)
        self.optimizer.step()

        # approx KL is the mean over the counted minibatches' samples, as SB3 logs it (every
        # sample has a relevant head: the op is always used).
        record.add(
            n,
            (active, active & finite, step, kl_trip, limit_trip),
            (policy_loss, value_loss, grad_norm, joint_kl_sum),
            entropies.sum(dim=0),
        )
        # Masking relevance by `active` empties the statistics of a stopped update.
        return (log_ratio.detach(), relevant & active), go_on

    def _decide_together(
        self,
        n: int,
        loss: Tensor,
        log_probs: Tensor,
        joint: Tensor,
        joint_kl_sum: Tensor,
        active: Tensor,
        record: _Minibatches,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Average the gradients over the ranks and decide the minibatch on the sums.

        One all-reduce carries the gradients and four sums: the joint KL and the sample
        count (the early stop compares the KL mean over every rank's samples, as one
        process fed them all would), the ranks whose joint ratio passed the limit, and the
        ranks whose loss or log-probs were not finite. Clipping runs on the averaged
        gradients, so the norm, and the step, are the same on every rank. Returns the
        gradient norm and the finite, KL-trip and limit-trip flags.
        """
        cfg = self.config
        limit = record.never
        if cfg.joint_ratio_limit:
            limit = joint.amax() > math.log(cfg.joint_ratio_limit)
        local_bad = ~all_finite(loss, log_probs.detach().sum())
        sums = torch.stack(
            [joint_kl_sum.detach(), torch.full_like(joint_kl_sum, float(n)),
             limit.to(joint_kl_sum.dtype), local_bad.to(joint_kl_sum.dtype)]
        )  # fmt: skip
        params = list(self.policy.parameters())
        assert self.learners is not None
        kl_total, n_total, over_limit, bad = self.learners.average_gradients(params, sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        finite = (bad == 0) & torch.isfinite(grad_norm)
        kl_trip = limit_trip = record.never
        if cfg.target_kl:
            kl_trip = active & (kl_total > 1.5 * cfg.target_kl * n_total)
        if cfg.joint_ratio_limit:
            limit_trip = active & (over_limit > 0)
        return grad_norm, finite, kl_trip, limit_trip

    def sample_generator_state(self) -> Tensor:
        """The action-sampling generator's state: the one RNG state that differs by rank."""
        return self._sample_gen.get_state()

    def restore_sample_generator(self, state: Tensor) -> None:
        self._sample_gen.set_state(state)

    def state_dict(self) -> dict[str, Any]:
        """Policy, optimizer and RNG state as plain tensors and dicts (weights_only loadable)."""
        return {
            "obs_dim": self.obs_dim,
            "head_sizes": dict(self.head_sizes),
            "actions": self.actions.to_dict(),
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
        if "actions" in state and FactoredActions.from_dict(state["actions"]) != self.actions:
            raise ValueError(
                f"checkpoint is for heads {state['actions']}; this agent has "
                f"{self.actions.to_dict()}"
            )
        # Older checkpoints also hold buffers derived from the declaration (`value_exists`,
        # `log_head_sizes`); this policy rebuilds them from its own.
        derived = {"log_head_sizes", "value_exists"}
        policy = {k: v for k, v in state["policy"].items() if k not in derived}
        self.policy.load_state_dict(policy)
        self.optimizer.load_state_dict(state["optimizer"])
        self._sample_gen.set_state(state["sample_generator"])
        self._perm_gen.set_state(state["perm_generator"])
