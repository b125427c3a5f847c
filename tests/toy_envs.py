"""Small gymnasium envs of users' kinds, for `--env-id tests.toy_envs:...` and in-process use.

Each raises on an action it declares illegal, so a run that finishes never took one.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from esper.common.spaces import FactoredActions

CELLS = 4
NOOP, PICK, DROP = 0, 1, 2
#: `kind` decides whether `cell` matters: a no-op reads no cell.
RELEVANCE = np.array([[True, False], [True, True], [True, True]])


class IllegalAction(RuntimeError):
    """The agent took an action the env had declared illegal."""


class PickAndDrop(gymnasium.Env[npt.NDArray[np.float32], npt.NDArray[np.int64]]):
    """Cells that hold an item or not; pick an item up from a full cell or drop one into an
    empty cell. The second head's legal values depend on the first head's choice in the
    same step: PICK may only name a full cell, DROP only an empty one. Reward 1 for a
    pick from cell 0, 0.5 for a drop into cell 3; 16 steps an episode."""

    LENGTH = 16

    def __init__(self) -> None:
        self.action_space = spaces.MultiDiscrete([3, CELLS])
        self.observation_space = spaces.Box(0.0, 1.0, (CELLS,), dtype=np.float32)
        self.factored_actions = FactoredActions(
            names=("kind", "cell"), sizes=(3, CELLS), selector="kind", relevance=RELEVANCE
        )
        self.cells = np.zeros(CELLS, dtype=np.bool_)
        self.t = 0

    def legal_actions(self) -> npt.NDArray[np.bool_]:
        full, empty = self.cells, ~self.cells
        kinds = np.array([True, full.any(), empty.any()])
        by_kind = np.stack([np.ones(CELLS, dtype=np.bool_), full, empty])
        return self.factored_actions.legal({"kind": kinds, "cell": by_kind})

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        self.cells = self.np_random.random(CELLS) < 0.5
        self.t = 0
        return self.cells.astype(np.float32), {}

    def step(
        self, action: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        kind, cell = int(action[0]), int(action[1])
        if not self.factored_actions.is_legal(action, self.legal_actions()):
            raise IllegalAction(f"kind {kind} cell {cell} with cells {self.cells.tolist()}")
        reward = 0.0
        if kind == PICK:
            self.cells[cell] = False
            reward = 1.0 if cell == 0 else 0.0
        elif kind == DROP:
            self.cells[cell] = True
            reward = 0.5 if cell == CELLS - 1 else 0.0
        self.t += 1
        return self.cells.astype(np.float32), reward, False, self.t >= self.LENGTH, {}


class MaskedCorridor(gymnasium.Env[npt.NDArray[np.float32], npt.NDArray[np.int64]]):
    """A walker on a line of 6 cells with SB3-style flat `action_masks()`: head `move`
    (left, stay, right) may not leave the line, head `speed` (1, 2) may not jump past an
    end; which values are legal depends on the position. Reward for reaching the right
    end; 20 steps at most."""

    SIZE = 6
    head_names = ("move", "speed")

    def __init__(self) -> None:
        self.action_space = spaces.MultiDiscrete([3, 2])
        self.observation_space = spaces.Box(0.0, 1.0, (self.SIZE,), dtype=np.float32)
        self.pos, self.t = 0, 0

    def _obs(self) -> npt.NDArray[np.float32]:
        out = np.zeros(self.SIZE, dtype=np.float32)
        out[self.pos] = 1.0
        return out

    def action_masks(self) -> npt.NDArray[np.bool_]:
        move = np.array([self.pos > 0, True, self.pos < self.SIZE - 1])
        speed = np.array([True, 1 < self.pos < self.SIZE - 2])
        return np.concatenate([move, speed])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        self.pos = int(self.np_random.integers(self.SIZE - 1))
        self.t = 0
        return self._obs(), {}

    def step(
        self, action: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        move, speed = int(action[0]), int(action[1])
        mask = self.action_masks()
        if not (mask[move] and mask[3 + speed]):
            raise IllegalAction(f"move {move} speed {speed} at {self.pos}")
        self.pos += (move - 1) * (speed + 1)
        self.t += 1
        done = self.pos == self.SIZE - 1
        return self._obs(), 1.0 if done else 0.0, done, self.t >= 20, {}


def pick_and_drop() -> PickAndDrop:
    return PickAndDrop()


def masked_corridor() -> MaskedCorridor:
    return MaskedCorridor()
