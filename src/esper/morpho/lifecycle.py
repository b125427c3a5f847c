"""The seed lifecycle: stages, legal transitions, alpha ramps and one state machine per slot.

Pure Python on purpose (no torch): the Sanctum dashboard imports `Stage` to name what it
shows, and the environment's masks come from here, so both read the same rules.

Semantics, one host epoch per `advance()`:

- `germinate` plants a seed in a DORMANT slot: GERMINATED (initialised, not yet training).
- GERMINATED -> TRAINING at the next advance.
- TRAINING lasts `TEMPO_EPOCHS[tempo]` advances; the seed learns in isolation, alpha = 0.
- -> BLENDING: alpha ramps from 0 to its target over `BLEND_SPEED`/`BLEND_CURVE`.
- Ramp reached -> HOLDING; after `HOLD_EPOCHS` advances -> FOSSILIZED, permanent: the
  slot stays occupied for the rest of the episode.
- `mutate` (BLENDING or HOLDING) starts a new ramp from the current alpha to a new
  target with the chosen speed and curve, back in BLENDING.
- `kill` (TRAINING, BLENDING or HOLDING) moves to KILLED at once; alpha ramps to 0 with
  the chosen speed and curve (no ramp when it is already 0), then the slot sits out
  `EMBARGO_EPOCHS` more advances before it is DORMANT, free to grow again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from esper.morpho.actions import (
    ALPHA_SPEED_EPOCHS,
    ALPHA_TARGET_VALUES,
    TEMPO_EPOCHS,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    Blueprint,
    Tempo,
)


class Stage(IntEnum):
    """Where a slot's seed is in its life; DORMANT means the slot is empty."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    HOLDING = 4
    FOSSILIZED = 5
    KILLED = 6


#: Every legal stage change. BLENDING -> BLENDING is a mutate re-targeting a live ramp.
LEGAL_TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.DORMANT: frozenset({Stage.GERMINATED}),
    Stage.GERMINATED: frozenset({Stage.TRAINING}),
    Stage.TRAINING: frozenset({Stage.BLENDING, Stage.KILLED}),
    Stage.BLENDING: frozenset({Stage.BLENDING, Stage.HOLDING, Stage.KILLED}),
    Stage.HOLDING: frozenset({Stage.BLENDING, Stage.FOSSILIZED, Stage.KILLED}),
    Stage.FOSSILIZED: frozenset(),
    Stage.KILLED: frozenset({Stage.DORMANT}),
}
#: Stages in which the slot holds a seed module (it costs parameters).
SEEDED_STAGES: frozenset[Stage] = frozenset(Stage) - {Stage.DORMANT}
MUTABLE_STAGES: frozenset[Stage] = frozenset({Stage.BLENDING, Stage.HOLDING})
KILLABLE_STAGES: frozenset[Stage] = frozenset({Stage.TRAINING, Stage.BLENDING, Stage.HOLDING})

HOLD_EPOCHS = 3
EMBARGO_EPOCHS = 2
#: The ramp a seed uses when it leaves TRAINING (GROW does not read the speed/curve heads).
BLEND_SPEED = AlphaSpeed.MEDIUM
BLEND_CURVE = AlphaCurve.LINEAR
#: Steepness of the logistic ramp; rescaled so it still runs exactly from 0 to 1.
SIGMOID_STEEPNESS = 10.0


class IllegalTransitionError(ValueError):
    """A lifecycle operation was asked of a slot whose stage does not allow it."""


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-SIGMOID_STEEPNESS * (x - 0.5)))


def _sigmoid_shape(t: float) -> float:
    low, high = _logistic(0.0), _logistic(1.0)
    return (_logistic(t) - low) / (high - low)


#: Ramp shapes on [0, 1]; each maps 0 -> 0 and 1 -> 1.
CURVE_SHAPES: dict[AlphaCurve, Callable[[float], float]] = {
    AlphaCurve.LINEAR: lambda t: t,
    AlphaCurve.COSINE: lambda t: 0.5 - 0.5 * math.cos(math.pi * t),
    AlphaCurve.SIGMOID: _sigmoid_shape,
}


def alpha_at(step: int, start: float, target: float, ramp_epochs: int, curve: AlphaCurve) -> float:
    """Alpha `step` epochs into a ramp from `start` to `target` lasting `ramp_epochs`.

    A 0-epoch (INSTANT) ramp is at its target from step 0; past the end it stays there.
    """
    if ramp_epochs <= 0 or step >= ramp_epochs:
        return target
    if step <= 0:
        return start
    return start + (target - start) * CURVE_SHAPES[curve](step / ramp_epochs)


@dataclass(frozen=True)
class LifecycleEvent:
    """One stage change of one slot, as reported to the environment's `info`."""

    slot: int
    from_stage: Stage
    to_stage: Stage
    blueprint: Blueprint | None
    alpha: float

    def as_dict(self) -> dict[str, object]:
        """Plain, JSON-ready form: stage and blueprint names as strings."""
        return {
            "slot": self.slot,
            "from_stage": self.from_stage.name,
            "to_stage": self.to_stage.name,
            "blueprint": None if self.blueprint is None else self.blueprint.name,
            "alpha": self.alpha,
        }


