"""esper against sb3-contrib's MaskablePPO on a foreign factored env, with the same masks.

`versus_sb3` compares the two on esper's own morphogenetic env, where a host network's
training dominates every step. Here the env is foreign to esper and nearly free, so what
is timed is the frameworks themselves: `ForeignEnv` below is a plain gymnasium env, with
a MultiDiscrete action space of four heads (move 5, target 5, mode 3, boost 3), a
16-float Box observation, fixed 64-step episodes (truncated) and an SB3-style flat
`action_masks()` whose legal values change with the state (every head always keeps one):
how far it may move depends on its energy, which targets on the sign of its
coordinates, one mode in three is barred each step, and boosting needs energy. It knows
nothing of esper. Ours trains it through `esper.integrations.gym.FactoredGymEnv` (four
independent heads, legal values read from that very `action_masks()`), MaskablePPO
through `DummyVecEnv` and `Monitor` (as `make_vec_env` builds); both get one mask per
step from the same method of the same code, and the env raises on any illegal action,
so neither side can skip its masking.

The sizes match (as in `versus_sb3`): MaskablePPO's `MlpPolicy` gets our shared trunk
(two tanh layers of `hidden` units) as its shared features extractor and `net_arch=[]`,
so both have one trunk, a linear action head and a linear value head; the learning rate,
clip range, coefficients, epochs, minibatch size and GAE settings are ours (PPOConfig's
defaults), and the KL early stop is off on both sides (`target_kl=None`), so both run
every epoch. The optimisers are each side's own and are recorded (ours fused Adam,
MaskablePPO torch's default Adam). torch runs on one thread on both sides.

Two figures, both > 1 when esper is faster:

- update: CPU seconds of one update on the same rollout of 2048 real env steps (16 envs
  x 128 steps, collected once by our agent with `ContinuingRollout`), 4 epochs of
  minibatches of 64 (SB3's default) and of 256: MaskablePPO's `model.train()` on its
  buffer filled with our rollout (observations, actions, joint log-probs, values,
  advantages, returns, and the flat masks read back from the legal values we stored),
  ours `PPOAgent.update()`; each restored to one saved state (weights, Adam state,
  generators) before every timing, interleaved round by round; ratio theirs / ours.
- steps: env steps per second of the whole loop (collect + update), 8 envs x 128 steps
  per batch, minibatches of 64, the same number of steps on both sides: ours is the
  product's `Trainer` with telemetry on (emitter, hub, run recorder writing a temp run
  dir, a checkpoint per batch) on an `EnvSpec` of this env, as `esper ppo --env-id
  benchmarks.foreign_env:ForeignEnv --rollout-steps 128` runs it; MaskablePPO's is
  `model.learn`, logging to an in-memory logger with no output. Only the loop is timed
  (building either side is not). The env is timed inside a wrapper on both sides, so the
  framework's own time per step (the loop's time outside `env.step`) is reported too.
  Each 128-step batch ends exactly two 64-step episodes per env, so the Trainer's
  episode count and `learn`'s step count stop at the same step; `measure_loop` checks it.
  At a truncation SB3 bootstraps from the final observation (one more value forward per
  ended episode); ours does not: each side's own cost, and counted.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from benchmarks.common import (
    SEED,
    Row,
    Section,
    interleaved,
    load_average,
    machine_info,
    paired_ratios,
    pin_threads,
    spread,
)
from benchmarks.telemetry_overhead import ReloadingUpdate
from benchmarks.versus_sb3 import (
    Loop,
    LoopSide,
    SB3Train,
    StepClock,
    optimiser_name,
    plain_result,
)

TARGET = 1.0

#: What `esper ppo --env-id` takes to train this env (a `module:callable` id).
ENV_ID = "benchmarks.foreign_env:ForeignEnv"
HEAD_NAMES = ("move", "target", "mode", "boost")
HEAD_SIZES = (5, 5, 3, 3)
OBS_DIM = 16
EPISODE_LENGTH = 64

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]


class ForeignEnv(gymnasium.Env[FloatArray, npt.NDArray[np.int64]]):
    """A cheap MultiDiscrete env with state-dependent masks, foreign to esper (docstring).

    State: 13 coordinates `x`, an energy level 0-4 and the step count. The observation is
    `x`, energy / 4, the barred mode / 2 and the episode's progress. Legal values:
    move <= energy; target v only where x[v] > 0 (the largest x[v] if none is); every
    mode but `t % 3`; boost 0 always, 1 from energy 2, 2 at energy 4. Moving far and
    boosting spend energy, a quiet step regains one.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's attribute)
    head_names = HEAD_NAMES

    def __init__(self, episode_length: int = EPISODE_LENGTH) -> None:
        self.episode_length = episode_length
        self.action_space = spaces.MultiDiscrete(list(HEAD_SIZES))
        self.observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), dtype=np.float32)
        self._x = np.zeros(OBS_DIM - 3, dtype=np.float32)
        self._energy = 2
        self._t = 0

    def _obs(self) -> FloatArray:
        extra = (self._energy / 4, (self._t % 3) / 2, self._t / self.episode_length)
        return np.concatenate([self._x, np.asarray(extra, dtype=np.float32)])

    def action_masks(self) -> BoolArray:
        """The flat mask, heads concatenated (sb3-contrib's convention): 16 entries."""
        move = np.arange(5) <= self._energy
        target = self._x[:5] > 0
        if not target.any():
            target[int(np.argmax(self._x[:5]))] = True
        mode = np.arange(3) != self._t % 3
        boost = np.array([True, self._energy >= 2, self._energy >= 4])
        return np.concatenate([move, target, mode, boost])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        super().reset(seed=seed)
        self._x = self.np_random.uniform(-1, 1, OBS_DIM - 3).astype(np.float32)
        self._energy, self._t = 2, 0
        return self._obs(), {}

    def step(
        self, action: npt.NDArray[np.int64]
    ) -> tuple[FloatArray, SupportsFloat, bool, bool, dict[str, Any]]:
        move, target, mode, boost = (int(a) for a in np.asarray(action).reshape(-1))
        mask = self.action_masks()
        offsets = np.cumsum((0, *HEAD_SIZES[:-1]))
        if not mask[offsets + np.array([move, target, mode, boost])].all():
            raise ValueError(f"illegal action {[move, target, mode, boost]} (mask {mask})")
        noise = self.np_random.standard_normal(self._x.shape[0]).astype(np.float32)
        self._x = 0.9 * self._x + 0.1 * noise
        self._x[target] += 0.2 * (move - 2) * (1 + boost)
        self._x[5 + mode] -= 0.1 * boost
        reward = float(self._x[target] - 0.05 * np.abs(self._x).mean() - 0.01 * boost)
        spent = boost + (move > 2)
        self._energy = int(np.clip(self._energy + (1 if spent == 0 else -spent), 0, 4))
        self._t += 1
        return self._obs(), reward, False, self._t >= self.episode_length, {}


