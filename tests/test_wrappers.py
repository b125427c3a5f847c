"""DiscretizeActions: a Box becomes one categorical head per dimension on a uniform grid."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given
from hypothesis import strategies as st

from esper.integrations.gym import DiscretizeActions


class BoxEnv(gymnasium.Env):
    """Echoes the action it was given as its observation, so a test can see the mapping."""

    def __init__(self, low: object, high: object, shape: tuple[int, ...] | None = None) -> None:
        self.action_space = spaces.Box(
            low=np.asarray(low, dtype=np.float32), high=np.asarray(high, dtype=np.float32)
        )
        if shape is not None:
            self.action_space = spaces.Box(
                low=float(np.min(low)), high=float(np.max(high)), shape=shape, dtype=np.float32
            )
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=self.action_space.shape)
        self.last: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        return np.zeros(self.action_space.shape, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple:
        self.last = np.asarray(action)
        return self.last, 0.0, False, False, {}


def test_pendulum_grid_known_answer() -> None:
    env = DiscretizeActions(gymnasium.make("Pendulum-v1"), 5)
    assert env.action_space == spaces.MultiDiscrete([5])
    got = [env.action(np.array([k])).tolist() for k in range(5)]
    assert got == [[-2.0], [-1.0], [0.0], [1.0], [2.0]]
    assert env.action(np.array([3])).dtype == np.float32
    env.reset(seed=0)
    env.step(env.action_space.sample())  # a real step goes through


def test_bins_per_dimension_and_bounds_per_dimension() -> None:
    env = DiscretizeActions(BoxEnv([-1.0, 0.0], [1.0, 10.0]), [3, 6])
    assert env.action_space == spaces.MultiDiscrete([3, 6])
    np.testing.assert_allclose(env.action([0, 0]), [-1.0, 0.0])
    np.testing.assert_allclose(env.action([1, 3]), [0.0, 6.0])
    np.testing.assert_allclose(env.action([2, 5]), [1.0, 10.0])
    env.step(np.array([2, 1]))
    np.testing.assert_allclose(env.unwrapped.last, [1.0, 2.0])


def test_multi_dimensional_box_is_taken_in_flat_order() -> None:
    env = DiscretizeActions(BoxEnv(-1.0, 1.0, shape=(2, 2)), 3)
    assert env.action_space == spaces.MultiDiscrete([3, 3, 3, 3])
    out = env.action([0, 1, 2, 1])
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, [[-1.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize(
    ("env", "bins", "message"),
    [
        (BoxEnv([-np.inf], [1.0]), 3, "finite action bounds"),
        (BoxEnv([0.0], [np.inf]), 3, "finite action bounds"),
        (BoxEnv([0.0, 0.0], [1.0, 1.0]), [3], "2 action dimensions but 1 bin counts"),
        (BoxEnv([0.0], [1.0]), 1, "at least 2 bins"),
        (BoxEnv([0.0], [1.0]), [2.5], "integers"),
        (gymnasium.make("CartPole-v1"), 3, "needs a Box"),
    ],
)
def test_bad_spaces_and_bins_are_refused(env: gymnasium.Env, bins: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiscretizeActions(env, bins)  # type: ignore[arg-type]


def test_out_of_range_index_is_refused() -> None:
    env = DiscretizeActions(BoxEnv([0.0], [1.0]), 4)
    with pytest.raises(ValueError, match="not in MultiDiscrete"):
        env.action([4])


@given(
    st.lists(
        st.tuples(
            st.floats(-100, 100, width=32), st.floats(0.0625, 100, width=32), st.integers(2, 9)
        ),
        min_size=1,
        max_size=4,
    ),
    st.data(),
)
def test_every_index_lands_on_the_grid_inside_the_bounds(
    dims: list[tuple[float, float, int]], data: st.DataObject
) -> None:
    low = [d[0] for d in dims]
    high = [d[0] + d[1] for d in dims]
    env = DiscretizeActions(BoxEnv(low, high), [d[2] for d in dims])
    box = env.unwrapped.action_space
    index = [data.draw(st.integers(0, d[2] - 1)) for d in dims]
    value = env.action(index)
    assert box.contains(value)
    for i, n in enumerate(d[2] for d in dims):
        low_i, high_i = np.float64(box.low[i]), np.float64(box.high[i])
        expected = low_i + index[i] * (high_i - low_i) / (n - 1)
        assert value[i] == pytest.approx(expected, rel=1e-5, abs=1e-4)
    ends = env.action([d[2] - 1 for d in dims])
    np.testing.assert_array_equal(ends, box.high)
    np.testing.assert_array_equal(env.action([0] * len(dims)), box.low)
