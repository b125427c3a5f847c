"""The factored Tamiyo policy: masks (the slot mask conditioned on the op), log-probs,
entropies, relevance and the non-finite fault hook."""

from __future__ import annotations

import math

import pytest
import torch

from esper.morpho.actions import HEAD_INDEX, HEAD_NAMES, RELEVANCE_TABLE, Op, head_sizes
from esper.rl.policy import TamiyoPolicy

OBS_DIM = 6
N_SLOTS = 3


def make_policy(seed: int = 0) -> TamiyoPolicy:
    torch.manual_seed(seed)
    return TamiyoPolicy(OBS_DIM, head_sizes(N_SLOTS), hidden=16)


def masks(n: int, ops: list[bool], slots_by_op: list[list[bool]]) -> tuple[torch.Tensor, ...]:
    op_mask = torch.tensor(ops).expand(n, -1)
    slot_by_op = torch.tensor(slots_by_op).expand(n, -1, -1)
    return op_mask, slot_by_op


def test_act_returns_factored_actions_log_probs_and_values() -> None:
    policy = make_policy()
    op_mask, slot_by_op = masks(5, [True] * 4, [[True] * N_SLOTS] * 4)
    actions, log_probs, values = policy.act(torch.randn(5, OBS_DIM), op_mask, slot_by_op)
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
    op_mask, slot_by_op = masks(400, ops, slots)
    gen = torch.Generator().manual_seed(1)
    actions, log_probs, _ = policy.act(
        torch.randn(400, OBS_DIM, generator=gen), op_mask, slot_by_op, generator=gen
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
    op_mask, slot_by_op = masks(64, ops, slots)
    obs = torch.randn(64, OBS_DIM)
    actions, log_probs, values = policy.act(obs, op_mask, slot_by_op)
    new_log_probs, _, new_values, _ = policy.evaluate_actions(obs, actions, op_mask, slot_by_op)
    torch.testing.assert_close(new_log_probs, log_probs)
    torch.testing.assert_close(new_values, values)


def zero_logits(policy: TamiyoPolicy) -> TamiyoPolicy:
    """Every logit 0: each head is uniform over its allowed values."""
    with torch.no_grad():
        policy.logits_head.weight.zero_()
        policy.logits_head.bias.zero_()
    return policy


def test_uniform_policy_log_probs_and_entropies_count_only_allowed_values() -> None:
    policy = zero_logits(make_policy())
    ops = [True, True, False, False]  # 2 ops allowed
    slots = [[True, True, True], [True, True, False], [True, True, True], [True, True, True]]
    op_mask, slot_by_op = masks(3, ops, slots)
    actions = torch.zeros(3, 8, dtype=torch.int64)
    actions[:, HEAD_INDEX["op"]] = Op.GROW  # GROW: 2 slots allowed
    log_probs, entropies, _, _ = policy.evaluate_actions(
        torch.randn(3, OBS_DIM), actions, op_mask, slot_by_op
    )
    allowed = {h: float(n) for h, n in head_sizes(N_SLOTS).items()} | {"op": 2.0, "slot": 2.0}
    expected = torch.tensor([math.log(allowed[h]) for h in HEAD_NAMES])
    torch.testing.assert_close(entropies, expected.expand(3, -1))
    torch.testing.assert_close(log_probs, -expected.expand(3, -1))


def test_a_forced_op_has_zero_entropy_and_log_prob_zero() -> None:
    policy = make_policy()
    op_mask, slot_by_op = masks(4, [True, False, False, False], [[True] * N_SLOTS] * 4)
    actions, log_probs, _ = policy.act(torch.randn(4, OBS_DIM), op_mask, slot_by_op)
    _, entropies, _, _ = policy.evaluate_actions(
        torch.randn(4, OBS_DIM), actions, op_mask, slot_by_op
    )
    assert (actions[:, 0] == Op.WAIT).all()
    assert (log_probs[:, 0] == 0).all() and (entropies[:, 0] == 0).all()


def test_relevance_follows_the_chosen_op() -> None:
    policy = make_policy()
    op_mask, slot_by_op = masks(4, [True] * 4, [[True] * N_SLOTS] * 4)
    actions = torch.zeros(4, 8, dtype=torch.int64)
    actions[:, 0] = torch.tensor([Op.WAIT, Op.GROW, Op.MUTATE, Op.KILL])
    *_, relevant = policy.evaluate_actions(torch.randn(4, OBS_DIM), actions, op_mask, slot_by_op)
    assert relevant.tolist() == RELEVANCE_TABLE.tolist()


def test_deterministic_act_takes_the_mode_and_a_seeded_generator_repeats() -> None:
    policy = make_policy()
    op_mask, slot_by_op = masks(8, [True] * 4, [[True] * N_SLOTS] * 4)
    obs = torch.randn(8, OBS_DIM)
    first = policy.act(obs, op_mask, slot_by_op, deterministic=True)[0]
    assert torch.equal(first, policy.act(obs, op_mask, slot_by_op, deterministic=True)[0])
    logits, _ = policy(obs)
    assert torch.equal(first[:, 0], logits[:, 0, :4].argmax(-1))
    draws = [
        policy.act(obs, op_mask, slot_by_op, generator=torch.Generator().manual_seed(7))[0]
        for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_injected_nonfinite_logits_poison_only_that_head(value: float) -> None:
    policy = make_policy()
    op_mask, slot_by_op = masks(5, [True] * 4, [[True] * N_SLOTS] * 4)
    obs = torch.randn(5, OBS_DIM)
    actions, _, _ = policy.act(obs, op_mask, slot_by_op)
    policy.inject_nonfinite = {"style": value}
    log_probs, _, _, _ = policy.evaluate_actions(obs, actions, op_mask, slot_by_op)
    style = HEAD_INDEX["style"]
    assert not torch.isfinite(log_probs[:, style]).any()
    others = torch.cat([log_probs[:, :style], log_probs[:, style + 1 :]], dim=1)
    assert torch.isfinite(others).all()


def test_bad_head_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="head_sizes"):
        TamiyoPolicy(OBS_DIM, {"op": 4})
    with pytest.raises(ValueError, match="op head"):
        TamiyoPolicy(OBS_DIM, head_sizes(N_SLOTS) | {"op": 3})
