"""Per-head ratio telemetry for Stable-Baselines3 `PPO` and sb3-contrib `MaskablePPO`.

Both libraries sum a MultiDiscrete action's per-head log-probs into one joint log-prob
before PPO sees it, so their logs cannot say which head moved. `PerHeadPPO` and
`PerHeadMaskablePPO` are the same algorithms with three taps and no change to the
training maths (a test checks the parameters bit for bit against the plain classes):

- the policy's action distribution keeps the per-head log-probs (and entropies) it
  computes anyway before summing them: the same stack and sum, so the same numbers;
- the rollout buffer stores each step's per-head log-probs at rollout time, and (for
  MaskablePPO) which heads the action mask left a choice; it hands every minibatch's
  rows to the tap without drawing a random number;
- after each `train()` a `HeadRatioMonitor` reduces every epoch's minibatches once, with
  one host transfer, records the update in the run directory and the same numbers go to
  SB3's logger as `per_head/<stat>/<head>` (TensorBoard, CSV, stdout).

One `learn()` call records one run directory (default `runs/<run-id>`, see `run_dir`);
`learn(reset_num_timesteps=False)` continues the previous one, as SB3's own logs do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

try:
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.buffers import (
        MaskableDictRolloutBuffer,
        MaskableRolloutBuffer,
    )
    from sb3_contrib.common.maskable.distributions import (
        MaskableBernoulliDistribution,
        MaskableCategoricalDistribution,
        MaskableMultiCategoricalDistribution,
    )
    from stable_baselines3 import PPO
    from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
    from stable_baselines3.common.distributions import (
        BernoulliDistribution,
        CategoricalDistribution,
        MultiCategoricalDistribution,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"esper.integrations.sb3 needs stable-baselines3 and sb3-contrib ({exc.name} is "
        "missing): pip install 'esper-ppo[sb3]'"
    ) from exc

from esper.integrations.monitor import DEFAULT_EXPLOSION_THRESHOLD, HeadRatioMonitor
from esper.telemetry.heads import HEAD_STATS, check_head_names

#: A user's say on relevance: (observations, actions [N, heads] long) -> [N, heads] bool.
#: Called once per update on the whole rollout; ANDed with the mask-based relevance.
RelevanceFn = Callable[[Any, Tensor], Tensor]


@dataclass(frozen=True)
class _Minibatch:
    """One evaluated minibatch: the policy's per-head values and the buffer rows they are of."""

    log_prob: Tensor  # [batch, heads], new
    entropy: Tensor | None  # [batch, heads], nats
    rows: np.ndarray  # indices into the flattened rollout buffer


