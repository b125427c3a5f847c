"""The factored action contract: heads, their values, causal relevance and validity masks.

Every other module imports head names, sizes and relevance from here so that the
policy, the environment, the PPO statistics and the dashboard can never disagree on
what "head 3" means. This module imports no torch: the dashboard needs it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from esper.common.spaces import FactoredActions

BoolArray = npt.NDArray[np.bool_]

#: The eight heads, in the order used by every tensor, array and table in esper.
HEAD_NAMES: tuple[str, ...] = (
    "op",
    "slot",
    "blueprint",
    "style",
    "tempo",
    "alpha_target",
    "alpha_speed",
    "alpha_curve",
)
HEAD_INDEX: dict[str, int] = {name: i for i, name in enumerate(HEAD_NAMES)}
DEFAULT_SLOTS = 3


class Op(IntEnum):
    """What the policy does this epoch."""

    WAIT = 0
    GROW = 1
    MUTATE = 2
    KILL = 3


class Blueprint(IntEnum):
    """Seed architectures that fit between two host layers of the same width."""

    LINEAR = 0
    MLP = 1
    WIDE_MLP = 2
    LOW_RANK = 3
    NORM = 4


class BlendStyle(IntEnum):
    """How a seed's output joins the host; each is the identity at alpha = 0."""

    LINEAR_ADD = 0
    SIGMOID_ADD = 1
    GATED = 2
    MULTIPLY = 3


class Tempo(IntEnum):
    """How long a seed trains in isolation before it starts blending."""

    FAST = 0
    STANDARD = 1
    SLOW = 2


class AlphaTarget(IntEnum):
    """The blend weight a seed ramps towards."""

    HALF = 0
    MOST = 1
    FULL = 2


class AlphaSpeed(IntEnum):
    """How many epochs an alpha ramp takes."""

    INSTANT = 0
    FAST = 1
    MEDIUM = 2
    SLOW = 3


class AlphaCurve(IntEnum):
    """The shape of an alpha ramp over its epochs."""

    LINEAR = 0
    COSINE = 1
    SIGMOID = 2


TEMPO_EPOCHS: dict[Tempo, int] = {Tempo.FAST: 2, Tempo.STANDARD: 4, Tempo.SLOW: 8}
ALPHA_TARGET_VALUES: dict[AlphaTarget, float] = {
    AlphaTarget.HALF: 0.5,
    AlphaTarget.MOST: 0.7,
    AlphaTarget.FULL: 1.0,
}
ALPHA_SPEED_EPOCHS: dict[AlphaSpeed, int] = {
    AlphaSpeed.INSTANT: 0,
    AlphaSpeed.FAST: 2,
    AlphaSpeed.MEDIUM: 4,
    AlphaSpeed.SLOW: 8,
}

#: Value enums of every head but `slot`, whose size depends on the host.
HEAD_ENUMS: dict[str, type[IntEnum]] = {
    "op": Op,
    "blueprint": Blueprint,
    "style": BlendStyle,
    "tempo": Tempo,
    "alpha_target": AlphaTarget,
    "alpha_speed": AlphaSpeed,
    "alpha_curve": AlphaCurve,
}

#: Which heads each op reads. A head outside its op's set is not causally relevant:
#: its sampled value changes nothing, so its ratio says nothing about the policy shift.
RELEVANT_HEADS: dict[Op, frozenset[str]] = {
    Op.WAIT: frozenset({"op"}),
    Op.GROW: frozenset({"op", "slot", "blueprint", "style", "tempo", "alpha_target"}),
    Op.MUTATE: frozenset({"op", "slot", "alpha_target", "alpha_speed", "alpha_curve"}),
    Op.KILL: frozenset({"op", "slot", "alpha_speed", "alpha_curve"}),
}

#: RELEVANT_HEADS as a [n_ops, n_heads] boolean table, for vectorised look-ups.
RELEVANCE_TABLE: BoolArray = np.array(
    [[head in RELEVANT_HEADS[op] for head in HEAD_NAMES] for op in Op], dtype=np.bool_
)


def describe(action: npt.ArrayLike) -> str:
    """One action as text, naming only the heads its op reads: "GROW slot=1 NORM GATED
    FAST FULL"; "WAIT" alone."""
    values = np.asarray(action, dtype=np.int64)
    op = Op(int(values[HEAD_INDEX["op"]]))
    words = [op.name]
    for name in HEAD_NAMES[1:]:
        if name in RELEVANT_HEADS[op]:
            value = int(values[HEAD_INDEX[name]])
            words.append(f"slot={value}" if name == "slot" else HEAD_ENUMS[name](value).name)
    return " ".join(words)


