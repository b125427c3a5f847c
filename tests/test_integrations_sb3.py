"""PerHeadPPO / PerHeadMaskablePPO: SB3's training maths untouched, per-head ratios recorded."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from esper.integrations.sb3 import PerHeadMaskablePPO, PerHeadPPO
from esper.telemetry.contracts import EventType, PPOUpdatePayload
from esper.telemetry.recorder import read_events

HEADS = ("torque", "gain")
#: Tiny PPO sizes: 2 envs x 16 steps = 32 samples, minibatches of 8, 2 epochs.
SIZES: dict[str, Any] = {"n_steps": 16, "batch_size": 8, "n_epochs": 2, "seed": 7}


class _Pendulum(gymnasium.ActionWrapper):
    """Pendulum-v1 of 50 steps that keeps its last observation, which the masks read."""

    def __init__(self) -> None:
        super().__init__(gymnasium.make("Pendulum-v1", max_episode_steps=50))
        self._obs: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> Any:
        obs, info = super().reset(**kwargs)
        self._obs = obs
        return obs, info

    def step(self, action: Any) -> Any:
        obs, *rest = super().step(action)
        self._obs = obs
        return (obs, *rest)


class TwoHeadPendulum(_Pendulum):
    """Pendulum with two heads: a torque grid and a gain; the gain is masked in half the states.

    When the pendulum swings one way the mask leaves the gain head a single legal value,
    so MaskablePPO's relevance varies from sample to sample.
    """

    torques = np.linspace(-2.0, 2.0, 5)
    gains = (0.25, 0.5, 1.0)

    def __init__(self) -> None:
        super().__init__()
        self.action_space = gymnasium.spaces.MultiDiscrete([5, 3])

    def action(self, action: Any) -> np.ndarray:
        torque, gain = (int(a) for a in action)
        return np.array([self.torques[torque] * self.gains[gain]], dtype=np.float32)

    def action_masks(self) -> np.ndarray:
        swinging_up = self._obs is not None and self._obs[2] > 0
        gain = [False, False, True] if swinging_up else [True, True, True]
        return np.array([True] * 5 + gain)


class BitsPendulum(_Pendulum):
    """Pendulum driven by three bits (torque = bits . (2, 1, 1) - 2); a MultiBinary space.

    When the pendulum swings one way the mask fixes the last bit at 1, so MaskablePPO's
    relevance of that head varies from sample to sample.
    """

    weights = np.array([2.0, 1.0, 1.0])

    def __init__(self) -> None:
        super().__init__()
        self.action_space = gymnasium.spaces.MultiBinary(3)

    def action(self, action: Any) -> np.ndarray:
        return np.array([self.weights @ np.asarray(action, dtype=float) - 2.0], dtype=np.float32)

    def action_masks(self) -> np.ndarray:  # two entries (0, 1) per bit
        swinging_up = self._obs is not None and self._obs[2] > 0
        return np.array([True] * 4 + ([False, True] if swinging_up else [True, True]))


def make_env(seed: int = 0) -> Any:
    return make_vec_env(TwoHeadPendulum, n_envs=2, seed=seed)


def make_bits_env(seed: int = 0) -> Any:
    return make_vec_env(BitsPendulum, n_envs=2, seed=seed)


def update_events(run_dir: Path) -> list[PPOUpdatePayload]:
    return [
        e.payload
        for e in read_events(run_dir / "events.jsonl")
        if e.event_type is EventType.PPO_UPDATE_COMPLETED
    ]


@pytest.mark.parametrize(
    ("plain", "per_head"), [(PPO, PerHeadPPO), (MaskablePPO, PerHeadMaskablePPO)]
)
def test_parameters_equal_the_plain_class_bit_for_bit(
    tmp_path: Path, plain: type, per_head: type
) -> None:
    timesteps = 3 * SIZES["n_steps"] * 2  # three rollouts, three updates
    reference = plain("MlpPolicy", make_env(), **SIZES)
    reference.learn(timesteps)
    model = per_head("MlpPolicy", make_env(), run_dir=tmp_path / "run", head_names=HEADS, **SIZES)
    model.learn(timesteps)
    ours, theirs = model.policy.state_dict(), reference.policy.state_dict()
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    assert len(update_events(tmp_path / "run")) == 3


class MinibatchSpy:
    """Records each minibatch the policy evaluates, computed with SB3's own distributions.

    Old per-head log-probs come from a frozen copy of the policy as it was when the update
    began (the policy that acted during the rollout); new ones from the live policy.
    """

    def __init__(self, model: Any, twin: Any) -> None:
        self.model, self.twin = model, twin
        self.original = model.policy.evaluate_actions
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.frozen = False
        model.policy.evaluate_actions = self

    @staticmethod
    def per_head(policy: Any, obs: torch.Tensor, actions: torch.Tensor, masks: Any) -> torch.Tensor:
        with torch.no_grad():
            dist = (
                policy.get_distribution(obs, action_masks=masks)
                if masks is not None
                else policy.get_distribution(obs)
            )
            per_head = getattr(dist, "distributions", None) or dist.distribution  # masked: plural
            if isinstance(per_head, torch.distributions.Bernoulli):  # SB3's MultiBinary: bits
                return per_head.log_prob(actions)
            heads = zip(per_head, actions.long().unbind(dim=1), strict=True)
            return torch.stack([d.log_prob(a) for d, a in heads], dim=1)

    def __call__(self, obs: torch.Tensor, actions: torch.Tensor, *args: Any, **kw: Any) -> Any:
        masks = kw.get("action_masks", args[0] if args else None)
        if not self.frozen:
            self.twin.policy.load_state_dict(self.model.policy.state_dict())
            self.frozen = True
        new = self.per_head(self.model.policy, obs, actions, masks)
        old = self.per_head(self.twin.policy, obs, actions, masks)
        self.rows.append((new, old, None if masks is None else torch.as_tensor(masks)))
        return self.original(obs, actions, *args, **kw)


def test_recorded_ratio_max_matches_an_independent_recomputation(tmp_path: Path) -> None:
    model = PerHeadPPO("MlpPolicy", make_env(), run_dir=tmp_path / "run", head_names=HEADS, **SIZES)
    spy = MinibatchSpy(model, PPO("MlpPolicy", make_env(), **SIZES))
    model.learn(SIZES["n_steps"] * 2)  # one rollout, one update
    (update,) = update_events(tmp_path / "run")
    new = torch.cat([r[0] for r in spy.rows]).double()
    old = torch.cat([r[1] for r in spy.rows]).double()
    assert len(spy.rows) == SIZES["n_epochs"] * 32 // SIZES["batch_size"]
    log_ratio = (new - old).clamp(-20, 20)
    for i, head in enumerate(HEADS):
        expected = math.exp(float(log_ratio[:, i].max()))
        assert update.heads[head].ratio_max == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert update.heads[head].ratio_min == pytest.approx(
            math.exp(float(log_ratio[:, i].min())), rel=1e-6, abs=1e-6
        )
        assert update.heads[head].relevant == len(new)
    joint = math.exp(float(log_ratio.sum(dim=1).max()))
    assert update.stats.joint_ratio_max == pytest.approx(joint, rel=1e-6, abs=1e-6)
    assert update.stats.joint_ratio_max > 1.0  # the update moved the policy


def test_maskable_relevance_comes_from_the_masks(tmp_path: Path) -> None:
    model = PerHeadMaskablePPO(
        "MlpPolicy", make_env(), run_dir=tmp_path / "run", head_names=HEADS, **SIZES
    )
    spy = MinibatchSpy(model, MaskablePPO("MlpPolicy", make_env(), **SIZES))
    model.learn(SIZES["n_steps"] * 2)
    (update,) = update_events(tmp_path / "run")
    masks = torch.cat([r[2] for r in spy.rows if r[2] is not None]).bool()
    gain_choices = masks[:, 5:].sum(dim=1)
    assert update.heads["torque"].relevant == len(masks)
    assert update.heads["gain"].relevant == int((gain_choices > 1).sum())
    assert 0 < update.heads["gain"].relevant < len(masks)  # the test env masks some states
    new = torch.cat([r[0] for r in spy.rows]).double()
    old = torch.cat([r[1] for r in spy.rows]).double()
    gain_ratio = (new[:, 1] - old[:, 1]).clamp(-20, 20)[gain_choices > 1].exp()
    assert update.heads["gain"].ratio_max == pytest.approx(float(gain_ratio.max()), rel=1e-6)


def test_relevance_fn_narrows_relevance(tmp_path: Path) -> None:
    def gain_matters(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        relevant = torch.ones_like(actions, dtype=torch.bool)
        relevant[:, 1] = actions[:, 0] != 2  # zero torque: the gain changes nothing
        return relevant

    model = PerHeadPPO(
        "MlpPolicy",
        make_env(),
        run_dir=tmp_path / "run",
        head_names=HEADS,
        relevance_fn=gain_matters,
        **SIZES,
    )
    model.learn(SIZES["n_steps"] * 2)
    (update,) = update_events(tmp_path / "run")
    actions = model.rollout_buffer.actions.reshape(-1, 2)
    zero_torque = int((actions[:, 0] == 2).sum())
    assert update.heads["torque"].relevant == 32 * SIZES["n_epochs"]
    assert update.heads["gain"].relevant == (32 - zero_torque) * SIZES["n_epochs"]


def test_per_head_numbers_reach_the_sb3_logger(tmp_path: Path) -> None:
    model = PerHeadPPO("MlpPolicy", make_env(), run_dir=tmp_path / "run", head_names=HEADS, **SIZES)
    model.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    model.learn(2 * SIZES["n_steps"] * 2)
    with open(tmp_path / "log" / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # SB3 dumps an update's numbers when the next rollout ends: the last row is update 0.
    logged = float(rows[-1]["per_head/ratio_max/gain"])
    assert logged == pytest.approx(update_events(tmp_path / "run")[0].heads["gain"].ratio_max)
    assert {"per_head/clip_fraction/torque", "per_head/joint_ratio_max"} <= set(rows[-1])


def test_run_records_sb3_settings_and_ends(tmp_path: Path) -> None:
    model = PerHeadPPO("MlpPolicy", make_env(), run_dir=tmp_path / "run", **SIZES)
    model.learn(SIZES["n_steps"] * 2)
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    kinds = [e.event_type for e in events]
    assert kinds[0] is EventType.TRAINING_STARTED and kinds[-1] is EventType.TRAINING_FINISHED
    assert events[-1].payload.updates == 1
    assert events[-1].payload.episodes == 0  # 16 steps of 50-step episodes: none ended
    started = next(iter(read_events(tmp_path / "run" / "events.jsonl"))).payload
    assert started.head_names == ["a0", "a1"] and started.head_sizes == {"a0": 5, "a1": 3}
    assert started.config["n_steps"] == 16 and started.config["algorithm"] == "PerHeadPPO"
    with pytest.raises(ValueError, match="each learn\\(\\) records one run"):
        model.learn(SIZES["n_steps"] * 2)  # the directory now holds a run
    model.run_dir = tmp_path / "second"
    model.learn(4 * SIZES["n_steps"] * 2)  # 64 steps in each of 2 envs: one episode each
    assert model.recorded_run_dir == tmp_path / "second"
    assert len(update_events(tmp_path / "second")) == 4
    finished = list(read_events(tmp_path / "second" / "events.jsonl"))[-1].payload
    assert finished.episodes == 2


@pytest.mark.parametrize(
    ("clip_range", "recorded"),
    [(0.1, 0.1), (lambda progress: 0.05 + 0.1 * progress, pytest.approx(0.15))],
)
def test_run_header_records_the_clip_range_at_the_start(
    tmp_path: Path, clip_range: Any, recorded: Any
) -> None:
    """SB3's clip_range is a schedule of the remaining progress: the header records its
    value at the start (progress 1), and Sanctum and the report draw the bands from it."""
    from esper.analysis.runs import load_run
    from esper.sanctum.aggregator import aggregate_file
    from esper.telemetry.heads import RatioBands

    model = PerHeadPPO(
        "MlpPolicy", make_env(), run_dir=tmp_path / "run", clip_range=clip_range, **SIZES
    )
    model.learn(SIZES["n_steps"] * 2)
    started = next(iter(read_events(tmp_path / "run" / "events.jsonl"))).payload
    assert started.clip_eps == recorded and started.config["clip_range"] == recorded
    bands = aggregate_file(tmp_path / "run" / "events.jsonl").tamiyo.bands
    assert bands == RatioBands(started.clip_eps) == load_run(tmp_path / "run").bands
    assert bands.healthy == pytest.approx((1 - started.clip_eps, 1 + started.clip_eps))


def test_finished_episodes_are_recorded_with_their_returns(tmp_path: Path) -> None:
    """SB3's episode infos become EPISODE_COMPLETED events (no host accuracy: not esper's
    task), so Sanctum's return panel and the episodes table fill for an SB3 run too."""
    from esper.analysis.runs import load_run
    from esper.sanctum.aggregator import SanctumAggregator

    model = PerHeadPPO("MlpPolicy", make_env(), run_dir=tmp_path / "run", **SIZES)
    model.learn(4 * SIZES["n_steps"] * 2)  # 64 steps in each of 2 envs: one 50-step episode each
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    episodes = [e for e in events if e.event_type is EventType.EPISODE_COMPLETED]
    returns = [info["r"] for info in model.ep_info_buffer]
    assert [e.payload.episode_return for e in episodes] == pytest.approx(returns)
    assert [(e.payload.env_index, e.payload.length) for e in episodes] == [(0, 50), (1, 50)]
    assert all(e.payload.final_accuracy is None for e in episodes)
    assert [e.batch for e in episodes] == [3, 3]  # ended in the 4th rollout, before update 3
    aggregator = SanctumAggregator()
    for event in events:
        aggregator.handle_event(event)
    assert aggregator.snapshot().run.host_slots == 0  # no slot head: the panel shows no host
    shown = aggregator.snapshot().episodes
    assert shown.last_return == pytest.approx(returns[-1])
    assert shown.last_accuracy is None
    assert len(load_run(tmp_path / "run").episodes) == 2