@dataclass
class SlotLifecycle:
    """The state machine of one slot; every change goes through `_move` and the table."""

    slot: int
    stage: Stage = Stage.DORMANT
    blueprint: Blueprint | None = None
    style: BlendStyle | None = None
    tempo: Tempo | None = None
    alpha: float = 0.0
    alpha_target: float = 0.0
    age: int = 0  # epochs since germination
    epochs_in_stage: int = 0
    embargo: int = 0
    ramp_start: float = 0.0
    ramp_end: float = 0.0
    ramp_epochs: int = 0
    ramp_step: int = 0
    ramp_curve: AlphaCurve = AlphaCurve.LINEAR

    @property
    def can_grow(self) -> bool:
        return self.stage == Stage.DORMANT

    @property
    def can_mutate(self) -> bool:
        return self.stage in MUTABLE_STAGES

    @property
    def can_kill(self) -> bool:
        return self.stage in KILLABLE_STAGES

    @property
    def ramp_done(self) -> bool:
        return self.ramp_step >= self.ramp_epochs

    def _move(self, to: Stage) -> LifecycleEvent:
        if to not in LEGAL_TRANSITIONS[self.stage]:
            raise IllegalTransitionError(
                f"slot {self.slot}: {self.stage.name} -> {to.name} is not a legal transition"
            )
        event = LifecycleEvent(self.slot, self.stage, to, self.blueprint, self.alpha)
        self.stage = to
        self.epochs_in_stage = 0
        return event

    def _start_ramp(self, target: float, speed: AlphaSpeed, curve: AlphaCurve) -> None:
        self.ramp_start, self.ramp_end = self.alpha, target
        self.ramp_epochs, self.ramp_step, self.ramp_curve = ALPHA_SPEED_EPOCHS[speed], 0, curve
        self.alpha = alpha_at(0, self.ramp_start, target, self.ramp_epochs, curve)

    def _step_ramp(self) -> None:
        self.ramp_step = min(self.ramp_step + 1, self.ramp_epochs)
        self.alpha = alpha_at(
            self.ramp_step, self.ramp_start, self.ramp_end, self.ramp_epochs, self.ramp_curve
        )

    def germinate(
        self, blueprint: Blueprint, style: BlendStyle, tempo: Tempo, target: AlphaTarget
    ) -> LifecycleEvent:
        """Plant a seed in this (empty) slot; the event names the new seed's blueprint."""
        event = self._move(Stage.GERMINATED)
        self.blueprint, self.style, self.tempo = blueprint, style, tempo
        self.alpha, self.alpha_target, self.age = 0.0, ALPHA_TARGET_VALUES[target], 0
        return dataclasses.replace(event, blueprint=blueprint)

    def mutate(self, target: AlphaTarget, speed: AlphaSpeed, curve: AlphaCurve) -> LifecycleEvent:
        """Re-target a blending or holding seed: a new ramp from the current alpha."""
        if not self.can_mutate:
            raise IllegalTransitionError(
                f"slot {self.slot}: cannot mutate a {self.stage.name} seed"
            )
        event = self._move(Stage.BLENDING)
        self.alpha_target = ALPHA_TARGET_VALUES[target]
        self._start_ramp(self.alpha_target, speed, curve)
        return event

    def kill(self, speed: AlphaSpeed, curve: AlphaCurve) -> LifecycleEvent:
        """Start removing the seed: alpha ramps to 0, then the embargo runs."""
        event = self._move(Stage.KILLED)
        self._start_ramp(0.0, AlphaSpeed.INSTANT if self.alpha == 0.0 else speed, curve)
        self.embargo = EMBARGO_EPOCHS
        return event

    def advance(self) -> list[LifecycleEvent]:
        """One host epoch has passed: age, ramp and change stage when a phase is over."""
        if self.stage == Stage.DORMANT:
            return []
        self.age += 1
        self.epochs_in_stage += 1
        if self.stage == Stage.GERMINATED:
            return [self._move(Stage.TRAINING)]
        if self.stage == Stage.TRAINING:
            assert self.tempo is not None
            if self.epochs_in_stage < TEMPO_EPOCHS[self.tempo]:
                return []
            event = self._move(Stage.BLENDING)
            self._start_ramp(self.alpha_target, BLEND_SPEED, BLEND_CURVE)
            return [event]
        if self.stage == Stage.BLENDING:
            self._step_ramp()
            return [self._move(Stage.HOLDING)] if self.ramp_done else []
        if self.stage == Stage.HOLDING:
            return [self._move(Stage.FOSSILIZED)] if self.epochs_in_stage >= HOLD_EPOCHS else []
        if self.stage == Stage.KILLED:
            return self._advance_killed()
        return []  # FOSSILIZED: nothing left to happen

    def _advance_killed(self) -> list[LifecycleEvent]:
        if not self.ramp_done:
            self._step_ramp()
            return []
        self.embargo -= 1
        if self.embargo > 0:
            return []
        event = self._move(Stage.DORMANT)
        self._clear()
        return [event]

    def _clear(self) -> None:
        """Forget the dead seed: the slot is as fresh as at reset."""
        fresh = SlotLifecycle(self.slot)
        self.__dict__.update(fresh.__dict__)
