"""esper against sb3-contrib's MaskablePPO on the same environment, side by side.

MaskablePPO with `action_masks()` is what a Stable-Baselines3 user would pick for this
env: plain PPO gets no masks, so its invalid actions run as WAIT and its env does less
work than ours (fewer seeds alive). MaskablePPO runs `MlpPolicy` on
`esper/Morphogenetic-v0` through the gymnasium API (a MultiDiscrete action space, the
env's flat per-head mask) with the sizes of ours: Tamiyo's shared trunk (two tanh layers
of `hidden` units) as its shared features extractor and `net_arch=[]`, so both have one
trunk, a linear action head and a linear value head; the same learning rate, clip range,
coefficients, epochs and minibatch size, task and host. The KL early stop is off on both
sides (`target_kl=None`), so both run every epoch. The optimisers differ and are
recorded: ours is Adam with `fused=True` (one kernel per step, and the sync-free skip of
a minibatch), MaskablePPO's is torch's default Adam (eps 1e-5, the for-loop kernel on CPU).

Two figures, both > 1 when esper is faster:

- update: CPU seconds of one update on the same 2048-sample rollout (16 envs x 128
  steps: a real 32-step rollout repeated four times in time), 4 epochs of minibatches
  of 64 (SB3's default) and of 256: MaskablePPO
  `model.train()` on its buffer filled with our rollout (observations, actions, joint
  log-probs, values, advantages, returns and the flat masks), ours `PPOAgent.update()`;
  each restored to one saved state (weights and Adam state) before every timing.
- steps: environment steps per second of the whole loop (collect + update) for the same
  number of steps at the product's sizes (2 envs x 25 steps); ours is the `Trainer` with
  telemetry on (emitter, hub, run recorder writing a temp run dir, checkpoint per batch),
  MaskablePPO's is `model.learn`. The env is the same code on both sides and most of the
  time; it is timed inside a wrapper so the framework's own time per step is reported too.

MaskablePPO logs to an in-memory logger with no output, so no run leaves a folder behind.
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
    DEFAULT_EPOCHS_PER_STEP,
    DEFAULT_SLOTS,
    SEED,
    Row,
    Section,
    Spread,
    cpu_clock,
    interleaved,
    paired_ratios,
    spread,
    tiled_rollout,
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

    def action_masks(self) -> Any:
        """The env's flat per-head mask (MaskablePPO asks the outermost wrapper)."""
        return self.env.unwrapped.action_masks()  # type: ignore[attr-defined]

    @property
    def factored_actions(self) -> Any:
        return self.env.unwrapped.factored_actions  # type: ignore[attr-defined]

    def legal_actions(self) -> Any:
        return self.env.unwrapped.legal_actions()  # type: ignore[attr-defined]

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
    """MaskablePPO matched to `setup` and to esper's default PPOConfig and FactoredPolicy.

    The KL early stop is off (as on our side, see `our_config`), and the logger writes
    nothing: SB3's default logger would leave a folder in the temp directory per model.
    """
    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from esper.morpho import ENV_ID
    from esper.rl.ppo import PPOConfig

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
            ENV_ID,
            task=setup.task,
            n_slots=DEFAULT_SLOTS,
            episode_length=setup.episode_length,
            epochs_per_step=DEFAULT_EPOCHS_PER_STEP,
        )
        # Monitor, as `make_vec_env` adds: SB3's episode log reads its info["episode"].
        return TimedEnv(Monitor(env), clock)

    vec_env = DummyVecEnv([make_env] * setup.n_envs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*mini-batch size.*")
        model = MaskablePPO(
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
            target_kl=None,
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
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def optimiser_name(optimizer: Any) -> str:
    """Which Adam a side steps with: its class, kernel and epsilon."""
    group = optimizer.param_groups[0]
    kernel = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"
    return f"{type(optimizer).__name__} ({kernel}, eps={group['eps']:g})"


def ours_loop(setup: Setup, batches: int, run_dir: Path, clock: StepClock) -> Loop:
    """The product's Trainer with the run recorder, its envs wrapped in step timers."""
    from esper.cli.envs import env_spec
    from esper.rl.config import PPOConfig, TrainConfig
    from esper.rl.trainer import Trainer
    from esper.telemetry.emitter import TelemetryEmitter
    from esper.telemetry.hub import TelemetryHub
    from esper.telemetry.recorder import RunRecorder

    config = TrainConfig(
        task=setup.task,
        episodes=batches * setup.n_envs,
        envs=setup.n_envs,
        episode_length=setup.episode_length,
        epochs_per_step=DEFAULT_EPOCHS_PER_STEP,
        slots=DEFAULT_SLOTS,
        ppo=PPOConfig(epochs=setup.epochs, minibatches=setup.minibatches, target_kl=None),
        seed=SEED,
    )
    hub = TelemetryHub()
    hub.add_backend(RunRecorder(run_dir, config=config.to_dict(), run_id=run_dir.name))
    trainer = Trainer(config, TelemetryEmitter(hub, run_id=run_dir.name), run_dir, env_spec(config))
    trainer.envs = [TimedEnv(env, clock) for env in trainer.envs]
    return Loop(trainer.run, hub.close)


def sb3_loop(setup: Setup, batches: int, run_dir: Path, clock: StepClock) -> Loop:
    """MaskablePPO's `model.learn` for the same number of steps (no run dir needed)."""
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
        self, build: Callable[[Any, int, Path, StepClock], Loop], setup: Any, batches: int
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


def sb3_masks(buffer: Any) -> npt.NDArray[np.float32]:
    """The flat per-head masks [T, E, sum(head sizes)] of our rollout, as MaskablePPO stores."""
    from esper.morpho.actions import HEAD_INDEX, ActionMasks, Op

    # the env's op mask (any op's row) and each op's slot mask, read back from the legal values
    legal = buffer.legal.numpy()  # [T, E, ops, heads, width]
    op = legal[:, :, 0, HEAD_INDEX["op"], : len(Op)]
    slot_by_op = legal[:, :, :, HEAD_INDEX["slot"], :DEFAULT_SLOTS]
    flat = [
        [ActionMasks(op[t, e], slot_by_op[t, e]).flat() for e in range(op.shape[1])]
        for t in range(op.shape[0])
    ]
    return np.asarray(flat, dtype=np.float32)


def fill_sb3_buffer(model: Any, buffer: Any, masks: npt.NDArray[np.float32]) -> None:
    """MaskablePPO's rollout buffer holding our rollout and the env's flat `masks` for
    each stored step, ready for `train()`.

    SB3 scores an action by the sum of every head's log-prob, so the stored joint
    log-prob is the sum of our per-head ones.
    """
    rb = model.rollout_buffer
    rb.reset()
    fields = {
        "observations": buffer.obs,
        "actions": buffer.actions,
        "rewards": buffer.rewards,
        "episode_starts": buffer.episode_starts,
        "values": buffer.values,
        "log_probs": buffer.log_probs.sum(dim=-1),
        "advantages": buffer.advantages,
        "returns": buffer.returns,
    }
    for name, tensor in fields.items():
        target = getattr(rb, name)
        target[...] = tensor.numpy().reshape(target.shape).astype(target.dtype)
    rb.action_masks[...] = masks.reshape(rb.action_masks.shape)
    rb.pos, rb.full, rb.generator_ready = rb.buffer_size, True, False


class SB3Train:
    """A timed MaskablePPO `model.train()` on our rollout, from one restored state.

    One untimed `train()` first gives Adam its state, as on our side.
    """

    def __init__(self, model: Any, buffer: Any, masks: npt.NDArray[np.float32]) -> None:
        self.model = model
        fill_sb3_buffer(self.model, buffer, masks)
        self.model.train()
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


def our_config(setup: Setup) -> Any:
    """PPOConfig of our side: the defaults, `setup`'s epochs and minibatches, no KL stop."""
    from esper.rl.ppo import PPOConfig

    return PPOConfig(epochs=setup.epochs, minibatches=setup.minibatches, target_kl=None)


def ours_update_side(setup: Setup, buffer: Any, obs_dim: int) -> ReloadingUpdate:
    """A timed `PPOAgent.update()` on `buffer`, from the state after one update."""
    from esper.morpho.actions import factored_actions
    from esper.rl.ppo import PPOAgent

    agent = PPOAgent(obs_dim, factored_actions(DEFAULT_SLOTS), our_config(setup), seed=SEED)
    agent.update(buffer)
    return ReloadingUpdate(agent, copy.deepcopy(agent.state_dict()), buffer)


def measure_update(setup: Setup, rounds: int, repeats: int) -> dict[str, Any]:
    """Interleaved update timings of both sides on one rollout; ratio SB3 / ours per round."""
    buffer, obs_dim = tiled_rollout(
        setup.task, setup.n_envs, UPDATE_STEPS, setup.episode_length // UPDATE_STEPS
    )
    ours, sb3 = (
        ours_update_side(setup, buffer, obs_dim),
        SB3Train(sb3_model(setup, StepClock()), buffer, sb3_masks(buffer)),
    )
    samples = interleaved({"ours": ours, "sb3": sb3}, rounds, warmup=1, repeats=repeats)
    return {
        "samples_per_update": setup.rollout,
        "minibatch_size": setup.batch_size,
        "epochs": setup.epochs,
        "rounds": rounds,
        "repeats_per_round": repeats,
        "epochs_run": {"ours": ours.result.epochs_run, "sb3": sb3.epochs},
        "optimiser": {
            "ours": optimiser_name(ours.agent.optimizer),
            "sb3": optimiser_name(sb3.model.policy.optimizer),
        },
        "ours_ms": spread(samples["ours"]).scaled(1e3).as_dict(),
        "sb3_ms": spread(samples["sb3"]).scaled(1e3).as_dict(),
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


def plain_result(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v.as_dict() if isinstance(v, Spread) else v for k, v in result.items()}


#: The update comparison's rollout: 2048 samples (16 envs x 128 steps), a real 32-step
#: rollout repeated four times in time (`common.tiled_rollout`).
UPDATE_ENVS, UPDATE_STEPS, UPDATE_REPEATS = 16, 32, 4
UPDATE_MINIBATCH_SIZES = (64, 256)


def update_setup(minibatch_size: int) -> Setup:
    samples = UPDATE_ENVS * UPDATE_STEPS * UPDATE_REPEATS
    return Setup(
        "spirals",
        UPDATE_ENVS,
        UPDATE_STEPS * UPDATE_REPEATS,
        minibatches=samples // minibatch_size,
    )


def run(quick: bool) -> Section:
    """Update time at 2048 samples (minibatches of 64 and 256), steps/s on both tasks.

    The update never sees the task, only the rollout's shape: spirals, the cheapest to
    collect. digits, the default task of `esper ppo`, is the loop's headline; spirals has
    the smallest host, so the extra seeds a masked policy grows weigh most there.
    """
    tasks = ("digits", "spirals")
    batches, rounds = (1, 3) if quick else (4, 10)
    update_rounds, repeats = (3, 1) if quick else (10, 2)
    updates = {
        size: measure_update(update_setup(size), update_rounds, repeats)
        for size in UPDATE_MINIBATCH_SIZES
    }
    loops = {task: measure_loop(Setup(task), batches, rounds) for task in tasks}
    rows = [
        Row(
            "ours_over_maskable_ppo_update_ratio" + ("" if size == 64 else f"_mb{size}"),
            f"vs MaskablePPO: update CPU time, theirs / ours (2048 samples, minibatch {size})",
            update["ratio"],
            "x",
            TARGET,
        )
        for size, update in updates.items()
    ]
    for task, loop in loops.items():
        suffix = "" if task == tasks[0] else f"_{task}"
        rows += [
            Row(
                f"ours_over_maskable_ppo_steps_ratio{suffix}",
                f"vs MaskablePPO: env steps/s of the whole loop, ours / theirs ({task})",
                loop["ratio"],
                "x",
                TARGET,
            ),
            Row(
                f"ours_over_maskable_ppo_framework_ratio{suffix}",
                f"vs MaskablePPO: time per step outside env.step, theirs / ours ({task})",
                loop["framework_ratio"],
                "x",
                TARGET,
            ),
        ]
    raw = {
        **{f"update_mb{size}": plain_result(u) for size, u in updates.items()},
        **{f"loop_{t}": plain_result(v) for t, v in loops.items()},
    }
    return Section("versus_sb3", rows, raw)
