"""The morphogenetic environment: one RL step = one factored action + K host epochs.

Step order: validate the action against the masks the agent saw (an impossible action is
executed as WAIT and flagged), apply it to the slot lifecycles, then K times (K =
`epochs_per_step`, 5 unless told) train the host one epoch and advance every lifecycle
one epoch, then evaluate. The observation therefore describes the
network exactly as it was evaluated, and the masks returned next match that state.

Reward (per step t = 1..L, acc = validation accuracy after step t, acc_0 at reset):

    r_t = (acc_t - acc_{t-1}) - RENT * seed_params_t / host_params - SEED_COST * grown_t
          + [t == L] * TERMINAL_WEIGHT * acc_L

`seed_params_t` counts every planted seed (fossilized ones included) after each epoch of
step t, summed over the step's K epochs (rent is paid per epoch), and `grown_t` the seeds
grown at step t. The accuracy terms telescope, so an episode's return
is acc_L - acc_0 + TERMINAL_WEIGHT * acc_L minus the rent and the seed costs paid: growth
pays only when it buys more accuracy than its parameters and its planting cost.

The default task is the family (`task="family"`, esper.morpho.tasks.FAMILY): each episode
plays the case its seed deals (seed mod 6, so any six consecutive seeds hold every case
once; an episode that reseeds itself draws its case), always on a width-16 host: two
moons, wine or the digits (the host solves them alone: WAIT is right) or spirals of
three, four or five arms, drawn from the seed (one NORM seed early lifts the return by
0.15 to 0.3). The observation's task block says what a controller knows before training
(classes, input features, host width), and here that tells the cases apart. Measured by
`python -m benchmarks family` (BENCHMARKS.md) at the default decisions: on 100 evaluation
seeds the best schedule of each case beats the best single open-loop schedule (one NORM
seed at step 0, into slot 1: where a seed sits matters) by +0.045 +- 0.006 of return.

A decision every five epochs (`epochs_per_step=5`, five decisions per episode: the same 25
host epochs as one decision per epoch for 25). At one epoch per decision an untrained
policy's random actions grow about seven seeds an episode, so an early seed looks like a
loss on every case and PPO learns to wait everywhere; five weightier decisions let it
find the seeds that pay (BENCHMARKS.md, "Learning on the task family").

SEED_COST is 0.1: the accuracy terms count a final gain about 1.5 times, so a seed must
buy about seven points of final accuracy (plus its rent) to pay. A host that already solves
its task cannot give it that; on three spiral arms and more one seed gives it several
times over, a second one no longer reliably. Two arms, which a first decision cannot tell
from the moons, paid for a seed by less than the noise between episodes and left the
family.

The fixed tasks stay: `spirals` (three arms drawn from the env's constructor seed, 0
unless given, so every episode of a run sees the same task and only the host's
initialisation and the policy vary) and `digits`. On a fixed task one schedule is the
best policy: a learned one has nothing to read. On three-arm spirals, one decision per
epoch, every head that GROW reads carries return:

- *blueprint*: a NORM seed (LayerNorm, 32 parameters) beats a WIDE_MLP seed (2 000
  parameters, three times the host): the wide seed fits as well but pays its rent every
  step; LINEAR and LOW_RANK help less;
- *timing*: the same NORM seeds grown from mid-episode instead of from step 0 give up
  about 0.2 of return, because the terminal term rewards the accuracy at the end and a
  late seed has had fewer epochs to lift it;
- *op*: random valid play grows, kills and re-grows (about 7.6 seeds an episode) and ends
  worse than WAIT, so KILL and MUTATE at random are costly, not neutral.

On `digits` the width-16 host reaches about 0.945 validation accuracy alone, so a seed
buys about 0.001 and every seed loses at least its cost.

RENT stays at 1e-3 per host-sized seed per epoch: it is what makes WIDE_MLP lose to NORM
while leaving a small seed that helps clearly profitable.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from typing import Any, ClassVar, SupportsFloat

import gymnasium
import numpy as np
import numpy.typing as npt
import torch
from gymnasium import spaces

from esper.morpho.actions import (
    HEAD_NAMES,
    ActionMasks,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    Blueprint,
    Op,
    Tempo,
    compute_masks,
    factored_actions,
    head_sizes,
    is_valid,
)
from esper.morpho.host import DEFAULT_WIDTH, HostNetwork
from esper.morpho.lifecycle import LifecycleEvent, SlotLifecycle, Stage
from esper.morpho.tasks import DEFAULT_TASK, FAMILY, FAMILY_TASK, Task, TaskKind, load_task

FloatArray = npt.NDArray[np.float32]

#: Rent per epoch for seeds as large as the whole host; a linear seed on the width-16
#: digits host costs about 0.0002 accuracy points per epoch.
RENT = 1e-3
TERMINAL_WEIGHT = 0.5
#: Paid once per seed grown: what planting, integrating and serving one more module costs
#: beyond its parameters, so a seed that buys nothing is a loss and how many matters.
SEED_COST = 0.1
#: The default decisions: five of five host epochs each (see the module docstring).
DEFAULT_EPISODE_LENGTH = 5
DEFAULT_EPOCHS_PER_STEP = 5
#: Length of the train-loss and validation-accuracy windows in the observation.
HISTORY = 5
#: Normalised loss (loss / ln n_classes, 1.0 at chance) is clipped here to keep a finite box.
LOSS_CLIP = 10.0
#: The task block of the observation: what a controller knows of its problem before it
#: trains (classes, input features, host width), not how well anything will work.
TASK_FEATURES = 3
#: Classes counted up to this many (log-scaled) in the task block.
MAX_CLASSES = 10
#: Inputs counted up to this many features (log-scaled) in the task block.
MAX_FEATURES = 64
#: Stages in which a seed trains in isolation and is probed at its target alpha.
ISOLATED_STAGES = frozenset({Stage.GERMINATED, Stage.TRAINING})


def step_reward(
    acc: float, prev_acc: float, seed_params: int, host_params: int, final: bool, planted: int = 0
) -> float:
    """The reward formula of the module docstring, for one step (`planted`: seeds grown;
    `seed_params`: summed over the step's epochs)."""
    reward = (acc - prev_acc) - RENT * seed_params / host_params - SEED_COST * planted
    return reward + TERMINAL_WEIGHT * acc if final else reward


def observation_layout(n_slots: int) -> list[tuple[str, int, float, float]]:
    """The observation vector as (name, size, low, high) blocks, in order."""
    blocks = [
        ("progress", 1, 0.0, 1.0),
        ("task", TASK_FEATURES, 0.0, 1.0),
        ("train_loss", HISTORY, 0.0, LOSS_CLIP),
        ("val_accuracy", HISTORY, 0.0, 1.0),
    ]
    for i in range(n_slots):
        blocks += [
            (f"slot{i}.stage", len(Stage), 0.0, 1.0),
            (f"slot{i}.alpha", 1, 0.0, 1.0),
            (f"slot{i}.age", 1, 0.0, 1.0),
            (f"slot{i}.blueprint", len(Blueprint), 0.0, 1.0),
            (f"slot{i}.contribution", 1, -1.0, 1.0),
        ]
    return blocks


def _one_hot(index: int | None, size: int) -> FloatArray:
    vec = np.zeros(size, dtype=np.float32)
    if index is not None:
        vec[index] = 1.0
    return vec


def slot_features(lc: SlotLifecycle, contribution: float, episode_epochs: int) -> FloatArray:
    """One slot's observation block: stage, alpha, age (epochs) / the episode's epochs,
    blueprint, contribution."""
    return np.concatenate(
        [
            _one_hot(lc.stage, len(Stage)),
            [lc.alpha, min(lc.age / episode_epochs, 1.0)],
            _one_hot(lc.blueprint, len(Blueprint)),
            [contribution],
        ],
        dtype=np.float32,
    )


class MorphogeneticEnv(gymnasium.Env[FloatArray, npt.NDArray[np.int64]]):
    """Grow, blend, fossilize or kill seeds in a host MLP while it trains on a task.

    Observation (see `observation_layout`): progress t/L; the last `HISTORY` train losses
    (divided by ln n_classes) and validation accuracies, oldest first; then per slot the
    one-hot stage, alpha, age / the episode's epochs, one-hot blueprint, and a contribution
    estimate: the validation accuracy with the seed at its probe alpha (current alpha, or
    its target while it trains in isolation) minus the accuracy with that seed switched off
    (alpha = 0).

    `epochs_per_step` host epochs pass between two decisions. At 1 the controller may act
    every epoch; a larger value makes fewer, weightier decisions over the same training,
    so that an untrained policy's random actions do less harm and the reward of a
    decision arrives fewer steps after it.
    """

    # gymnasium declares `metadata` as an instance attribute but reads it off the class.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}  # type: ignore[misc]

    def __init__(
        self,
        task: str = DEFAULT_TASK,
        n_slots: int = 3,
        episode_length: int = DEFAULT_EPISODE_LENGTH,
        seed: int | None = None,
        device: str = "cpu",
        render_mode: str | None = None,
        epochs_per_step: int = DEFAULT_EPOCHS_PER_STEP,
    ) -> None:
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        if epochs_per_step < 1:
            raise ValueError(f"epochs_per_step must be >= 1, got {epochs_per_step}")
        self.epochs_per_step = epochs_per_step
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        if task == FAMILY_TASK:
            self.kinds: tuple[TaskKind, ...] = FAMILY
        else:
            fixed = load_task(task, seed if seed is not None else 0)
            self.kinds = (TaskKind(task, DEFAULT_WIDTH, lambda rng: fixed),)
        self.kind = self.kinds[0]
        self.n_slots, self.episode_length, self.render_mode = n_slots, episode_length, render_mode
        self.device = torch.device(device)
        sizes = head_sizes(n_slots)
        self.action_space = spaces.MultiDiscrete([sizes[h] for h in HEAD_NAMES])
        #: The heads as the algorithm sees them (esper.common.spaces).
        self.factored_actions = factored_actions(n_slots)
        layout = observation_layout(n_slots)
        low = np.concatenate([np.full(n, lo, dtype=np.float32) for _, n, lo, _ in layout])
        high = np.concatenate([np.full(n, hi, dtype=np.float32) for _, n, _, hi in layout])
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.obs_dim = int(low.shape[0])
        # A fixed task's tensors, once for every episode; the family's first case until a
        # reset draws one.
        self._use(self.kind.draw(np.random.default_rng(0)))
        self._first_seed = seed
        self._maybe_host: HostNetwork | None = None
        self._slots = [SlotLifecycle(i) for i in range(n_slots)]
        self._t, self._acc = 0, 0.0

    # -- gymnasium API ---------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[FloatArray, dict[str, Any]]:
        """Start a fresh host; every random draw of the episode comes from `np_random`."""
        seed = self._first_seed if seed is None else seed
        super().reset(seed=seed)
        self._first_seed = None  # the constructor seed seeds the first reset only
        self._gen = torch.Generator().manual_seed(int(self.np_random.integers(2**63 - 1)))
        if len(self.kinds) > 1:  # the family: this episode's case and its data
            # Dealt by the seed, so that any run of consecutive seeds (an evaluation's)
            # holds every case equally often; an episode that reseeds itself draws one.
            if seed is None:
                deal = int(self.np_random.integers(len(self.kinds)))
            else:
                deal = seed % len(self.kinds)
            self.kind = self.kinds[deal]
            self._use(self.kind.draw(self.np_random))
        self._maybe_host = HostNetwork(
            self.task.n_features,
            self.task.n_classes,
            self._gen,
            n_slots=self.n_slots,
            width=self.kind.width,
            device=self.device,
        )
        self._slots = [SlotLifecycle(i) for i in range(self.n_slots)]
        self._t, self._return = 0, 0.0
        self._counts = {Stage.GERMINATED: 0, Stage.FOSSILIZED: 0, Stage.KILLED: 0}
        train_loss, _ = self._host.evaluate(self._x_train, self._y_train)
        _, self._acc = self._host.evaluate(self._x_val, self._y_val)
        self._losses = deque([train_loss] * HISTORY, maxlen=HISTORY)
        self._accs = deque([self._acc] * HISTORY, maxlen=HISTORY)
        self._contributions = [0.0] * self.n_slots
        return self._observation(), {"val_accuracy": self._acc, "kind": self.kind.name}

    def step(
        self, action: npt.ArrayLike
    ) -> tuple[FloatArray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._t >= self.episode_length:
            raise RuntimeError("the episode is over; call reset()")
        act = np.asarray(action)
        valid = self.action_space.contains(act) and is_valid(act, self.structured_masks())
        op = Op(int(act[0])) if valid else Op.WAIT
        events = self._apply(op, act) if op != Op.WAIT else []
        seed_param_epochs = 0
        for _ in range(self.epochs_per_step):
            self._sync_host()
            train_loss = self._host.train_epoch(self._x_train, self._y_train, self._gen)
            for lc in self._slots:
                events += lc.advance()
            self._sync_host()
            seed_params = self._host.seed_params()  # after this epoch; rent is paid on it
            seed_param_epochs += seed_params
        planted = sum(event.to_stage == Stage.GERMINATED for event in events)
        prev_acc = self._acc
        _, self._acc = self._host.evaluate(self._x_val, self._y_val)
        self._contributions = [self._contribution(i) for i in range(self.n_slots)]
        self._losses.append(train_loss)
        self._accs.append(self._acc)
        self._t += 1
        terminated = self._t >= self.episode_length
        reward = step_reward(
            self._acc, prev_acc, seed_param_epochs, self._host.host_params, terminated, planted
        )
        self._return += reward
        for event in events:
            if event.to_stage in self._counts:
                self._counts[event.to_stage] += 1
        info: dict[str, Any] = {
            "invalid_action": not valid,
            "executed_op": int(op),
            "val_accuracy": self._acc,
            "train_loss": train_loss,
            "seed_params": seed_params,
            "lifecycle_events": [event.as_dict() for event in events],
        }
        if terminated:
            info["episode"] = self._episode_summary()
        return self._observation(), reward, terminated, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        slots = " | ".join(f"{lc.slot}:{lc.stage.name} a={lc.alpha:.2f}" for lc in self._slots)
        k = self.epochs_per_step
        return f"epoch {self._t * k}/{self.episode_length * k} acc={self._acc:.3f} | {slots}"

    # -- masks -----------------------------------------------------------------------------
    def structured_masks(self) -> ActionMasks:
        """What each op may do now, derived from the slot lifecycles."""
        return compute_masks(
            [lc.can_grow for lc in self._slots],
            [lc.can_mutate for lc in self._slots],
            [lc.can_kill for lc in self._slots],
        )

    def legal_actions(self) -> npt.NDArray[np.bool_]:
        """The legal values `[ops, heads, width]` the policy samples under: the op mask,
        and the slot mask of each op (GROW into an empty slot, KILL a live seed, ...)."""
        masks = self.structured_masks()
        return self.factored_actions.legal({"op": masks.op, "slot": masks.slot_by_op})

    def action_masks(self) -> npt.NDArray[np.bool_]:
        """The flat per-head mask, in the layout maskable PPO implementations expect."""
        return self.structured_masks().flat()

    # -- internals -------------------------------------------------------------------------
    def _use(self, task: Task) -> None:
        """Make `task` the one the host trains on and is evaluated on."""
        self.task = task
        to = functools.partial(torch.tensor, device=self.device)
        self._x_train, self._y_train = to(task.x_train), to(task.y_train)
        self._x_val, self._y_val = to(task.x_val), to(task.y_val)
        self._loss_scale = math.log(task.n_classes)
        self._task_features = np.array(
            [
                min(math.log(task.n_classes) / math.log(MAX_CLASSES), 1.0),
                min(math.log(task.n_features) / math.log(MAX_FEATURES), 1.0),
                self.kind.width / DEFAULT_WIDTH,
            ],
            dtype=np.float32,
        )

    @property
    def _host(self) -> HostNetwork:
        if self._maybe_host is None:
            raise RuntimeError("call reset() before step()")
        return self._maybe_host

    def _apply(self, op: Op, act: npt.NDArray[Any]) -> list[LifecycleEvent]:
        """Execute a valid non-WAIT action on its slot; returns the resulting event."""
        head = dict(zip(HEAD_NAMES, (int(v) for v in act), strict=True))
        lc = self._slots[head["slot"]]
        if op == Op.GROW:
            blueprint, style = Blueprint(head["blueprint"]), BlendStyle(head["style"])
            tempo, target = Tempo(head["tempo"]), AlphaTarget(head["alpha_target"])
            event = lc.germinate(blueprint, style, tempo, target)
            self._host.plant(lc.slot, blueprint, style, self._gen)
        elif op == Op.MUTATE:
            event = lc.mutate(
                AlphaTarget(head["alpha_target"]),
                AlphaSpeed(head["alpha_speed"]),
                AlphaCurve(head["alpha_curve"]),
            )
        else:
            event = lc.kill(AlphaSpeed(head["alpha_speed"]), AlphaCurve(head["alpha_curve"]))
        return [event]

    def _sync_host(self) -> None:
        """Copy each lifecycle's alpha and isolation onto the host; drop freed seeds."""
        for lc in self._slots:
            seed = self._host.seeds[lc.slot]
            if seed is None:
                continue
            if lc.stage == Stage.DORMANT:
                self._host.remove(lc.slot)
                continue
            seed.alpha = lc.alpha
            seed.probe_alpha = lc.alpha_target if lc.stage == Stage.TRAINING else None

    def _contribution(self, slot: int) -> float:
        """Validation accuracy with the seed at its probe alpha minus with it switched off.

        Once a seed blends, its probe alpha is its own alpha: the host as just evaluated
        (`self._acc`), so only the evaluation without it is run.
        """
        lc = self._slots[slot]
        seed = self._host.seeds[slot]
        probe = lc.alpha_target if lc.stage in ISOLATED_STAGES else lc.alpha
        if seed is None or probe == 0.0:
            return 0.0
        if probe == seed.alpha:
            with_seed = self._acc
        else:
            _, with_seed = self._host.evaluate(self._x_val, self._y_val, {slot: probe})
        _, without = self._host.evaluate(self._x_val, self._y_val, {slot: 0.0})
        return with_seed - without

    def _observation(self) -> FloatArray:
        losses = np.clip(np.asarray(self._losses) / self._loss_scale, 0.0, LOSS_CLIP)
        progress = np.array([self._t / self.episode_length])
        parts = [progress, self._task_features, losses, np.asarray(self._accs)]
        parts += [
            slot_features(lc, c, self.episode_length * self.epochs_per_step)
            for lc, c in zip(self._slots, self._contributions, strict=True)
        ]
        return np.concatenate(parts, dtype=np.float32)

    def _episode_summary(self) -> dict[str, float | int | str]:
        return {
            "kind": self.kind.name,
            "return": self._return,
            "final_accuracy": self._acc,
            "seeds_grown": self._counts[Stage.GERMINATED],
            "seeds_fossilized": self._counts[Stage.FOSSILIZED],
            "seeds_killed": self._counts[Stage.KILLED],
            "length": self._t,
        }