class TimedEnv(gymnasium.Wrapper[Any, Any, Any, Any]):
    """Times `step` into a shared clock; `action_masks` reaches the env through it."""

    def __init__(self, env: gymnasium.Env[Any, Any], clock: StepClock) -> None:
        super().__init__(env)
        self.clock = clock

    def step(self, action: Any) -> Any:
        start = time.perf_counter()
        result = self.env.step(action)
        self.clock.seconds += time.perf_counter() - start
        self.clock.steps += 1
        return result


def factored_env(clock: StepClock | None = None) -> Any:
    """Our side's env: `ForeignEnv` (in a step timer) as a `FactoredGymEnv`."""
    from esper.integrations.gym import FactoredGymEnv

    env: gymnasium.Env[Any, Any] = ForeignEnv()
    return FactoredGymEnv(env if clock is None else TimedEnv(env, clock))


def actions() -> Any:
    """The heads ours trains: what `FactoredGymEnv` declares for this env."""
    return factored_env().factored_actions


@dataclass(frozen=True)
class Setup:
    """One matched configuration of both sides."""

    n_envs: int
    n_steps: int
    minibatch_size: int = 64
    epochs: int = 4

    @property
    def rollout(self) -> int:
        return self.n_envs * self.n_steps

    @property
    def minibatches(self) -> int:
        """Our minibatches per epoch: the rollout in minibatches of `minibatch_size`."""
        if self.rollout % self.minibatch_size:
            raise ValueError(f"{self.rollout} samples do not split into {self.minibatch_size}s")
        return self.rollout // self.minibatch_size


