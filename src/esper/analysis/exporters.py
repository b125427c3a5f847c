"""Optional hub backends that mirror a run into TensorBoard or Weights & Biases.

Both log the same scalars, named by `update_scalars` / `episode_scalars`:

- per PPO update, step = `update_index`, for every head the update carries (whatever
  the run's heads are called): `ratio_max/<head>`, `ratio_min/<head>`,
  `clip_fraction/<head>`, `approx_kl/<head>` (only for heads with relevant samples in
  that update: a neutral 1.0 is not a measurement), `entropy/<head>` (always),
  `joint_ratio_max`, `approx_kl`, `clip_fraction`, `losses/policy`, `losses/value`;
- per episode, step = the episode number: `episode/return`, `episode/host_accuracy`.

They are queued hub backends (`synchronous = False`): the hub calls `handle` and `flush`
from its worker thread, and each backend also serialises its calls with a lock, so the
writer is never used from two threads at once. TensorBoard uses the `tensorboard`
package's own framework-free `tensorboard.summary.Writer` (numpy only, no torch or
TensorFlow). W&B runs offline by default; `wandb sync` uploads later. Tags are the edge
names of the per-head statistics here, spelled only by `head_tag`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.analysis import require_extra
from esper.analysis.runs import RELEVANCE_GATED_STATS
from esper.telemetry.contracts import EpisodeCompleted, PPOUpdatePayload, TelemetryEvent
from esper.telemetry.hub import TelemetryBackend

UPDATE_STEP = "update"
EPISODE_STEP = "episode"
#: Update-wide scalar name -> PPOUpdatePayload field.
UPDATE_FIELDS: dict[str, str] = {
    "joint_ratio_max": "joint_ratio_max",
    "approx_kl": "approx_kl",
    "clip_fraction": "clip_fraction",
    "losses/policy": "policy_loss",
    "losses/value": "value_loss",
}
#: Per-head scalar groups, logged as `<stat>/<head>`.
HEAD_SCALARS: tuple[str, ...] = (*RELEVANCE_GATED_STATS, "entropy")
#: Episode scalar name -> EpisodeCompleted field.
EPISODE_FIELDS: dict[str, str] = {
    "episode/return": "episode_return",
    "episode/host_accuracy": "final_accuracy",
}


def head_tag(stat: str, head: str) -> str:
    """The TensorBoard / W&B name of one head statistic, e.g. `ratio_max/slot`."""
    return f"{stat}/{head}"


def update_scalars(p: PPOUpdatePayload) -> dict[str, float]:
    """The scalars of one PPO update; see the module docstring for the names."""
    out: dict[str, float] = {}
    for head, stats in p.heads.items():
        relevant = stats.relevant > 0
        for stat in HEAD_SCALARS:
            if relevant or stat not in RELEVANCE_GATED_STATS:
                out[head_tag(stat, head)] = float(getattr(stats, stat))
    out.update({name: float(getattr(p.stats, attr)) for name, attr in UPDATE_FIELDS.items()})
    return out


def episode_scalars(p: EpisodeCompleted) -> dict[str, float]:
    """The scalars of one finished episode (no host accuracy outside esper's own task)."""
    values = {name: getattr(p, attr) for name, attr in EPISODE_FIELDS.items()}
    return {name: float(value) for name, value in values.items() if value is not None}


def all_scalar_names(head_names: Iterable[str]) -> dict[str, str]:
    """Every scalar name a backend may log for these heads -> the step it is logged against."""
    heads = tuple(head_names)
    per_head = {head_tag(stat, head): UPDATE_STEP for stat in HEAD_SCALARS for head in heads}
    update = dict.fromkeys(UPDATE_FIELDS, UPDATE_STEP)
    return {**per_head, **update, **dict.fromkeys(EPISODE_FIELDS, EPISODE_STEP)}


@dataclass(frozen=True)
class Scalars:
    """What one event contributes: values at `step` on the `axis` ("update" or "episode")."""

    axis: str
    step: int
    values: dict[str, float]
    wall_time: float


class _ScalarBackend:
    """Turns events into `Scalars` and hands them to `_write` under a lock."""

    synchronous = False
    name = "scalars"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._episodes_seen = 0
        self._closed = False

    def scalars(self, event: TelemetryEvent) -> Scalars | None:
        """The event's scalars, or None for events that carry none."""
        p = event.payload
        if isinstance(p, PPOUpdatePayload):
            return Scalars(UPDATE_STEP, p.update_index, update_scalars(p), event.timestamp)
        if isinstance(p, EpisodeCompleted):
            step = event.episode if event.episode is not None else self._episodes_seen
            self._episodes_seen += 1
            return Scalars(EPISODE_STEP, step, episode_scalars(p), event.timestamp)
        return None

    def handle(self, event: TelemetryEvent) -> None:
        with self._lock:
            scalars = self.scalars(event)
            if scalars is not None and not self._closed:
                self._write(scalars)

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._flush()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    def _write(self, scalars: Scalars) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class TensorBoardBackend(_ScalarBackend):
    """Writes the scalars to a TensorBoard event file in `log_dir` (`esper-ppo[tensorboard]`)."""

    name = "tensorboard"

    def __init__(self, log_dir: Path | str) -> None:
        super().__init__()
        summary = require_extra("tensorboard.summary", "tensorboard")
        self.log_dir = Path(log_dir)
        self._writer = summary.Writer(str(self.log_dir))

    def _write(self, scalars: Scalars) -> None:
        for tag, value in scalars.values.items():
            self._writer.add_scalar(tag, value, scalars.step, wall_time=scalars.wall_time)

    def _flush(self) -> None:
        self._writer.flush()

    def _close(self) -> None:
        self._writer.close()


class WandbBackend(_ScalarBackend):
    """Logs the scalars to a W&B run in `run_dir/wandb`, offline unless `mode` says.

    Updates and episodes are two x-axes, so each scalar is declared against its own step
    metric (`update` or `episode`) rather than W&B's single monotonic step. Heads are
    known from the data only, so a scalar is declared the first time it is logged. `init`
    is `wandb.init` (`esper-ppo[wandb]`); passing another lets a caller supply the run.
    """

    name = "wandb"

    def __init__(
        self,
        run_dir: Path | str,
        config: Mapping[str, Any],
        *,
        project: str = "esper",
        mode: str = "offline",
        init: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        if init is None:
            init = require_extra("wandb", "wandb").init
        run_dir = Path(run_dir)
        self.run = init(
            project=project, name=run_dir.name, dir=str(run_dir), config=dict(config), mode=mode
        )
        for axis in (UPDATE_STEP, EPISODE_STEP):
            self.run.define_metric(axis)
        self._defined: set[str] = set()

    def _write(self, scalars: Scalars) -> None:
        for scalar in scalars.values:
            if scalar not in self._defined:
                self.run.define_metric(scalar, step_metric=scalars.axis)
                self._defined.add(scalar)
        self.run.log({scalars.axis: scalars.step, **scalars.values})

    def _flush(self) -> None:
        """W&B writes on its own; nothing is held here."""

    def _close(self) -> None:
        self.run.finish()


def make_exporters(
    tensorboard: Path | None, wandb: bool, run_dir: Path, config: Mapping[str, Any]
) -> list[TelemetryBackend]:
    """The backends `esper ppo --tensorboard DIR --wandb` asks for (AnalysisError if an
    extra is missing). TensorBoard writes to `DIR/<run dir name>`, so one `--tensorboard`
    directory collects every run and `tensorboard --logdir DIR` compares them."""
    backends: list[TelemetryBackend] = []
    if tensorboard is not None:
        backends.append(TensorBoardBackend(tensorboard / run_dir.name))
    if wandb:
        backends.append(WandbBackend(run_dir, config))
    return backends
