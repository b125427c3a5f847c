"""The host: blend maths, seed shapes, gradient isolation and reproducible construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from esper.morpho.actions import BlendStyle, Blueprint
from esper.morpho.host import HostNetwork, blend, build_seed, n_params
from esper.morpho.tasks import load_task

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
pairs = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        hnp.arrays("float32", (3, n), elements=finite),
        hnp.arrays("float32", (3, n), elements=finite),
    )
)


@given(st.sampled_from(list(BlendStyle)), pairs)
def test_every_blend_is_exactly_the_identity_at_alpha_zero(style: BlendStyle, hs: tuple) -> None:
    h, s = (torch.from_numpy(a) for a in hs)
    assert torch.equal(blend(style, h, s, 0.0), h)


@pytest.mark.parametrize(
    ("style", "s", "alpha", "expected"),
    [
        (BlendStyle.LINEAR_ADD, [2.0, 0.0], 0.5, [2.0, -1.0]),  # h + a*s
        (BlendStyle.SIGMOID_ADD, [0.0, 0.0], 1.0, [1.5, -0.5]),  # h + a*0.5
        (BlendStyle.GATED, [0.0, 0.0], 1.0, [0.5, -0.5]),  # h + a*0.5*(0 - h)
        (BlendStyle.MULTIPLY, [100.0, -100.0], 0.5, [1.5, -0.5]),  # h * (1 + a*(+-1))
    ],
)
def test_blend_known_answers(
    style: BlendStyle, s: list[float], alpha: float, expected: list[float]
) -> None:
    h = torch.tensor([1.0, -1.0])
    assert blend(style, h, torch.tensor(s), alpha).tolist() == expected


def test_gated_blend_moves_halfway_to_the_seed_when_its_gate_is_half() -> None:
    h, s = torch.tensor([4.0]), torch.tensor([0.0])  # sigmoid(0) = 0.5
    assert blend(BlendStyle.GATED, h, s, 1.0).item() == 2.0
    assert blend(BlendStyle.GATED, h, s, 0.5).item() == 3.0


@pytest.mark.parametrize(
    ("blueprint", "params"),
    [
        (Blueprint.LINEAR, 16 * 16 + 16),
        (Blueprint.MLP, 2 * (16 * 16 + 16)),
        (Blueprint.WIDE_MLP, 16 * 64 + 64 + 64 * 16 + 16),
        (Blueprint.LOW_RANK, 16 * 2 + 2 + 2 * 16 + 16),
        (Blueprint.NORM, 2 * 16),
    ],
)
def test_seeds_keep_the_width(blueprint: Blueprint, params: int) -> None:
    seed = build_seed(blueprint, 16, torch.Generator().manual_seed(0))
    assert seed(torch.randn(5, 16)).shape == (5, 16)
    assert n_params(seed) == params


def _host(seed: int = 0, n_slots: int = 3) -> HostNetwork:
    return HostNetwork(4, 3, torch.Generator().manual_seed(seed), n_slots=n_slots, width=8)


def test_host_parameter_count() -> None:
    # stem 4*8+8, two hidden 8*8+8, head 8*3+3
    assert _host().host_params == 40 + 2 * 72 + 27


def test_construction_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b = _host(seed=3), _host(seed=3)
    a.plant(1, Blueprint.MLP, BlendStyle.GATED, torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(_host(seed=4).stem.weight, a.stem.weight)


def test_plant_refuses_an_occupied_slot_and_remove_frees_it() -> None:
    host, gen = _host(), torch.Generator().manual_seed(0)
    host.plant(0, Blueprint.LINEAR, BlendStyle.LINEAR_ADD, gen)
    with pytest.raises(ValueError, match="already"):
        host.plant(0, Blueprint.NORM, BlendStyle.LINEAR_ADD, gen)
    assert host.seed_params() == 72
    host.remove(0)
    assert host.seed_params() == 0


def _training_seed(host: HostNetwork, slot: int = 1) -> None:
    seed = host.plant(slot, Blueprint.MLP, BlendStyle.LINEAR_ADD, torch.Generator().manual_seed(7))
    seed.probe_alpha = 1.0  # isolated training, alpha stays 0


def test_training_seed_leaves_host_output_unchanged() -> None:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    plain = _host()(x)
    host = _host()
    _training_seed(host)
    logits, probes = host.forward_with_probes(x)
    assert torch.equal(host(x), plain)
    assert torch.equal(logits, plain)
    assert len(probes) == 1
    assert not torch.equal(probes[0], plain)


def test_probe_loss_trains_the_seed_and_never_the_host() -> None:
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 3
    host = _host()
    _training_seed(host)
    _, probes = host.forward_with_probes(x)
    F.cross_entropy(probes[0], y).backward()
    assert all(p.grad is None for p in host.parameters())
    seed = host.seeds[1]
    assert seed is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.module.parameters())


def test_host_trains_identically_with_or_without_a_training_seed() -> None:
    task = load_task("spirals", seed=0)
    x, y = torch.tensor(task.x_train), torch.tensor(task.y_train)
    hosts = [
        HostNetwork(2, 3, torch.Generator().manual_seed(0), width=8),
        HostNetwork(2, 3, torch.Generator().manual_seed(0), width=8),
    ]
    _training_seed(hosts[1], slot=0)
    seed = hosts[1].seeds[0]
    assert seed is not None
    seed_before = [p.clone() for p in seed.module.parameters()]
    for host in hosts:
        host.train_epoch(x, y, torch.Generator().manual_seed(5))
    for pa, pb in zip(hosts[0].parameters(), hosts[1].parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(seed_before[0], next(seed.module.parameters()))


def test_blended_seed_changes_output_and_alpha_override_switches_it_off() -> None:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    host = _host()
    plain = host(x)
    seed = host.plant(2, Blueprint.WIDE_MLP, BlendStyle.MULTIPLY, torch.Generator())
    seed.alpha = 0.7
    assert not torch.equal(host(x), plain)
    assert torch.equal(host(x, {2: 0.0}), plain)
    assert host.forward_with_probes(x)[1] == []


def test_training_lowers_the_loss() -> None:
    task = load_task("spirals", seed=0)
    x, y = torch.tensor(task.x_train), torch.tensor(task.y_train)
    host, gen = HostNetwork(2, 3, torch.Generator().manual_seed(0)), torch.Generator()
    start_loss, _ = host.evaluate(x, y)
    losses = [host.train_epoch(x, y, gen) for _ in range(10)]
    end_loss, accuracy = host.evaluate(x, y)
    assert end_loss < start_loss
    assert losses[-1] < losses[0]
    assert 0.0 <= accuracy <= 1.0