def our_config(setup: Setup) -> Any:
    """PPOConfig of our side: the defaults, `setup`'s epochs and minibatches, no KL stop."""
    from esper.rl.ppo import PPOConfig

    return PPOConfig(epochs=setup.epochs, minibatches=setup.minibatches, target_kl=None)


def sb3_model(setup: Setup, clock: StepClock) -> Any:
    """MaskablePPO matched to `setup` and to our PPOConfig and FactoredPolicy."""
    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    cfg = our_config(setup)

    class Trunk(BaseFeaturesExtractor):
        """Our shared trunk: Linear-Tanh-Linear-Tanh of `hidden` units."""

        def __init__(self, observation_space: spaces.Box, hidden: int) -> None:
            super().__init__(observation_space, hidden)
            n_in = int(np.prod(observation_space.shape))
            self.net = torch.nn.Sequential(
                torch.nn.Linear(n_in, hidden),
                torch.nn.Tanh(),
                torch.nn.Linear(hidden, hidden),
                torch.nn.Tanh(),
            )

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.net(obs)

    def make_env() -> gymnasium.Env[Any, Any]:
        return TimedEnv(Monitor(ForeignEnv()), clock)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*mini-batch size.*")
        model = MaskablePPO(
            "MlpPolicy",
            DummyVecEnv([make_env] * setup.n_envs),
            learning_rate=cfg.lr,
            n_steps=setup.n_steps,
            batch_size=setup.minibatch_size,
            n_epochs=setup.epochs,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_eps,
            ent_coef=cfg.entropy_coef,
            vf_coef=cfg.value_coef,
            max_grad_norm=cfg.max_grad_norm,
            target_kl=None,
            normalize_advantage=cfg.normalize_advantage,
            policy_kwargs={
                "features_extractor_class": Trunk,
                "features_extractor_kwargs": {"hidden": cfg.hidden},
                "net_arch": [],
                "share_features_extractor": True,
            },
            seed=SEED,
            device="cpu",
            verbose=0,
        )
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


# ---------------------------------------------------------------------- update


@functools.cache
def fixed_rollout(n_envs: int, n_steps: int) -> Any:
    """`n_steps` real steps of `n_envs` envs from a fresh seed-`SEED` agent (cached: every
    timed update of both sides reads this one buffer)."""
    from esper.rl.ppo import PPOAgent
    from esper.rl.rollout import ContinuingRollout

    agent = PPOAgent(OBS_DIM, actions(), seed=SEED)
    envs = [factored_env() for _ in range(n_envs)]
    seeds = [SEED * 1000 + i for i in range(n_envs)]
    buffer, _ = ContinuingRollout(agent, envs, n_steps, seeds).collect()
    return buffer


def flat_masks(legal: npt.NDArray[np.bool_], sizes: Sequence[int]) -> npt.NDArray[np.float32]:
    """SB3-style flat masks [..., sum(sizes)] of legal values [..., cases, heads, width].

    Independent heads have one case: each head's legal values, concatenated.
    """
    return np.concatenate(
        [legal[..., 0, h, :size] for h, size in enumerate(sizes)], axis=-1
    ).astype(np.float32)


def ours_update_side(setup: Setup, buffer: Any) -> ReloadingUpdate:
    """A timed `PPOAgent.update()` on `buffer`, from the state after one update."""
    from esper.rl.ppo import PPOAgent

    agent = PPOAgent(OBS_DIM, actions(), our_config(setup), seed=SEED)
    agent.update(buffer)
    return ReloadingUpdate(agent, copy.deepcopy(agent.state_dict()), buffer)


