"""Classification tasks the host trains on, as in-memory numpy arrays.

Nothing is downloaded at run time: `digits` and `wine` ship with scikit-learn, `spirals`
and `moons` are generated from a seed, so an episode can start anywhere, offline, in
milliseconds.

`family` is not one task but a distribution of cases (`FAMILY`): each episode's seed deals
a kind, its data and the width of the host it gets, so that the right growth decision
differs from case to case (see esper.morpho.environment for the measurement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Fraction of `digits` and `wine` held out for validation; the split never changes.
DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
#: Two-moons sizes and noise: a 2-class plane problem the default host solves alone.
MOONS_TRAIN = 450
MOONS_VAL = 150
MOONS_NOISE = 0.25
#: Spiral sizes are per arm; three arms make a problem a linear model cannot solve.
SPIRAL_ARMS = 3
SPIRAL_TRAIN_PER_ARM = 160
SPIRAL_VAL_PER_ARM = 40
SPIRAL_TURNS = 1.25
SPIRAL_NOISE = 0.08
#: The family's spirals are drawn larger: with 160 / 40 points an arm most of the return's
#: spread between two equally good schedules is training that has not converged and a
#: small validation set, not the decision (BENCHMARKS.md, "The task family").
FAMILY_SPIRAL_TRAIN_PER_ARM = 480
FAMILY_SPIRAL_VAL_PER_ARM = 200


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


def _bundled(name: str) -> Task:
    """A dataset scikit-learn ships, split once (stratified), standardised on its training
    part only."""
    # scikit-learn is imported here, not at module level: it takes seconds to import and
    # the CLI reads TASKS to validate flags before anything heavy is loaded.
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, y, test_size=DIGITS_VAL_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    scaler = StandardScaler().fit(x_tr)
    return _make_task(name, scaler.transform(x_tr), y_tr, scaler.transform(x_va), y_va)


@lru_cache(maxsize=1)
def _digits() -> Task:
    """The 8x8 digits (1 797 images, 10 classes)."""
    return _bundled("digits")


@lru_cache(maxsize=1)
def _wine() -> Task:
    """Wine cultivars from 13 chemical measurements (178 samples, 3 classes)."""
    return _bundled("wine")


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


def spirals(
    rng: np.random.Generator,
    arms: int = SPIRAL_ARMS,
    train_per_arm: int = SPIRAL_TRAIN_PER_ARM,
    val_per_arm: int = SPIRAL_VAL_PER_ARM,
) -> Task:
    """Interleaved arms: three are too hard for the default host alone, cheap to train on.

    Train and validation come from one stream drawn from `rng`.
    """
    x_tr, y_tr = spiral_points(train_per_arm, rng, arms)
    x_va, y_va = spiral_points(val_per_arm, rng, arms)
    name = "spirals" if arms == SPIRAL_ARMS else f"spirals{arms}"
    return _make_task(name, x_tr, y_tr, x_va, y_va)


def moons(rng: np.random.Generator) -> Task:
    """Two noisy interleaved half circles, train and validation drawn from `rng`."""
    from sklearn.datasets import make_moons

    x, y = make_moons(MOONS_TRAIN + MOONS_VAL, noise=MOONS_NOISE, random_state=_draw_seed(rng))
    return _make_task("moons", x[:MOONS_TRAIN], y[:MOONS_TRAIN], x[MOONS_TRAIN:], y[MOONS_TRAIN:])


def _draw_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def _family_spirals(arms: int) -> Callable[[np.random.Generator], Task]:
    return partial(
        spirals,
        arms=arms,
        train_per_arm=FAMILY_SPIRAL_TRAIN_PER_ARM,
        val_per_arm=FAMILY_SPIRAL_VAL_PER_ARM,
    )


@dataclass(frozen=True)
class TaskKind:
    """One case of the task family: how its data are drawn and the host width it gets."""

    name: str
    width: int
    draw: Callable[[np.random.Generator], Task]


#: The default task family, all on a width-16 host. An episode seeded explicitly plays
#: kind `seed % len(FAMILY)` (any six consecutive seeds hold each kind once); one that
#: reseeds itself draws its kind uniformly.
#: What the host needs differs from kind to kind (measured by `python -m benchmarks
#: family`): the moons, the wine and the digits it solves alone (WAIT is right), the
#: spirals of three, four and five arms each want one NORM seed early. Half the cases
#: want each answer, so no single schedule is right for more than half of them.
FAMILY: tuple[TaskKind, ...] = (
    TaskKind("moons", 16, moons),
    TaskKind("wine", 16, lambda rng: _wine()),
    TaskKind("digits", 16, lambda rng: _digits()),
    TaskKind("spirals3", 16, _family_spirals(3)),
    TaskKind("spirals4", 16, _family_spirals(4)),
    TaskKind("spirals5", 16, _family_spirals(5)),
)
FAMILY_TASK = "family"


def _spirals(seed: int) -> Task:
    return spirals(np.random.default_rng(seed))


_LOADERS: dict[str, Callable[[int], Task]] = {
    "digits": lambda seed: _digits(),
    "spirals": _spirals,
}
#: Known task names: one fixed task each, and the family.
TASKS: tuple[str, ...] = (*_LOADERS, FAMILY_TASK)
#: The task a run trains on unless told otherwise: the family, where the right growth
#: decision depends on the case (the reasoning and the numbers are in
#: esper.morpho.environment's docstring).
DEFAULT_TASK = FAMILY_TASK


def load_task(name: str, seed: int = 0) -> Task:
    """Load a fixed task by name. `digits` has one fixed split; `spirals` is drawn from
    `seed`. The family has no one task: its env draws a `TaskKind` per episode."""
    if name == FAMILY_TASK:
        raise ValueError(f"{FAMILY_TASK!r} is a family of tasks drawn per episode")
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
    return loader(seed)
