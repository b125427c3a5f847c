"""The host network, its seed slots, seed blueprints and the blend maths.

The host is a small MLP whose hidden layers share one width, so a seed planted between
two of them maps that width to itself. Two rules make growing safe:

- every blend is exactly the identity in `h` at alpha = 0, so a seed enters smoothly;
- gradient isolation: a seed in isolated training never changes the host output and the
  host gets no gradient through it. The seed still learns the task: a probe path feeds
  `h.detach()` through the seed, blends at the seed's target alpha and runs the rest of
  the network with detached weights, and its cross-entropy is added to the loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from esper.common.optim import FusedAdam
from esper.morpho.actions import BlendStyle, Blueprint

DEFAULT_WIDTH = 16
DEFAULT_LR = 5e-3
DEFAULT_BATCHES = 6
WIDE_FACTOR = 4
LOW_RANK_DIVISOR = 8

BlendFn = Callable[[Tensor, Tensor, float], Tensor]


def blend_linear_add(h: Tensor, s: Tensor, alpha: float) -> Tensor:
    """The seed output added, scaled: a residual branch."""
    return h + alpha * s


def blend_sigmoid_add(h: Tensor, s: Tensor, alpha: float) -> Tensor:
    """A bounded, non-negative residual: one seed cannot blow the activations up."""
    return h + alpha * torch.sigmoid(s)


def blend_gated(h: Tensor, s: Tensor, alpha: float) -> Tensor:
    """Per unit, the seed's own sigmoid gate decides how far `h` moves towards `s`."""
    return h + alpha * torch.sigmoid(s) * (s - h)


def blend_multiply(h: Tensor, s: Tensor, alpha: float) -> Tensor:
    """A multiplicative modulation of `h` within (1 - alpha, 1 + alpha)."""
    return h * (1.0 + alpha * torch.tanh(s))


BLEND_FNS: dict[BlendStyle, BlendFn] = {
    BlendStyle.LINEAR_ADD: blend_linear_add,
    BlendStyle.SIGMOID_ADD: blend_sigmoid_add,
    BlendStyle.GATED: blend_gated,
    BlendStyle.MULTIPLY: blend_multiply,
}


