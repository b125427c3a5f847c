"""Run configuration: defaults, config files and validation, without torch.

The CLI validates everything here before the training stack is imported, so a typo
in a flag or a config file costs the operator a one-line message, not a traceback
after a three-second torch import. The PPO hyper-parameters live here once, as
`PPOConfig`, nested in `TrainConfig.ppo`; `esper.rl.ppo` re-exports it.

Every value is range-checked: finite, of the right type (a bool is not a number), and
within bounds that keep a run from being absurd (a million slots, a billion envs), so a
start that cannot work fails before anything is created on disk.

A field that is also an `esper ppo` flag says so in its declaration (`metadata=flag(...)`:
its help text, and what None means); `setting_flags` describes those flags from the fields,
their annotations and the rule tables, so the command line never declares a setting again.

This module belongs to the algorithm and knows no environment: which tasks exist and
which heads a run has are checked by the command line and the trainer, which know them.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

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
#: Learner processes (torch.distributed ranks) of one run.
MAX_LEARNERS = 1024
#: Seeds are mixed into per-episode seeds that must stay within 64 bits.
MAX_SEED = 2**32 - 1
#: Levels per dimension a Box action space may be discretised into.
MIN_BINS, MAX_BINS = 2, 1000
MAX_ROLLOUT_STEPS = 100_000
#: Steps each env takes per PPO batch for an `env_id` env when `rollout_steps` is None.
DEFAULT_ROLLOUT_STEPS = 128
_DEVICE = re.compile(r"(cpu|mps|cuda(:[0-9]{1,3})?)")
#: A gymnasium id (`CartPole-v1`, `ALE/Pong-v5`) or `module:callable`: no spaces, one colon.
_ENV_ID = re.compile(r"[^\s:]+(:[^\s:]+)?")
#: A fault's head: any identifier-like name (the run's heads are known only to the trainer).
_HEAD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


@dataclass(frozen=True)
class OneOf:
    """The rule "one of these names"; a flag checked by it offers them as its choices."""

    choices: tuple[str, ...]

    def __call__(self, value: object) -> str | None:
        return None if value in self.choices else f"one of {', '.join(self.choices)}"


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str | None]:
    return OneOf(choices)


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


# -------------------------------------------------------------------- flags, declared once

_FLAG = "esper.flag"


@dataclass(frozen=True)
class FlagDoc:
    """How a config field is offered as an `esper ppo` flag (kept in the field's metadata).

    `unset` says what None means for an optional setting, so the help shows every default;
    `hidden` flags (fault injection) parse but stay out of `--help`.
    """

    help: str
    unset: str | None = None
    metavar: str | None = None
    hidden: bool = False


def flag(
    help: str, *, unset: str | None = None, metavar: str | None = None, hidden: bool = False
) -> dict[str, FlagDoc]:
    """Field metadata making a config field an `esper ppo` flag with this help text."""
    return {_FLAG: FlagDoc(help=help, unset=unset, metavar=metavar, hidden=hidden)}


@dataclass(frozen=True)
class SettingFlag:
    """One settings flag, described from its field: what argparse needs, nothing more.

    `key` is the flag's dest and the flat key `build_config` reads (`clip`, not clip_eps);
    `kind` converts the text (int, float, str or bool); None as a value means "not given".
    `about` is the declared help and `default` how the help shows the default.
    """

    key: str
    flag: str
    kind: type
    choices: tuple[str, ...] | None
    about: str
    default: str
    metavar: str | None
    hidden: bool

    @property
    def help(self) -> str:
        return f"{self.about} {self.default}" if self.default else self.about


def _kind(annotation: Any) -> tuple[type, tuple[str, ...] | None]:
    """The flag type and choices of a field annotation: `int | None` -> int, Literal -> str."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"a flag takes one type, not {annotation}")
        annotation = members[0]
    if get_origin(annotation) is Literal:
        return str, tuple(str(a) for a in get_args(annotation))
    if annotation in (int, float, str, bool):
        return annotation, None
    raise TypeError(f"no flag type for {annotation}")


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_flags(
    cls: type,
    rules: Mapping[str, Callable[[object], str | None]],
    key: Callable[[str], str] = str,
) -> list[SettingFlag]:
    """The flags declared on the fields of dataclass `cls`, in field order.

    Choices come from the annotation (Literal) or the field's rule (`OneOf`); the help
    ends with the default, taken from the field itself so it cannot go stale.
    """
    hints = get_type_hints(cls)
    out: list[SettingFlag] = []
    for f in fields(cls):
        doc = f.metadata.get(_FLAG)
        if doc is None:
            continue
        kind, choices = _kind(hints[f.name])
        rule = rules.get(f.name)
        if isinstance(rule, OneOf):
            choices = rule.choices
        default = f.default if f.default is not MISSING else None
        if default is None:
            shown = f"(default: {doc.unset})" if doc.unset else ""
        else:
            shown = f"(default {_shown(default)})"
        name = key(f.name)
        out.append(
            SettingFlag(
                key=name,
                flag="--" + name.replace("_", "-"),
                kind=kind,
                choices=choices,
                about=doc.help,
                default=shown,
                metavar=doc.metavar,
                hidden=doc.hidden,
            )
        )
    return out


# ------------------------------------------------------------------------------- PPO


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters; validated on construction so a typo fails before a run starts."""

    lr: float = field(default=3e-4, metadata=flag("learning rate"))
    #: The usual PPO values; a morphogenetic run starts from `MORPHOGENETIC_PPO` instead.
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = field(default=0.2, metadata=flag("PPO clip range epsilon"))
    epochs: int = field(default=4, metadata=flag("PPO epochs per update"))
    minibatches: int = field(default=4, metadata=flag("minibatches per PPO epoch"))
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    #: Stop the update once a minibatch's approx KL exceeds 1.5 * target_kl (None: never).
    target_kl: float | None = 0.05
    clip_mode: ClipMode = field(
        default="per_head", metadata=flag("clip each head's ratio or the joint ratio")
    )
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


#: The PPO defaults of a run on the morphogenetic env, tuned for its default task: five
#: decisions an episode with the return mostly at its end (gamma 1, lambda 0.98), and GROW
#: and the heads it reads worth sampling until the policy has seen which seed pays on the
#: cases where one does (entropy 0.1: at 0.05 the blueprint and slot heads of one training
#: seed settled early on a worse seed; BENCHMARKS.md, "Learning on the task family"). A
#: gymnasium env (`env_id`) starts from PPOConfig's own, the usual values for long episodes.
MORPHOGENETIC_PPO = PPOConfig(gamma=1.0, gae_lambda=0.98, entropy_coef=0.1)

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

    #: The morphogenetic host task; its name is checked by the command line, which knows
    #: the tasks (esper.morpho.tasks), since this package imports no environment. This
    #: default and those of `episode_length` and `epochs_per_step` are the env's own
    #: (a test ties them together).
    task: str = field(
        default="family", metadata=flag("morphogenetic host task; not used with --env-id")
    )
    episodes: int = field(
        default=10, metadata=flag("episodes in total, over all parallel envs", metavar="N")
    )
    envs: int = field(default=8, metadata=flag("parallel environments per PPO batch"))
    episode_length: int = field(
        default=5, metadata=flag("decisions (env steps) per episode; not used with --env-id")
    )
    epochs_per_step: int = field(
        default=5, metadata=flag("host epochs between two decisions; not used with --env-id")
    )
    slots: int = field(default=3, metadata=flag("seed slots in the host; not used with --env-id"))
    #: Train on this env instead of the morphogenetic one: a gymnasium id, or
    #: `module:callable` naming a factory of the user's own env.
    env_id: str | None = field(
        default=None,
        metadata=flag(
            "train on this env: a gymnasium id (CartPole-v1) or module:callable returning a "
            "gymnasium env; --task, --slots, --episode-length and --epochs-per-step then do "
            "not apply",
            unset="the morphogenetic env",
            metavar="ID",
        ),
    )
    #: Levels per dimension a Box action space of an `env_id` env is discretised into.
    bins: int | None = field(
        default=None,
        metadata=flag(
            f"discretise a Box action space into K levels per dimension ({MIN_BINS} to "
            f"{MAX_BINS}; only with --env-id)",
            unset="none, for discrete action spaces",
            metavar="K",
        ),
    )
    #: Steps each `env_id` env takes per PPO batch (None: DEFAULT_ROLLOUT_STEPS).
    rollout_steps: int | None = field(
        default=None,
        metadata=flag(
            "steps each env takes per PPO batch (only with --env-id)",
            unset=f"{DEFAULT_ROLLOUT_STEPS}",
            metavar="N",
        ),
    )
    ppo: PPOConfig = field(default_factory=lambda: MORPHOGENETIC_PPO)
    max_bad_updates: int = 5
    seed: int = field(default=0, metadata=flag("random seed"))
    device: str = field(default="cpu", metadata=flag("torch device: cpu, cuda, cuda:N or mps"))
    backend: str = field(default="inprocess", metadata=flag("where the envs step"))
    workers: int | None = field(
        default=None,
        metadata=flag("worker processes or Ray actors the envs use", unset="one per env"),
    )
    ray_address: str | None = field(
        default=None,
        metadata=flag(
            "join this running Ray cluster (backend ray)", unset="start a local one", metavar="ADDR"
        ),
    )
    #: Fault injection for tests and drills: "HEAD=nan@FIRST[-LAST]" (or inf) makes that
    #: head's logits non-finite in every minibatch of updates FIRST..LAST (batch indices).
    fault: str | None = field(default=None, metadata=flag("HEAD=nan@FIRST[-LAST]", hidden=True))
    #: Data-parallel learner processes (torch.distributed ranks), each stepping
    #: `envs / learners` of the envs; gradients and per-head statistics are reduced across
    #: them (esper.rl.learners). 1 is a single learner, the run as it always was.
    learners: int = field(
        default=1,
        metadata=flag(
            "data-parallel learner processes (torch.distributed ranks): each steps envs/N "
            "of the envs, gradients and per-head statistics are reduced across them; "
            "spawned here, or the ranks of a torchrun launch (docs/scaling.md)",
            metavar="N",
        ),
    )
    #: Torch intra-op threads of the learner (default: chosen by size, esper.rl.threads).
    threads: int | None = field(
        default=None,
        metadata=flag("torch threads of the learner", unset="chosen by the batch size"),
    )

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
    """Parse "HEAD=nan@3" or "HEAD=inf@3-5"; raises ConfigError saying what is expected.

    Only the form is checked: whether the run has a head of that name is for the
    trainer to say, which knows the heads its env declares.
    """
    expected = f"fault must look like HEAD=nan@FIRST[-LAST] (or inf), got {text!r}"
    head, sep, rest = text.partition("=")
    kind, sep2, span = rest.partition("@")
    ok_head = _HEAD.fullmatch(head) is not None
    if not (sep and sep2) or not ok_head or kind.lower() not in ("nan", "inf"):
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


def _env_id(value: object) -> str | None:
    ok = isinstance(value, str) and _ENV_ID.fullmatch(value) is not None
    return None if ok else "a gymnasium id like CartPole-v1 or module:callable"


#: More torch threads than any machine this runs on has cores is a typo.
MAX_THREADS = 1024

RUN_RULES: dict[str, Callable[[object], str | None]] = {
    "task": _text,
    "episodes": _whole(1, MAX_EPISODES),
    "envs": _whole(1, MAX_ENVS),
    "episode_length": _whole(1, MAX_EPISODE_LENGTH),
    "epochs_per_step": _whole(1, MAX_EPOCHS),
    "slots": _whole(1, MAX_SLOTS),
    "env_id": _optional(_env_id),
    "bins": _optional(_whole(MIN_BINS, MAX_BINS)),
    "rollout_steps": _optional(_whole(1, MAX_ROLLOUT_STEPS)),
    "max_bad_updates": _whole(1, MAX_BAD_UPDATES),
    "seed": _whole(0, MAX_SEED),
    "device": _device,
    "backend": _one_of(BACKENDS),
    "workers": _optional(_whole(1, MAX_ENVS)),
    "threads": _optional(_whole(1, MAX_THREADS)),
    "learners": _whole(1, MAX_LEARNERS),
    "ray_address": _optional(_text),
    "fault": _optional(_text),
}


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first value a run cannot start with.

    The task's name is not looked up here (the CLI does, against esper.morpho.tasks).
    """
    problem = _first_problem(cfg, RUN_RULES, str)
    if problem is not None:
        raise ConfigError(problem)
    if not isinstance(cfg.ppo, PPOConfig):
        raise ConfigError(f"ppo must be a PPOConfig, got {type(cfg.ppo).__name__}")
    if cfg.fault is not None:
        parse_fault(cfg.fault)
    _validate_backend(cfg)
    _validate_env(cfg)
    _validate_learners(cfg)


def _validate_learners(cfg: TrainConfig) -> None:
    """Every learner steps the same number of envs, in every batch: ranks run their
    minibatches in lock step (one gradient all-reduce each), so their shards must split
    alike. A run of fixed-length episodes ends on a batch of `episodes % envs` envs, which
    must split evenly too; an `env_id` run always steps all its envs."""
    n = cfg.learners
    if n == 1:
        return
    if cfg.envs % n:
        raise ConfigError(
            f"envs ({cfg.envs}) must be a multiple of learners ({n}): each learner steps "
            "an equal share of the envs"
        )
    if cfg.env_id is None and cfg.episodes % n:
        raise ConfigError(
            f"episodes ({cfg.episodes}) must be a multiple of learners ({n}): every batch, "
            "the last included, is split evenly across the learners"
        )
    if cfg.backend != "inprocess":
        raise ConfigError(
            f"learners={n} steps each learner's envs in its own process; backend "
            f"{cfg.backend!r} cannot be combined with it"
        )


def _validate_env(cfg: TrainConfig) -> None:
    """`bins` and `rollout_steps` shape an `env_id` env's run; the morphogenetic env has
    discrete heads and episodes of `episode_length` steps, so there they are mistakes. Its
    host epochs per episode are bounded as one size, not two: each flag alone in range can
    still multiply into a run that never ends an episode."""
    if cfg.env_id is not None:
        return
    epochs = cfg.episode_length * cfg.epochs_per_step
    if epochs > MAX_EPISODE_LENGTH:
        raise ConfigError(
            f"episode_length x epochs_per_step is {epochs} host epochs per episode; at most "
            f"{MAX_EPISODE_LENGTH} are allowed"
        )
    if cfg.bins is not None:
        raise ConfigError(
            f"bins needs env_id (it discretises an env's Box actions), got bins={cfg.bins} "
            "without env_id"
        )
    if cfg.rollout_steps is not None:
        raise ConfigError(
            f"rollout_steps needs env_id (the morphogenetic env steps episode_length per "
            f"episode), got rollout_steps={cfg.rollout_steps} without env_id"
        )


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


def setting_flags() -> list[SettingFlag]:
    """Every `esper ppo` settings flag, in TrainConfig's field order (PPO's in its place).

    PPO flags are named by their flat keys (`--clip`), which `build_config` maps back.
    """
    ppo_flags = field_flags(PPOConfig, PPO_RULES, ppo_label)
    unmapped = [f.key for f in ppo_flags if f.key not in FLAT_PPO_KEYS]
    if unmapped:  # a flag build_config would refuse as an unknown setting
        raise TypeError(f"PPO flags without a flat key: {unmapped}")
    run_flags = {s.key: s for s in field_flags(TrainConfig, RUN_RULES)}
    out: list[SettingFlag] = []
    for f in fields(TrainConfig):
        if f.name == "ppo":
            out += ppo_flags
        elif f.name in run_flags:
            out.append(run_flags[f.name])
    return out


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


#: Settings of the morphogenetic env alone: given as flags beside `env_id` they would be
#: silently ignored, so they are refused. (A config file may hold them: a recorded run's
#: configuration holds every field.)
MORPHO_ONLY = ("task", "slots", "episode_length", "epochs_per_step")


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
    morpho_only = [key for key in MORPHO_ONLY if key in flag_run]
    if run.get("env_id") is not None and morpho_only:
        flags = ", ".join("--" + key.replace("_", "-") for key in morpho_only)
        raise ConfigError(
            f"{flags}: settings of the morphogenetic env; they do not apply with --env-id"
        )
    defaults = PPOConfig() if run.get("env_id") is not None else MORPHOGENETIC_PPO
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