def test_learn_without_reset_continues_the_run(tmp_path: Path) -> None:
    model = PerHeadPPO("MlpPolicy", make_env(), run_dir=tmp_path / "run", **SIZES)
    model.learn(SIZES["n_steps"] * 2)
    model.learn(2 * SIZES["n_steps"] * 2, reset_num_timesteps=False)
    assert model.recorded_run_dir == tmp_path / "run"
    seen = list(read_events(tmp_path / "run" / "events.jsonl"))
    assert [e.seq for e in seen] == list(range(len(seen)))
    assert [u.update_index for u in update_events(tmp_path / "run")] == [0, 1, 2]
    restarted = [e.payload for e in seen if e.event_type is EventType.TRAINING_STARTED]
    assert [p.resumed_from_update for p in restarted] == [None, 1]
    assert seen[-1].payload.updates == 3


def test_training_error_is_recorded(tmp_path: Path) -> None:
    def broken(obs: Any, actions: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("relevance exploded")

    model = PerHeadPPO(
        "MlpPolicy", make_env(), run_dir=tmp_path / "run", relevance_fn=broken, **SIZES
    )
    with pytest.raises(RuntimeError, match="relevance exploded"):
        model.learn(SIZES["n_steps"] * 2)
    last = list(read_events(tmp_path / "run" / "events.jsonl"))[-1]
    assert last.event_type is EventType.TRAINING_FAILED


def test_dict_observations_use_the_dict_buffer(tmp_path: Path) -> None:
    def make_dict_env() -> Any:
        def dict_env() -> gymnasium.Env:
            env = TwoHeadPendulum()
            space = gymnasium.spaces.Dict({"state": env.observation_space})
            return gymnasium.wrappers.TransformObservation(env, lambda o: {"state": o}, space)

        return make_vec_env(dict_env, n_envs=2, seed=0)

    seen: list[Any] = []

    def relevance(obs: Any, actions: torch.Tensor) -> torch.Tensor:
        seen.append(obs)
        return torch.ones_like(actions, dtype=torch.bool)

    reference = PPO("MultiInputPolicy", make_dict_env(), **SIZES)
    reference.learn(2 * SIZES["n_steps"] * 2)
    model = PerHeadPPO(
        "MultiInputPolicy",
        make_dict_env(),
        run_dir=tmp_path / "run",
        relevance_fn=relevance,
        **SIZES,
    )
    model.learn(2 * SIZES["n_steps"] * 2)
    for name, tensor in reference.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[name], tensor), name
    assert len(update_events(tmp_path / "run")) == 2
    assert isinstance(seen[0], dict) and seen[0]["state"].shape == (32, 3)


