"""Run configuration: defaults, config files and validation, without torch.

The CLI validates everything here before the training stack is imported, so a typo
in a flag or a config file costs the operator a one-line message, not a traceback
after a three-second torch import. The PPO hyper-parameters live here once, as
`PPOConfig`, nested in `TrainConfig.ppo`; `esper.rl.ppo` re-exports it.

Every value is range-checked: finite, of the right type (a bool is not a number), and
within bounds that keep a run from being absurd (a million slots, a billion envs), so a
start that cannot work fails before anything is created on disk.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from esper.morpho.actions import HEAD_NAMES
from esper.morpho.tasks import TASKS

CLIP_MODES: tuple[str, ...] = ("per_head", "joint")
#: Where the envs step (esper.rl.runners): this process, local worker processes, Ray actors.
BACKENDS: tuple[str, ...] = ("inprocess", "processes", "ray")
ClipMode = Literal["per_head", "joint"]

#: Upper bounds that refuse absurd sizes before they exhaust memory or time.
MAX_EPISODES = 10**9
MAX_ENVS = 4096
MAX_EPISODE_LENGTH = 100_000
MAX_SLOTS = 64
MAX_EPOCHS = 1000
MAX_MINIBATCHES = 65_536
MAX_HIDDEN = 8192
MAX_BAD_UPDATES = 10**6
#: Seeds are mixed into per-episode seeds that must stay within 64 bits.
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"(cpu|mps|cuda(:[0-9]{1,3})?)")


class ConfigError(ValueError):
    """A configuration value or file the run cannot start with; the message names it."""


# ------------------------------------------------------------------------- value checks
#
# Each check returns the rule a value breaks ("a whole number in [1, 64]") or None.


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"a whole number in [{low}, {high}]"

    return check


def _real(
    low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
) -> Callable[[object], str | None]:
    left, right = "(" if open_low else "[", ")" if open_high or high == math.inf else "]"
    rule = f"a finite number in {left}{low:g}, {high:g}{right}"
    if high == math.inf and not open_low:
        rule = f"a finite number >= {low:g}"
    elif high == math.inf:
        rule = f"a finite number > {low:g}"

    def check(value: object) -> str | None:
        if not _is_number(value):
            return rule
        try:
            v = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond any float
            return rule
        ok = (
            math.isfinite(v)
            and (v > low if open_low else v >= low)
            and (v < high if open_high else v <= high)
        )
        return None if ok else rule

    return check


def _optional(check: Callable[[object], str | None]) -> Callable[[object], str | None]:
    def optional(value: object) -> str | None:
        if value is None:
            return None
        rule = check(value)
        return None if rule is None else f"none or {rule}"

    return optional


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        return None if value in choices else f"one of {', '.join(choices)}"

    return check


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _first_problem(
    obj: object, rules: Mapping[str, Callable[[object], str | None]], label: Callable[[str], str]
) -> str | None:
    """'NAME must be RULE, got VALUE' for the first field of `obj` breaking its rule."""
    for name, check in rules.items():
        value = getattr(obj, name)
        rule = check(value)
        if rule is not None:
            return f"{label(name)} must be {rule}, got {value!r}"
    return None


# ------------------------------------------------------------------------------- PPO


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters; validated on construction so a typo fails before a run starts."""

    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    epochs: int = 4
    minibatches: int = 4
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    #: Stop the update once a minibatch's approx KL exceeds 1.5 * target_kl (None: never).
    target_kl: float | None = 0.05
    clip_mode: ClipMode = "per_head"
    #: An update's explosion report is made when its joint ratio max exceeds this.
    explosion_threshold: float = 2.0
    #: Automated intervention: stop the update once the joint ratio max exceeds this.
    joint_ratio_limit: float | None = None
    hidden: int = 128
    normalize_advantage: bool = True

    def __post_init__(self) -> None:
        problem = _first_problem(self, PPO_RULES, str)
        if problem is not None:
            raise ConfigError(f"invalid PPOConfig: {problem}")


