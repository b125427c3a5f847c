"""Timing helpers shared by every benchmark: pinned threads, interleaved repeats, spreads.

Other agents may be loading this machine while a benchmark runs. Every comparison is
therefore measured side by side in one process, with the two sides interleaved round by
round (the order alternating, so a slow drift favours neither), and each ratio is taken
per round before its median: a burst of load hits both sides of a pair together.
Single-threaded computations (a PPO update, a dashboard frame) are timed in thread CPU
time, which waiting for a core does not inflate; whole training loops in wall time.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

Timed = Callable[[], float]


@dataclass(frozen=True)
class Spread:
    """Median and spread of repeated measurements (quartiles and range)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def scaled(self, factor: float) -> Spread:
        """The same spread in other units (e.g. seconds -> milliseconds)."""
        return Spread(
            self.median * factor,
            self.q1 * factor,
            self.q3 * factor,
            self.min * factor,
            self.max * factor,
            self.n,
        )

    def inverted(self, numerator: float = 1.0) -> Spread:
        """`numerator / x` of every statistic; quantiles swap ends (e.g. times -> rates)."""
        return Spread(
            numerator / self.median,
            numerator / self.q3,
            numerator / self.q1,
            numerator / self.max,
            numerator / self.min,
            self.n,
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def spread(samples: Sequence[float]) -> Spread:
    """Median, quartiles (inclusive method, so two samples give their own range) and range."""
    if not samples:
        raise ValueError("spread needs at least one sample")
    values = sorted(samples)
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, values[0], values[-1], len(values))


def single(value: float) -> Spread:
    """A figure measured once: no spread to report."""
    return Spread(value, value, value, value, value, 1)


#: CPU seconds of the calling thread: what a single-threaded computation costs, untouched
#: by the time it spends descheduled while other processes load the machine.
cpu_clock = time.thread_time
#: Wall-clock seconds: what a user waits for (I/O and fsyncs included).
wall_clock = time.perf_counter


def timed(fn: Callable[[], object], clock: Callable[[], float] = wall_clock) -> Timed:
    """A timing of one call of `fn` by `clock`, with the garbage collector kept out of it."""

    def run() -> float:
        gc.collect()
        gc.disable()
        try:
            start = clock()
            fn()
            return clock() - start
        finally:
            gc.enable()

    return run


def interleaved(
    sides: Mapping[str, Timed], rounds: int, warmup: int = 1, repeats: int = 1
) -> dict[str, list[float]]:
    """`rounds` measurements of each side, one of each per round, order alternating.

    Each side is a callable returning the seconds it measured (so a side can exclude its
    own set-up, such as reloading a state dict). Within a round the sides alternate
    `repeats` times and each keeps its fastest: load from other processes only ever adds
    time, so the minimum of a few neighbouring runs is the run that was least disturbed.
    Warm-up rounds are run and discarded.
    """
    names = list(sides)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        best = dict.fromkeys(names, math.inf)
        for k in range(repeats):
            order = names if (r + k) % 2 == 0 else names[::-1]
            for name in order:
                best[name] = min(best[name], sides[name]())
        if r >= warmup:
            for name in names:
                samples[name].append(best[name])
    return samples


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved sample lists."""
    if len(numerators) != len(denominators):
        raise ValueError("paired samples must have the same length")
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def pin_threads(threads: int = 1) -> None:
    """The same torch thread count for both sides of every comparison.

    Inter-op threads can be set only before torch starts parallel work; a later call
    raises, and then the earlier setting stands.
    """
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, load, library versions, torch threads."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy": _version("numpy"),
        "stable_baselines3": _version("stable-baselines3"),
        "gymnasium": _version("gymnasium"),
        "textual": _version("textual"),
        "esper": _version("esper-ppo"),  # the distribution name of `import esper`
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass(frozen=True)
class Row:
    """One line of the results table: a figure, its spread and its target."""

    key: str  # the key in latest.json
    label: str
    value: Spread
    unit: str
    target: float | None = None
    higher_is_better: bool = True

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        median = self.value.median
        return median >= self.target if self.higher_is_better else median <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "target": self.target,
            "target_is": "min" if self.higher_is_better else "max",
            "met": self.met,
            **self.value.as_dict(),
        }


@dataclass(frozen=True)
class Section:
    """What one benchmark reports: its table rows and the raw measurements behind them."""

    name: str
    rows: list[Row]
    raw: dict[str, Any]


#: The settings these timings were first recorded with (then `esper ppo`'s defaults): 2
#: envs x 25 decisions of one epoch each, 4 PPO epochs x 4 minibatches. They stay fixed so
#: that a timing compares with its earlier records; the run's defaults have moved on.
DEFAULT_ENVS = 2
DEFAULT_EPISODE_LENGTH = 25
DEFAULT_EPOCHS_PER_STEP = 1
DEFAULT_SLOTS = 3
SEED = 0


@functools.cache
def fixed_rollout(task: str, n_envs: int, episode_length: int, seed: int = SEED) -> tuple[Any, int]:
    """One batch of episodes from a fresh seed-`seed` agent: (RolloutBuffer, obs_dim).

    Every timed update is fed this same buffer, so the two sides of a comparison train
    on identical samples; it is collected once per process (updates only read it).
    """
    from esper.morpho.environment import MorphogeneticEnv
    from esper.rl.ppo import PPOAgent
    from esper.rl.rollout import collect_batch

    envs = [
        MorphogeneticEnv(
            task=task,
            n_slots=DEFAULT_SLOTS,
            episode_length=episode_length,
            epochs_per_step=DEFAULT_EPOCHS_PER_STEP,
        )
        for _ in range(n_envs)
    ]
    agent = PPOAgent(envs[0].obs_dim, envs[0].factored_actions, seed=seed)
    seeds = [seed * 1000 + i for i in range(n_envs)]
    buffer, _ = collect_batch(agent, envs, episode_length, seeds)
    return buffer, envs[0].obs_dim


@functools.cache
def tiled_rollout(task: str, n_envs: int, steps: int, repeats: int) -> tuple[Any, int]:
    """A `steps * repeats`-step rollout of `n_envs` envs: one real `fixed_rollout` of
    `steps` steps repeated in time (each repeat starts an episode), GAE recomputed.

    An update's cost depends on the rollout's shape, not on its values; collecting 2048
    real env steps costs half a minute of a loaded machine, a quarter of them a quarter.
    """
    import torch

    from esper.morpho.actions import factored_actions
    from esper.rl.ppo import RolloutBuffer

    real, obs_dim = fixed_rollout(task, n_envs, steps)
    tiled = RolloutBuffer(
        steps * repeats, n_envs, obs_dim, factored_actions(DEFAULT_SLOTS),
        gamma=real.gamma, gae_lambda=real.gae_lambda,
    )  # fmt: skip
    for name in ("obs", "actions", "log_probs", "values", "rewards", "legal"):
        field = getattr(real, name)
        getattr(tiled, name).copy_(field.tile((repeats,) + (1,) * (field.dim() - 1)))
    tiled.episode_starts.zero_()
    tiled.episode_starts[::steps] = True
    tiled.compute_returns_and_advantages(torch.zeros(n_envs), torch.ones(n_envs, dtype=torch.bool))
    return tiled, obs_dim
