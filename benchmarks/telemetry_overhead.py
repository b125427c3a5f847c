"""What the per-head ratio telemetry (TELE-151) costs a PPO update, against a true baseline.

Three agents of the same sizes train on one fixed rollout, each reloaded to one saved
state (weights, Adam state, RNGs) before every timed update, interleaved:

- "ours": `PPOAgent` as the product runs it (per-head clipping, per-head ratio
  statistics, entropies and KLs, one host transfer per update);
- "ours_joint_clip": the same with `clip_mode="joint"`, the baseline's loss: against the
  baseline it differs by the per-head telemetry alone (per-head clipping is a training
  objective, not telemetry, and costs a little compute on large minibatches);
- "baseline": `JointOnlyAgent` below, which computes no per-head quantity at all: the
  joint log-prob of the relevant heads (as Stable-Baselines3 scores a MultiDiscrete
  action: the sum of the heads' log-probs), the joint ratio, joint clipping (with
  `esper.rl.ppo.clipped_objective`, ours' implementation of the clipped term), the value
  loss and the entropy bonus, and, as ours, the KL early stop and the non-finite guard
  (`esper.rl.ppo.all_finite`) on the device (both are training, not telemetry) and the
  joint approx KL, clip fraction and explained variance read once per update (what SB3
  logs).

Two sizes: the product defaults (2 envs x 25 steps, 4 epochs x 4 minibatches) and a
realistic one (2048 samples, 4 epochs x 8 minibatches of 256: a 16-env x 32-step
rollout repeated four times in time, see `common.tiled_rollout`).
Updates are timed in thread CPU seconds (torch runs on this one thread). A count of the
aten operations each side dispatches per update says where the difference goes.
"""

from __future__ import annotations

import collections
import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import (
    DEFAULT_ENVS,
    DEFAULT_EPISODE_LENGTH,
    DEFAULT_SLOTS,
    SEED,
    Row,
    Section,
    cpu_clock,
    interleaved,
    paired_ratios,
    spread,
    tiled_rollout,
    timed,
)

TARGET = 1.05
TASK = "spirals"  # the update never sees the task, only the rollout's shape
#: name -> (envs, steps per env, times the steps repeat, minibatches); epochs are 4.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "default": (DEFAULT_ENVS, DEFAULT_EPISODE_LENGTH, 1, 4),
    "2048": (16, 32, 4, 8),
}


class ReloadingUpdate:
    """A timed `agent.update(buffer)` that first restores `state` (outside the timing).

    Keeps what the last update returned, e.g. to check how many epochs it ran.
    """

    def __init__(self, agent: Any, state: dict[str, Any], buffer: Any) -> None:
        self.agent, self.state, self.buffer = agent, state, buffer
        self.result: Any = None

    def __call__(self) -> float:
        self.agent.load_state_dict(copy.deepcopy(self.state))
        return timed(self._update, cpu_clock)()

    def _update(self) -> None:
        self.result = self.agent.update(self.buffer)