PPO_RULES: dict[str, Callable[[object], str | None]] = {
    "lr": _real(0.0, 1.0, open_low=True),
    "gamma": _real(0.0, 1.0),
    "gae_lambda": _real(0.0, 1.0),
    "clip_eps": _real(0.0, 1.0, open_low=True, open_high=True),
    "epochs": _whole(1, MAX_EPOCHS),
    "minibatches": _whole(1, MAX_MINIBATCHES),
    "value_coef": _real(0.0),
    "entropy_coef": _real(0.0),
    "max_grad_norm": _real(0.0, open_low=True),
    "target_kl": _optional(_real(0.0, open_low=True)),
    "clip_mode": _one_of(CLIP_MODES),
    "explosion_threshold": _real(1.0, open_low=True),
    "joint_ratio_limit": _optional(_real(1.0, open_low=True)),
    "hidden": _whole(1, MAX_HIDDEN),
    "normalize_advantage": _boolean,
}

#: Top-level (flat) keys of config files, flags and pre-nesting run.json/checkpoints that
#: name a PPO hyper-parameter -> its PPOConfig field.
FLAT_PPO_KEYS: dict[str, str] = {
    "clip": "clip_eps",
    **{
        name: name
        for name in (
            "epochs", "minibatches", "clip_mode", "lr", "gamma", "gae_lambda", "entropy_coef",
            "value_coef", "max_grad_norm", "target_kl", "joint_ratio_limit",
            "explosion_threshold", "hidden",
        )
    },
}  # fmt: skip
_FLAT_NAME = {ppo_name: flat for flat, ppo_name in FLAT_PPO_KEYS.items()}


def ppo_label(name: str) -> str:
    """How a user names a PPO field: its flag/flat key (`clip`), else `ppo.NAME`."""
    return _FLAT_NAME.get(name, f"ppo.{name}")


# ------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is started with; recorded verbatim in run.json.

    `episodes` counts episodes in total over all parallel envs; one PPO update follows
    each batch of `envs` episodes (the last batch may be smaller). `backend`, `workers`
    and `ray_address` say where the envs step; they change the wall time, not the numbers.
    """

    task: str = "spirals"
    episodes: int = 10
    envs: int = 8
    episode_length: int = 25
    slots: int = 3
    ppo: PPOConfig = field(default_factory=PPOConfig)
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
    #: Torch intra-op threads of the learner (default: chosen by size, esper.rl.threads).
    threads: int | None = None
    env_id: str | None = None
    bins: int | None = None
    rollout_steps: int | None = None

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
        """Plain data, PPO settings nested under "ppo" (read back by `build_config`)."""
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


def _device(value: object) -> str | None:
    ok = isinstance(value, str) and _DEVICE.fullmatch(value) is not None
    return None if ok else "cpu, cuda, cuda:N or mps"


def _text(value: object) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty string"


#: More torch threads than any machine this runs on has cores is a typo.
MAX_THREADS = 1024

RUN_RULES: dict[str, Callable[[object], str | None]] = {
    "episodes": _whole(1, MAX_EPISODES),
    "envs": _whole(1, MAX_ENVS),
    "episode_length": _whole(1, MAX_EPISODE_LENGTH),
    "slots": _whole(1, MAX_SLOTS),
    "max_bad_updates": _whole(1, MAX_BAD_UPDATES),
    "seed": _whole(0, MAX_SEED),
    "device": _device,
    "backend": _one_of(BACKENDS),
    "workers": _optional(_whole(1, MAX_ENVS)),
    "threads": _optional(_whole(1, MAX_THREADS)),
    "ray_address": _optional(_text),
    "fault": _optional(_text),
}


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first value a run cannot start with."""
    if not isinstance(cfg.task, str) or cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
    problem = _first_problem(cfg, RUN_RULES, str)
    if problem is not None:
        raise ConfigError(problem)
    if not isinstance(cfg.ppo, PPOConfig):
        raise ConfigError(f"ppo must be a PPOConfig, got {type(cfg.ppo).__name__}")
    if cfg.fault is not None:
        parse_fault(cfg.fault)
    _validate_backend(cfg)


