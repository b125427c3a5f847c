"""The morphogenetic task's own yardsticks for `esper eval`: never grow, and fixed schedules.

`wait` (the host trains alone) and a small named family of fixed grow schedules
(`heuristics`), which differ in the blueprint and in the timing, so a table of them shows
how much those decisions matter. They act on the legal values of `esper.common.spaces`
like any policy, so the evaluation plays them through the algorithm's own code path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from esper.morpho.actions import (
    HEAD_INDEX,
    HEAD_NAMES,
    AlphaTarget,
    BlendStyle,
    Blueprint,
    Op,
    Tempo,
)

IntArray = npt.NDArray[np.int64]
_OP, _SLOT = HEAD_INDEX["op"], HEAD_INDEX["slot"]


class States(Protocol):
    """What a baseline reads of the envs' stacked state (`esper.rl.runners.EnvStates`)."""

    obs: npt.NDArray[np.float32]
    legal: npt.NDArray[np.bool_]  # [n, ops, heads, width]


Baseline = Callable[[States, int], IntArray]


def _wait_actions(n: int) -> IntArray:
    return np.zeros((n, len(HEAD_NAMES)), dtype=np.int64)


def wait_policy(states: States, t: int) -> IntArray:
    """Never grow: the host trains alone."""
    return _wait_actions(states.obs.shape[0])


@dataclass(frozen=True)
class GrowSchedule:
    """Grow `blueprint` into the first free slot from `slot` on (wrapping round) at each
    step of `steps`, otherwise WAIT.

    A step at which no slot is free is a WAIT. Never mutates or kills: every seed ramps to
    its target and fossilizes on its own. Where a seed sits matters (the host's layers
    before and after it differ), so the slot is part of the schedule.
    """

    blueprint: Blueprint
    steps: tuple[int, ...]
    style: BlendStyle = BlendStyle.LINEAR_ADD
    tempo: Tempo = Tempo.FAST
    target: AlphaTarget = AlphaTarget.FULL
    slot: int = 0

    def __call__(self, states: States, t: int) -> IntArray:
        n = states.obs.shape[0]
        actions = _wait_actions(n)
        if t not in self.steps:
            return actions
        for i in range(n):
            legal = states.legal[i]
            if not legal[0, _OP, Op.GROW]:
                continue
            free = np.roll(legal[Op.GROW, _SLOT], -self.slot)  # from `slot` on, wrapping
            slot = (int(np.flatnonzero(free)[0]) + self.slot) % free.shape[0]
            row = {
                "op": Op.GROW,
                "slot": slot,
                "blueprint": self.blueprint,
                "style": self.style,
                "tempo": self.tempo,
                "alpha_target": self.target,
            }
            for head, value in row.items():
                actions[i, HEAD_INDEX[head]] = int(value)
        return actions


def heuristics(episode_length: int, n_slots: int) -> dict[str, GrowSchedule]:
    """The named fixed grow schedules: blueprint choice and timing, one change at a time.

    `early` grows one seed per step from step 0 until every slot is full; `late` does the
    same from the middle of the episode, so the seeds have half the time to pay back.
    """
    early = tuple(range(n_slots))
    late = tuple(range(episode_length // 2, episode_length // 2 + n_slots))
    return {
        "grow-norm-early": GrowSchedule(Blueprint.NORM, early),
        "grow-norm-late": GrowSchedule(Blueprint.NORM, late),
        "grow-wide-early": GrowSchedule(Blueprint.WIDE_MLP, early),
        "grow-linear-early": GrowSchedule(Blueprint.LINEAR, early),
        "grow-lowrank-early": GrowSchedule(Blueprint.LOW_RANK, early),
    }


def baselines(episode_length: int, n_slots: int) -> dict[str, Baseline]:
    """WAIT and the fixed heuristics, by name, in table order."""
    policies: dict[str, Baseline] = {"wait": wait_policy}
    policies.update(heuristics(episode_length, n_slots))
    return policies


@functools.lru_cache(maxsize=8)
def _observation_offsets(n_slots: int) -> dict[str, tuple[int, int]]:
    """Each observation block's [start, end) by name (`observation_layout`'s order)."""
    from esper.morpho.environment import observation_layout

    offsets, at = {}, 0
    for name, size, _, _ in observation_layout(n_slots):
        offsets[name] = (at, at + size)
        at += size
    return offsets


@dataclass(frozen=True)
class StallRule:
    """A hand-written closed-loop controller: the yardstick a learned one must beat.

    Reads only the observation and the legal values, as Tamiyo does. Each step, in order:
    KILL a seed whose contribution has fallen below `kill_below`; otherwise, from step
    `watch` on, GROW `blueprint` into the first free slot while the validation accuracy
    stalls (it rose by less than `stall` over the observation's accuracy window and is
    below `good_enough`) and no other seed is still training in isolation; otherwise WAIT.
    """

    n_slots: int
    stall: float = 0.02
    good_enough: float = 0.97
    kill_below: float = -0.02
    watch: int = 2
    blueprint: Blueprint = Blueprint.NORM

    def __call__(self, states: States, t: int) -> IntArray:
        from esper.morpho.lifecycle import Stage

        offsets = _observation_offsets(self.n_slots)
        lo, hi = offsets["val_accuracy"]
        actions = _wait_actions(states.obs.shape[0])
        for i, (obs, legal) in enumerate(zip(states.obs, states.legal, strict=True)):
            stage = [
                int(np.argmax(obs[slice(*offsets[f"slot{s}.stage"])])) for s in range(self.n_slots)
            ]
            contribution = [obs[offsets[f"slot{s}.contribution"][0]] for s in range(self.n_slots)]
            harmful = [
                s
                for s in range(self.n_slots)
                if legal[Op.KILL, _SLOT, s] and contribution[s] < self.kill_below
            ]
            accs = obs[lo:hi]
            isolated = any(st in (Stage.GERMINATED, Stage.TRAINING) for st in stage)
            stalled = accs[-1] - accs[0] < self.stall and accs[-1] < self.good_enough
            if harmful and legal[0, _OP, Op.KILL]:
                actions[i, _OP], actions[i, _SLOT] = Op.KILL, harmful[0]
            elif t >= self.watch and stalled and not isolated and legal[0, _OP, Op.GROW]:
                actions[i, _OP] = Op.GROW
                actions[i, _SLOT] = int(np.flatnonzero(legal[Op.GROW, _SLOT])[0])
                actions[i, HEAD_INDEX["blueprint"]] = self.blueprint
                actions[i, HEAD_INDEX["alpha_target"]] = AlphaTarget.FULL
        return actions
