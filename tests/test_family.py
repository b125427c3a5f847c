"""The task family, the open-loop schedule search, the stall rule and the blind replay."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from esper.morpho.actions import HEAD_INDEX, AlphaTarget, BlendStyle, Blueprint, Op, Tempo
from esper.morpho.baselines import StallRule
from esper.morpho.environment import (
    SEED_COST,
    TASK_FEATURES,
    MorphogeneticEnv,
    observation_layout,
    step_reward,
)
from esper.morpho.schedules import (
    SEARCH_SEED,
    Choice,
    Scorer,
    best_schedule,
    pooled,
    search,
    search_seeds,
    seeds_by_kind,
    sequential,
)
from esper.morpho.tasks import (
    FAMILY,
    FAMILY_SPIRAL_TRAIN_PER_ARM,
    FAMILY_SPIRAL_VAL_PER_ARM,
    FAMILY_TASK,
    load_task,
)
from esper.rl.evaluate import Recording, Replay

_OP, _SLOT = HEAD_INDEX["op"], HEAD_INDEX["slot"]


def test_each_reset_draws_a_kind_its_data_and_its_host_width() -> None:
    env = MorphogeneticEnv(task=FAMILY_TASK, episode_length=2)
    kinds = seeds_by_kind(env, range(60))
    # dealt by the seed: kind i plays seeds i, i + 6, i + 12, ...
    assert kinds == {kind.name: list(range(i, 60, len(FAMILY))) for i, kind in enumerate(FAMILY)}
    task_block = slice(1, 1 + TASK_FEATURES)
    for kind in FAMILY:
        obs, info = env.reset(seed=kinds[kind.name][0])
        assert info["kind"] == kind.name and env.kind is kind
        assert env._host.width == kind.width
        n_features, n_classes = env.task.n_features, env.task.n_classes
        expected = [
            min(np.log(n_classes) / np.log(10), 1.0),
            min(np.log(n_features) / np.log(64), 1.0),
            kind.width / 16,
        ]
        np.testing.assert_allclose(obs[task_block], expected, rtol=1e-6)
    # the spiral arms are drawn per episode: two spirals3 seeds see different points
    a, b = kinds["spirals3"][:2]
    env.reset(seed=a)
    first = env.task.x_train.copy()
    env.reset(seed=b)
    assert not np.array_equal(first, env.task.x_train)


def test_an_episode_that_reseeds_itself_draws_its_kind() -> None:
    env = MorphogeneticEnv(task=FAMILY_TASK, episode_length=2)
    env.reset(seed=0)
    drawn = set()
    for _ in range(40):  # an autoreset: no seed, the env's own generator goes on
        _, info = env.reset()
        drawn.add(info["kind"])
    assert drawn == {kind.name for kind in FAMILY}


def test_the_family_spirals_are_drawn_larger_than_the_fixed_task() -> None:
    env = MorphogeneticEnv(task=FAMILY_TASK, episode_length=2)
    for arms, seed in ((3, 3), (4, 4), (5, 5)):
        env.reset(seed=seed)
        assert env.kind.name == f"spirals{arms}"
        assert env.task.x_train.shape == (arms * FAMILY_SPIRAL_TRAIN_PER_ARM, 2)
        assert env.task.x_val.shape == (arms * FAMILY_SPIRAL_VAL_PER_ARM, 2)
        assert np.bincount(env.task.y_val).tolist() == [FAMILY_SPIRAL_VAL_PER_ARM] * arms
    fixed = load_task("spirals")
    assert fixed.x_train.shape[0] < 3 * FAMILY_SPIRAL_TRAIN_PER_ARM


def test_the_family_is_no_single_task() -> None:
    with pytest.raises(ValueError, match="drawn per episode"):
        load_task(FAMILY_TASK)


def test_each_seed_grown_costs_seed_cost_once() -> None:
    base = step_reward(0.6, 0.5, 100, 1000, final=False)
    assert step_reward(0.6, 0.5, 100, 1000, False, planted=2) == pytest.approx(base - 2 * SEED_COST)
    env = MorphogeneticEnv(task="spirals", episode_length=3, seed=0, epochs_per_step=1)
    env.reset(seed=0)
    grow = np.zeros(8, dtype=np.int64)
    grow[_OP], grow[HEAD_INDEX["blueprint"]] = Op.GROW, Blueprint.NORM
    _, reward, _, _, info = env.step(grow)
    acc = info["val_accuracy"]
    expected = step_reward(acc, env._accs[-2], info["seed_params"], env._host.host_params, False)
    assert reward == pytest.approx(expected - SEED_COST)


def test_a_choice_is_a_grow_schedule_and_every_wait_is_one() -> None:
    choice = Choice(Blueprint.MLP, BlendStyle.GATED, Tempo.SLOW, AlphaTarget.HALF, 2, 4)
    schedule = choice.schedule()
    assert schedule.steps == (4, 5) and schedule.blueprint == Blueprint.MLP
    assert (schedule.style, schedule.tempo, schedule.target) == (
        BlendStyle.GATED,
        Tempo.SLOW,
        AlphaTarget.HALF,
    )
    assert choice.name == "2xmlp@4-slot0-gated-slow-half"
    assert Choice(count=1, slot=2).schedule().slot == 2
    assert Choice(count=0).name == Choice(Blueprint.WIDE_MLP, count=0).name == "wait"


def test_coordinate_ascent_finds_the_best_of_a_separable_score() -> None:
    """A score that adds one term per field, best at known values: every pass improves
    one field, so the search lands on the known optimum."""
    best = Choice(Blueprint.LOW_RANK, BlendStyle.MULTIPLY, Tempo.STANDARD, AlphaTarget.MOST, 2, 4)

    def score(choice: Choice, seeds: list[int]) -> float:
        if choice.count == 0:
            return -100.0
        return -sum(
            float(getattr(choice, f) != getattr(best, f))
            for f in ("blueprint", "style", "tempo", "target", "count", "start")
        )

    found, value = search(score, [0], n_slots=3)
    assert (found, value) == (best, 0.0)
    # WAIT wins when nothing grown is worth it
    found, value = search(lambda c, s: 1.0 if c.count == 0 else 0.0, [0], n_slots=3)
    assert found == Choice(count=0) and value == 1.0


def test_the_scorer_plays_each_episode_once() -> None:
    played: list[tuple[Choice, int]] = []

    def play_many(keys: list[tuple[Choice, int]]) -> list[float]:
        played.extend(keys)
        return [float(seed) + choice.count for choice, seed in keys]

    scorer = Scorer(play_many)
    assert scorer(Choice(count=2), [1, 3]) == 4.0
    assert scorer(Choice(count=2), [3, 5]) == 6.0
    assert scorer(Choice(Blueprint.MLP, count=0), [1]) == scorer(Choice(count=0), [1]) == 1.0
    assert played == [(Choice(count=2), 1), (Choice(count=2), 3), (Choice(count=2), 5),
                      (Choice(count=0), 1)]  # fmt: skip


def test_sequential_play_gives_the_episodes_return() -> None:
    env = MorphogeneticEnv(task="spirals", episode_length=3, epochs_per_step=1)
    returns = sequential(env)([(Choice(count=0), 4), (Choice(count=1), 4)])
    assert returns[0] != returns[1]
    assert sequential(env)([(Choice(count=0), 4)]) == returns[:1]  # deterministic


def test_a_choice_survives_json_by_name() -> None:
    choice = Choice(Blueprint.LOW_RANK, BlendStyle.MULTIPLY, Tempo.SLOW, AlphaTarget.MOST, 1, 8)
    doc = choice.to_dict()
    assert doc["blueprint"] == "LOW_RANK" and doc["start"] == 8
    assert Choice.from_dict(json.loads(json.dumps(doc))) == choice


def test_search_seeds_never_overlap_the_evaluation_seeds() -> None:
    assert search_seeds(3) == [SEARCH_SEED, SEARCH_SEED + 1, SEARCH_SEED + 2]
    assert search_seeds(3, avoid=[10_000, 10_001]) == search_seeds(3)  # far apart: kept
    clash = list(range(SEARCH_SEED + 2, SEARCH_SEED + 5))
    moved = search_seeds(4, avoid=clash)
    assert moved == [SEARCH_SEED + 5 + k for k in range(4)] and not set(moved) & set(clash)


def test_the_best_schedule_is_searched_once_and_cached_by_its_settings(tmp_path: Path) -> None:
    """A second call with the same settings reads the cache (nothing is played, so a
    doctored cache shows through); other settings or a broken file are searched again."""
    cache = tmp_path / "search.json"
    env = {"task": "spirals", "n_slots": 2, "episode_length": 3, "epochs_per_step": 1}
    first = best_schedule(env, [1, 2], cache=cache)
    assert first.episodes > 10 and first.seeds == (1, 2)
    # the result is the search's own: re-scoring its choice gives its training return
    again = sequential(MorphogeneticEnv(**env))([(first.choice, 1), (first.choice, 2)])
    assert first.train_return == pytest.approx(np.mean(again))
    doc = json.loads(cache.read_text())
    doc["result"]["choice"] = Choice(Blueprint.MLP, count=1, start=2).to_dict()
    cache.write_text(json.dumps(doc))
    assert best_schedule(env, [1, 2], cache=cache).choice == Choice(Blueprint.MLP, count=1, start=2)
    assert best_schedule({**env, "episode_length": 4}, [1, 2], cache=cache).choice != Choice(
        Blueprint.MLP, count=1, start=2
    )  # another length: searched again, and the cache now holds that search
    assert json.loads(cache.read_text())["key"]["env"]["episode_length"] == 4
    cache.write_text("{not json")
    assert best_schedule(env, [1, 2], cache=cache) == first


def test_pooled_play_equals_sequential_play() -> None:
    env = {"task": "spirals", "n_slots": 2, "episode_length": 3}
    keys = [(Choice(count=0), 5), (Choice(count=1), 5), (Choice(Blueprint.MLP, count=2), 6)]
    with pooled(env, workers=2) as play_many:
        assert play_many(keys) == sequential(MorphogeneticEnv(**env))(keys)


@dataclass
class _States:
    obs: np.ndarray
    legal: np.ndarray


def _rule_state(accs: list[float], contribution: float, stage: int) -> _States:
    """One env on the spirals layout: a seed in slot 0 at `stage`, the accuracy window."""
    env = MorphogeneticEnv(task="spirals", episode_length=4, seed=0, epochs_per_step=1)
    obs, _ = env.reset(seed=0)
    obs = obs.copy()
    at = 0
    for name, size, _, _ in observation_layout(3):
        if name == "val_accuracy":
            obs[at : at + size] = accs
        if name == "slot0.stage":
            obs[at : at + size] = np.eye(size)[stage]
        if name == "slot0.contribution":
            obs[at] = contribution
        at += size
    legal = env.legal_actions().copy()
    legal[0, _OP, Op.KILL] = True
    legal[Op.KILL, _SLOT, 0] = True
    legal[Op.GROW, _SLOT, 0] = False  # slot 0 holds the seed
    return _States(obs[None], legal[None])


def test_the_stall_rule_kills_harm_grows_on_a_stall_and_waits_otherwise() -> None:
    rule = StallRule(n_slots=3)
    stalled, rising = [0.5] * 5, [0.3, 0.4, 0.5, 0.6, 0.7]
    blending = 3  # Stage.BLENDING: not in isolation
    kill = rule(_rule_state(rising, -0.05, blending), 5)[0]
    assert (kill[_OP], kill[_SLOT]) == (Op.KILL, 0)
    grow = rule(_rule_state(stalled, 0.0, blending), 5)[0]
    assert (grow[_OP], grow[_SLOT], grow[HEAD_INDEX["blueprint"]]) == (Op.GROW, 1, Blueprint.NORM)
    assert rule(_rule_state(stalled, 0.0, blending), 1)[0, _OP] == Op.WAIT  # still watching
    assert rule(_rule_state(rising, 0.0, blending), 5)[0, _OP] == Op.WAIT  # still learning
    assert rule(_rule_state(stalled, 0.0, 2), 5)[0, _OP] == Op.WAIT  # a seed still training


def test_the_blind_replay_is_the_most_frequent_sequence() -> None:
    plays = iter([np.array([[1, 0], [2, 0], [1, 0]]), np.array([[3, 3], [4, 4], [3, 3]])])
    recording = Recording(lambda states, t: next(plays))
    states = _States(np.zeros((3, 1), dtype=np.float32), np.ones((3, 1, 2, 5), dtype=bool))
    for t in range(2):
        recording(states, t)
    # envs 0 and 2 played (1,0),(3,3); env 1 played (2,0),(4,4)
    np.testing.assert_array_equal(recording.most_frequent_sequence(), [[1, 0], [3, 3]])
    np.testing.assert_array_equal(recording.most_frequent_sequence([1, 2, 1]), [[1, 0]])
    replay = Replay(np.array([[1, 0], [3, 3]]))
    np.testing.assert_array_equal(replay(states, 0), [[1, 0]] * 3)
    np.testing.assert_array_equal(replay(states, 7), [[3, 3]] * 3)  # past its end: the last


def test_the_blind_replay_counts_behaviours_not_irrelevant_head_values() -> None:
    """Three envs wait with different values in the head WAIT ignores, two grow alike:
    by raw arrays the growing pair is the most frequent, by behaviour the waiting three."""
    from esper.common.spaces import FactoredActions

    actions = FactoredActions(
        names=("op", "size"), sizes=(2, 3), selector="op",
        relevance=np.array([[True, False], [True, True]]),
    )  # fmt: skip
    played = np.array([[0, 0], [0, 1], [0, 2], [1, 2], [1, 2]])
    recording = Recording(lambda states, t: played)
    recording(_States(np.zeros((5, 1), dtype=np.float32), np.ones((5, 2, 2, 3), dtype=bool)), 0)
    np.testing.assert_array_equal(recording.most_frequent_sequence(), [[1, 2]])
    np.testing.assert_array_equal(recording.most_frequent_sequence(None, actions), [[0, 0]])
