"""The open-loop schedule family and its search: the strongest policy that never looks.

A schedule (`GrowSchedule`) grows `count` seeds of one blueprint, style, tempo and alpha
target at consecutive steps from `start`, and otherwise waits; `count = 0` is WAIT. A
controller that reads its observation is worth having only where it beats the best of
these, so the best one is searched, not picked: coordinate ascent over the six choices on
training seeds, from the schedule that wins the fixed task, each candidate scored by its
mean return. The same search restricted to the seeds of one task kind gives that kind's
best schedule; played per kind, those are the best any open-loop policy can do that knows
the case but does not watch the training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from esper.morpho.actions import AlphaTarget, BlendStyle, Blueprint, Tempo
from esper.morpho.baselines import GrowSchedule
from esper.morpho.environment import MorphogeneticEnv

#: The steps a schedule may start growing at (the episode's first third and its middle).
STARTS: tuple[int, ...] = (0, 1, 2, 4, 8, 12)


@dataclass(frozen=True)
class Choice:
    """One point of the schedule family: what to grow, how, how many and from when."""

    blueprint: Blueprint = Blueprint.NORM
    style: BlendStyle = BlendStyle.LINEAR_ADD
    tempo: Tempo = Tempo.FAST
    target: AlphaTarget = AlphaTarget.FULL
    count: int = 3
    start: int = 0

    def schedule(self) -> GrowSchedule:
        steps = tuple(range(self.start, self.start + self.count))
        return GrowSchedule(self.blueprint, steps, self.style, self.tempo, self.target)

    @property
    def name(self) -> str:
        if self.count == 0:
            return "wait"
        return (
            f"{self.count}x{self.blueprint.name.lower()}@{self.start}-"
            f"{self.style.name.lower()}-{self.tempo.name.lower()}-{self.target.name.lower()}"
        )


def coordinates(n_slots: int) -> dict[str, tuple[Any, ...]]:
    """Each field of `Choice` and the values the search tries for it."""
    return {
        "blueprint": tuple(Blueprint),
        "style": tuple(BlendStyle),
        "tempo": tuple(Tempo),
        "target": tuple(AlphaTarget),
        "count": tuple(range(n_slots + 1)),
        "start": STARTS,
    }


@dataclass
class _One:
    """One env's state in the stacked shape a baseline reads (`baselines.States`)."""

    obs: npt.NDArray[np.float32]
    legal: npt.NDArray[np.bool_]


def play(env: MorphogeneticEnv, schedule: GrowSchedule, seed: int) -> dict[str, float | int | str]:
    """One episode of `schedule` from `env.reset(seed=seed)`; its episode summary."""
    obs, _ = env.reset(seed=seed)
    for t in range(env.episode_length):
        action = schedule(_One(obs[None], env.legal_actions()[None]), t)[0]
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            return dict(info["episode"])
    raise RuntimeError("the episode did not end")  # pragma: no cover - env contract


Score = Callable[[Choice, Sequence[int]], float]
#: Plays (choice, seed) episodes and returns their returns, in order (in parallel or not).
PlayMany = Callable[[Sequence[tuple[Choice, int]]], list[float]]


def sequential(env: MorphogeneticEnv) -> PlayMany:
    """Play each episode on `env`, one after the other."""

    def play_many(keys: Sequence[tuple[Choice, int]]) -> list[float]:
        return [float(play(env, choice.schedule(), seed)["return"]) for choice, seed in keys]

    return play_many


class Scorer:
    """Mean return of a choice over seeds; each (choice, seed) episode is played once."""

    def __init__(
        self, play_many: PlayMany, progress: Callable[[int], None] | None = None
    ) -> None:
        self.play_many = play_many
        self.progress = progress
        self.returns: dict[tuple[Choice, int], float] = {}

    def __call__(self, choice: Choice, seeds: Sequence[int]) -> float:
        choice = _canonical(choice)
        missing = [(choice, s) for s in seeds if (choice, s) not in self.returns]
        if missing:
            self.returns.update(zip(missing, self.play_many(missing), strict=True))
            if self.progress is not None:
                self.progress(len(self.returns))
        return float(np.mean([self.returns[choice, s] for s in seeds]))


def _canonical(choice: Choice) -> Choice:
    """Every WAIT is the same episode, whatever else the choice says."""
    return Choice(count=0) if choice.count == 0 else choice


def search(
    score: Score, seeds: Sequence[int], n_slots: int, start: Choice | None = None, passes: int = 3
) -> tuple[Choice, float]:
    """Coordinate ascent: change one field at a time to its best value, until a whole pass
    changes nothing (or `passes` run out). Returns the best choice and its mean return."""
    best = start or Choice()
    best_score = score(best, seeds)
    for _ in range(passes):
        changed = False
        for field, values in coordinates(n_slots).items():
            for value in values:
                candidate = replace(best, **{field: value})
                if candidate == best or (best.count == 0 and field != "count"):
                    continue
                value_score = score(candidate, seeds)
                if value_score > best_score + 1e-9:
                    best, best_score, changed = candidate, value_score, True
        if not changed:
            break
    return _canonical(best), best_score


def seeds_by_kind(env: MorphogeneticEnv, seeds: Iterable[int]) -> dict[str, list[int]]:
    """Which task kind each seed's episode draws (a reset only, no training)."""
    kinds: dict[str, list[int]] = {kind.name: [] for kind in env.kinds}
    for seed in seeds:
        _, info = env.reset(seed=seed)
        kinds[str(info["kind"])].append(seed)
    return kinds


@dataclass(frozen=True)
class SearchResult:
    """The best single schedule over all training seeds, and the best per task kind."""

    single: Choice
    single_score: float
    per_kind: Mapping[str, Choice]
    per_kind_score: Mapping[str, float]


def search_family(
    score: Score, env: MorphogeneticEnv, train_seeds: Sequence[int], n_slots: int
) -> SearchResult:
    """The best single schedule, then each kind's own best (started from the single one)."""
    single, single_score = search(score, train_seeds, n_slots)
    per_kind, per_kind_score = {}, {}
    for kind, seeds in seeds_by_kind(env, train_seeds).items():
        if seeds:
            per_kind[kind], per_kind_score[kind] = search(score, seeds, n_slots, start=single)
    return SearchResult(single, single_score, per_kind, per_kind_score)