def test_kl_early_stop_is_recorded_with_the_minibatch_that_stopped_it(tmp_path: Path) -> None:
    """SB3 evaluates the minibatch whose KL stops the update, then takes no step with it."""
    model = PerHeadPPO(
        "MlpPolicy", make_env(), run_dir=tmp_path / "run", **{**SIZES, "target_kl": 1e-9}
    )
    spy = MinibatchSpy(model, PPO("MlpPolicy", make_env(), **SIZES))
    model.learn(SIZES["n_steps"] * 2)
    (update,) = update_events(tmp_path / "run")
    assert update.stats.early_stopped and update.stats.epochs_run == 1
    assert update.stats.minibatches_run == len(spy.rows) == 2  # 1st: KL 0, 2nd: KL > 0
    new = torch.cat([r[0] for r in spy.rows]).double()
    old = torch.cat([r[1] for r in spy.rows]).double()
    expected = math.exp(float((new - old)[:, 0].max()))
    assert update.heads["a0"].ratio_max == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("plain", "per_head"), [(PPO, PerHeadPPO), (MaskablePPO, PerHeadMaskablePPO)]
)
def test_multibinary_is_one_two_valued_head_per_bit_and_trains_bit_for_bit(
    tmp_path: Path, plain: type, per_head: type
) -> None:
    timesteps = 2 * SIZES["n_steps"] * 2
    reference = plain("MlpPolicy", make_bits_env(), **SIZES)
    reference.learn(timesteps)
    model = per_head("MlpPolicy", make_bits_env(), run_dir=tmp_path / "run", **SIZES)
    model.learn(timesteps)
    for name, tensor in reference.policy.state_dict().items():
        assert torch.equal(model.policy.state_dict()[name], tensor), name
    assert model.head_sizes == (2, 2, 2)
    updates = update_events(tmp_path / "run")
    assert len(updates) == 2 and list(updates[0].heads) == ["a0", "a1", "a2"]


