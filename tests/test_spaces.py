"""The factored-action declaration: legal values, relevance, flat masks, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.common.spaces import FactoredActions
from esper.morpho.actions import RELEVANCE_TABLE, compute_masks, factored_actions
from esper.rl.policy import FactoredPolicy

KIND_CELL = FactoredActions(
    names=("kind", "cell"),
    sizes=(3, 4),
    selector="kind",
    relevance=np.array([[True, False], [True, True], [True, True]]),
)


def test_a_conditioned_mask_gives_each_case_its_own_row() -> None:
    legal = KIND_CELL.legal(
        {
            "kind": [True, True, False],
            "cell": [[True, True, True, True], [False, True, False, True], [True] * 4],
        }
    )
    assert legal.shape == (3, 2, 4)
    # the selector's row is the same in every case
    assert legal[:, 0, :3].tolist() == [[True, True, False]] * 3
    assert legal[0, 0, 3] == legal[1, 0, 3] == np.False_  # kind has 3 values: padding
    assert legal[1, 1].tolist() == [False, True, False, True]
    assert legal[0, 1].tolist() == [True] * 4


def test_an_unconditioned_mask_holds_in_every_case_and_an_empty_row_opens_up() -> None:
    legal = KIND_CELL.legal({"cell": [[False] * 4, [True, False, False, False], [False] * 4]})
    assert legal[1, 1].tolist() == [True, False, False, False]
    assert legal[0, 1].tolist() == legal[2, 1].tolist() == [True] * 4  # never an empty row
    with pytest.raises(ValueError, match="no legal value"):
        KIND_CELL.legal({"kind": [False, False, False]})
    with pytest.raises(ValueError, match="unknown head"):
        KIND_CELL.legal({"colour": [True]})
    with pytest.raises(ValueError, match=r"must be \[4\] or \[3, 4\]"):
        KIND_CELL.legal({"cell": [True, False]})


def test_relevance_and_legality_follow_the_selector() -> None:
    assert KIND_CELL.relevant([[0, 3], [2, 1]]).tolist() == [[True, False], [True, True]]
    legal = KIND_CELL.legal({"cell": [[True] * 4, [False, True, False, False], [True] * 4]})
    assert KIND_CELL.is_legal([1, 1], legal)
    assert not KIND_CELL.is_legal([1, 2], legal)  # PICK may only name cell 1 here
    assert KIND_CELL.is_legal([0, 2], legal)  # a no-op reads no cell: any value is fine
    assert not KIND_CELL.is_legal([3, 0], legal)  # no fourth kind
    assert not KIND_CELL.is_legal([1], legal)


def test_a_flat_sb3_mask_is_split_by_head() -> None:
    plain = FactoredActions.independent([2, 3], ["move", "speed"])
    legal = plain.legal_from_flat([True, False, False, True, True])
    assert legal.shape == (1, 2, 3)
    assert legal[0].tolist() == [[True, False, False], [False, True, True]]
    with pytest.raises(ValueError, match="5 entries"):
        plain.legal_from_flat([True, False])


def test_the_declaration_checks_itself() -> None:
    with pytest.raises(ValueError, match="one size per head"):
        FactoredActions(names=("a", "b"), sizes=(2,))
    with pytest.raises(ValueError, match="distinct"):
        FactoredActions(names=("a", "a"), sizes=(2, 2))
    with pytest.raises(ValueError, match="selector 'x'"):
        FactoredActions(names=("a",), sizes=(2,), selector="x", relevance=np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"\[3, 2\]"):
        FactoredActions(names=("kind", "cell"), sizes=(3, 4), selector="kind",
                        relevance=np.ones((2, 2)))  # fmt: skip
    with pytest.raises(ValueError, match="relevant in every case"):
        FactoredActions(names=("k", "c"), sizes=(2, 2), selector="k",
                        relevance=np.array([[False, True], [True, True]]))  # fmt: skip


def test_plain_data_round_trip() -> None:
    for spec in (KIND_CELL, factored_actions(3), FactoredActions.independent([7, 7])):
        assert FactoredActions.from_dict(spec.to_dict()) == spec


def test_the_morphogenetic_declaration_is_the_op_slot_contract() -> None:
    spec = factored_actions(3)
    assert spec.selector == "op" and spec.names[:2] == ("op", "slot")
    assert np.array_equal(spec.relevance, RELEVANCE_TABLE)
    masks = compute_masks([False, True, True], [True, False, False], [True, False, True])
    legal = spec.legal({"op": masks.op, "slot": masks.slot_by_op})
    assert legal[0, 0, :4].tolist() == masks.op.tolist()
    for op in range(4):
        assert legal[op, 1, :3].tolist() == masks.slot_by_op[op].tolist()


@st.composite
def _state(draw: st.DrawFn) -> tuple[list[bool], list[list[bool]]]:
    kinds = draw(st.lists(st.booleans(), min_size=3, max_size=3).filter(any))
    cells = draw(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=3, max_size=3))
    return kinds, cells


@settings(max_examples=40, deadline=None)
@given(state=_state(), seed=st.integers(0, 2**16))
def test_the_policy_never_samples_an_illegal_value(
    state: tuple[list[bool], list[list[bool]]], seed: int
) -> None:
    kinds, cells = state
    legal = KIND_CELL.legal({"kind": kinds, "cell": cells})
    torch.manual_seed(seed)
    policy = FactoredPolicy(3, KIND_CELL, hidden=8)
    with torch.no_grad():  # large logits make the mask do the work, not the near-uniform start
        policy.logits_head.weight.normal_(0, 5.0)
    obs = torch.randn(64, 3)
    batch = torch.as_tensor(legal).expand(64, -1, -1, -1)
    generator = torch.Generator().manual_seed(seed)
    for deterministic in (False, True):
        actions, log_probs, _ = policy.act(obs, batch, deterministic, generator)
        assert torch.isfinite(log_probs).all()
        for action in actions.numpy():
            assert KIND_CELL.is_legal(action, legal), (action, legal)
    _, _, _, relevant = policy.evaluate_actions(obs, actions, batch)
    assert relevant.numpy().tolist() == KIND_CELL.relevant(actions.numpy()).tolist()