class _HeadTap:
    """Where the distribution, the buffer and the algorithm meet, once per minibatch.

    The distribution leaves its latest per-head log-probs and entropies here; the buffer
    announces which rows each minibatch holds. A minibatch is paired with the log-probs
    the policy computed for it (SB3 evaluates each minibatch once) when the next one
    starts or the update ends; the update then gathers every minibatch's rollout-time
    rows at once. Per minibatch this costs a few references, no tensor operation.
    """

    def __init__(self) -> None:
        self.recording = False
        self.log_prob: Tensor | None = None
        self.entropy: Tensor | None = None
        self.log_probs_seen = 0
        self.entropies_seen = 0
        self.unpaired = 0  # minibatches left out: their evaluation could not be told apart
        self.minibatches: list[_Minibatch] = []
        self._pending: tuple[np.ndarray, int, int] | None = None

    def saw_log_prob(self, per_head: Tensor) -> None:
        self.log_prob = per_head.detach()
        self.log_probs_seen += 1

    def saw_entropy(self, per_head: Tensor) -> None:
        self.entropy = per_head.detach()
        self.entropies_seen += 1

    def begin_minibatch(self, rows: np.ndarray) -> None:
        """A minibatch of these buffer rows is about to be evaluated."""
        if not self.recording:
            return
        self.flush()
        self._pending = (rows, self.log_probs_seen, self.entropies_seen)

    def flush(self) -> None:
        """Keep the pending minibatch with its evaluation, if the policy evaluated it."""
        pending, self._pending = self._pending, None
        if pending is None or self.log_probs_seen == pending[1]:
            return
        rows, _, entropies_seen = pending
        new = self.log_prob
        assert new is not None
        if new.shape[0] != len(rows):  # the policy's last evaluation was not of these rows
            self.unpaired += 1
            if self.unpaired == 1:
                warnings.warn(
                    "per-head telemetry: a minibatch's evaluation could not be identified "
                    "(was evaluate_actions called on other data during train()?); such "
                    "minibatches are left out of the per-head statistics",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return
        entropy = self.entropy if self.entropies_seen > entropies_seen else None
        if entropy is not None and entropy.shape != new.shape:
            entropy = None
        self.minibatches.append(_Minibatch(new, entropy, rows))

    def take(self) -> list[_Minibatch]:
        """The minibatches of the update just run (and forget them)."""
        self.flush()
        taken, self.minibatches = self.minibatches, []
        return taken


# --------------------------------------------------------------------------- distributions
# Each computes the per-head values as the library does (stack over heads, then sum), so
# the joint log-prob and entropy are the very same tensors; it also hands the stack to
# the tap. Installed on the policy's existing distribution object by `_record_heads`.


def _one_head_twin(base: type[Any]) -> type[Any]:
    """The recording twin of a one-head distribution class (Discrete actions).

    A factory rather than a mixin: `__class__` assignment needs the twin's layout to be
    its base's, which a mixin ahead of the base in the MRO breaks.
    """

    class Twin(base):
        tap: _HeadTap

        def log_prob(self, actions: Tensor) -> Tensor:
            joint: Tensor = super().log_prob(actions)
            self.tap.saw_log_prob(joint.unsqueeze(1))
            return joint

        def entropy(self) -> Tensor:
            joint: Tensor = super().entropy()
            self.tap.saw_entropy(joint.unsqueeze(1))
            return joint

    Twin.__name__ = Twin.__qualname__ = f"_Recording{base.__name__}"
    return Twin


_RecordingCategorical = _one_head_twin(CategoricalDistribution)
_RecordingMaskableCategorical = _one_head_twin(MaskableCategoricalDistribution)


class _RecordingMultiCategorical(MultiCategoricalDistribution):
    tap: _HeadTap

    def log_prob(self, actions: Tensor) -> Tensor:
        heads = zip(self.distribution, torch.unbind(actions, dim=1), strict=True)
        per_head = torch.stack([d.log_prob(a) for d, a in heads], dim=1)
        self.tap.saw_log_prob(per_head)
        return per_head.sum(dim=1)

    def entropy(self) -> Tensor:
        per_head = torch.stack([d.entropy() for d in self.distribution], dim=1)
        self.tap.saw_entropy(per_head)
        return per_head.sum(dim=1)


class _RecordingMaskableMultiCategorical(MaskableMultiCategoricalDistribution):
    tap: _HeadTap

    def log_prob(self, actions: Tensor) -> Tensor:
        actions = actions.view(-1, len(self.action_dims))
        heads = zip(self.distributions, torch.unbind(actions, dim=1), strict=True)
        per_head = torch.stack([d.log_prob(a) for d, a in heads], dim=1)
        self.tap.saw_log_prob(per_head)
        return per_head.sum(dim=1)

    def entropy(self) -> Tensor:
        per_head = torch.stack([d.entropy() for d in self.distributions], dim=1)
        self.tap.saw_entropy(per_head)
        return per_head.sum(dim=1)


class _RecordingBernoulli(BernoulliDistribution):
    """MultiBinary actions: each bit is a head of two values, as the library's own sum has it."""

    tap: _HeadTap

    def log_prob(self, actions: Tensor) -> Tensor:
        per_head = self.distribution.log_prob(actions)
        self.tap.saw_log_prob(per_head)
        return per_head.sum(dim=1)

    def entropy(self) -> Tensor:
        per_head = self.distribution.entropy()
        self.tap.saw_entropy(per_head)
        return per_head.sum(dim=1)


class _RecordingMaskableBernoulli(MaskableBernoulliDistribution):
    """sb3-contrib's MultiBinary distribution is its multi-categorical one with [2] * bits
    (a subclass, so it needs a twin of its own: the twins are matched by exact type)."""

    tap: _HeadTap
    log_prob = _RecordingMaskableMultiCategorical.log_prob
    entropy = _RecordingMaskableMultiCategorical.entropy


#: Library distribution -> its recording twin (exact types: a subclass may compute otherwise).
_RECORDING: dict[type, type] = {
    CategoricalDistribution: _RecordingCategorical,
    MultiCategoricalDistribution: _RecordingMultiCategorical,
    BernoulliDistribution: _RecordingBernoulli,
    MaskableCategoricalDistribution: _RecordingMaskableCategorical,
    MaskableMultiCategoricalDistribution: _RecordingMaskableMultiCategorical,
    MaskableBernoulliDistribution: _RecordingMaskableBernoulli,
}


def _record_heads(policy: Any, tap: _HeadTap) -> None:
    """Make the policy's action distribution hand its per-head values to `tap`.

    The object keeps its state; only its class changes to the recording twin (which adds
    no fields), so nothing about the policy's parameters or random draws changes.
    """
    dist = policy.action_dist
    kind = type(dist)
    if kind in _RECORDING.values():
        dist.tap = tap
        return
    if kind not in _RECORDING:
        raise ValueError(
            f"per-head telemetry needs a categorical action distribution, the policy has "
            f"{kind.__name__}"
        )
    dist.__class__ = _RECORDING[kind]
    dist.tap = tap


# --------------------------------------------------------------------------- buffers


def _head_sizes(action_space: spaces.Space) -> tuple[int, ...]:
    """Values per head: Discrete is one head, a 1-D MultiDiscrete one per entry, and a
    MultiBinary one head of two values per bit (how both libraries sample it)."""
    if isinstance(action_space, spaces.Discrete):
        return (int(action_space.n),)
    if isinstance(action_space, spaces.MultiDiscrete) and action_space.nvec.ndim == 1:
        return tuple(int(n) for n in action_space.nvec)
    bits = action_space.n if isinstance(action_space, spaces.MultiBinary) else None
    if isinstance(bits, int | np.integer):
        return (2,) * int(bits)
    raise ValueError(
        f"per-head telemetry needs a Discrete, 1-D MultiDiscrete or MultiBinary action space, "
        f"got {action_space}; a Box can be discretised with "
        "esper.integrations.gym.DiscretizeActions"
    )


class _PerHeadBuffer:
    """Mixin for SB3 rollout buffers: per-head log-probs at rollout time, per minibatch.

    Rows follow the library's own flattening and minibatch indices, so each minibatch's
    rollout-time per-head log-probs line up with the joint ones SB3 stored.
    """

    tap: _HeadTap
    relevance_fn: RelevanceFn | None = None
    head_log_probs: np.ndarray  # [steps, envs, heads] while filling, [steps * envs, heads] after
    head_relevant: np.ndarray | None
    _heads_flat: bool

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        shape = (self.buffer_size, self.n_envs, len(_head_sizes(self.action_space)))  # type: ignore[attr-defined]
        self.head_log_probs = np.zeros(shape, dtype=np.float32)
        self.head_relevant = None
        self._heads_flat = False
        tap: _HeadTap | None = getattr(self, "tap", None)  # None while the library builds us
        self._log_probs_added = 0 if tap is None else tap.log_probs_seen

    def add(self, *args: Any, **kwargs: Any) -> None:
        tap = self.tap
        if tap.log_prob is None or tap.log_probs_seen == self._log_probs_added:
            raise RuntimeError("no per-head log-probs for this step: the policy did not act")
        self._log_probs_added = tap.log_probs_seen
        self.head_log_probs[self.pos] = tap.log_prob.reshape(self.n_envs, -1).cpu().numpy()  # type: ignore[attr-defined]
        super().add(*args, **kwargs)  # type: ignore[misc]

    def _mask_relevance(self) -> np.ndarray | None:
        """Heads the mask left more than one legal value, per sample (None: no masks)."""
        return None

    def _prepare_heads(self) -> None:
        """Flatten the per-head arrays as the library flattened its own, once per rollout."""
        self.head_log_probs = self.swap_and_flatten(self.head_log_probs)  # type: ignore[attr-defined]
        relevant = self._mask_relevance()
        if self.relevance_fn is not None:
            observations = self.observations  # type: ignore[attr-defined]
            obs = (
                {k: self.to_torch(v) for k, v in observations.items()}  # type: ignore[attr-defined]
                if isinstance(observations, dict)
                else self.to_torch(observations)  # type: ignore[attr-defined]
            )
            actions = self.to_torch(self.actions).long()  # type: ignore[attr-defined]
            with torch.no_grad():
                said = self.relevance_fn(obs, actions)
            said_np = torch.as_tensor(said).to(torch.bool).cpu().numpy()
            if said_np.shape != self.head_log_probs.shape:
                raise ValueError(
                    f"relevance_fn must return a [samples, heads] bool tensor of shape "
                    f"{self.head_log_probs.shape}, got {said_np.shape}"
                )
            relevant = said_np if relevant is None else relevant & said_np
        self.head_relevant = relevant
        self._heads_flat = True

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> Any:
        samples = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        if not self._heads_flat:
            self._prepare_heads()
        self.tap.begin_minibatch(batch_inds)
        return samples

    def rollout_rows(self, rows: np.ndarray) -> tuple[Tensor, Tensor | None]:
        """Rollout-time per-head log-probs and relevance of these rows, on the device."""
        old = self.to_torch(self.head_log_probs[rows])  # type: ignore[attr-defined]
        if self.head_relevant is None:
            return old, None
        return old, torch.as_tensor(self.head_relevant[rows], device=old.device)


class _PerHeadMaskableBuffer(_PerHeadBuffer):
    def _mask_relevance(self) -> np.ndarray | None:
        sizes = _head_sizes(self.action_space)  # type: ignore[attr-defined]
        starts = np.cumsum((0, *sizes[:-1]))
        legal = np.add.reduceat(self.action_masks > 0, starts, axis=1)  # type: ignore[attr-defined]
        return legal > 1


class PerHeadRolloutBuffer(_PerHeadBuffer, RolloutBuffer):
    """SB3's `RolloutBuffer` plus rollout-time per-head log-probs."""


class PerHeadDictRolloutBuffer(_PerHeadBuffer, DictRolloutBuffer):
    """SB3's `DictRolloutBuffer` plus rollout-time per-head log-probs."""


class PerHeadMaskableRolloutBuffer(_PerHeadMaskableBuffer, MaskableRolloutBuffer):
    """sb3-contrib's `MaskableRolloutBuffer` plus per-head log-probs and mask relevance."""


class PerHeadMaskableDictRolloutBuffer(_PerHeadMaskableBuffer, MaskableDictRolloutBuffer):
    """sb3-contrib's `MaskableDictRolloutBuffer` plus per-head log-probs and mask relevance."""


# --------------------------------------------------------------------------- algorithms


def _schedule_value(value: Any) -> float | str:
    """A hyperparameter for run.json: its number, or "schedule" for a callable."""
    if callable(value):
        return "schedule"
    return float(value)


class _PerHeadAlgorithm:
    """The per-head telemetry shared by `PerHeadPPO` and `PerHeadMaskablePPO`."""

    _BUFFERS: ClassVar[tuple[type, type]]  # (flat observations, dict observations)
    rollout_buffer_class: type[Any] | None  # SB3's attribute, set by its constructor
    _ESPER_EXCLUDED: ClassVar[tuple[str, ...]] = (
        "_head_tap",
        "_requested_run_dir",
        "_monitor",
        "_last_monitor",
    )

    def __init__(
        self,
        *args: Any,
        run_dir: Path | str | None = None,
        head_names: Sequence[str] | None = None,
        relevance_fn: RelevanceFn | None = None,
        explosion_threshold: float = DEFAULT_EXPLOSION_THRESHOLD,
        **kwargs: Any,
    ) -> None:
        # Set before the library's __init__, which builds the model (`_setup_model`).
        self._requested_run_dir = None if run_dir is None else Path(run_dir)
        self.head_names = None if head_names is None else tuple(head_names)
        self.relevance_fn = relevance_fn
        self.explosion_threshold = float(explosion_threshold)
        self.recorded_run_dir: Path | None = None
        self._head_tap = _HeadTap()
        self._monitor: HeadRatioMonitor | None = None
        self._last_monitor: HeadRatioMonitor | None = None  # closed; continued on request
        super().__init__(*args, **kwargs)

    @property
    def run_dir(self) -> Path | None:
        """Where the next `learn()` records (None: a fresh `runs/<run-id>`)."""
        return self._requested_run_dir

    @run_dir.setter
    def run_dir(self, value: Path | str | None) -> None:
        self._requested_run_dir = None if value is None else Path(value)

    def _setup_model(self) -> None:
        ours: ValueError | None = None
        try:
            sizes = _head_sizes(self.action_space)  # type: ignore[attr-defined]
        except ValueError as refusal:
            # The library's verdict comes first: a space it cannot train either (a 2-D
            # MultiBinary, a 2-D MultiDiscrete) fails with its own error, as with the plain
            # class; only a space it would train (a Box) gets ours, which names the way out.
            # (Types it refuses outright, e.g. a Tuple, or a Box for MaskablePPO, never get
            # here: its constructor checks them before building the model.)
            ours = refusal
        if ours is not None:
            super()._setup_model()  # type: ignore[misc]
            raise ours
        names = self.head_names or tuple(f"a{i}" for i in range(len(sizes)))
        if len(names) != len(sizes):
            raise ValueError(f"{len(sizes)} action heads but {len(names)} head_names")
        self.head_names = check_head_names(names)
        self.head_sizes = sizes
        chosen = self.rollout_buffer_class
        if chosen is not None and chosen not in self._BUFFERS:
            raise ValueError(
                f"{type(self).__name__} brings its own rollout buffer; got rollout_buffer_class="
                f"{chosen.__name__}"
            )
        observation_space = self.observation_space  # type: ignore[attr-defined]
        self.rollout_buffer_class = self._BUFFERS[isinstance(observation_space, spaces.Dict)]
        super()._setup_model()  # type: ignore[misc]
        buffer = self.rollout_buffer  # type: ignore[attr-defined]
        buffer.tap = self._head_tap
        buffer.relevance_fn = self.relevance_fn
        buffer._log_probs_added = self._head_tap.log_probs_seen
        _record_heads(self.policy, self._head_tap)  # type: ignore[attr-defined]

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: Any = None) -> None:
        """The library's episode bookkeeping; also records each finished episode (the
        `Monitor` wrapper's `info["episode"]`) in the run."""
        if self._monitor is not None:
            for env_index, info in enumerate(infos):
                if "episode" in info:
                    done = info["episode"]
                    self._monitor.end_episode(done["r"], length=done["l"], env_index=env_index)
        super()._update_info_buffer(infos, dones)  # type: ignore[misc]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), *self._ESPER_EXCLUDED]  # type: ignore[misc]

    def _run_config(self) -> dict[str, Any]:
        """The algorithm's settings as recorded in run.json."""
        s: Any = self
        return {
            "algorithm": type(self).__name__,
            "n_steps": s.n_steps,
            "batch_size": s.batch_size,
            "n_epochs": s.n_epochs,
            "learning_rate": _schedule_value(s.learning_rate),
            "clip_range": float(s.clip_range(1.0)),
            "gamma": float(s.gamma),
            "gae_lambda": float(s.gae_lambda),
            "ent_coef": float(s.ent_coef),
            "vf_coef": float(s.vf_coef),
            "max_grad_norm": float(s.max_grad_norm),
            "target_kl": None if s.target_kl is None else float(s.target_kl),
            "normalize_advantage": bool(s.normalize_advantage),
            "seed": s.seed,
            "n_envs": s.n_envs,
            "head_names": list(self.head_names or ()),
            "head_sizes": list(self.head_sizes),
        }

    def _task_name(self) -> str:
        """The environment's registered id when it has one, else its class name."""
        env: Any = getattr(self, "env", None)
        try:
            spec = env.get_attr("spec")[0]
            if spec is not None and getattr(spec, "id", None):
                return str(spec.id)
            return type(env.unwrapped.envs[0].unwrapped).__name__
        except Exception:
            return type(env).__name__

    def _open_monitor(self) -> HeadRatioMonitor:
        s: Any = self
        names = self.head_names or ()
        return HeadRatioMonitor(
            self._requested_run_dir,
            dict(zip(names, self.head_sizes, strict=True)),
            clip_eps=float(s.clip_range(1.0)),
            explosion_threshold=self.explosion_threshold,
            config=self._run_config(),
            task=self._task_name(),
            n_envs=s.n_envs,
            device=str(s.device),
        )

    def start_run(self, *, continue_last: bool = False) -> HeadRatioMonitor:
        """Open a run directory and record every `train()` into it until `end_run`.

        `learn()` does this itself; call it directly only to record updates run outside
        `learn()` (e.g. timing `train()` on a filled buffer). `continue_last` appends to
        the run this model recorded last (unless `run_dir` now names another directory).
        """
        if self._monitor is not None:
            raise RuntimeError("a run is already being recorded; end_run() it first")
        last = self._last_monitor
        same_dir = self._requested_run_dir in (None, getattr(last, "run_dir", None))
        try:
            if continue_last and last is not None and same_dir:
                monitor = last.reopen()
            else:
                monitor = self._open_monitor()
        except ValueError as exc:
            raise ValueError(
                f"{exc} (each learn() records one run unless reset_num_timesteps=False "
                "continues the last: set model.run_dir to a new directory, or to None for "
                "runs/<run-id>)"
            ) from None
        self._monitor = monitor
        self._head_tap.recording = True
        self.recorded_run_dir = monitor.run_dir
        return monitor

    def end_run(self, error: BaseException | None = None, *, interrupted: bool = False) -> None:
        """Record how the run ended and close its files (nothing when none is open)."""
        monitor, self._monitor = self._monitor, None
        self._head_tap.recording = False
        self._head_tap.take()  # an update cut short by an error is not recorded
        if monitor is not None:
            monitor.close(error, interrupted=interrupted)
            self._last_monitor = monitor

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        """The library's `learn`, recorded as one run (see the module docstring).

        `reset_num_timesteps=False` (continuing training, as in the library) continues
        the run directory of the previous `learn()` too.
        """
        reset = kwargs.get("reset_num_timesteps", args[4] if len(args) > 4 else True)
        self.start_run(continue_last=not reset)
        try:
            result = super().learn(*args, **kwargs)  # type: ignore[misc]
        except KeyboardInterrupt:
            self.end_run(interrupted=True)
            raise
        except BaseException as exc:
            self.end_run(exc)
            raise
        self.end_run()
        return result

    def train(self) -> None:
        """The library's update, then one recorded update event with per-head statistics."""
        s: Any = self
        tap, monitor = self._head_tap, self._monitor
        if monitor is None:  # outside learn(): plain training
            super().train()  # type: ignore[misc]
            return
        epochs_before = s._n_updates
        self.rollout_buffer.relevance_fn = self.relevance_fn  # type: ignore[attr-defined]
        super().train()  # type: ignore[misc]
        minibatches = tap.take()
        if minibatches:  # every minibatch's rollout-time rows, gathered at once
            rows = np.concatenate([m.rows for m in minibatches])
            old, relevant = self.rollout_buffer.rollout_rows(rows)  # type: ignore[attr-defined]
            entropies = [m.entropy for m in minibatches]
            monitor.observe(
                torch.cat([m.log_prob for m in minibatches]),
                old,
                relevant,
                None if any(e is None for e in entropies) else torch.cat(entropies),  # type: ignore[arg-type]
            )
        logged = s.logger.name_to_value
        samples = s.n_steps * s.n_envs
        expected = s.n_epochs * math.ceil(samples / s.batch_size)
        monitor.clip_eps = float(s.clip_range(s._current_progress_remaining))
        episodes = [info["r"] for info in s.ep_info_buffer or ()]
        stats = monitor.end_update(
            mean_return=float(np.mean(episodes)) if episodes else None,
            policy_loss=float(logged["train/policy_gradient_loss"]),
            value_loss=float(logged["train/value_loss"]),
            approx_kl=float(logged["train/approx_kl"]),
            clip_fraction=float(logged["train/clip_fraction"]),
            explained_variance=float(logged["train/explained_variance"]),
            epochs_run=s._n_updates - epochs_before,
            minibatches_run=len(minibatches),
            early_stopped=len(minibatches) < expected,
        )
        for name, head in stats.heads.items():
            for stat in HEAD_STATS:
                s.logger.record(f"per_head/{stat}/{name}", getattr(head, stat))
        s.logger.record("per_head/joint_ratio_max", stats.joint_ratio_max)


class PerHeadPPO(_PerHeadAlgorithm, PPO):
    """Stable-Baselines3 `PPO` that records per-head ratio telemetry (same maths).

    Extra keywords: `run_dir` (default `runs/<run-id>`, one per `learn()`), `head_names`
    (default a0, a1, ...), `relevance_fn` (see `RelevanceFn`; default every head counts
    at every sample) and `explosion_threshold` (joint ratio max that triggers a
    RATIO_EXPLOSION event, default 2). `recorded_run_dir` is the last run's directory.
    """

    _BUFFERS = (PerHeadRolloutBuffer, PerHeadDictRolloutBuffer)


class PerHeadMaskablePPO(_PerHeadAlgorithm, MaskablePPO):
    """sb3-contrib `MaskablePPO` that records per-head ratio telemetry (same maths).

    As `PerHeadPPO`; a head counts for a sample when its action mask left it more than
    one legal value (and `relevance_fn`, if given, agrees).
    """

    _BUFFERS = (PerHeadMaskableRolloutBuffer, PerHeadMaskableDictRolloutBuffer)