def test_multibinary_ratios_match_an_independent_recomputation(tmp_path: Path) -> None:
    model = PerHeadPPO("MlpPolicy", make_bits_env(), run_dir=tmp_path / "run", **SIZES)
    spy = MinibatchSpy(model, PPO("MlpPolicy", make_bits_env(), **SIZES))
    model.learn(SIZES["n_steps"] * 2)
    (update,) = update_events(tmp_path / "run")
    log_ratio = torch.cat([r[0] for r in spy.rows]) - torch.cat([r[1] for r in spy.rows])
    log_ratio = log_ratio.double().clamp(-20, 20)
    assert log_ratio.shape == (SIZES["n_epochs"] * 32, 3)
    for i in range(3):
        head = update.heads[f"a{i}"]
        assert head.ratio_max == pytest.approx(math.exp(float(log_ratio[:, i].max())), rel=1e-6)
        assert head.relevant == len(log_ratio)
    joint = math.exp(float(log_ratio.sum(dim=1).max()))
    assert update.stats.joint_ratio_max == pytest.approx(joint, rel=1e-6)


def test_multibinary_mask_that_fixes_a_bit_makes_it_irrelevant(tmp_path: Path) -> None:
    model = PerHeadMaskablePPO("MlpPolicy", make_bits_env(), run_dir=tmp_path / "run", **SIZES)
    spy = MinibatchSpy(model, MaskablePPO("MlpPolicy", make_bits_env(), **SIZES))
    model.learn(SIZES["n_steps"] * 2)
    (update,) = update_events(tmp_path / "run")
    masks = torch.cat([r[2] for r in spy.rows if r[2] is not None]).bool()
    last_bit_free = masks[:, 4:].sum(dim=1) > 1
    assert update.heads["a0"].relevant == update.heads["a1"].relevant == len(masks)
    assert update.heads["a2"].relevant == int(last_bit_free.sum())
    assert 0 < update.heads["a2"].relevant < len(masks)