def blend(style: BlendStyle, h: Tensor, s: Tensor, alpha: float) -> Tensor:
    """Join seed output `s` to host activation `h` with weight `alpha` in `style`."""
    return BLEND_FNS[style](h, s, alpha)


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """A CPU linear layer drawn from `generator` (torch's default init, minus the global RNG)."""
    layer = nn.utils.skip_init(nn.Linear, n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def build_seed(blueprint: Blueprint, width: int, generator: torch.Generator) -> nn.Module:
    """A small CPU module from `width` to `width`, shaped by its blueprint.

    Seeds are drawn on the CPU from a CPU generator so a run is reproducible on any device.
    """
    lin = functools.partial(_linear, generator=generator)
    if blueprint == Blueprint.LINEAR:
        return lin(width, width)
    if blueprint == Blueprint.MLP:
        return nn.Sequential(lin(width, width), nn.ReLU(), lin(width, width))
    if blueprint == Blueprint.WIDE_MLP:
        wide = WIDE_FACTOR * width
        return nn.Sequential(lin(width, wide), nn.ReLU(), lin(wide, width))
    if blueprint == Blueprint.LOW_RANK:
        rank = max(1, width // LOW_RANK_DIVISOR)
        return nn.Sequential(lin(width, rank), lin(rank, width))
    if blueprint == Blueprint.NORM:
        return nn.LayerNorm(width)
    raise ValueError(f"unknown blueprint {blueprint!r}")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class Seed:
    """A planted seed: its module and how it blends.

    `alpha` is the blend weight in the host output. `probe_alpha` is set while the seed
    trains in isolation: it then learns through the probe path at that weight.
    """

    module: nn.Module
    style: BlendStyle
    alpha: float = 0.0
    probe_alpha: float | None = None


class HostNetwork(nn.Module):
    """An MLP with `n_slots` insertion points of equal width, and the seeds planted there.

    Layout: stem (features -> width, ReLU), then for each slot i: the seed blend at slot i,
    followed by hidden layer i (width -> width, ReLU) except after the last slot; then the
    classifier head. One Adam optimiser holds the host's and every planted seed's
    parameters, each with its own state: a seed's parameters join it when planted and
    leave it, state and all, when removed, so seeds come and go without touching the
    others' state. (Adam is per-parameter, so this trains exactly as one optimiser per
    module would, with one optimiser step per batch instead of one per module: at three
    seeds the per-module steps were a quarter of a host epoch.)
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        generator: torch.Generator,
        n_slots: int = 3,
        width: int = DEFAULT_WIDTH,
        lr: float = DEFAULT_LR,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        self.width, self.lr, self.n_slots = width, lr, n_slots
        self.device = torch.device(device)
        lin = functools.partial(_linear, generator=generator)
        self.stem = lin(n_features, width)
        self.hidden = nn.ModuleList(lin(width, width) for _ in range(n_slots - 1))
        self.head = lin(width, n_classes)
        self.to(self.device)
        self.host_params = n_params(self)
        self.optimizer = FusedAdam(self.parameters(), lr=lr)
        self.seeds: list[Seed | None] = [None] * n_slots

    # -- seeds ---------------------------------------------------------------------------
    def plant(
        self, slot: int, blueprint: Blueprint, style: BlendStyle, generator: torch.Generator
    ) -> Seed:
        """Build a seed into an empty slot, at alpha 0 and not yet training."""
        if self.seeds[slot] is not None:
            raise ValueError(f"slot {slot} already holds a seed")
        module = build_seed(blueprint, self.width, generator).to(self.device)
        self._trained_params().extend(module.parameters())
        seed = Seed(module=module, style=style)
        self.seeds[slot] = seed
        return seed

    def remove(self, slot: int) -> None:
        """Free a slot; its seed's parameters and their Adam state leave the optimiser."""
        seed = self.seeds[slot]
        if seed is None:
            return
        leaving = set(seed.module.parameters())
        self._trained_params()[:] = [p for p in self._trained_params() if p not in leaving]
        for param in leaving:
            self.optimizer.state.pop(param, None)
        self.seeds[slot] = None

    def seed_params(self) -> int:
        """Parameters held by all planted seeds: what the environment charges rent on."""
        return sum(n_params(seed.module) for seed in self.seeds if seed is not None)

    # -- forward -------------------------------------------------------------------------
    def _layer(self, layer: nn.Linear, h: Tensor, frozen: bool) -> Tensor:
        if frozen:
            return F.linear(h, layer.weight.detach(), layer.bias.detach())
        return layer(h)

    def _seed_out(self, seed: Seed, h: Tensor, frozen: bool) -> Tensor:
        if not frozen:
            return seed.module(h)
        params = {name: p.detach() for name, p in seed.module.named_parameters()}
        return functional_call(seed.module, params, (h,))

    def _slot(self, i: int, h: Tensor, alpha: float, frozen: bool) -> Tensor:
        seed = self.seeds[i]
        if seed is None or alpha == 0.0:
            return h
        return blend(seed.style, h, self._seed_out(seed, h, frozen), alpha)

    def _from_slot(
        self,
        h: Tensor,
        start: int,
        alphas: Mapping[int, float],
        frozen: bool = False,
        probes: list[tuple[int, Tensor]] | None = None,
    ) -> Tensor:
        """Run slots `start`.. and the head on `h`; record slot inputs for probes if asked."""
        for i in range(start, self.n_slots):
            if probes is not None:
                probes.append((i, h))
            seed = self.seeds[i]
            alpha = alphas.get(i, 0.0 if seed is None else seed.alpha)
            h = self._slot(i, h, alpha, frozen)
            if i < self.n_slots - 1:
                h = F.relu(self._layer(cast(nn.Linear, self.hidden[i]), h, frozen))
        return self._layer(self.head, h, frozen)

    def forward(self, x: Tensor, alphas: Mapping[int, float] | None = None) -> Tensor:
        """Host logits; `alphas` overrides the blend weight of chosen slots (for probing)."""
        return self._from_slot(F.relu(self.stem(x)), 0, alphas or {})

    def forward_with_probes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Host logits and, per isolated-training seed, the logits of its probe path.

        The probe for slot i blends the seed into `h_i.detach()` at its probe alpha and runs
        the rest of the network frozen, so only that seed's parameters get its gradient.
        """
        slot_inputs: list[tuple[int, Tensor]] = []
        logits = self._from_slot(F.relu(self.stem(x)), 0, {}, probes=slot_inputs)
        probe_logits = []
        for i, h in slot_inputs:
            seed = self.seeds[i]
            if seed is None or seed.probe_alpha is None:
                continue
            h_in = h.detach()
            h_out = blend(seed.style, h_in, seed.module(h_in), seed.probe_alpha)
            if i < self.n_slots - 1:
                h_out = F.relu(self._layer(cast(nn.Linear, self.hidden[i]), h_out, frozen=True))
            probe_logits.append(self._from_slot(h_out, i + 1, {}, frozen=True))
        return logits, probe_logits

    # -- training and evaluation -----------------------------------------------------------
    def _trained_params(self) -> list[nn.Parameter]:
        """The optimiser's parameter list (host first, then seeds in planting order)."""
        params: list[nn.Parameter] = self.optimizer.param_groups[0]["params"]
        return params

    def train_epoch(
        self, x: Tensor, y: Tensor, generator: torch.Generator, n_batches: int = DEFAULT_BATCHES
    ) -> float:
        """One pass over (x, y) in `n_batches` shuffled chunks; returns the mean host loss.

        A fixed number of chunks (not a fixed batch size) keeps an epoch's cost and the
        number of optimiser steps the same on every task, small or large.

        The loss minimised is the host cross-entropy plus each probe's cross-entropy; only
        the host part is reported, since that is what the task sees.
        """
        order = torch.randperm(x.shape[0], generator=generator, device="cpu").to(x.device)
        total = torch.zeros((), device=x.device)
        for idx in order.chunk(n_batches):
            xb, yb = x[idx], y[idx]
            logits, probes = self.forward_with_probes(xb)
            loss = F.cross_entropy(logits, yb)
            probe_loss = sum((F.cross_entropy(p, yb) for p in probes), loss.new_zeros(()))
            self.optimizer.zero_grad(set_to_none=True)
            (loss + probe_loss).backward()
            self.optimizer.step()
            total += loss.detach() * idx.numel()
        return float(total) / x.shape[0]

    @torch.no_grad()
    def evaluate(
        self, x: Tensor, y: Tensor, alphas: Mapping[int, float] | None = None
    ) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) of the host output on (x, y)."""
        logits = self(x, alphas)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        return float(loss), float(acc)