def head_sizes(n_slots: int = DEFAULT_SLOTS) -> dict[str, int]:
    """Number of values of each head, in head order, for a host with `n_slots` slots."""
    if n_slots < 1:
        raise ValueError(f"n_slots must be >= 1, got {n_slots}")
    return {name: (n_slots if name == "slot" else len(HEAD_ENUMS[name])) for name in HEAD_NAMES}


def relevance_mask(ops: npt.ArrayLike) -> BoolArray:
    """Per-sample relevance of each head ([N, 8] bool) for an array of op indices."""
    return RELEVANCE_TABLE[np.asarray(ops, dtype=np.int64)]


def factored_actions(n_slots: int = DEFAULT_SLOTS) -> FactoredActions:
    """The declaration the algorithm trains on: the eight heads, op as the selector that
    decides relevance (RELEVANT_HEADS) and the legal slots."""
    sizes = head_sizes(n_slots)
    return FactoredActions(
        names=HEAD_NAMES, sizes=tuple(sizes.values()), selector="op", relevance=RELEVANCE_TABLE
    )


@dataclass(frozen=True)
class ActionMasks:
    """Which actions are possible in one state.

    `op[o]` says whether op `o` can be executed; `slot_by_op[o, s]` whether slot `s`
    may be chosen once op `o` is chosen (the slot mask is conditioned on the op).
    Every row has at least one True so a categorical over it is always defined.
    """

    op: BoolArray  # [n_ops]
    slot_by_op: BoolArray  # [n_ops, n_slots]

    @property
    def n_slots(self) -> int:
        return int(self.slot_by_op.shape[1])

    def flat(self) -> BoolArray:
        """The unconditioned per-head mask, concatenated in head order (sb3-contrib style).

        A flat mask cannot express "slot s only with op o", so the slot part is the union
        of slots valid for any valid op other than WAIT (or every slot when only WAIT is).
        """
        active = self.op.copy()
        active[Op.WAIT] = False
        slot = self.slot_by_op[active].any(axis=0) if active.any() else self.slot_by_op[Op.WAIT]
        sizes = head_sizes(self.n_slots)
        parts = [self.op, slot] + [np.ones(sizes[name], dtype=np.bool_) for name in HEAD_NAMES[2:]]
        return np.concatenate(parts).astype(np.bool_)


def compute_masks(
    can_grow: npt.ArrayLike, can_mutate: npt.ArrayLike, can_kill: npt.ArrayLike
) -> ActionMasks:
    """Validity masks from what each slot allows right now.

    GROW needs an empty slot out of embargo, MUTATE a blending or holding seed, KILL a
    training, blending or holding seed. WAIT is always possible and, since it reads no
    slot, leaves every slot open (its slot value is irrelevant).
    """
    grow = np.asarray(can_grow, dtype=np.bool_)
    mutate = np.asarray(can_mutate, dtype=np.bool_)
    kill = np.asarray(can_kill, dtype=np.bool_)
    if not grow.shape == mutate.shape == kill.shape or grow.ndim != 1:
        raise ValueError("can_grow, can_mutate and can_kill must be 1-D arrays of one length")
    n_slots = grow.shape[0]
    all_slots = np.ones(n_slots, dtype=np.bool_)
    op = np.array([True, grow.any(), mutate.any(), kill.any()], dtype=np.bool_)
    slot_by_op = np.stack(
        [
            all_slots,
            grow if grow.any() else all_slots,
            mutate if mutate.any() else all_slots,
            kill if kill.any() else all_slots,
        ]
    )
    return ActionMasks(op=op, slot_by_op=slot_by_op)


def is_valid(action: npt.ArrayLike, masks: ActionMasks) -> bool:
    """Whether a full factored action can be executed as chosen (op and, if used, slot)."""
    act = np.asarray(action, dtype=np.int64)
    op = int(act[HEAD_INDEX["op"]])
    if not 0 <= op < len(Op) or not masks.op[op]:
        return False
    if op == Op.WAIT:
        return True
    slot = int(act[HEAD_INDEX["slot"]])
    return 0 <= slot < masks.n_slots and bool(masks.slot_by_op[op, slot])
