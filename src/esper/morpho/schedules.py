"""The open-loop schedule family and its search: the strongest policy that never looks.

A schedule (`GrowSchedule`) grows `count` seeds of one blueprint, style, tempo and alpha
target at consecutive steps from `start`, into the free slots from `slot` on, and
otherwise waits; `count = 0` is WAIT. A
controller that reads its observation is worth having only where it beats the best of
these, so the best one is searched, not picked: coordinate ascent over the six choices on
training seeds, from the schedule that wins the fixed task, each candidate scored by its
mean return. The same search restricted to the seeds of one task kind gives that kind's
best schedule; played per kind, those are the best any open-loop policy can do that knows
the case but does not watch the training.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from esper.morpho.actions import DEFAULT_SLOTS, AlphaTarget, BlendStyle, Blueprint, Tempo
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
    slot: int = 0

    def schedule(self) -> GrowSchedule:
        steps = tuple(range(self.start, self.start + self.count))
        return GrowSchedule(
            self.blueprint, steps, self.style, self.tempo, self.target, self.slot
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums by name, so a cached search stays readable."""
        return {k: v.name if hasattr(v, "name") else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Choice:
        """The inverse of `to_dict` (KeyError or ValueError on a foreign document)."""
        return cls(
            blueprint=Blueprint[doc["blueprint"]],
            style=BlendStyle[doc["style"]],
            tempo=Tempo[doc["tempo"]],
            target=AlphaTarget[doc["target"]],
            count=int(doc["count"]),
            start=int(doc["start"]),
            slot=int(doc["slot"]),
        )

    @property
    def name(self) -> str:
        if self.count == 0:
            return "wait"
        return (
            f"{self.count}x{self.blueprint.name.lower()}@{self.start}-slot{self.slot}-"
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
        "slot": tuple(range(n_slots)),
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


_WORKER_ENV: MorphogeneticEnv | None = None


def _init_worker(env_kwargs: dict[str, Any]) -> None:
    global _WORKER_ENV
    import torch

    torch.set_num_threads(1)  # one process per CPU: more threads would only contend
    _WORKER_ENV = MorphogeneticEnv(**env_kwargs)


def _play_in_worker(key: tuple[Choice, int]) -> float:
    assert _WORKER_ENV is not None, "the pool initialiser builds the env"
    choice, seed = key
    return float(play(_WORKER_ENV, choice.schedule(), seed)["return"])


@contextlib.contextmanager
def pooled(env_kwargs: Mapping[str, Any], workers: int) -> Iterator[PlayMany]:
    """Play episodes on `workers` processes (spawned: safe beside torch's threads), each
    with its own `MorphogeneticEnv(**env_kwargs)`; one worker plays in this process."""
    if workers <= 1:
        yield sequential(MorphogeneticEnv(**env_kwargs))
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _init_worker, (dict(env_kwargs),)) as pool:

        def play_many(keys: Sequence[tuple[Choice, int]]) -> list[float]:
            return list(pool.map(_play_in_worker, keys, chunksize=1))

        yield play_many


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


#: Where the searched schedule's training seeds start: far from the trainer's episode
#: seeds and from the default evaluation seeds.
SEARCH_SEED = 900_000
#: Bump when the schedule family or the environment changes what a cached result means.
SEARCH_VERSION = 3


def search_seeds(n: int, avoid: Sequence[int] = ()) -> list[int]:
    """`n` consecutive training seeds from SEARCH_SEED, moved past `avoid` (the
    evaluation seeds) if they would overlap: a searched schedule is judged on unseen
    episodes."""
    first = SEARCH_SEED
    if avoid and first <= max(avoid) and min(avoid) < first + n:
        first = max(avoid) + 1
    return list(range(first, first + n))


@dataclass(frozen=True)
class SearchedSchedule:
    """The best single schedule on some training seeds, and what it was searched on."""

    choice: Choice
    train_return: float
    seeds: tuple[int, ...]
    episodes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice.to_dict(),
            "name": self.choice.name,
            "train_return": self.train_return,
            "seeds": [self.seeds[0], self.seeds[-1]],
            "episodes": self.episodes,
        }


def best_schedule(
    env_kwargs: Mapping[str, Any],
    seeds: Sequence[int],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    cache: Path | None = None,
) -> SearchedSchedule:
    """The searched best single schedule of the env `env_kwargs` builds, on `seeds`.

    With `cache`, a previous search of the same env settings and seeds is read from that
    JSON file instead of played again, and a new one is written there; a file that is
    unreadable or from other settings is searched over (and rewritten), never trusted.
    """
    key = {"env": dict(env_kwargs), "seeds": [seeds[0], seeds[-1], len(seeds)],
           "version": SEARCH_VERSION}  # fmt: skip
    if cache is not None and cache.is_file():
        try:
            doc = json.loads(cache.read_text(encoding="utf-8"))
            if doc["key"] == key:
                found = doc["result"]
                return SearchedSchedule(
                    Choice.from_dict(found["choice"]),
                    float(found["train_return"]),
                    tuple(seeds),
                    int(found["episodes"]),
                )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # searched again below
    n_slots = int(env_kwargs.get("n_slots", DEFAULT_SLOTS))
    with pooled(env_kwargs, workers) as play_many:
        scorer = Scorer(play_many, progress)
        choice, score = search(scorer, seeds, n_slots)
    result = SearchedSchedule(choice, score, tuple(seeds), len(scorer.returns))
    if cache is not None:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "result": result.to_dict()}, indent=1) + "\n",
                       encoding="utf-8")  # fmt: skip
        tmp.replace(cache)
    return result
