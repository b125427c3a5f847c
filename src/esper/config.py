"""Run configuration: defaults, config files and validation, without torch.

The CLI validates everything here before the training stack is imported, so a typo
in a flag or a config file costs the operator a one-line message, not a traceback
after a three-second torch import.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from esper.actions import HEAD_NAMES
from esper.tasks import TASKS

CLIP_MODES: tuple[str, ...] = ("per_head", "joint")
#: Where the envs step (esper.runners): this process, local worker processes, Ray actors.
BACKENDS: tuple[str, ...] = ("inprocess", "processes", "ray")


class ConfigError(ValueError):
    """A configuration value or file the run cannot start with; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is started with; recorded verbatim in run.json.

    `episodes` counts episodes in total over all parallel envs; one PPO update follows
    each batch of `envs` episodes (the last batch may be smaller). `backend`, `workers`
    and `ray_address` say where the envs step; they change the wall time, not the numbers.
    """

    task: str = "digits"
    episodes: int = 10
    envs: int = 2
    episode_length: int = 25
    slots: int = 3
    epochs: int = 4
    minibatches: int = 4
    clip: float = 0.2
    clip_mode: str = "per_head"
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = 0.05
    joint_ratio_limit: float | None = None
    explosion_threshold: float = 2.0
    hidden: int = 128
    max_bad_updates: int = 5
    seed: int = 0
    device: str = "cpu"
    backend: str = "inprocess"
    #: Worker processes or Ray actors the envs are spread over (default: one per env).
    workers: int | None = None
    #: Address of a running Ray cluster (backend "ray"); default: start a local one.
    ray_address: str | None = None
    #: Fault injection for tests and drills: "HEAD=nan@FIRST[-LAST]" (or inf) makes that
    #: head's logits non-finite in every minibatch of updates FIRST..LAST (batch indices).
    fault: str | None = None
    #: Torch intra-op threads of the learner (default: chosen by size, esper.threads).
    threads: int | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def batches(self) -> int:
        """Number of PPO updates the run will do."""
        return -(-self.episodes // self.envs)

    @property
    def n_workers(self) -> int:
        """Workers the envs are spread over: 1 in process, else `workers` or one per env."""
        if self.backend == "inprocess":
            return 1
        return self.workers if self.workers is not None else self.envs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaultSpec:
    """A parsed `fault` setting: which head goes non-finite, with what, in which updates."""

    head: str
    value: float
    first: int
    last: int

    def active(self, batch: int) -> bool:
        return self.first <= batch <= self.last


def parse_fault(text: str) -> FaultSpec:
    """Parse "HEAD=nan@3" or "HEAD=inf@3-5"; raises ConfigError saying what is expected."""
    expected = f"fault must look like HEAD=nan@FIRST[-LAST] (or inf), got {text!r}"
    head, sep, rest = text.partition("=")
    kind, sep2, span = rest.partition("@")
    if not (sep and sep2) or head not in HEAD_NAMES or kind.lower() not in ("nan", "inf"):
        raise ConfigError(expected)
    first_text, _, last_text = span.partition("-")
    try:
        first = int(first_text)
        last = int(last_text) if last_text else first
    except ValueError:
        raise ConfigError(expected) from None
    if first < 0 or last < first:
        raise ConfigError(expected)
    return FaultSpec(head=head, value=float(kind.lower()), first=first, last=last)


def _positive_int(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")


def _positive_float(cfg: TrainConfig, name: str, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first value a run cannot start with."""
    for name in ("episodes", "envs", "episode_length", "slots", "epochs", "minibatches"):
        _positive_int(cfg, name)
    for name in ("clip", "lr", "max_grad_norm", "explosion_threshold"):
        _positive_float(cfg, name)
    for name in ("target_kl", "joint_ratio_limit"):
        _positive_float(cfg, name, optional=True)
    _positive_int(cfg, "hidden")
    _positive_int(cfg, "max_bad_updates")
    if cfg.threads is not None:
        _positive_int(cfg, "threads")
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
    if cfg.clip_mode not in CLIP_MODES:
        raise ConfigError(
            f"clip_mode must be one of {', '.join(CLIP_MODES)}, got {cfg.clip_mode!r}"
        )
    for name in ("gamma", "gae_lambda"):
        value = getattr(cfg, name)
        if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    for name in ("entropy_coef", "value_coef"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {cfg.seed!r}")
    if cfg.fault is not None:
        if not isinstance(cfg.fault, str):
            raise ConfigError(f"fault must be a string, got {cfg.fault!r}")
        parse_fault(cfg.fault)
    if not isinstance(cfg.device, str) or cfg.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be cpu, cuda[:N] or mps, got {cfg.device!r}")
    _validate_backend(cfg)


def _validate_backend(cfg: TrainConfig) -> None:
    """`backend`, `workers` and `ray_address` must agree with each other and with `envs`."""
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    if cfg.workers is not None:
        _positive_int(cfg, "workers")
        if cfg.backend == "inprocess" and cfg.workers != 1:
            raise ConfigError(
                f"workers={cfg.workers} needs backend processes or ray "
                "(inprocess steps every env in this process)"
            )
        if cfg.workers > cfg.envs:
            raise ConfigError(
                f"workers ({cfg.workers}) must be <= envs ({cfg.envs}): a worker steps whole envs"
            )
    if cfg.ray_address is not None:
        if not isinstance(cfg.ray_address, str) or not cfg.ray_address.strip():
            raise ConfigError(f"ray_address must be a non-empty string, got {cfg.ray_address!r}")
        if cfg.backend != "ray":
            raise ConfigError(f"ray_address needs backend ray, got backend {cfg.backend!r}")


def read_config_file(path: Path) -> dict[str, Any]:
    """Load a TOML or JSON config file into a plain mapping; unknown keys are rejected."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix[1:] or 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(known))}"
        )
    return data


def build_config(file_values: dict[str, Any] | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the config file, then flags (None means "flag not given")."""
    merged = {**(file_values or {}), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return replace(TrainConfig(), **merged)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
