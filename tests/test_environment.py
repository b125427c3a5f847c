"""The environment and its tasks: gymnasium conformance, masks, lifecycle, reward, determinism."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper.morpho import ENV_ID
from esper.morpho.actions import (
    HEAD_INDEX,
    HEAD_NAMES,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    Blueprint,
    Op,
    Tempo,
    factored_actions,
    head_sizes,
    is_valid,
)
from esper.morpho.environment import (
    HISTORY,
    RENT,
    SEED_COST,
    TASK_FEATURES,
    TERMINAL_WEIGHT,
    MorphogeneticEnv,
    observation_layout,
    step_reward,
)
from esper.morpho.lifecycle import LEGAL_TRANSITIONS, Stage
from esper.morpho.tasks import TASKS, load_task

NVEC = [4, 3, 5, 4, 3, 3, 4, 3]
#: Host parameters on spirals (2 features, 3 classes, width 16, 3 slots), by hand.
SPIRALS_HOST_PARAMS = (2 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 3 + 3)
SLOT_BLOCK = len(Stage) + 1 + 1 + len(Blueprint) + 1
SLOTS_START = 1 + TASK_FEATURES + 2 * HISTORY
_OP, _SLOT = HEAD_INDEX["op"], HEAD_INDEX["slot"]


def _env(length: int = 6, seed: int | None = 0) -> MorphogeneticEnv:
    return MorphogeneticEnv(task="spirals", episode_length=length, seed=seed, epochs_per_step=1)


def _act(op: Op = Op.WAIT, slot: int = 0, **heads: int) -> np.ndarray:
    act = np.zeros(len(HEAD_NAMES), dtype=np.int64)
    act[0], act[1] = op, slot
    for name, value in heads.items():
        act[HEAD_NAMES.index(name)] = value
    return act


def _grow(slot: int, tempo: Tempo = Tempo.FAST) -> np.ndarray:
    return _act(
        Op.GROW,
        slot,
        blueprint=Blueprint.MLP,
        style=BlendStyle.LINEAR_ADD,
        tempo=tempo,
        alpha_target=AlphaTarget.FULL,
    )


def _slot_stage(obs: np.ndarray, slot: int) -> Stage:
    start = SLOTS_START + slot * SLOT_BLOCK
    one_hot = obs[start : start + len(Stage)]
    assert one_hot.sum() == 1.0
    return Stage(int(one_hot.argmax()))


# -- tasks -------------------------------------------------------------------------------------


def test_digits_is_a_fixed_standardised_stratified_split() -> None:
    task = load_task("digits", seed=0)
    assert (task.x_train.shape, task.x_val.shape) == ((1437, 64), (360, 64))
    assert (task.x_train.dtype, task.y_train.dtype) == (np.float32, np.int64)
    assert (task.n_features, task.n_classes) == (64, 10)
    assert np.abs(task.x_train.mean(axis=0)).max() < 1e-5
    assert np.bincount(task.y_val).min() >= 35  # ~36 per class: stratified
    assert np.array_equal(load_task("digits", seed=7).x_val, task.x_val)


def test_spirals_come_from_the_seed() -> None:
    a, b, c = load_task("spirals", 1), load_task("spirals", 1), load_task("spirals", 2)
    assert a.x_train.shape == (480, 2) and a.x_val.shape == (120, 2)
    assert np.bincount(a.y_train).tolist() == [160, 160, 160]
    assert np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_unknown_task_names_the_known_ones() -> None:
    assert TASKS == ("digits", "spirals", "family")
    with pytest.raises(ValueError, match="digits, spirals"):
        load_task("mnist", 0)


# -- gymnasium conformance ---------------------------------------------------------------------


@pytest.mark.parametrize("task", ["spirals", "digits", "family"])
def test_check_env_passes(task: str) -> None:
    env = gymnasium.make(ENV_ID, task=task, episode_length=4)
    check_env(env.unwrapped)


def test_spaces_and_observation_layout() -> None:
    env = MorphogeneticEnv(task="spirals", epochs_per_step=1)
    assert env.action_space.nvec.tolist() == NVEC == list(head_sizes(3).values())
    assert env.factored_actions == factored_actions(3)
    assert list(env.factored_actions.sizes) == NVEC
    assert env.obs_dim == 1 + TASK_FEATURES + 2 * HISTORY + 3 * SLOT_BLOCK == 59
    assert env.observation_space.shape == (env.obs_dim,)
    assert sum(size for _, size, _, _ in observation_layout(3)) == env.obs_dim
    assert (
        MorphogeneticEnv(task="spirals", n_slots=5, epochs_per_step=1).obs_dim
        == 14 + 5 * SLOT_BLOCK
    )


def test_step_before_reset_and_after_the_end_is_refused() -> None:
    env = _env(length=1)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(_act())
    env.reset()
    env.step(_act())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(_act())


# -- actions, masks and lifecycle --------------------------------------------------------------


def test_grow_plants_a_seed_that_trains_then_blends() -> None:
    env = _env(length=6)
    env.reset(seed=3)
    obs, _, _, _, info = env.step(_grow(slot=1))
    assert info["executed_op"] == Op.GROW and not info["invalid_action"]
    assert [(e["from_stage"], e["to_stage"]) for e in info["lifecycle_events"]] == [
        ("DORMANT", "GERMINATED"),
        ("GERMINATED", "TRAINING"),
    ]
    assert info["lifecycle_events"][0] == {
        "slot": 1,
        "from_stage": "DORMANT",
        "to_stage": "GERMINATED",
        "blueprint": "MLP",
        "alpha": 0.0,
    }
    assert _slot_stage(obs, 1) == Stage.TRAINING
    assert info["seed_params"] == 2 * (16 * 16 + 16)
    masks = env.structured_masks()
    assert masks.slot_by_op[Op.GROW].tolist() == [True, False, True]
    assert masks.slot_by_op[Op.KILL].tolist() == [False, True, False]
    assert not masks.op[Op.MUTATE]
    # the same through the legal values the policy samples under
    legal = env.legal_actions()
    assert legal[Op.GROW, _SLOT, :3].tolist() == [True, False, True]
    assert legal[Op.KILL, _SLOT, :3].tolist() == [False, True, False]
    assert not legal[0, _OP, Op.MUTATE]
    env.step(_act())
    obs, *_, info = env.step(_act())  # FAST tempo: two isolated epochs
    assert [e["to_stage"] for e in info["lifecycle_events"]] == ["BLENDING"]
    assert env.structured_masks().op[Op.MUTATE]
    assert env.legal_actions()[0, _OP, Op.MUTATE]


def test_impossible_action_runs_as_wait_and_is_flagged() -> None:
    flagged, waiting = _env(), _env()
    flagged.reset(seed=5)
    waiting.reset(seed=5)
    mutate_empty = _act(Op.MUTATE, 2, alpha_speed=AlphaSpeed.SLOW, alpha_curve=AlphaCurve.COSINE)
    for bad in (mutate_empty, _act(Op.KILL, 0), np.array([9, 9, 9, 9, 9, 9, 9, 9]), [1, 2]):
        obs_f, r_f, _, _, info_f = flagged.step(bad)
        obs_w, r_w, _, _, info_w = waiting.step(_act())
        assert info_f["invalid_action"] and not info_w["invalid_action"]
        assert info_f["executed_op"] == Op.WAIT
        assert info_f["lifecycle_events"] == []
        assert np.array_equal(obs_f, obs_w) and r_f == r_w


def test_reward_formula_and_episode_summary() -> None:
    env = _env(length=4)
    _, info = env.reset(seed=1)
    accs, rewards, infos = [info["val_accuracy"]], [], []
    for act in (_grow(0), _act(), _act(Op.KILL, 0), _act()):
        _, reward, terminated, truncated, info = env.step(act)
        accs.append(info["val_accuracy"])
        rewards.append(reward)
        infos.append(info)
        assert not truncated
    assert terminated
    for t, info in enumerate(infos):
        final = t == len(infos) - 1
        expected = accs[t + 1] - accs[t] - RENT * info["seed_params"] / SPIRALS_HOST_PARAMS
        expected -= SEED_COST if t == 0 else 0.0  # the seed grown at step 0
        expected += TERMINAL_WEIGHT * accs[t + 1] if final else 0.0
        assert rewards[t] == pytest.approx(expected, abs=1e-12)
        assert ("episode" in info) == final
    assert infos[-1]["episode"] == {
        "kind": "spirals",
        "return": pytest.approx(sum(rewards)),
        "final_accuracy": accs[-1],
        "seeds_grown": 1,
        "seeds_fossilized": 0,
        "seeds_killed": 1,
        "length": 4,
    }


def test_a_step_of_k_epochs_is_k_one_epoch_steps_that_wait() -> None:
    """Known answer: growing at step 0 of two 3-epoch steps trains the same host as growing
    at step 0 of six 1-epoch steps and waiting: the same accuracy, slots and return (the
    accuracy terms telescope and the rent is paid per epoch either way)."""
    coarse = MorphogeneticEnv(task="spirals", episode_length=2, epochs_per_step=3)
    fine = MorphogeneticEnv(task="spirals", episode_length=6, epochs_per_step=1)
    coarse.reset(seed=4)
    fine.reset(seed=4)
    coarse_rewards = [coarse.step(a)[1] for a in (_grow(0), _act())]
    fine_rewards = [fine.step(a)[1] for a in (_grow(0), *[_act()] * 5)]
    obs_c, obs_f = coarse._observation(), fine._observation()
    assert coarse._acc == fine._acc
    assert coarse_rewards[0] == pytest.approx(sum(fine_rewards[:3]), abs=1e-12)
    assert sum(coarse_rewards) == pytest.approx(sum(fine_rewards), abs=1e-12)
    assert np.array_equal(obs_c[SLOTS_START:], obs_f[SLOTS_START:])  # age / 6 epochs in both
    assert obs_c[0] == obs_f[0] == 1.0  # progress: the episode is over in both
    assert coarse.render_mode is None and "epoch 6/6" in _rendered(coarse)
    with pytest.raises(ValueError, match="epochs_per_step must be >= 1"):
        MorphogeneticEnv(task="spirals", epochs_per_step=0)


def _rendered(env: MorphogeneticEnv) -> str:
    env.render_mode = "ansi"
    text = env.render()
    assert text is not None
    return text


def test_step_reward_by_hand() -> None:
    assert step_reward(0.8, 0.7, 0, 100, final=False) == pytest.approx(0.1)
    assert step_reward(0.8, 0.7, 50, 100, final=False) == pytest.approx(0.1 - RENT * 0.5)
    assert step_reward(0.8, 0.8, 0, 100, final=True) == pytest.approx(TERMINAL_WEIGHT * 0.8)
    assert step_reward(0.8, 0.7, 0, 100, False, planted=1) == pytest.approx(0.1 - SEED_COST)


def _check_masks(env: MorphogeneticEnv) -> None:
    masks = env.structured_masks()
    flat = env.action_masks()
    assert masks.op[Op.WAIT] and flat[Op.WAIT]
    assert masks.slot_by_op.any(axis=1).all()
    for segment in np.split(flat, np.cumsum(NVEC)[:-1]):
        assert segment.any()
    # the legal values: the op mask in every op's row, each op's own slot mask, every other
    # head unrestricted, padding never legal, and no op row without a legal value
    legal = env.legal_actions()
    assert legal.shape == env.factored_actions.legal_shape == (4, 8, max(NVEC))
    assert (legal[:, _OP, :4] == masks.op).all()
    assert (legal[:, _SLOT, :3] == masks.slot_by_op).all()
    assert np.array_equal(legal[:, 2:], env.factored_actions.all_legal()[:, 2:])
    assert not legal[:, ~env.factored_actions.exists()].any()
    assert legal.any(axis=2).all()


any_action = st.tuples(*(st.integers(0, n - 1) for n in NVEC)).map(np.array)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1), st.lists(any_action, min_size=1, max_size=10))
def test_random_actions_never_break_the_lifecycle(seed: int, actions: list[np.ndarray]) -> None:
    env = _env(length=len(actions), seed=None)
    obs, _ = env.reset(seed=seed)
    _check_masks(env)
    for i, act in enumerate(actions):
        masks = env.structured_masks()
        legal = env.legal_actions()
        before = [_slot_stage(obs, s) for s in range(3)]
        obs, reward, terminated, _, info = env.step(act)
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward)
        assert info["invalid_action"] == (not is_valid(act, masks))
        assert info["invalid_action"] == (not env.factored_actions.is_legal(act, legal))
        assert info["executed_op"] == (Op.WAIT if info["invalid_action"] else act[0])
        after = [_slot_stage(obs, s) for s in range(3)]
        for event in info["lifecycle_events"]:
            src, dst = Stage[event["from_stage"]], Stage[event["to_stage"]]
            assert dst in LEGAL_TRANSITIONS[src]
        for s in range(3):
            moves = [e for e in info["lifecycle_events"] if e["slot"] == s]
            chain = [before[s]] + [Stage[e["to_stage"]] for e in moves]
            assert chain[-1] == after[s]
        assert (info["seed_params"] > 0) == any(stage != Stage.DORMANT for stage in after)
        assert terminated == (i == len(actions) - 1)
        _check_masks(env)


# -- determinism -------------------------------------------------------------------------------

SCRIPT = [_grow(0), _grow(2, Tempo.STANDARD), _act(), _act(Op.KILL, 0), _act(), _act()]


def _trajectory(env: MorphogeneticEnv, seed: int) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for act in SCRIPT:
        obs, reward, *_ = env.step(act)
        observations.append(obs)
        rewards.append(float(reward))
    return observations, rewards


def test_same_seed_same_trajectory_different_seed_differs() -> None:
    torch.manual_seed(0)
    obs_a, rew_a = _trajectory(_env(), seed=11)
    torch.manual_seed(123)  # the global RNG must not matter
    reused = _env()
    _trajectory(reused, seed=99)
    obs_b, rew_b = _trajectory(reused, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(obs_a, obs_b, strict=True))
    assert rew_a == rew_b
    obs_c, _ = _trajectory(_env(), seed=12)
    assert not all(np.array_equal(a, c) for a, c in zip(obs_a, obs_c, strict=True))


def test_constructor_seed_seeds_the_first_reset() -> None:
    a, b = _env(seed=4), _env(seed=4)
    assert np.array_equal(a.reset()[0], b.reset(seed=4)[0])
    assert not np.array_equal(a.reset()[0], b.reset(seed=4)[0])  # a continues its stream


def test_ansi_render_names_each_slot_stage() -> None:
    env = MorphogeneticEnv(task="spirals", episode_length=3, render_mode="ansi", epochs_per_step=1)
    env.reset(seed=0)
    env.step(_grow(1))
    text = env.render()
    assert text is not None and "1:TRAINING" in text and "0:DORMANT" in text


# -- the default task rewards good growth decisions --------------------------------------------


def test_a_run_trains_on_the_envs_own_default_task_and_decisions() -> None:
    """The run's defaults are written in esper.rl.config, which may not import the env."""
    import inspect

    from esper.morpho.tasks import DEFAULT_TASK, FAMILY_TASK
    from esper.rl.config import TrainConfig

    assert DEFAULT_TASK == FAMILY_TASK and DEFAULT_TASK in TASKS
    env_defaults = {
        name: p.default for name, p in inspect.signature(MorphogeneticEnv).parameters.items()
    }
    run = TrainConfig()
    assert env_defaults["task"] == run.task == DEFAULT_TASK
    assert env_defaults["episode_length"] == run.episode_length == 5
    assert env_defaults["epochs_per_step"] == run.epochs_per_step == 5
    assert len(MorphogeneticEnv().kinds) > 1


def test_on_spirals_early_norm_seeds_beat_waiting_and_late_ones() -> None:
    """The decisions the policy must learn carry return: grow NORM from step 0 beats never
    growing and beats the same seeds from mid-episode, on the same hosts (paired seeds),
    with a wide margin on 6 seeds."""
    from esper.morpho.baselines import heuristics, wait_policy
    from esper.rl.evaluate import BatchPolicy, play

    length, seeds = 25, list(range(20, 26))
    named = heuristics(length, 3)

    def mean_return(policy: BatchPolicy) -> float:
        episodes = play(
            policy,
            lambda: MorphogeneticEnv(task="spirals", episode_length=length, epochs_per_step=1),
            seeds,
        )
        return float(np.mean([ep["return"] for ep in episodes]))

    early = mean_return(named["grow-norm-early"])
    assert early > mean_return(wait_policy) + 0.25
    assert early > mean_return(named["grow-norm-late"]) + 0.1
