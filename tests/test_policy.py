"""The factored Tamiyo policy: masks (the slot mask conditioned on the op), log-probs,
entropies, relevance and the non-finite fault hook."""

from __future__ import annotations

import math

import pytest
import torch

from esper.common.spaces import FactoredActions
from esper.morpho.actions import (
    HEAD_INDEX,
    HEAD_NAMES,
    RELEVANCE_TABLE,
    Op,
    factored_actions,
    head_sizes,
)
from esper.rl.policy import FactoredPolicy

OBS_DIM = 6
N_SLOTS = 3
ACTIONS = factored_actions(N_SLOTS)


def make_policy(seed: int = 0) -> FactoredPolicy:
    torch.manual_seed(seed)
    return FactoredPolicy(OBS_DIM, ACTIONS, hidden=16)


def masks(n: int, ops: list[bool], slots_by_op: list[list[bool]]) -> torch.Tensor:
    """The [n, ops, heads, width] legal values of n copies of one state: the op mask and
    the slot mask of each op, as the morphogenetic env declares them."""
    legal = ACTIONS.legal({"op": ops, "slot": slots_by_op})
    return torch.from_numpy(legal).expand(n, -1, -1, -1)


def test_act_returns_factored_actions_log_probs_and_values() -> None:
    policy = make_policy()
    legal = masks(5, [True] * 4, [[True] * N_SLOTS] * 4)
    actions, log_probs, values = policy.act(torch.randn(5, OBS_DIM), legal)
    assert actions.shape == (5, 8) and actions.dtype == torch.int64
    assert log_probs.shape == (5, 8) and values.shape == (5,)
    sizes = torch.tensor([head_sizes(N_SLOTS)[h] for h in HEAD_NAMES])
    assert ((actions >= 0) & (actions < sizes)).all()
    assert (log_probs <= 0).all()


def test_sampling_respects_the_op_mask_and_the_op_conditioned_slot_mask() -> None:
    policy = make_policy()
    # WAIT and KILL allowed; KILL only on slot 2, GROW (masked anyway) only on slot 0.
    ops = [True, False, False, True]
    slots = [[True, True, True], [True, False, False], [True, True, True], [False, False, True]]
    legal = masks(400, ops, slots)
    gen = torch.Generator().manual_seed(1)
    actions, log_probs, _ = policy.act(
        torch.randn(400, OBS_DIM, generator=gen), legal, generator=gen
    )
    op, slot = actions[:, HEAD_INDEX["op"]], actions[:, HEAD_INDEX["slot"]]
    assert set(op.tolist()) == {Op.WAIT, Op.KILL}
    assert (slot[op == Op.KILL] == 2).all()
    assert set(slot[op == Op.WAIT].tolist()) == {0, 1, 2}  # WAIT leaves every slot open
    assert torch.isfinite(log_probs).all()


def test_act_log_probs_match_evaluate_actions() -> None:
    policy = make_policy()
    ops = [True, True, False, True]
    slots = [[True, True, True], [False, True, True], [True, True, True], [True, False, False]]
    legal = masks(64, ops, slots)
    obs = torch.randn(64, OBS_DIM)
    actions, log_probs, values = policy.act(obs, legal)
    new_log_probs, _, new_values, _ = policy.evaluate_actions(obs, actions, legal)
    torch.testing.assert_close(new_log_probs, log_probs)
    torch.testing.assert_close(new_values, values)


def zero_logits(policy: FactoredPolicy) -> FactoredPolicy:
    """Every logit 0: each head is uniform over its allowed values."""
    with torch.no_grad():
        policy.logits_head.weight.zero_()
        policy.logits_head.bias.zero_()
    return policy


def test_uniform_policy_log_probs_and_entropies_count_only_allowed_values() -> None:
    policy = zero_logits(make_policy())
    ops = [True, True, False, False]  # 2 ops allowed
    slots = [[True, True, True], [True, True, False], [True, True, True], [True, True, True]]
    legal = masks(3, ops, slots)
    actions = torch.zeros(3, 8, dtype=torch.int64)
    actions[:, HEAD_INDEX["op"]] = Op.GROW  # GROW: 2 slots allowed
    log_probs, entropies, _, _ = policy.evaluate_actions(torch.randn(3, OBS_DIM), actions, legal)
    allowed = {h: float(n) for h, n in head_sizes(N_SLOTS).items()} | {"op": 2.0, "slot": 2.0}
    expected = torch.tensor([math.log(allowed[h]) for h in HEAD_NAMES])
    torch.testing.assert_close(entropies, expected.expand(3, -1))
    torch.testing.assert_close(log_probs, -expected.expand(3, -1))


def test_a_forced_op_has_zero_entropy_and_log_prob_zero() -> None:
    policy = make_policy()
    legal = masks(4, [True, False, False, False], [[True] * N_SLOTS] * 4)
    actions, log_probs, _ = policy.act(torch.randn(4, OBS_DIM), legal)
    _, entropies, _, _ = policy.evaluate_actions(torch.randn(4, OBS_DIM), actions, legal)
    assert (actions[:, 0] == Op.WAIT).all()
    assert (log_probs[:, 0] == 0).all() and (entropies[:, 0] == 0).all()


