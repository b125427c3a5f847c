"""esper against Stable-Baselines3 PPO on the same environment, side by side.

SB3 runs `PPO("MlpPolicy")` on `esper/Morphogenetic-v0` through the gymnasium API (a
MultiDiscrete action space, no masks) with the sizes of ours: Tamiyo's shared trunk
(two tanh layers of `hidden` units) as SB3's shared features extractor and `net_arch=[]`,
so both have one trunk, a linear action head and a linear value head; n envs in a
`DummyVecEnv`, `n_steps` = episode length, `n_epochs`, `batch_size` =
ceil(n_envs * n_steps / minibatches) (the minibatches of ours), and the same learning
rate, clip range, coefficients, target KL, task and host.

Two figures, both > 1 when esper is faster:

- steps: environment steps per second of the whole loop (collect + update) for the same
  number of steps; ours is the `Trainer` with telemetry on (emitter, hub, run recorder
  writing a temp run dir, checkpoint per batch), SB3 is `model.learn`. The env is the
  same code on both sides and most of the time; it is timed inside a wrapper so the
  framework's own time per step is reported too.
- update: CPU seconds per sample of one update on a filled rollout: SB3 `model.train()`,
  ours `PPOAgent.update()`, each restored to one saved state before every timing.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt

from benchmarks.common import (
    DEFAULT_ENVS,
    DEFAULT_EPISODE_LENGTH,
    DEFAULT_SLOTS,
    SEED,
    Row,
    Section,
    Spread,
    cpu_clock,
    fixed_rollout,
    interleaved,
    paired_ratios,
    spread,
    timed,
)
from benchmarks.telemetry_overhead import ReloadingUpdate

TARGET = 1.0


@dataclass
class StepClock:
    """Seconds spent inside `env.step` and steps taken, summed over the envs it wraps.

    Also how much host the steps trained: seeds germinated and seed parameters per step
    (the env's cost grows with the seeds alive, and the two policies grow differently).
    """

    seconds: float = 0.0
    steps: int = 0
    germinations: int = 0
    seed_params: int = 0


class TimedEnv(gymnasium.Wrapper[Any, Any, Any, Any]):
    """Times `step` into a shared clock; also exposes what esper's rollout needs."""

    def __init__(self, env: gymnasium.Env[Any, Any], clock: StepClock) -> None:
        super().__init__(env)
        self.clock = clock

    @property
    def obs_dim(self) -> int:
        return int(self.env.unwrapped.obs_dim)  # type: ignore[attr-defined]

    @property
    def n_slots(self) -> int:
        return int(self.env.unwrapped.n_slots)  # type: ignore[attr-defined]

    def structured_masks(self) -> Any:
        return self.env.unwrapped.structured_masks()  # type: ignore[attr-defined]

    def step(self, action: npt.ArrayLike) -> Any:
        start = time.perf_counter()
        result = self.env.step(action)
        self.clock.seconds += time.perf_counter() - start
        self.clock.steps += 1
        info = result[-1]
        self.clock.seed_params += int(info["seed_params"])
        self.clock.germinations += sum(
            event["to_stage"] == "GERMINATED" for event in info["lifecycle_events"]
        )
        return result


@dataclass(frozen=True)
class Setup:
    """One matched configuration of both sides."""

    task: str
    n_envs: int = DEFAULT_ENVS
    episode_length: int = DEFAULT_EPISODE_LENGTH
    epochs: int = 4
    minibatches: int = 4

    @property
    def rollout(self) -> int:
        return self.n_envs * self.episode_length

    @property
    def batch_size(self) -> int:
        """SB3's minibatch size that splits a rollout as ours does (ceil, short last)."""
        return math.ceil(self.rollout / self.minibatches)


def sb3_model(setup: Setup, clock: StepClock) -> Any:
    """SB3 PPO matched to `setup` and to esper's default PPOConfig and TamiyoPolicy."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from esper import ENV_ID
    from esper.ppo import PPOConfig

    cfg = PPOConfig()

    class TamiyoTrunk(BaseFeaturesExtractor):
        """Tamiyo's shared trunk: Linear-Tanh-Linear-Tanh of `hidden` units."""

        def __init__(self, observation_space: gymnasium.spaces.Box, hidden: int) -> None:
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
        env = gymnasium.make(
            ENV_ID, task=setup.task, n_slots=DEFAULT_SLOTS, episode_length=setup.episode_length
        )
        # Monitor, as `make_vec_env` adds: SB3's episode log reads its info["episode"].
        return TimedEnv(Monitor(env), clock)

    vec_env = DummyVecEnv([make_env] * setup.n_envs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*mini-batch size.*")
        return PPO(
            "MlpPolicy",
            vec_env,
            learning_rate=cfg.lr,
            n_steps=setup.episode_length,
            batch_size=setup.batch_size,
            n_epochs=setup.epochs,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_eps,
            ent_coef=cfg.entropy_coef,
            vf_coef=cfg.value_coef,
            max_grad_norm=cfg.max_grad_norm,
            target_kl=cfg.target_kl,
            normalize_advantage=cfg.normalize_advantage,
            policy_kwargs={
                "features_extractor_class": TamiyoTrunk,
                "features_extractor_kwargs": {"hidden": cfg.hidden},
                "net_arch": [],
                "share_features_extractor": True,
            },
            seed=SEED,
            device="cpu",
            verbose=0,
        )


def ours_loop(setup: Setup, batches: int, run_dir: Path, clock: StepClock) -> Loop:
    """The product's Trainer with the run recorder, its envs wrapped in step timers."""
    from esper.config import PPOConfig, TrainConfig
    from esper.telemetry.emitter import TelemetryEmitter
    from esper.telemetry.hub import TelemetryHub
    from esper.telemetry.recorder import RunRecorder
    from esper.trainer import Trainer

    config = TrainConfig(
        task=setup.task,
        episodes=batches * setup.n_envs,
        envs=setup.n_envs,
        episode_length=setup.episode_length,
        slots=DEFAULT_SLOTS,
        ppo=PPOConfig(epochs=setup.epochs, minibatches=setup.minibatches),
        seed=SEED,
    )
    hub = TelemetryHub()
    hub.add_backend(RunRecorder(run_dir, config=config.to_dict(), run_id=run_dir.name))
    trainer = Trainer(config, TelemetryEmitter(hub, run_id=run_dir.name), run_dir)
    trainer.envs = [TimedEnv(env, clock) for env in trainer.envs]
    return Loop(trainer.run, hub.close)


def sb3_loop(setup: Setup, batches: int, run_dir: Path, clock: StepClock) -> Loop:
    """`model.learn` for the same number of steps (the run dir is not needed)."""
    model = sb3_model(setup, clock)
    return Loop(lambda: model.learn(total_timesteps=batches * setup.rollout), model.env.close)


@dataclass(frozen=True)
class Loop:
    """A built training loop to time, and what releases it afterwards."""

    run: Callable[[], object]
    close: Callable[[], object]


@dataclass(frozen=True)
class LoopRun:
    """One timed loop: total seconds and what its env steps did (see `StepClock`)."""

    seconds: float
    env: StepClock


class LoopSide:
    """One side of the steps/s comparison: builds a fresh loop per call, times only `run`."""

    def __init__(
        self, build: Callable[[Setup, int, Path, StepClock], Loop], setup: Setup, batches: int
    ) -> None:
        self.build, self.setup, self.batches = build, setup, batches
        self.runs: list[LoopRun] = []

    def __call__(self) -> float:
        clock = StepClock()
        with tempfile.TemporaryDirectory(prefix="bench_esper_") as tmp:
            loop = self.build(self.setup, self.batches, Path(tmp) / "run", clock)
            seconds = timed(loop.run)()
            loop.close()
        self.runs.append(LoopRun(seconds, clock))
        return seconds


class SB3Train:
    """A timed `model.train()` on a filled rollout buffer, from one restored state.

    `learn` for one rollout fills the buffer and trains once (so Adam has its state, as
    on our side); every later `train()` reuses that buffer. `epochs` is how many epochs
    the last call ran (SB3 breaks out of an update at its KL early stop).
    """

    def __init__(self, setup: Setup) -> None:
        self.model = sb3_model(setup, StepClock())
        self.model.learn(total_timesteps=setup.rollout)
        policy = self.model.policy
        self.state = copy.deepcopy((policy.state_dict(), policy.optimizer.state_dict()))
        self.epochs = 0

    def __call__(self) -> float:
        weights, optimizer = copy.deepcopy(self.state)
        self.model.policy.load_state_dict(weights)
        self.model.policy.optimizer.load_state_dict(optimizer)
        before = self.model._n_updates  # counts epochs
        seconds = timed(self.model.train, cpu_clock)()
        self.epochs = self.model._n_updates - before
        return seconds


def ours_update_side(setup: Setup) -> ReloadingUpdate:
    """A timed `PPOAgent.update()` on a fixed rollout, from the state after one update."""
    from esper.actions import head_sizes
    from esper.ppo import PPOAgent, PPOConfig

    buffer, obs_dim = fixed_rollout(setup.task, setup.n_envs, setup.episode_length)
    config = PPOConfig(epochs=setup.epochs, minibatches=setup.minibatches)
    agent = PPOAgent(obs_dim, head_sizes(DEFAULT_SLOTS), config, seed=SEED)
    agent.update(buffer)
    return ReloadingUpdate(agent, copy.deepcopy(agent.state_dict()), buffer)


def measure_update(setup: Setup, rounds: int) -> dict[str, Any]:
    """Interleaved update timings of both sides; ratio SB3 / ours per round."""
    ours, sb3 = ours_update_side(setup), SB3Train(setup)
    samples = interleaved({"ours": ours, "sb3": sb3}, rounds, warmup=1, repeats=3)
    per_sample = {
        name: spread(values).scaled(1e6 / setup.rollout) for name, values in samples.items()
    }
    return {
        "samples_per_update": setup.rollout,
        "minibatch_size": setup.batch_size,
        "rounds": rounds,
        "epochs_run": {"ours": ours.metrics["epochs_run"], "sb3": sb3.epochs},
        "ours_us_per_sample": per_sample["ours"].as_dict(),
        "sb3_us_per_sample": per_sample["sb3"].as_dict(),
        "ratio": spread(paired_ratios(samples["sb3"], samples["ours"])),
    }


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

    def framework_us(run: LoopRun) -> float:
        return 1e6 * (run.seconds - run.env.seconds) / steps

    def per_step(name: str, value: Callable[[LoopRun], float]) -> dict[str, float]:
        return spread([value(r) for r in runs[name]]).as_dict()

    framework = {name: [framework_us(r) for r in side_runs] for name, side_runs in runs.items()}
    return {
        "task": setup.task,
        "steps_per_loop": steps,
        "rounds": rounds,
        **{
            f"{name}_steps_per_s": spread(values).inverted(steps).as_dict()
            for name, values in samples.items()
        },
        **{
            f"{name}_{key}": per_step(name, value)
            for name in runs
            for key, value in (
                ("env_share", lambda r: r.env.seconds / r.seconds),
                ("env_ms_per_step", lambda r: 1e3 * r.env.seconds / steps),
                ("germinations_per_100_steps", lambda r: 100 * r.env.germinations / steps),
                ("seed_params_per_step", lambda r: r.env.seed_params / steps),
            )
        },
        **{f"{name}_framework_us_per_step": spread(v).as_dict() for name, v in framework.items()},
        "ratio": spread(paired_ratios(samples["sb3"], samples["ours"])),
        "framework_ratio": spread(paired_ratios(framework["sb3"], framework["ours"])),
    }


def _plain(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v.as_dict() if isinstance(v, Spread) else v for k, v in result.items()}


def run(quick: bool) -> Section:
    """Steps/s on digits (and spirals in the full run) and update time per sample.

    digits, the default task of `esper ppo`, is the headline; spirals is the task whose
    host is smallest, so the extra seeds our masked policy grows weigh most there.
    """
    tasks = ("digits",) if quick else ("digits", "spirals")
    batches, rounds = (2, 3) if quick else (4, 10)
    loops = {task: measure_loop(Setup(task), batches, rounds) for task in tasks}
    update = measure_update(Setup("spirals"), 8 if quick else 25)
    rows = [
        Row(
            "ours_over_sb3_update_ratio",
            "vs SB3: update CPU time per sample, SB3 / ours",
            update["ratio"],
            "x",
            TARGET,
        )
    ]
    for task, loop in loops.items():
        suffix = "" if task == tasks[0] else f"_{task}"
        rows += [
            Row(
                f"ours_over_sb3_steps_ratio{suffix}",
                f"vs SB3: env steps/s of the whole loop, ours / SB3 ({task})",
                loop["ratio"],
                "x",
                TARGET,
            ),
            Row(
                f"ours_over_sb3_framework_ratio{suffix}",
                f"vs SB3: time per step outside env.step, SB3 / ours ({task})",
                loop["framework_ratio"],
                "x",
                TARGET,
            ),
        ]
    raw = {"update": _plain(update), **{f"loop_{t}": _plain(v) for t, v in loops.items()}}
    return Section("versus_sb3", rows, raw)
