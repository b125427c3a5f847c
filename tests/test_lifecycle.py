"""The seed lifecycle: alpha ramps by hand, stage walks by hand, and random operation runs."""

from __future__ import annotations

import dataclasses
import itertools
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper.morpho.actions import AlphaCurve, AlphaSpeed, AlphaTarget, BlendStyle, Blueprint, Tempo
from esper.morpho.lifecycle import (
    LEGAL_TRANSITIONS,
    IllegalTransitionError,
    LifecycleEvent,
    SlotLifecycle,
    Stage,
    alpha_at,
)

# -- alpha ramps ----------------------------------------------------------------------------


def test_linear_ramp_half_way_is_half_the_target() -> None:
    assert alpha_at(2, 0.0, 0.7, 4, AlphaCurve.LINEAR) == pytest.approx(0.35)
    assert alpha_at(1, 1.0, 0.0, 4, AlphaCurve.LINEAR) == pytest.approx(0.75)


@pytest.mark.parametrize("curve", list(AlphaCurve))
def test_instant_ramp_jumps_at_once(curve: AlphaCurve) -> None:
    assert alpha_at(0, 0.2, 0.9, 0, curve) == 0.9


@pytest.mark.parametrize("curve", list(AlphaCurve))
def test_ramp_endpoints_and_symmetric_midpoint(curve: AlphaCurve) -> None:
    assert alpha_at(0, 0.0, 1.0, 8, curve) == 0.0
    assert alpha_at(8, 0.0, 1.0, 8, curve) == 1.0
    assert alpha_at(20, 0.0, 1.0, 8, curve) == 1.0
    # LINEAR, COSINE and the rescaled SIGMOID are all point-symmetric about the middle.
    assert alpha_at(4, 0.0, 1.0, 8, curve) == pytest.approx(0.5)


def test_cosine_quarter_way() -> None:
    expected = (1.0 - math.cos(math.pi / 4)) / 2  # 0.1464...
    assert alpha_at(1, 0.0, 1.0, 4, AlphaCurve.COSINE) == pytest.approx(expected)


def test_sigmoid_is_slower_than_linear_early_and_faster_late() -> None:
    early = alpha_at(1, 0.0, 1.0, 8, AlphaCurve.SIGMOID)
    late = alpha_at(7, 0.0, 1.0, 8, AlphaCurve.SIGMOID)
    assert 0.0 < early < 1 / 8
    assert 7 / 8 < late < 1.0


@given(
    st.sampled_from(list(AlphaCurve)),
    st.integers(1, 12),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_ramps_move_monotonically_between_their_ends(
    curve: AlphaCurve, epochs: int, start: float, target: float
) -> None:
    values = [alpha_at(step, start, target, epochs, curve) for step in range(epochs + 1)]
    lo, hi = min(start, target), max(start, target)
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in values)
    steps = [b - a for a, b in itertools.pairwise(values)]
    sign = 1 if target >= start else -1
    assert all(sign * d >= -1e-12 for d in steps)


# -- stage walks by hand ---------------------------------------------------------------------


def _walk(lc: SlotLifecycle, n: int) -> list[tuple[Stage, float]]:
    out = []
    for _ in range(n):
        lc.advance()
        out.append((lc.stage, round(lc.alpha, 6)))
    return out


def _germinated(tempo: Tempo = Tempo.FAST, target: AlphaTarget = AlphaTarget.FULL) -> SlotLifecycle:
    lc = SlotLifecycle(slot=1)
    lc.germinate(Blueprint.MLP, BlendStyle.GATED, tempo, target)
    return lc


def test_full_life_to_fossil() -> None:
    lc = _germinated()
    assert (lc.stage, lc.alpha, lc.alpha_target) == (Stage.GERMINATED, 0.0, 1.0)
    S = Stage
    assert _walk(lc, 13) == [
        (S.TRAINING, 0.0),
        (S.TRAINING, 0.0),
        (S.BLENDING, 0.0),  # FAST tempo: 2 isolated epochs
        (S.BLENDING, 0.25),  # default blend ramp: 4 epochs, linear
        (S.BLENDING, 0.5),
        (S.BLENDING, 0.75),
        (S.HOLDING, 1.0),
        (S.HOLDING, 1.0),
        (S.HOLDING, 1.0),
        (S.FOSSILIZED, 1.0),  # 3 holding epochs
        (S.FOSSILIZED, 1.0),
        (S.FOSSILIZED, 1.0),
        (S.FOSSILIZED, 1.0),
    ]
    assert lc.age == 13
    assert not (lc.can_grow or lc.can_mutate or lc.can_kill)


def _holding(target: AlphaTarget = AlphaTarget.FULL) -> SlotLifecycle:
    lc = _germinated(target=target)
    _walk(lc, 7)
    assert lc.stage == Stage.HOLDING
    return lc


def test_kill_ramps_out_then_embargo_then_dormant() -> None:
    lc = _holding()
    event = lc.kill(AlphaSpeed.FAST, AlphaCurve.LINEAR)
    assert (event.from_stage, event.to_stage, lc.alpha) == (Stage.HOLDING, Stage.KILLED, 1.0)
    assert _walk(lc, 4) == [
        (Stage.KILLED, 0.5),
        (Stage.KILLED, 0.0),
        (Stage.KILLED, 0.0),  # embargo 2 -> 1
        (Stage.DORMANT, 0.0),
    ]
    assert lc == SlotLifecycle(slot=1)
    assert lc.can_grow