def measure_update(setup: Setup, rounds: int, repeats: int) -> dict[str, Any]:
    """Interleaved update timings of both sides on one rollout; ratio SB3 / ours per round."""
    buffer = fixed_rollout(setup.n_envs, setup.n_steps)
    ours, sb3 = (
        ours_update_side(setup, buffer),
        SB3Train(
            sb3_model(setup, StepClock()), buffer, flat_masks(buffer.legal.numpy(), HEAD_SIZES)
        ),
    )
    samples = interleaved({"ours": ours, "sb3": sb3}, rounds, warmup=1, repeats=repeats)
    masks = flat_masks(buffer.legal.numpy(), HEAD_SIZES).reshape(-1, sum(HEAD_SIZES))
    return {
        "samples_per_update": setup.rollout,
        "minibatch_size": setup.minibatch_size,
        "epochs": setup.epochs,
        "rounds": rounds,
        "repeats_per_round": repeats,
        "epochs_run": {"ours": ours.result.epochs_run, "sb3": sb3.epochs},
        "optimiser": {
            "ours": optimiser_name(ours.agent.optimizer),
            "sb3": optimiser_name(sb3.model.policy.optimizer),
        },
        "distinct_masks_in_rollout": len(np.unique(masks, axis=0)),
        "legal_share": float(masks.mean()),
        "ours_ms": spread(samples["ours"]).scaled(1e3).as_dict(),
        "sb3_ms": spread(samples["sb3"]).scaled(1e3).as_dict(),
        "ratio": spread(paired_ratios(samples["sb3"], samples["ours"])),
    }


# ---------------------------------------------------------------------- loop