def _joint_only_agent_class() -> type:
    """`JointOnlyAgent`, built on first use so importing this module does not load torch's
    training stack."""
    from esper.rl.ppo import (
        PPOAgent,
        UpdateStats,
        all_finite,
        clipped_objective,
        explained_variance,
    )

    class JointOnlyAgent(PPOAgent):  # type: ignore[misc, valid-type]
        """PPO with no per-head quantity: the telemetry cost's baseline (module docstring).

        Same policy, optimiser, minibatching and device-side early stop as `PPOAgent`;
        the loss clips the joint ratio. Returns the joint approx KL, clip fraction,
        losses and the epochs run, read from the device once.
        """

        def update(self, buffer: Any) -> UpdateStats:
            cfg = self.config
            data = buffer.batch()
            epochs = self.minibatch_indices(data.obs.shape[0])  # ours' very minibatching
            active = torch.ones((), dtype=torch.bool, device=self.device)
            rows: list[Tensor] = []
            ratios: list[Tensor] = []
            self.policy.train()
            try:
                for minibatches in epochs:
                    for index in minibatches:
                        row, ratio, active = self._joint_minibatch(data.select(index), active)
                        rows.append(row)
                        ratios.append(ratio)
            finally:
                vars(self.optimizer).pop("found_inf", None)
            # As ours, the clip fraction is one pass over every counted sample at the end.
            flags = [row[-1].expand(len(r)) for row, r in zip(rows, ratios, strict=True)]
            counted = torch.cat(flags)
            clipped = ((torch.cat(ratios) - 1).abs() > cfg.clip_eps).to(counted.dtype)
            clip_fraction = (clipped * counted).sum() / counted.sum().clamp(min=1)
            sums = torch.stack(rows).sum(dim=0)
            residual = data.returns - buffer.values.flatten()
            variances = torch.stack([data.returns.var(correction=0), residual.var(correction=0)])
            totals = torch.cat([sums, clip_fraction.reshape(1), variances]).tolist()  # one read
            names = ("approx_kl", "policy_loss", "value_loss", "minibatches")
            means = dict(zip(names, totals, strict=False))
            count = max(means.pop("minibatches"), 1.0)
            return UpdateStats(
                heads={},  # no per-head quantity at all
                **{name: value / count for name, value in means.items()},
                clip_fraction=totals[-3],
                explained_variance=explained_variance(totals[-2], totals[-1]),
                epochs_run=len(rows) // cfg.minibatches,
            )

        def _joint_minibatch(self, mb: Any, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """Loss, step and KL stop of one minibatch; its sums (masked, with a last entry
            1 where it counts), its joint ratios, and whether the update goes on."""
            cfg = self.config
            log_probs, entropies, values, relevant = self.policy.evaluate_actions(
                mb.obs, mb.actions, mb.legal
            )
            zero = torch.zeros_like(log_probs)
            log_ratio = torch.where(relevant, log_probs - mb.old_log_probs, zero).sum(dim=1)
            ratio = torch.exp(log_ratio)
            advantages = mb.advantages
            if cfg.normalize_advantage and advantages.shape[0] > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            policy_loss = -clipped_objective(ratio, advantages, cfg.clip_eps).mean()
            value_loss = F.mse_loss(values, mb.returns)
            entropy = torch.where(relevant, entropies, zero).sum() / log_probs.shape[0]
            loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            with torch.no_grad():
                log_ratio = log_ratio.detach()
                approx_kl = (torch.special.expm1(log_ratio) - log_ratio).mean()
                finite = all_finite(loss, grad_norm, log_probs.detach().sum())
                trip = active & (approx_kl > 1.5 * cfg.target_kl if cfg.target_kl else False)
                step = active & finite & ~trip
                self.optimizer.found_inf = (~step).to(torch.float32)
            self.optimizer.step()
            counted = (active & finite).to(torch.float64)
            row = torch.stack([approx_kl, policy_loss.detach(), value_loss.detach()])
            sums = torch.cat([row.to(torch.float64) * counted, counted.reshape(1)])
            return sums, ratio.detach(), active & ~trip

    return JointOnlyAgent


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched while active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def op_counts(update: ReloadingUpdate) -> dict[str, Any]:
    """Aten operations of one update of `update`'s agent: total and the most frequent."""
    update.agent.load_state_dict(copy.deepcopy(update.state))
    with OpCounter() as counter:
        update.agent.update(update.buffer)
    return {"total": sum(counter.counts.values()), "top": dict(counter.counts.most_common(12))}


def measure(size: str, rounds: int, repeats: int) -> dict[str, Any]:
    """Interleaved update timings of ours (both clip modes) and the baseline at `size`."""
    from esper.morpho.actions import factored_actions
    from esper.rl.ppo import PPOAgent, PPOConfig

    n_envs, steps, repeats_in_time, minibatches = SIZES[size]
    buffer, obs_dim = tiled_rollout(TASK, n_envs, steps, repeats_in_time)
    heads = factored_actions(DEFAULT_SLOTS)
    agents = {
        "ours": PPOAgent(obs_dim, heads, PPOConfig(minibatches=minibatches), seed=SEED),
        "ours_joint_clip": PPOAgent(
            obs_dim, heads, PPOConfig(minibatches=minibatches, clip_mode="joint"), seed=SEED
        ),
        "baseline": _joint_only_agent_class()(
            obs_dim, heads, PPOConfig(minibatches=minibatches), seed=SEED
        ),
    }
    state = copy.deepcopy(agents["ours"].state_dict())
    sides = {name: ReloadingUpdate(agent, state, buffer) for name, agent in agents.items()}
    samples = interleaved(dict(sides), rounds=rounds, warmup=2, repeats=repeats)
    return {
        "samples_per_update": n_envs * steps * repeats_in_time,
        "minibatches": minibatches,
        "epochs": 4,
        "rounds": rounds,
        "repeats_per_round": repeats,
        "epochs_run": {name: side.result.epochs_run for name, side in sides.items()},
        **{f"{name}_ms": spread(v).scaled(1e3).as_dict() for name, v in samples.items()},
        "ops_per_update": {name: op_counts(side) for name, side in sides.items()},
        "ratio": spread(paired_ratios(samples["ours"], samples["baseline"])),
        "same_loss_ratio": spread(paired_ratios(samples["ours_joint_clip"], samples["baseline"])),
    }


def run(quick: bool) -> Section:
    """Both sizes; --quick runs fewer rounds."""
    rounds, repeats = (6, 2) if quick else (20, 3)
    results = {size: measure(size, rounds if size == "default" else rounds // 2, repeats)
               for size in SIZES}  # fmt: skip
    rows = []
    for size, m in results.items():
        suffix = "" if size == "default" else f"_{size}"
        what = f"{m['samples_per_update']} samples, {m['minibatches']} minibatches x 4 epochs"
        rows += [
            Row(f"telemetry_cost_ratio{suffix}",
                f"telemetry cost: update CPU time, ours / no per-head work ({what})",
                m["ratio"], "x", TARGET, higher_is_better=False),
            Row(f"telemetry_cost_ratio_same_loss{suffix}",
                f"telemetry alone: the same, both sides clipping the joint ratio ({what})",
                m["same_loss_ratio"], "x", TARGET, higher_is_better=False),
        ]  # fmt: skip
    raw = {
        size: {
            **m,
            "ratio": m["ratio"].as_dict(),
            "same_loss_ratio": m["same_loss_ratio"].as_dict(),
        }
        for size, m in results.items()
    }
    return Section("telemetry_overhead", rows, raw)
