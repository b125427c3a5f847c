"""Gymnasium environments as factored ones: any Discrete, MultiDiscrete or Box action space.

`DiscretizeActions` gives a Box action space one categorical head per dimension, the
shape of action that factored PPO (and per-head ratio telemetry) is about.
`FactoredGymEnv` presents any gymnasium env with a Discrete or MultiDiscrete action space
(a Box one through `DiscretizeActions`) as what esper's algorithm trains on: declared heads
(`esper.common.spaces.FactoredActions`), legal values per step (from the env's SB3-style
`action_masks()` where it has one), a flat float observation, and episodes that reset
themselves when they end. `make_factored_env` builds one from `--env-id`: a registered
gymnasium id, or `module:callable` for a user's own env factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from esper.common.spaces import FactoredActions
from esper.rl.runners import EPISODE_START

FloatArray = npt.NDArray[np.float32]


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


class EnvIdError(ValueError):
    """An `--env-id` that names no environment esper can train; the message says why."""


def _wrapper_attr(env: gymnasium.Env[Any, Any], name: str) -> Any:
    """An attribute of the env or of any env it wraps (None if none has it)."""
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        return None


class FactoredGymEnv:
    """A gymnasium env as a factored one, with episodes that reset themselves.

    Heads: a Discrete space is one head (`action`), a MultiDiscrete one head per entry
    (named by the env's `head_names` attribute where it has one, else `a0`, `a1`, ...). An
    env may instead declare its heads itself, with a `factored_actions` attribute
    (`FactoredActions`, for a selector head and relevance) and a `legal_actions()` method;
    otherwise an SB3-style `action_masks()` (flat, heads concatenated) gives the legal
    values, and without one every value is legal.

    Observations: a Box flattened to float32, a Discrete one-hot; other spaces are refused.

    Episodes: `reset(seed)` seeds the first; when one ends, `step` reports it
    (`info["episode"]` with its return and length) and returns the first observation of
    the next one, seeded from a generator the first seed started, so a run is
    reproducible and every episode differs. The step also says where that next episode
    starts (`info[EPISODE_START]`, a JSON-able restart point), and `restart(point)` puts
    a fresh env there: a worker pool that loses the env then replays only the current
    episode, not the whole run (`esper.rl.runners`). That takes an env whose
    `reset(seed=s)` alone decides the episode that follows, as gymnasium's own envs do
    (one that carries state from episode to episode would replay differently).
    """

    def __init__(self, env: gymnasium.Env[Any, Any]) -> None:
        self.env = env
        space = env.action_space
        declared = _wrapper_attr(env, "factored_actions")
        if isinstance(declared, FactoredActions):
            self.factored_actions = declared
        elif isinstance(space, spaces.Discrete):
            self.factored_actions = FactoredActions(names=("action",), sizes=(int(space.n),))
        elif isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            sizes = tuple(int(n) for n in space.nvec)
            names = _wrapper_attr(env, "head_names")
            labels = (
                tuple(str(n) for n in names)
                if isinstance(names, Sequence) and len(names) == len(sizes)
                else None
            )
            self.factored_actions = FactoredActions.independent(sizes, labels)
        else:
            raise EnvIdError(
                f"esper trains Discrete and MultiDiscrete action spaces (a Box one with "
                f"--bins K), got {space}"
            )
        if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            self._start = np.asarray(space.start, dtype=np.int64)
        elif isinstance(space, spaces.Discrete):
            self._start = np.asarray([space.start], dtype=np.int64)
        else:
            raise EnvIdError(f"a declared factored env needs a MultiDiscrete space, got {space}")
        if self._start.shape[0] != self.factored_actions.n_heads:
            raise EnvIdError(
                f"the env declares {self.factored_actions.n_heads} heads for an action space "
                f"of {self._start.shape[0]}"
            )
        self._discrete = isinstance(space, spaces.Discrete)
        obs_space = env.observation_space
        if isinstance(obs_space, spaces.Box):
            self.obs_dim = int(np.prod(obs_space.shape)) if obs_space.shape else 1
            self._one_hot: int | None = None
        elif isinstance(obs_space, spaces.Discrete):
            self.obs_dim = int(obs_space.n)
            self._one_hot = int(obs_space.n)
        else:
            raise EnvIdError(f"esper needs a Box or Discrete observation space, got {obs_space}")
        self._legal = _wrapper_attr(env, "legal_actions")
        self._masks = None if callable(self._legal) else _wrapper_attr(env, "action_masks")
        self._seeds: np.random.SeedSequence | None = None
        self._first_seed: int | None = None
        self._episode = 0  # episodes begun since reset(seed); the first is episode 0
        self._return, self._length = 0.0, 0

    def _observe(self, obs: Any) -> FloatArray:
        if self._one_hot is not None:
            out = np.zeros(self._one_hot, dtype=np.float32)
            out[int(obs)] = 1.0
            return out
        return np.asarray(obs, dtype=np.float32).reshape(-1)

    def _next_seed(self) -> int | None:
        if self._seeds is None:
            return None
        return int(self._seeds.spawn(1)[0].generate_state(1)[0])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        self._seeds = None if seed is None else np.random.SeedSequence(seed)
        self._first_seed = None if seed is None else int(seed)
        self._episode = 0
        obs, info = self.env.reset(seed=seed, options=options)
        self._return, self._length = 0.0, 0
        return self._observe(obs), info

    def restart(self, point: Mapping[str, Any]) -> tuple[FloatArray, dict[str, Any]]:
        """Start the episode a step reported in `info[EPISODE_START]`, as that step did.

        Episode k >= 1 after `reset(seed=s)` is seeded by the k-th child of
        `SeedSequence(s)`, which is `SeedSequence(s, spawn_key=(k - 1,))`: rebuilt directly,
        with the generator's count set to k so the episodes after it get the same seeds too.
        """
        seed, episode = int(point["seed"]), int(point["episode"])
        if episode < 0:
            raise ValueError(f"a restart point's episode is >= 0, got {episode}")
        if episode == 0:
            return self.reset(seed=seed)
        self._seeds = np.random.SeedSequence(seed, n_children_spawned=episode)
        self._first_seed, self._episode = seed, episode
        child = np.random.SeedSequence(seed, spawn_key=(episode - 1,))
        obs, info = self.env.reset(seed=int(child.generate_state(1)[0]))
        self._return, self._length = 0.0, 0
        return self._observe(obs), info

    def legal_actions(self) -> npt.NDArray[np.bool_]:
        """The legal values now: the env's own declaration, its flat `action_masks()`, or all."""
        if callable(self._legal):
            return np.asarray(self._legal(), dtype=np.bool_)
        if callable(self._masks):
            return self.factored_actions.legal_from_flat(self._masks())
        return self.factored_actions.all_legal()

    def step(
        self, action: npt.ArrayLike
    ) -> tuple[FloatArray, SupportsFloat, bool, bool, dict[str, Any]]:
        act = np.asarray(action, dtype=np.int64).reshape(-1) + self._start
        native: Any = int(act[0]) if self._discrete else act
        obs, reward, terminated, truncated, info = self.env.step(native)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            info = {**info, "episode": {"return": self._return, "length": self._length}}
            obs, _ = self.env.reset(seed=self._next_seed())
            self._return, self._length = 0.0, 0
            self._episode += 1
            if self._first_seed is not None:  # an unseeded run has no point to restart at
                info[EPISODE_START] = {"seed": self._first_seed, "episode": self._episode}
        return self._observe(obs), reward, bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.env.close()


def _user_env(text: str) -> gymnasium.Env[Any, Any] | None:
    """The env a `module:callable` id builds, or None if `text` names no such callable."""
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EnvIdError(f"--env-id {text}: cannot import {module_name}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        return None  # maybe gymnasium's own "module:EnvId" form
    if not callable(factory):
        raise EnvIdError(f"--env-id {text}: {module_name}.{attr} is not callable")
    env = factory()
    if not isinstance(env, gymnasium.Env):
        raise EnvIdError(
            f"--env-id {text}: {module_name}.{attr}() returned {type(env).__name__}, "
            "not a gymnasium.Env"
        )
    return env


def make_gym_env(env_id: str, bins: int | None = None) -> gymnasium.Env[Any, Any]:
    """The gymnasium env `env_id` names (a Box action space discretised into `bins`)."""
    try:
        env = _user_env(env_id)
        if env is None:
            env = gymnasium.make(env_id)
    except EnvIdError:
        raise
    except gymnasium.error.Error as exc:
        raise EnvIdError(f"--env-id {env_id}: {exc}") from None
    except Exception as exc:  # a user's factory or a gymnasium env failing to build
        raise EnvIdError(f"--env-id {env_id}: {type(exc).__name__}: {exc}") from None
    if isinstance(env.action_space, spaces.Box):
        if bins is None:
            raise EnvIdError(
                f"--env-id {env_id} has a continuous (Box) action space; "
                "give --bins K to train K levels per dimension"
            )
        try:
            return DiscretizeActions(env, bins)
        except ValueError as exc:
            raise EnvIdError(f"--env-id {env_id}: {exc}") from None
    if bins is not None:
        raise EnvIdError(f"--bins applies to a Box action space; {env_id} has {env.action_space}")
    return env


def make_factored_env(env_id: str, bins: int | None = None) -> FactoredGymEnv:
    """A `FactoredGymEnv` of `env_id` (module-level, so worker processes can call it)."""
    return FactoredGymEnv(make_gym_env(env_id, bins))