def ours_loop(setup: Setup, batches: int, run_dir: Path, clock: StepClock) -> Loop:
    """The product's Trainer, telemetry on, on this env; its envs' steps timed."""
    from esper.rl.config import TrainConfig
    from esper.rl.trainer import EnvSpec, Trainer
    from esper.telemetry.emitter import TelemetryEmitter
    from esper.telemetry.hub import TelemetryHub
    from esper.telemetry.recorder import RunRecorder

    if setup.n_steps % EPISODE_LENGTH:
        raise ValueError("a batch must end whole episodes, so the Trainer stops on time")
    episodes_per_batch = setup.n_envs * (setup.n_steps // EPISODE_LENGTH)
    config = TrainConfig(
        env_id=ENV_ID,
        rollout_steps=setup.n_steps,
        episodes=batches * episodes_per_batch,
        envs=setup.n_envs,
        ppo=our_config(setup),
        seed=SEED,
        threads=1,  # as torch is pinned for MaskablePPO (the Trainer sets its own count)
    )
    spec = EnvSpec(
        make=functools.partial(factored_env, clock),
        obs_dim=OBS_DIM,
        actions=actions(),
        name=ENV_ID,
        episode_length=None,
        batch_steps=setup.n_steps,
    )
    hub = TelemetryHub()
    hub.add_backend(RunRecorder(run_dir, config=config.to_dict(), run_id=run_dir.name))
    trainer = Trainer(config, TelemetryEmitter(hub, run_id=run_dir.name), run_dir, spec)
    return Loop(trainer.run, hub.close)


def sb3_loop(setup: Setup, batches: int, run_dir: Path, clock: StepClock) -> Loop:
    """MaskablePPO's `model.learn` for the same number of steps (no run dir needed)."""
    model = sb3_model(setup, clock)
    return Loop(lambda: model.learn(total_timesteps=batches * setup.rollout), model.env.close)


def measure_loop(setup: Setup, batches: int, rounds: int) -> dict[str, Any]:
    """Interleaved whole-loop timings; steps/s and the framework's own time per step."""
    sides = {"ours": LoopSide(ours_loop, setup, batches), "sb3": LoopSide(sb3_loop, setup, batches)}
    samples = interleaved(dict(sides), rounds, warmup=1)
    runs = {name: side.runs[-rounds:] for name, side in sides.items()}
    steps = batches * setup.rollout
    for name, side_runs in runs.items():
        counted = {run.env.steps for run in side_runs}
        if counted != {steps}:
            raise RuntimeError(f"{name} took {counted} env steps per loop, expected {steps}")
    framework = {
        name: [1e6 * (r.seconds - r.env.seconds) / steps for r in side_runs]
        for name, side_runs in runs.items()
    }
    return {
        "envs": setup.n_envs,
        "steps_per_batch": setup.n_steps,
        "minibatch_size": setup.minibatch_size,
        "batches": batches,
        "steps_per_loop": steps,
        "rounds": rounds,
        **{
            f"{name}_steps_per_s": spread(values).inverted(steps).as_dict()
            for name, values in samples.items()
        },
        **{
            f"{name}_env_share": spread([r.env.seconds / r.seconds for r in side_runs]).as_dict()
            for name, side_runs in runs.items()
        },
        **{f"{name}_framework_us_per_step": spread(v).as_dict() for name, v in framework.items()},
        # steps/s ours / theirs = seconds theirs / ours
        "ratio": spread(paired_ratios(samples["sb3"], samples["ours"])),
        "framework_ratio": spread(paired_ratios(framework["sb3"], framework["ours"])),
    }


# ---------------------------------------------------------------------- section


#: The update's rollout: 2048 real samples (16 envs x 128 steps), 4 epochs.
UPDATE_ENVS, UPDATE_STEPS = 16, 128
UPDATE_MINIBATCH_SIZES = (64, 256)
#: The loop: 8 envs x 128 steps per batch (two whole episodes per env), minibatches of 64.
LOOP_SETUP = Setup(8, 128)


def run(quick: bool) -> Section:
    """Update time at 2048 samples (minibatches of 64 and 256), steps/s of the whole loop."""
    pin_threads(1)  # as `python -m benchmarks` does, for a standalone run
    update_rounds, repeats = (3, 1) if quick else (10, 2)
    batches, loop_rounds = (2, 3) if quick else (4, 8)
    load = {"before": load_average()}
    updates = {
        size: measure_update(Setup(UPDATE_ENVS, UPDATE_STEPS, size), update_rounds, repeats)
        for size in UPDATE_MINIBATCH_SIZES
    }
    loop = measure_loop(LOOP_SETUP, batches, loop_rounds)
    load["after"] = load_average()
    what = f"{HEAD_SIZES} heads, state-dependent masks"
    rows = [
        Row(
            "foreign_ours_over_maskable_ppo_update_ratio" + ("" if size == 64 else f"_mb{size}"),
            f"foreign env vs MaskablePPO: update CPU time, theirs / ours "
            f"(2048 samples, minibatch {size}; {what})",
            update["ratio"],
            "x",
            TARGET,
        )
        for size, update in updates.items()
    ]
    rows += [
        Row(
            "foreign_ours_over_maskable_ppo_steps_ratio",
            f"foreign env vs MaskablePPO: env steps/s of the whole loop, ours / theirs "
            f"({LOOP_SETUP.n_envs} envs x {LOOP_SETUP.n_steps} steps x {batches} batches)",
            loop["ratio"],
            "x",
            TARGET,
        ),
        Row(
            "foreign_ours_over_maskable_ppo_framework_ratio",
            "foreign env vs MaskablePPO: time per step outside env.step, theirs / ours",
            loop["framework_ratio"],
            "x",
            TARGET,
        ),
    ]
    raw = {
        "env": {
            "id": ENV_ID,
            "heads": dict(zip(HEAD_NAMES, HEAD_SIZES, strict=True)),
            "obs_dim": OBS_DIM,
            "episode_length": EPISODE_LENGTH,
        },
        **{f"update_mb{size}": plain_result(u) for size, u in updates.items()},
        "loop": plain_result(loop),
        "load_average": load,
        "machine": machine_info(),
    }
    return Section("foreign_env", rows, raw)
