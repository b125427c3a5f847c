"""The action contract: relevance, sizes, conditioned masks, the flat layout and validity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper.morpho.actions import (
    HEAD_NAMES,
    RELEVANCE_TABLE,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    Blueprint,
    Op,
    Tempo,
    compute_masks,
    describe,
    factored_actions,
    head_sizes,
    is_valid,
    relevance_mask,
)

T, F = True, False


def _action(op: int, slot: int = 0) -> np.ndarray:
    act = np.zeros(len(HEAD_NAMES), dtype=np.int64)
    act[0], act[1] = op, slot
    return act


@pytest.mark.parametrize(
    ("op", "row"),
    [
        # heads: op, slot, blueprint, style, tempo, alpha_target, alpha_speed, alpha_curve
        (Op.WAIT, [T, F, F, F, F, F, F, F]),
        (Op.GROW, [T, T, T, T, T, T, F, F]),
        (Op.MUTATE, [T, T, F, F, F, T, T, T]),
        (Op.KILL, [T, T, F, F, F, F, T, T]),
    ],
)
def test_relevance_table_rows(op: Op, row: list[bool]) -> None:
    assert RELEVANCE_TABLE[op].tolist() == row


def test_relevance_mask_looks_up_rows_per_sample() -> None:
    mask = relevance_mask([3, 0, 1])
    assert mask.shape == (3, 8)
    assert mask.sum(axis=1).tolist() == [4, 1, 6]


def test_head_sizes_in_head_order() -> None:
    sizes = head_sizes(3)
    assert list(sizes) == list(HEAD_NAMES)
    assert list(sizes.values()) == [4, 3, 5, 4, 3, 3, 4, 3]
    assert head_sizes(5)["slot"] == 5
    with pytest.raises(ValueError, match="n_slots"):
        head_sizes(0)


def test_masks_condition_slots_on_op() -> None:
    masks = compute_masks(can_grow=[F, T, F], can_mutate=[F, F, F], can_kill=[T, F, F])
    assert masks.op.tolist() == [T, T, F, T]
    assert masks.slot_by_op.tolist() == [
        [T, T, T],  # WAIT reads no slot
        [F, T, F],  # GROW: the empty slot only
        [T, T, T],  # MUTATE impossible: row left open so a categorical stays defined
        [T, F, F],  # KILL: the live seed only
    ]


def test_flat_mask_layout() -> None:
    masks = compute_masks(can_grow=[F, T, F], can_mutate=[F, F, F], can_kill=[T, F, F])
    flat = masks.flat()
    assert flat.dtype == np.bool_
    assert flat.shape == (29,)
    assert flat[:4].tolist() == [T, T, F, T]
    assert flat[4:7].tolist() == [T, T, F]  # union of GROW and KILL slots
    assert flat[7:].all()


def test_flat_mask_with_only_wait_opens_every_slot() -> None:
    masks = compute_masks(can_grow=[F, F], can_mutate=[F, F], can_kill=[F, F])
    assert masks.flat()[:6].tolist() == [T, F, F, F, T, T]


def test_compute_masks_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="1-D"):
        compute_masks([T, F], [T], [F, F])


def test_is_valid_known_answers() -> None:
    masks = compute_masks(can_grow=[F, T, F], can_mutate=[F, F, F], can_kill=[T, F, F])
    assert is_valid(_action(Op.WAIT, slot=2), masks)
    assert is_valid(_action(Op.GROW, slot=1), masks)
    assert not is_valid(_action(Op.GROW, slot=0), masks)
    assert not is_valid(_action(Op.MUTATE, slot=0), masks)
    assert is_valid(_action(Op.KILL, slot=0), masks)
    assert not is_valid(_action(Op.KILL, slot=1), masks)
    assert not is_valid(_action(7, slot=0), masks)
    assert not is_valid(_action(Op.GROW, slot=3), masks)


slot_flags = st.integers(1, 5).flatmap(
    lambda n: st.tuples(*(st.lists(st.booleans(), min_size=n, max_size=n) for _ in range(3)))
)


@given(slot_flags)
def test_masks_always_leave_a_choice(flags: tuple[list[bool], list[bool], list[bool]]) -> None:
    masks = compute_masks(*flags)
    assert masks.op[Op.WAIT]
    assert masks.slot_by_op.any(axis=1).all()
    flat = masks.flat()
    ends = np.cumsum(list(head_sizes(len(flags[0])).values()))
    assert flat.shape == (ends[-1],)
    for segment in np.split(flat, ends[:-1]):
        assert segment.any()


@given(slot_flags, st.data())
def test_is_valid_matches_slot_flags(
    flags: tuple[list[bool], list[bool], list[bool]], data: st.DataObject
) -> None:
    masks = compute_masks(*flags)
    n_slots = len(flags[0])
    slot = data.draw(st.integers(0, n_slots - 1))
    assert is_valid(_action(Op.WAIT, slot), masks)
    for op, can in zip((Op.GROW, Op.MUTATE, Op.KILL), flags, strict=True):
        assert is_valid(_action(op, slot), masks) == can[slot]
    # the legal values the algorithm samples under say the same as the env's validity
    spec = factored_actions(n_slots)
    legal = spec.legal({"op": masks.op, "slot": masks.slot_by_op})
    for op in Op:
        assert spec.is_legal(_action(op, slot), legal) == is_valid(_action(op, slot), masks)


def test_describe_names_only_the_heads_the_op_reads() -> None:
    grow = np.array(
        [Op.GROW, 1, Blueprint.NORM, BlendStyle.GATED, Tempo.FAST, AlphaTarget.FULL, 2, 1]
    )
    assert describe(grow) == "GROW slot=1 NORM GATED FAST FULL"  # speed and curve unread
    wait = grow.copy()
    wait[0] = Op.WAIT
    assert describe(wait) == "WAIT"
    kill = np.array([Op.KILL, 2, 0, 0, 0, 0, AlphaSpeed.SLOW, AlphaCurve.LINEAR])
    assert describe(kill) == "KILL slot=2 SLOW LINEAR"