def _validate_backend(cfg: TrainConfig) -> None:
    """`backend`, `workers` and `ray_address` must agree with each other and with `envs`."""
    if cfg.workers is not None:
        if cfg.backend == "inprocess" and cfg.workers != 1:
            raise ConfigError(
                f"workers={cfg.workers} needs backend processes or ray "
                "(inprocess steps every env in this process)"
            )
        if cfg.workers > cfg.envs:
            raise ConfigError(
                f"workers ({cfg.workers}) must be <= envs ({cfg.envs}): a worker steps whole envs"
            )
    if cfg.ray_address is not None and cfg.backend != "ray":
        raise ConfigError(f"ray_address needs backend ray, got backend {cfg.backend!r}")


# --------------------------------------------------------------------- files and flags

_RUN_KEYS = frozenset(f.name for f in fields(TrainConfig))
_PPO_KEYS = frozenset(f.name for f in fields(PPOConfig))


def known_keys() -> list[str]:
    """Every key a config file may hold: run settings, flat PPO keys, `ppo.FIELD`."""
    return sorted((_RUN_KEYS | set(FLAT_PPO_KEYS)) - {"ppo"}) + sorted(
        f"ppo.{name}" for name in _PPO_KEYS
    )


def _unknown_keys(data: Mapping[str, Any]) -> list[str]:
    unknown = [k for k in data if k not in _RUN_KEYS and k not in FLAT_PPO_KEYS]
    ppo = data.get("ppo")
    if isinstance(ppo, Mapping):
        unknown += [f"ppo.{k}" for k in ppo if k not in _PPO_KEYS]
    return sorted(unknown)


def read_config_file(path: Path) -> dict[str, Any]:
    """Load a TOML or JSON config file into a plain mapping; unknown keys are rejected.

    PPO settings go in a `[ppo]` table (`clip_eps = 0.1`) or, as before they were
    nested, at the top level under their flag names (`clip = 0.1`).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start} is 0x{_text_byte(exc)})"
        ) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix[1:] or 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    unknown = _unknown_keys(data)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)}; known keys: {', '.join(known_keys())}"
        )
    return data


def _text_byte(exc: UnicodeDecodeError) -> str:
    """The offending byte of a decode error, as two hex digits."""
    return f"{exc.object[exc.start]:02x}"


def _split(values: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run settings and PPO settings (PPOConfig names) of a flat-or-nested mapping."""
    run: dict[str, Any] = {}
    ppo: dict[str, Any] = {}
    nested = values.get("ppo")
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise ConfigError(f"ppo must be a table of PPO settings, got {nested!r}")
        ppo.update(nested)
    for key, value in values.items():
        if key == "ppo":
            continue
        if key in FLAT_PPO_KEYS:
            name = FLAT_PPO_KEYS[key]
            if nested is not None and name in nested:
                raise ConfigError(f"{key} is given twice in {where}: at the top and as ppo.{name}")
            ppo[name] = value
        else:
            run[key] = value
    return run, ppo


def build_config(
    file_values: Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> TrainConfig:
    """Defaults, then the config file, then flags (None means "flag not given").

    Both mappings may use flat PPO keys (`clip`, `lr`, as flags and older files and
    checkpoints do) or a nested `ppo` mapping (as `TrainConfig.to_dict` writes).
    """
    unknown = _unknown_keys(file_values or {}) + _unknown_keys(overrides)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known_keys())}"
        )
    run, ppo = _split(file_values or {}, "the configuration")
    flag_run, flag_ppo = _split({k: v for k, v in overrides.items() if v is not None}, "flags")
    run.update(flag_run)
    ppo.update(flag_ppo)
    defaults = PPOConfig()
    merged = {f.name: ppo.get(f.name, getattr(defaults, f.name)) for f in fields(PPOConfig)}
    problem = _first_problem(_Values(merged), PPO_RULES, ppo_label)
    if problem is not None:
        raise ConfigError(problem)
    try:
        return replace(TrainConfig(), **run, ppo=PPOConfig(**merged))
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


class _Values:
    """Attribute access to a mapping, so one rule table checks a dataclass or a dict."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)