class _SpaceEnv(gymnasium.Env[np.ndarray, Any]):
    """An env of a given action space, for what the constructors say about the space."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,))

    def __init__(self, action_space: gymnasium.Space[Any]) -> None:
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> Any:
        return self.observation_space.sample(), 0.0, False, False, {}


_LIBRARY_REFUSES = {
    "tuple": gymnasium.spaces.Tuple([gymnasium.spaces.Discrete(2)] * 2),
    "multibinary-2d": gymnasium.spaces.MultiBinary([2, 3]),
    "multidiscrete-2d": gymnasium.spaces.MultiDiscrete(np.array([[2, 3], [4, 5]])),
}


@pytest.mark.parametrize("space", list(_LIBRARY_REFUSES))
@pytest.mark.parametrize(
    ("plain", "per_head"), [(PPO, PerHeadPPO), (MaskablePPO, PerHeadMaskablePPO)]
)
def test_a_space_the_library_refuses_raises_the_librarys_own_error(
    tmp_path: Path, plain: type, per_head: type, space: str
) -> None:
    with pytest.raises(Exception) as theirs:
        plain("MlpPolicy", _SpaceEnv(_LIBRARY_REFUSES[space]))
    with pytest.raises(type(theirs.value)) as ours:
        per_head("MlpPolicy", _SpaceEnv(_LIBRARY_REFUSES[space]), run_dir=tmp_path / "r")
    assert str(ours.value) == str(theirs.value)


def test_maskable_box_is_the_librarys_refusal_not_ours(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="only supports") as ours:
        PerHeadMaskablePPO("MlpPolicy", "Pendulum-v1", run_dir=tmp_path / "r")
    assert "DiscretizeActions" not in str(ours.value)


def test_unsupported_spaces_and_names_fail_at_construction(tmp_path: Path) -> None:
    cls = PerHeadPPO  # SB3 trains a Box; we refuse it (see the README)
    for env in (gymnasium.make("Pendulum-v1"), "Pendulum-v1"):
        with pytest.raises(ValueError, match="DiscretizeActions"):
            cls("MlpPolicy", env, run_dir=tmp_path / "r")
    for cls in (PerHeadPPO, PerHeadMaskablePPO):
        with pytest.raises(ValueError, match="2 action heads but 1 head_names"):
            cls("MlpPolicy", make_env(), head_names=["only"])
        with pytest.raises(ValueError, match="head name"):
            cls("MlpPolicy", make_env(), head_names=["ok", "not ok"])
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("cls", "learn"), [(PerHeadPPO, {}), (PerHeadMaskablePPO, {"use_masking": False})]
)
def test_discrete_action_space_is_one_head(
    tmp_path: Path, cls: type, learn: dict[str, Any]
) -> None:
    sizes = {"n_steps": 32, "batch_size": 32, "seed": 1}
    model = cls("MlpPolicy", "CartPole-v1", run_dir=tmp_path / "run", **sizes)
    model.learn(32, **learn)
    (update,) = update_events(tmp_path / "run")
    assert list(update.heads) == ["a0"] and update.heads["a0"].relevant == 32 * 10
    assert type(model.policy.action_dist).__name__.startswith("_Recording")


def test_save_and_load_keep_recording(tmp_path: Path) -> None:
    model = PerHeadPPO("MlpPolicy", make_env(), run_dir=tmp_path / "run", head_names=HEADS, **SIZES)
    model.learn(SIZES["n_steps"] * 2)
    model.save(tmp_path / "model.zip")
    loaded = PerHeadPPO.load(tmp_path / "model.zip", env=make_env())
    assert loaded.head_names == HEADS and loaded.run_dir is None
    loaded.run_dir = tmp_path / "again"
    loaded.learn(SIZES["n_steps"] * 2)
    assert len(update_events(tmp_path / "again")) == 1


# ---- the dashboard and the query engine read an SB3 run by its own head names ----
# They read an SB3 run through the real CLIs.

def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys; from esper.cli.main import {0}; sys.exit({0}(sys.argv[1:]))"
    entry = "sanctum_main" if args[0] == "sanctum" else "main"
    return subprocess.run(
        [sys.executable, "-c", code.format(entry), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def sb3_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A recorded SB3 run and the number of updates SB3 ran in it."""
    run = tmp_path_factory.mktemp("sb3") / "run"
    model = PerHeadPPO("MlpPolicy", make_env(), run_dir=run, head_names=HEADS, **SIZES)
    model.learn(3 * SIZES["n_steps"] * 2)
    return run, model._n_updates // SIZES["n_epochs"]


def test_query_counts_the_updates_sb3_ran(sb3_run: tuple[Path, int]) -> None:
    pytest.importorskip("duckdb")
    run, updates = sb3_run
    sql = "select count(*) as n from ppo_updates"
    done = _run_cli(["esper", "query", str(run), sql, "--csv"], run)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["n", str(updates)]


def test_sanctum_screenshot_shows_the_runs_head_names(
    sb3_run: tuple[Path, int], tmp_path: Path
) -> None:
    run, _ = sb3_run
    svg = tmp_path / "shot.svg"
    done = _run_cli(["sanctum", str(run), "--screenshot", str(svg)], run)
    assert done.returncode == 0, done.stderr
    text = svg.read_text(encoding="utf-8")
    assert "torque" in text and "gain" in text


def test_report_plots_the_runs_heads(sb3_run: tuple[Path, int], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run, _ = sb3_run
    out = tmp_path / "report.html"
    done = _run_cli(["esper", "report", str(run), "--out", str(out)], run)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert "torque" in text and "gain" in text