@pytest.mark.parametrize("speed", list(AlphaSpeed))
def test_killing_a_training_seed_skips_the_ramp(speed: AlphaSpeed) -> None:
    lc = _germinated()
    lc.advance()
    lc.kill(speed, AlphaCurve.COSINE)
    assert [stage for stage, _ in _walk(lc, 2)] == [Stage.KILLED, Stage.DORMANT]


def test_mutate_retargets_from_the_current_alpha() -> None:
    lc = _holding(target=AlphaTarget.HALF)
    lc.mutate(AlphaTarget.FULL, AlphaSpeed.FAST, AlphaCurve.LINEAR)
    assert (lc.stage, lc.alpha, lc.alpha_target) == (Stage.BLENDING, 0.5, 1.0)
    assert _walk(lc, 2) == [(Stage.BLENDING, 0.75), (Stage.HOLDING, 1.0)]


def test_instant_mutate_jumps_then_holds() -> None:
    lc = _holding()
    lc.mutate(AlphaTarget.MOST, AlphaSpeed.INSTANT, AlphaCurve.SIGMOID)
    assert (lc.stage, lc.alpha) == (Stage.BLENDING, 0.7)
    assert _walk(lc, 1) == [(Stage.HOLDING, 0.7)]


def test_illegal_operations_raise() -> None:
    empty = SlotLifecycle(slot=0)
    with pytest.raises(IllegalTransitionError):
        empty.kill(AlphaSpeed.FAST, AlphaCurve.LINEAR)
    with pytest.raises(IllegalTransitionError):
        empty.mutate(AlphaTarget.HALF, AlphaSpeed.FAST, AlphaCurve.LINEAR)
    germinated = _germinated()
    with pytest.raises(IllegalTransitionError):
        germinated.germinate(Blueprint.NORM, BlendStyle.MULTIPLY, Tempo.SLOW, AlphaTarget.HALF)
    with pytest.raises(IllegalTransitionError):
        germinated.kill(AlphaSpeed.FAST, AlphaCurve.LINEAR)
    germinated.advance()  # TRAINING: alpha is not blending yet
    with pytest.raises(IllegalTransitionError):
        germinated.mutate(AlphaTarget.HALF, AlphaSpeed.FAST, AlphaCurve.LINEAR)


@pytest.mark.parametrize(
    ("stage", "grow", "mutate", "kill"),
    [
        (Stage.DORMANT, True, False, False),
        (Stage.GERMINATED, False, False, False),
        (Stage.TRAINING, False, False, True),
        (Stage.BLENDING, False, True, True),
        (Stage.HOLDING, False, True, True),
        (Stage.FOSSILIZED, False, False, False),
        (Stage.KILLED, False, False, False),
    ],
)
def test_permissions_by_stage(stage: Stage, grow: bool, mutate: bool, kill: bool) -> None:
    lc = SlotLifecycle(slot=0, stage=stage)
    assert (lc.can_grow, lc.can_mutate, lc.can_kill) == (grow, mutate, kill)


def test_event_dict_uses_names() -> None:
    event = LifecycleEvent(2, Stage.TRAINING, Stage.BLENDING, Blueprint.LOW_RANK, 0.0)
    assert event.as_dict() == {
        "slot": 2,
        "from_stage": "TRAINING",
        "to_stage": "BLENDING",
        "blueprint": "LOW_RANK",
        "alpha": 0.0,
    }


# -- random operation runs ---------------------------------------------------------------------

operations = st.one_of(
    st.tuples(
        st.just("germinate"),
        st.sampled_from(list(Blueprint)),
        st.sampled_from(list(BlendStyle)),
        st.sampled_from(list(Tempo)),
        st.sampled_from(list(AlphaTarget)),
    ),
    st.tuples(
        st.just("mutate"),
        st.sampled_from(list(AlphaTarget)),
        st.sampled_from(list(AlphaSpeed)),
        st.sampled_from(list(AlphaCurve)),
    ),
    st.tuples(
        st.just("kill"), st.sampled_from(list(AlphaSpeed)), st.sampled_from(list(AlphaCurve))
    ),
    st.tuples(st.just("advance")),
)
ALLOWED = {"germinate": "can_grow", "mutate": "can_mutate", "kill": "can_kill"}


@given(st.lists(operations, max_size=60))
def test_random_operations_follow_the_legal_table(ops: list[tuple]) -> None:
    lc = SlotLifecycle(slot=0)
    for name, *args in ops:
        before = dataclasses.replace(lc)
        allowed = name == "advance" or getattr(lc, ALLOWED[name])
        try:
            result = getattr(lc, name)(*args)
        except IllegalTransitionError:
            assert not allowed
            assert lc == before  # a refused operation changes nothing
            continue
        assert allowed
        events = result if isinstance(result, list) else [result]
        assert len(events) <= 1
        for event in events:
            assert event.to_stage in LEGAL_TRANSITIONS[event.from_stage]
            assert event.from_stage == before.stage
        assert lc.stage in Stage
        assert 0.0 <= lc.alpha <= 1.0
        if lc.stage in (Stage.DORMANT, Stage.GERMINATED, Stage.TRAINING):
            assert lc.alpha == 0.0


def test_lifecycle_imports_no_torch() -> None:
    code = "import sys, esper.morpho.lifecycle; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
