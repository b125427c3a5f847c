"""Gymnasium wrappers that turn continuous-control tasks into factored discrete ones.

`DiscretizeActions` gives a Box action space one categorical head per dimension, the
shape of action that factored PPO (and per-head ratio telemetry) is about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces


def action_grid(low: float, high: float, bins: int) -> npt.NDArray[np.float64]:
    """`bins` evenly spaced values from `low` to `high`, both ends included."""
    return np.linspace(low, high, bins)


class DiscretizeActions(gymnasium.ActionWrapper):
    """A Box action space as MultiDiscrete: one head per dimension, a uniform grid each.

    `bins` is one count for every dimension or one per dimension (each >= 2, so a head
    can reach both bounds). Head i's index k maps to low[i] + k * (high[i] - low[i]) /
    (bins[i] - 1). A multi-dimensional Box is taken in flat (C) order. Infinite bounds
    have no uniform grid and are refused.
    """

    def __init__(self, env: gymnasium.Env[Any, Any], bins: int | Sequence[int]) -> None:
        super().__init__(env)
        box = env.action_space
        if not isinstance(box, spaces.Box):
            raise ValueError(f"DiscretizeActions needs a Box action space, got {box}")
        low = np.asarray(box.low, dtype=np.float64).reshape(-1)
        high = np.asarray(box.high, dtype=np.float64).reshape(-1)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(
                f"DiscretizeActions needs finite action bounds, got low={box.low.tolist()} "
                f"high={box.high.tolist()}"
            )
        counts = [bins] * low.size if isinstance(bins, (int, np.integer)) else list(bins)
        if len(counts) != low.size:
            raise ValueError(f"{low.size} action dimensions but {len(counts)} bin counts")
        if any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) for b in counts):
            raise ValueError(f"bins must be integers, got {counts}")
        if any(b < 2 for b in counts):
            raise ValueError(f"every dimension needs at least 2 bins, got {counts}")
        self.bins = tuple(int(b) for b in counts)
        self.grids = tuple(
            action_grid(lo, hi, n) for lo, hi, n in zip(low, high, self.bins, strict=True)
        )
        self._box = box
        self.action_space = spaces.MultiDiscrete(list(self.bins))

    def action(self, action: Any) -> npt.NDArray[Any]:
        """The Box action for one index per head."""
        index = np.asarray(action, dtype=np.int64).reshape(-1)
        if index.size != len(self.bins) or np.any(index < 0) or np.any(index >= self.bins):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        values = [grid[k] for grid, k in zip(self.grids, index, strict=True)]
        return np.asarray(values, dtype=self._box.dtype).reshape(self._box.shape)