def test_relevance_follows_the_chosen_op() -> None:
    policy = make_policy()
    legal = masks(4, [True] * 4, [[True] * N_SLOTS] * 4)
    actions = torch.zeros(4, 8, dtype=torch.int64)
    actions[:, 0] = torch.tensor([Op.WAIT, Op.GROW, Op.MUTATE, Op.KILL])
    *_, relevant = policy.evaluate_actions(torch.randn(4, OBS_DIM), actions, legal)
    assert relevant.tolist() == RELEVANCE_TABLE.tolist()


def test_deterministic_act_takes_the_mode_and_a_seeded_generator_repeats() -> None:
    policy = make_policy()
    legal = masks(8, [True] * 4, [[True] * N_SLOTS] * 4)
    obs = torch.randn(8, OBS_DIM)
    first = policy.act(obs, legal, deterministic=True)[0]
    assert torch.equal(first, policy.act(obs, legal, deterministic=True)[0])
    logits, _ = policy(obs)
    assert torch.equal(first[:, 0], logits[:, 0, :4].argmax(-1))
    draws = [
        policy.act(obs, legal, generator=torch.Generator().manual_seed(7))[0] for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_injected_nonfinite_logits_poison_only_that_head(value: float) -> None:
    policy = make_policy()
    legal = masks(5, [True] * 4, [[True] * N_SLOTS] * 4)
    obs = torch.randn(5, OBS_DIM)
    actions, _, _ = policy.act(obs, legal)
    policy.inject_nonfinite = {"style": value}
    log_probs, _, _, _ = policy.evaluate_actions(obs, actions, legal)
    style = HEAD_INDEX["style"]
    assert not torch.isfinite(log_probs[:, style]).any()
    others = torch.cat([log_probs[:, :style], log_probs[:, style + 1 :]], dim=1)
    assert torch.isfinite(others).all()


SIZES = torch.tensor([head_sizes(N_SLOTS)[h] for h in HEAD_NAMES])
PADDING = torch.arange(ACTIONS.width) >= SIZES.unsqueeze(1)


def _assert_padding_never_sampled(legal: torch.Tensor, seed: int) -> None:
    """Even where the raw logits favour padding most, every sampled and greedy value lies
    in its head's range, and each head's entropy is uniform over its existing values."""
    policy = make_policy()
    with torch.no_grad():  # the largest raw logit on every padding position
        policy.logits_head.weight.zero_()
        policy.logits_head.bias.copy_(PADDING.flatten().float() * 50.0)
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(legal.shape[0], OBS_DIM, generator=gen)
    for deterministic in (False, True):
        actions, log_probs, _ = policy.act(obs, legal, deterministic, generator=gen)
        assert ((actions >= 0) & (actions < SIZES)).all()
        assert torch.isfinite(log_probs).all()
    _, entropies, _, _ = policy.evaluate_actions(obs, actions, legal)
    # padding adds nothing to the entropy
    expected = torch.log(SIZES.double()).float().expand(legal.shape[0], -1)
    torch.testing.assert_close(entropies, expected)
    # derived from the declaration, so checkpoints do not carry it
    assert "exists" not in policy.state_dict()


def test_padding_values_are_never_legal_nor_sampled() -> None:
    """Heads are padded to the widest (5 blueprints): positions past a head's size get
    probability 0 even where the policy's raw logits favour them most."""
    legal = masks(300, [True] * 4, [[True] * N_SLOTS] * 4)
    assert PADDING.any() and not legal[:, :, PADDING].any()
    _assert_padding_never_sampled(legal, seed=2)


def test_a_legal_array_that_marks_padding_still_never_samples_it() -> None:
    """An env's own `legal_actions()` may say True everywhere (all-ones): padding is still
    no value, for the selector's cases too, so nothing out of a head's range is sampled."""
    _assert_padding_never_sampled(torch.ones(300, *ACTIONS.legal_shape, dtype=torch.bool), 3)


def test_bad_sizes_and_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="obs_dim and hidden"):
        FactoredPolicy(0, ACTIONS)
    with pytest.raises(ValueError, match="obs_dim and hidden"):
        FactoredPolicy(OBS_DIM, ACTIONS, hidden=0)
    # the op head (the selector) has one relevance row per op: a 3-valued op does not fit
    with pytest.raises(ValueError, match="relevance"):
        FactoredActions(
            names=HEAD_NAMES,
            sizes=(3, *list(head_sizes(N_SLOTS).values())[1:]),
            selector="op",
            relevance=RELEVANCE_TABLE,
        )
    with pytest.raises(ValueError, match="one size per head"):
        FactoredActions(names=("op",), sizes=(4, 3))
