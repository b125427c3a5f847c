"""Tamiyo: the factored actor-critic that picks one 8-head action per host epoch.

All heads share one feature trunk. Their logits live in one padded [N, 8, W] tensor so a
single `Categorical` scores every head at once; padding and invalid values get the most
negative finite logit (never -inf or NaN), which gives them probability 0 while log-probs
and entropies stay finite. The slot mask depends on the op, so `act` samples the op first
and then the other heads under the slot mask of that op.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from esper.morpho.actions import HEAD_INDEX, HEAD_NAMES, RELEVANCE_TABLE, Op

N_HEADS = len(HEAD_NAMES)
N_OPS = len(Op)
_OP = HEAD_INDEX["op"]
_SLOT = HEAD_INDEX["slot"]


def _linear(n_in: int, n_out: int, gain: float) -> nn.Linear:
    """Orthogonal weights and zero bias: the PPO initialisation (small gain for the policy
    output keeps the first policy near uniform)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class TamiyoPolicy(nn.Module):
    """Shared MLP trunk, one categorical per head (HEAD_NAMES order) and a value head."""

    inject_nonfinite: dict[str, float] | None

    # Buffers (registered in __init__), declared so type checkers know they are tensors.
    value_exists: Tensor
    relevance: Tensor

    def __init__(self, obs_dim: int, head_sizes: Mapping[str, int], hidden: int = 128) -> None:
        super().__init__()
        if set(head_sizes) != set(HEAD_NAMES):
            raise ValueError(f"head_sizes must name exactly {HEAD_NAMES}, got {sorted(head_sizes)}")
        if head_sizes["op"] != N_OPS:
            raise ValueError(f"the op head has {N_OPS} values, got {head_sizes['op']}")
        sizes = [int(head_sizes[h]) for h in HEAD_NAMES]
        if min(sizes) < 1 or obs_dim < 1 or hidden < 1:
            raise ValueError("obs_dim, hidden and every head size must be >= 1")
        self.obs_dim = obs_dim
        self.head_sizes = dict(zip(HEAD_NAMES, sizes, strict=True))
        self.n_slots = sizes[_SLOT]
        self.width = max(sizes)
        self.trunk = nn.Sequential(
            _linear(obs_dim, hidden, math.sqrt(2)),
            nn.Tanh(),
            _linear(hidden, hidden, math.sqrt(2)),
            nn.Tanh(),
        )
        self.logits_head = _linear(hidden, N_HEADS * self.width, 0.01)
        self.value_head = _linear(hidden, 1, 1.0)
        positions = torch.arange(self.width)
        self.register_buffer("value_exists", positions < torch.tensor(sizes).unsqueeze(1))
        self.register_buffer("relevance", torch.as_tensor(RELEVANCE_TABLE, dtype=torch.bool))
        self.inject_nonfinite = None

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Raw padded logits [N, 8, W] and state values [N]."""
        features = self.trunk(obs)
        logits = self.logits_head(features).view(-1, N_HEADS, self.width)
        return logits, self.value_head(features).squeeze(-1)

    def _valid(self, op_mask: Tensor, slot_mask: Tensor) -> Tensor:
        """[N, 8, W] bool: values that exist and are allowed (op mask, op-conditioned slot)."""
        valid = self.value_exists.expand(op_mask.shape[0], -1, -1).clone()
        valid[:, _OP, :N_OPS] &= op_mask
        valid[:, _SLOT, : self.n_slots] &= slot_mask
        return valid

    def _distribution(self, logits: Tensor, op_mask: Tensor, slot_mask: Tensor) -> Categorical:
        masked = logits.masked_fill(~self._valid(op_mask, slot_mask), torch.finfo(logits.dtype).min)
        return Categorical(logits=masked, validate_args=False)

    @staticmethod
    def _slot_mask(slot_by_op: Tensor, op: Tensor) -> Tensor:
        """The [N, S] slot mask conditioned on each sample's op."""
        return torch.take_along_dim(slot_by_op, op.view(-1, 1, 1), dim=1).squeeze(1)

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        op_mask: Tensor,
        slot_by_op: Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or take the mode of) actions [N, 8], their per-head log-probs and values.

        Acting never needs gradients; PPO re-scores the actions in `evaluate_actions`.
        """
        logits, values = self(obs)
        op_logits = logits[:, _OP, :N_OPS].masked_fill(~op_mask, torch.finfo(logits.dtype).min)
        op_dist = Categorical(logits=op_logits, validate_args=False)
        op = op_dist.mode if deterministic else self._sample(op_dist.probs, generator)
        dist = self._distribution(logits, op_mask, self._slot_mask(slot_by_op, op))
        if deterministic:
            actions = dist.mode
        else:
            actions = self._sample(dist.probs.reshape(-1, self.width), generator).view(-1, N_HEADS)
        actions[:, _OP] = op
        return actions, dist.log_prob(actions), values

    @staticmethod
    def _sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, op_mask: Tensor, slot_by_op: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-head log-probs and entropies (nats) [N, 8], values [N] and relevance [N, 8]."""
        logits, values = self(obs)
        if self.inject_nonfinite:
            logits = logits.clone()
            for head, value in self.inject_nonfinite.items():
                logits[:, HEAD_INDEX[head], :] = value
        op = actions[:, _OP]
        dist = self._distribution(logits, op_mask, self._slot_mask(slot_by_op, op))
        relevant = self.relevance.index_select(0, op)
        return dist.log_prob(actions), dist.entropy(), values, relevant
