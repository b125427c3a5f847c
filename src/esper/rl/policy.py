"""The factored actor-critic: one categorical per head of any `FactoredActions`.

All heads share one feature trunk. Their logits live in one padded [N, H, W] tensor so a
single `Categorical` scores every head at once; padding and illegal values get the most
negative finite logit (never -inf or NaN), which gives them probability 0 while log-probs
and entropies stay finite. Where the declaration has a selector head (the morphogenetic
env's `op`), `act` samples it first and then the other heads under the legal values of
the selector's choice; relevance comes from the declaration's table by the same choice.
On the morphogenetic environment this policy is Tamiyo.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from esper.common.spaces import FactoredActions


def _linear(n_in: int, n_out: int, gain: float) -> nn.Linear:
    """Orthogonal weights and zero bias: the PPO initialisation (small gain for the policy
    output keeps the first policy near uniform)."""
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class FactoredPolicy(nn.Module):
    """Shared MLP trunk, one categorical per head (declaration order) and a value head."""

    inject_nonfinite: dict[str, float] | None

    # Buffers (registered in __init__), declared so type checkers know they are tensors.
    relevance: Tensor
    exists: Tensor

    def __init__(self, obs_dim: int, actions: FactoredActions, hidden: int = 128) -> None:
        super().__init__()
        if obs_dim < 1 or hidden < 1:
            raise ValueError("obs_dim and hidden must be >= 1")
        self.obs_dim = obs_dim
        self.actions = actions
        self.head_sizes = actions.head_sizes
        self.n_heads = actions.n_heads
        self.width = actions.width
        self.selector = actions.selector_index
        self.trunk = nn.Sequential(
            _linear(obs_dim, hidden, math.sqrt(2)),
            nn.Tanh(),
            _linear(hidden, hidden, math.sqrt(2)),
            nn.Tanh(),
        )
        self.logits_head = _linear(hidden, self.n_heads * self.width, 0.01)
        self.value_head = _linear(hidden, 1, 1.0)
        relevance = torch.tensor(actions.relevance.copy(), dtype=torch.bool)
        self.register_buffer("relevance", relevance)
        # Padding is never a value, whatever an env's legal array says: a legal array that
        # marks it (an env's own `legal_actions()`) must not make the policy sample it.
        # Derived from the declaration, so not saved in checkpoints.
        exists = torch.tensor(actions.exists(), dtype=torch.bool)
        self.register_buffer("exists", exists, persistent=False)
        self.inject_nonfinite = None

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Raw padded logits [N, H, W] and state values [N]."""
        features = self.trunk(obs)
        logits = self.logits_head(features).view(-1, self.n_heads, self.width)
        return logits, self.value_head(features).squeeze(-1)

    def _distribution(self, logits: Tensor, valid: Tensor) -> Categorical:
        masked = logits.masked_fill(~(valid & self.exists), torch.finfo(logits.dtype).min)
        return Categorical(logits=masked, validate_args=False)

    @staticmethod
    def _case(legal: Tensor, case: Tensor) -> Tensor:
        """The [N, H, W] legal values of each sample's case (its selector value)."""
        return torch.take_along_dim(legal, case.view(-1, 1, 1, 1), dim=1).squeeze(1)

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        legal: Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or take the mode of) actions [N, H], their per-head log-probs and values.

        `legal` is [N, cases, H, W] (esper.common.spaces). Acting never needs gradients;
        PPO re-scores the actions in `evaluate_actions`.
        """
        logits, values = self(obs)
        sel = self.selector
        if sel is None:
            valid = legal[:, 0]
        else:
            size = self.actions.sizes[sel]
            sel_logits = logits[:, sel, :size].masked_fill(
                ~legal[:, 0, sel, :size], torch.finfo(logits.dtype).min
            )
            sel_dist = Categorical(logits=sel_logits, validate_args=False)
            case = sel_dist.mode if deterministic else self._sample(sel_dist.probs, generator)
            valid = self._case(legal, case)
        dist = self._distribution(logits, valid)
        if deterministic:
            actions = dist.mode
        else:
            flat = dist.probs.reshape(-1, self.width)
            actions = self._sample(flat, generator).view(-1, self.n_heads)
        if sel is not None:
            actions[:, sel] = case
        return actions, dist.log_prob(actions), values

    @staticmethod
    def _sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, legal: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-head log-probs and entropies (nats) [N, H], values [N] and relevance [N, H]."""
        logits, values = self(obs)
        if self.inject_nonfinite:
            logits = logits.clone()
            for head, value in self.inject_nonfinite.items():
                logits[:, self.actions.names.index(head), :] = value
        sel = self.selector
        if sel is None:
            dist = self._distribution(logits, legal[:, 0])
            relevant = self.relevance.expand(actions.shape[0], -1)
        else:
            case = actions[:, sel]
            dist = self._distribution(logits, self._case(legal, case))
            relevant = self.relevance.index_select(0, case)
        return dist.log_prob(actions), dist.entropy(), values, relevant
