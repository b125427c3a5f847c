"""Classification tasks the host trains on, as in-memory numpy arrays.

Nothing is downloaded at run time: `digits` ships with scikit-learn and `spirals` is
generated from the seed, so an episode can start anywhere, offline, in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Fraction of `digits` held out for validation; the split itself never changes.
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
#: Spiral sizes are per arm; three arms make a problem a linear model cannot solve.
SPIRAL_ARMS = 3
SPIRAL_TRAIN_PER_ARM = 160
SPIRAL_VAL_PER_ARM = 40
SPIRAL_TURNS = 1.25
SPIRAL_NOISE = 0.08


@dataclass(frozen=True)
class Task:
    """A train/validation split with its shape, ready to turn into tensors."""

    name: str
    x_train: FloatArray
    y_train: IntArray
    x_val: FloatArray
    y_val: IntArray
    n_features: int
    n_classes: int


def _read_only(array: np.ndarray) -> np.ndarray:
    """Freeze an array so a cached task cannot be corrupted by one of its users."""
    array.flags.writeable = False
    return array


def _make_task(
    name: str, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray
) -> Task:
    return Task(
        name=name,
        x_train=_read_only(np.ascontiguousarray(x_tr, dtype=np.float32)),
        y_train=_read_only(np.ascontiguousarray(y_tr, dtype=np.int64)),
        x_val=_read_only(np.ascontiguousarray(x_va, dtype=np.float32)),
        y_val=_read_only(np.ascontiguousarray(y_va, dtype=np.int64)),
        n_features=int(x_tr.shape[1]),
        n_classes=int(max(y_tr.max(), y_va.max()) + 1),
    )


@lru_cache(maxsize=1)
def _digits() -> Task:
    """The 8x8 digits, split once (stratified) and standardised on the training part only."""
    # scikit-learn is imported here, not at module level: it takes seconds to import and
    # the CLI reads TASKS to validate flags before anything heavy is loaded.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    bunch = load_digits()
    x_tr, x_va, y_tr, y_va = train_test_split(
        bunch.data,
        bunch.target,
        test_size=DIGITS_VAL_FRACTION,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    scaler = StandardScaler().fit(x_tr)
    return _make_task("digits", scaler.transform(x_tr), y_tr, scaler.transform(x_va), y_va)


def spiral_points(
    n_per_arm: int, rng: np.random.Generator, arms: int = SPIRAL_ARMS
) -> tuple[FloatArray, IntArray]:
    """Noisy points on `arms` interleaved spiral arms in the plane, labelled by arm."""
    radius = rng.uniform(0.05, 1.0, size=(arms, n_per_arm))
    phase = 2 * np.pi * np.arange(arms)[:, None] / arms
    theta = 2 * np.pi * SPIRAL_TURNS * radius + phase
    xy = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=-1)
    xy = xy + rng.normal(0.0, SPIRAL_NOISE, size=xy.shape) * radius[..., None]
    labels = np.repeat(np.arange(arms), n_per_arm)
    order = rng.permutation(arms * n_per_arm)
    return xy.reshape(-1, 2)[order].astype(np.float32), labels[order].astype(np.int64)


def _spirals(seed: int) -> Task:
    """Three interleaved arms: too hard for the default host alone, cheap to train on.

    Train and validation come from one stream drawn from `seed`.
    """
    rng = np.random.default_rng(seed)
    x_tr, y_tr = spiral_points(SPIRAL_TRAIN_PER_ARM, rng)
    x_va, y_va = spiral_points(SPIRAL_VAL_PER_ARM, rng)
    return _make_task("spirals", x_tr, y_tr, x_va, y_va)


_LOADERS: dict[str, Callable[[int], Task]] = {
    "digits": lambda seed: _digits(),
    "spirals": _spirals,
}
#: Known task names.
TASKS: tuple[str, ...] = tuple(_LOADERS)
#: The task a run trains on unless told otherwise: the one on which growing pays (the
#: reasoning and the numbers are in esper.morpho.environment's docstring).
DEFAULT_TASK = "spirals"


def load_task(name: str = DEFAULT_TASK, seed: int = 0) -> Task:
    """Load a task by name. `digits` has one fixed split; `spirals` is drawn from `seed`."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    return loader(seed)
