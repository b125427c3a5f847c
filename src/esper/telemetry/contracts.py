"""Typed telemetry events: what the trainer says, and the exact shape it has on disk.

Every event is one JSON object per line in `events.jsonl` with the keys of `EVENT_KEYS`;
its `data` object holds the fields of the payload dataclass that `PAYLOAD_TYPES` pairs
with the event type. Parsing is strict (unknown keys, missing keys and wrong types all
raise `ContractError` naming the field) because a silently defaulted field is how a
dashboard ends up showing a healthy 1.0 that nobody measured.

Floats round-trip exactly, NaN and infinities included: `json` writes `repr(float)` and
the non-standard tokens `NaN`, `Infinity`, `-Infinity`, and reads them back bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import traceback as tb
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any, ClassVar, Literal, Self

from esper.telemetry.heads import (
    HEAD_COUNT_STATS,
    HEAD_STATS,
    UPDATE_SCALARS,
    ExplosionReport,
    HeadStats,
    RatioBands,
    UpdateStats,
    check_head_names,
    flat_key,
    heads_from_flat,
    iter_flat_heads,
)


class ContractError(ValueError):
    """A value does not fit the telemetry contract; the message names the field."""


class EventType(StrEnum):
    """Kinds of telemetry event; the value is the upper-case name written to disk."""

    TRAINING_STARTED = "TRAINING_STARTED"
    EPISODE_COMPLETED = "EPISODE_COMPLETED"
    SEED_LIFECYCLE = "SEED_LIFECYCLE"
    PPO_UPDATE_COMPLETED = "PPO_UPDATE_COMPLETED"
    PPO_UPDATE_SKIPPED = "PPO_UPDATE_SKIPPED"
    RATIO_EXPLOSION = "RATIO_EXPLOSION"
    TELEMETRY_DROPS = "TELEMETRY_DROPS"
    WORKER_STATUS = "WORKER_STATUS"
    WORKER_RESTARTED = "WORKER_RESTARTED"
    TRAINING_FINISHED = "TRAINING_FINISHED"
    TRAINING_FAILED = "TRAINING_FAILED"


Severity = Literal["info", "warning", "error"]
SEVERITIES: frozenset[str] = frozenset(typing.get_args(Severity))
#: Event types after which a run writes nothing more.
TERMINAL_EVENTS: frozenset[EventType] = frozenset(
    {EventType.TRAINING_FINISHED, EventType.TRAINING_FAILED}
)


# --------------------------------------------------------------------------- value checks


def _type_name(value: object) -> str:
    return type(value).__name__


def json_value(value: object, where: str) -> Any:
    """`value` as plain JSON data (tuples become lists); anything else is a ContractError.

    Free-form fields (the run configuration) must still survive a JSON round trip, so a
    `Path` or a numpy scalar is rejected here, at the producer, rather than at write time.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContractError(f"{where}: keys must be str, got {_type_name(key)} {key!r}")
            out[key] = json_value(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ContractError(f"{where}: expected a JSON value, got {_type_name(value)}")


def _coerce(tp: Any, value: object, where: str) -> Any:
    """`value` checked against the annotation `tp`; ints widen to float, bools never count."""
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContractError(f"{where}: expected float, got {_type_name(value)} {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ContractError(f"{where}: {value} does not fit a float") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(f"{where}: expected int, got {_type_name(value)} {value!r}")
        return int(value)
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise ContractError(
                f"{where}: expected {tp.__name__}, got {_type_name(value)} {value!r}"
            )
        # A str subclass (an enum member) becomes the plain string JSON would write.
        return value if type(value) is tp else str.__str__(value)
    if tp is Any:  # free-form JSON value (inside a free-form object)
        return json_value(value, where)
    if tp is dict:  # free-form JSON object
        if not isinstance(value, Mapping):
            raise ContractError(f"{where}: expected an object, got {_type_name(value)}")
        return json_value(value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _coerce(inner, value, where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ContractError(f"{where}: expected an object, got {_type_name(value)}")
        key_tp, val_tp = args
        return {
            _coerce(key_tp, k, f"{where} key"): _coerce(val_tp, v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ContractError(f"{where}: expected a list, got {_type_name(value)}")
        (item_tp,) = args
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: unsupported annotation {tp!r}")  # a bug in this module


_OPTIONAL_INT = int | None
_OPTIONAL_INT_TYPES = (int, type(None))
_OPTIONAL_FLOAT = float | None


def _checked(tp: Any, value: object, where: str) -> Any:
    """`_coerce` with a fast path for scalars that already have an exact type."""
    return value if type(value) in _EXACT_TYPES.get(tp, ()) else _coerce(tp, value, where)


# --------------------------------------------------------------------------- payloads


#: Scalar annotations -> value types taken as they are (no conversion, and immutable, so
#: never copied). Anything else goes through `_coerce`, which also copies containers.
_EXACT_TYPES: dict[Any, tuple[type, ...]] = {
    float: (float,),
    int: (int,),
    bool: (bool,),
    str: (str,),
    float | None: (float, type(None)),
    int | None: (int, type(None)),
    str | None: (str, type(None)),
}


#: One encoder for every line: `json.dumps` with options builds a new one per call.
_encode_json = json.JSONEncoder(allow_nan=True, separators=(",", ":"), check_circular=False).encode


def _float_json(value: float) -> str:
    """A float as the JSON encoder writes it (`allow_nan`: NaN, Infinity, -Infinity)."""
    if math.isfinite(value):
        return float.__repr__(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


#: How the JSON encoder spells each scalar a payload field may hold.
_SCALAR_JSON: dict[type, Callable[[Any], str]] = {
    float: _float_json,
    int: int.__repr__,
    bool: lambda value: "true" if value else "false",
    str: encode_basestring_ascii,
    type(None): lambda _: "null",
}


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    tp: Any
    required: bool
    exact: tuple[type, ...]  # empty for containers


class Payload:
    """Base of every payload: strict validation on construction, `to_dict`/`from_dict`.

    Subclasses are frozen keyword-only dataclasses whose annotations use only float, int,
    bool, str, `X | None`, `dict[str, X]`, `list[str]` and `dict` (free-form JSON).
    Validation also normalises: ints become floats in float fields and containers are
    copied, so a payload never aliases the caller's dicts.

    Each payload knows its event type, its severity and its one-line message, so the
    emitter has one entry point (`TelemetryEmitter.emit`) for every kind of event.
    """

    EVENT_TYPE: ClassVar[EventType]

    def severity(self) -> Severity:
        """How loud the event is; most are information."""
        return "info"

    def summary(self) -> str:
        """The event's one-line message (logs, console, the dashboard's event log)."""
        raise NotImplementedError

    @classmethod
    @functools.cache
    def _specs(cls) -> tuple[_FieldSpec, ...]:
        hints = typing.get_type_hints(cls)
        return tuple(
            _FieldSpec(
                f.name,
                hints[f.name],
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                _EXACT_TYPES.get(hints[f.name], ()),
            )
            for f in dataclasses.fields(typing.cast(Any, cls))
        )

    @classmethod
    @functools.cache
    def _names(cls) -> frozenset[str]:
        return frozenset(spec.name for spec in cls._specs())

    @classmethod
    @functools.cache
    def _containers(cls) -> tuple[str, ...]:
        """Fields that are not plain scalars (they need copying and checking as JSON)."""
        return tuple(spec.name for spec in cls._specs() if not spec.exact)

    @classmethod
    @functools.cache
    def _checks(cls) -> tuple[tuple[str, tuple[type, ...], Any], ...]:
        """(name, exact value types, annotation) per field, as plain tuples (fast to
        unpack: this runs for every payload on the driver's path)."""
        return tuple((spec.name, spec.exact, spec.tp) for spec in cls._specs())

    @classmethod
    @functools.cache
    def _json_format(cls) -> str | None:
        """The class's JSON object as a %-format of its values' JSON spellings, when that
        object is its scalar fields in order (no containers, no own `to_dict`); else None."""
        if cls._containers() or cls.to_dict is not Payload.to_dict:
            return None
        keys = (encode_basestring_ascii(spec.name).replace("%", "%%") for spec in cls._specs())
        return "{" + ",".join(f"{key}:%s" for key in keys) + "}"

    @classmethod
    @functools.cache
    def _exact_rows(cls) -> frozenset[tuple[type, ...]]:
        """Every row of value types (field order) that needs no conversion: one tuple per
        choice of None or not among the optional scalar fields (at most 2**6 rows)."""
        options = [spec.exact for spec in cls._specs()]
        if not all(options) or math.prod(len(o) for o in options) > 64:
            return frozenset()
        return frozenset(itertools.product(*options))

    def __post_init__(self) -> None:
        # Payloads are built for every event on the driver's path: when the row of value
        # types is one that needs nothing (the common case), one set lookup checks it all.
        values = vars(self)
        if tuple(map(type, values.values())) in self._exact_rows():
            return
        for name, exact, tp in self._checks():
            value = values[name]
            if type(value) in exact:  # the common case, kept cheap
                continue
            checked = _coerce(tp, value, f"{type(self).__name__}.{name}")
            if checked is not value:
                object.__setattr__(self, name, checked)

    def to_dict(self) -> dict[str, Any]:
        """The payload's fields as fresh plain JSON data (the event's `data` object).

        The instance dict holds exactly the fields, in declaration order (the dataclass
        `__init__` sets them so), so a copy of it is the object; containers are copied
        and checked as JSON.
        """
        out = dict(vars(self))
        if len(out) != len(self._specs()):  # something else was set on the instance
            out = {spec.name: out[spec.name] for spec in self._specs()}
        for name in self._containers():
            out[name] = json_value(out[name], name)
        return out

    def to_json(self) -> str:
        """`to_dict()` as compact JSON text, exactly what the JSON encoder writes for it.

        A payload of scalar fields is joined from JSON's own spellings of its keys and
        values, which costs half the encoder's call (tests hold the two to the byte).
        """
        form, values = self._json_format(), vars(self)
        if form is None or len(values) != len(self._specs()):
            return _encode_json(self.to_dict())
        spell = _SCALAR_JSON
        return form % tuple([spell[type(value)](value) for value in values.values()])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Strict inverse of `to_dict`: unknown or missing required keys are errors."""
        if not isinstance(data, Mapping):
            raise ContractError(f"{cls.__name__}: expected an object, got {_type_name(data)}")
        if not cls._names().issuperset(data):
            unknown = sorted(set(data) - cls._names())
            raise ContractError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        missing = [spec.name for spec in cls._specs() if spec.required and spec.name not in data]
        if missing:
            raise ContractError(f"{cls.__name__}: missing field(s) {', '.join(missing)}")
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class TrainingStarted(Payload):
    """The run's identity and configuration, first event of every run."""

    config: dict[str, Any]
    task: str
    head_names: list[str]
    head_sizes: dict[str, int]
    episodes_total: int
    n_envs: int
    device: str
    esper_version: str
    resumed_from_update: int | None = None  # set when `esper ppo --resume` continues a run
    #: On resume: the batch it restarts at. Events of this batch or later that an earlier
    #: attempt wrote without committing their update are void (see `committed_events`).
    resumed_from_batch: int | None = None
    #: The PPO clip range the run starts with: the dashboard and the report draw each head's
    #: health bands from it (`RatioBands`). None: not recorded (logs from before runs
    #: recorded it); readers then assume the spec's 0.2 (`SPEC_CLIP_EPS`).
    clip_eps: float | None = None

    EVENT_TYPE: ClassVar[EventType] = EventType.TRAINING_STARTED

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_head_names(self.head_names)
        except ValueError as exc:
            raise ContractError(f"TrainingStarted.head_names: {exc}") from None
        try:
            RatioBands.for_clip(self.clip_eps)
        except ValueError as exc:
            raise ContractError(f"TrainingStarted.clip_eps: {exc}") from None
        if set(self.head_sizes) != set(self.head_names):
            raise ContractError(
                f"TrainingStarted.head_sizes: heads {sorted(self.head_sizes)} differ from "
                f"head_names {self.head_names}"
            )

    def summary(self) -> str:
        if self.resumed_from_update is not None:
            message = (
                f"training resumed at update {self.resumed_from_update}: "
                f"{self.task} ({self.device})"
            )
        else:
            # 0 episodes: a run that ends when its loop does (SB3, a hand-written loop)
            planned = f"{self.episodes_total} episodes on " if self.episodes_total > 0 else ""
            message = f"training started: {self.task}, {planned}{self.n_envs} envs ({self.device})"
        if self.resumed_from_batch is not None:
            message += f"; uncommitted events of batch {self.resumed_from_batch} on are discarded"
        return message


@dataclass(frozen=True, kw_only=True)
class EpisodeCompleted(Payload):
    """One environment finished one episode (in esper's own task, one host training run).

    The host's accuracy and seed counts are esper's; an episode of another environment
    (an SB3 or hand-written run) has no accuracy (None) and no seeds (0).
    """

    env_index: int
    episode_return: float
    final_accuracy: float | None = None
    seeds_grown: int = 0
    seeds_fossilized: int = 0
    seeds_killed: int = 0
    length: int
    worker: int | None = None  # the worker that stepped the env (None in older logs)

    EVENT_TYPE: ClassVar[EventType] = EventType.EPISODE_COMPLETED

    def summary(self) -> str:
        message = f"env {self.env_index} episode done: return {self.episode_return:.3f}"
        if self.final_accuracy is not None:
            message += f", accuracy {self.final_accuracy:.3f}"
        return message


@dataclass(frozen=True, kw_only=True)
class SeedLifecycle(Payload):
    """A seed in one slot of one environment changed stage."""

    env_index: int
    slot: int
    from_stage: str
    to_stage: str
    blueprint: str | None
    alpha: float
    worker: int | None = None  # the worker that stepped the env (None in older logs)

    EVENT_TYPE: ClassVar[EventType] = EventType.SEED_LIFECYCLE

    def summary(self) -> str:
        planted = f" ({self.blueprint})" if self.blueprint else ""
        move = f"{self.from_stage} -> {self.to_stage}"
        return f"env {self.env_index} slot {self.slot}: {move}{planted}"


_HEAD_STAT_TYPES: dict[str, Any] = {
    stat: (int if stat in HEAD_COUNT_STATS else float) for stat in HEAD_STATS
}
_UPDATE_SCALAR_TYPES: dict[str, Any] = {
    name: tp for name, tp in typing.get_type_hints(UpdateStats).items() if name in UPDATE_SCALARS
}
_PPO_UPDATE_OWN = ("update_index", "mean_return", "host_accuracy")


def _checked_heads(heads: object, where: str) -> dict[str, HeadStats]:
    """The per-head records of an update as fresh `HeadStats`, every name and value checked.

    Values are named by their edge key (`head_op_ratio_max`), as in the JSON line.
    """
    if not isinstance(heads, Mapping):
        raise ContractError(f"{where}: expected a mapping of head name -> HeadStats")
    try:
        check_head_names(heads)
    except ValueError as exc:
        raise ContractError(f"{where}: {exc}") from None
    out: dict[str, HeadStats] = {}
    for head, record in heads.items():
        if not isinstance(record, HeadStats):
            raise ContractError(f"{where}[{head!r}]: expected HeadStats, got {_type_name(record)}")
        if type(record) is HeadStats and all(
            type(getattr(record, stat)) is tp for stat, tp in _HEAD_STAT_TYPES.items()
        ):
            out[head] = record  # exact already, and immutable: shared, not rebuilt
            continue
        out[head] = HeadStats(
            *(
                _checked(tp, getattr(record, stat), f"{where}: {flat_key(head, stat)}")
                for stat, tp in _HEAD_STAT_TYPES.items()
            )
        )
    return out


@dataclass(frozen=True, kw_only=True)
class PPOUpdatePayload(Payload):
    """One PPO update's statistics: `UpdateStats` (a record per head, the joint, scalars).

    Ratios are against the log-probs stored at rollout time, maxima over the samples where
    the head was causally relevant, across every epoch and minibatch of the update. On
    disk the heads are flat TELE-151 fields (`head_op_ratio_max`, ...), head by head in the
    run's order, next to the scalars; the explosion report travels as its own event.
    """

    update_index: int
    stats: UpdateStats
    mean_return: float | None = None
    host_accuracy: float | None = None

    EVENT_TYPE: ClassVar[EventType] = EventType.PPO_UPDATE_COMPLETED

    def __post_init__(self) -> None:
        where = type(self).__name__
        _checked(int, self.update_index, f"{where}.update_index")
        for name in ("mean_return", "host_accuracy"):
            value = _checked(_OPTIONAL_FLOAT, getattr(self, name), f"{where}.{name}")
            object.__setattr__(self, name, value)
        stats = self.stats
        if not isinstance(stats, UpdateStats):
            raise ContractError(f"{where}.stats: expected UpdateStats, got {_type_name(stats)}")
        scalars = {}
        for name, tp in _UPDATE_SCALAR_TYPES.items():
            value = getattr(stats, name)
            exact = type(value) in _EXACT_TYPES.get(tp, ())  # the message only on failure
            scalars[name] = value if exact else _checked(tp, value, f"{where}.{name}")
        heads = _checked_heads(stats.heads, where)
        object.__setattr__(self, "stats", UpdateStats(heads=heads, **scalars))

    @property
    def heads(self) -> Mapping[str, HeadStats]:
        """The per-head records, in the run's order."""
        return self.stats.heads

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object: update index, every head's fields, scalars, episode means."""
        stats = self.stats
        return {
            "update_index": self.update_index,
            **dict(iter_flat_heads(stats.heads)),
            **{name: getattr(stats, name) for name in UPDATE_SCALARS},
            "mean_return": self.mean_return,
            "host_accuracy": self.host_accuracy,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Strict inverse of `to_dict`; logs written before heads were data load too."""
        where = cls.__name__
        if not isinstance(data, Mapping):
            raise ContractError(f"{where}: expected an object, got {_type_name(data)}")
        try:
            heads, rest = heads_from_flat(data)
        except KeyError as exc:
            raise ContractError(f"{where}: missing field(s) {exc.args[0]}") from None
        unknown = sorted(set(rest) - {*UPDATE_SCALARS, *_PPO_UPDATE_OWN})
        if unknown:
            raise ContractError(f"{where}: unknown field(s) {', '.join(unknown)}")
        missing = [name for name in ("update_index", *UPDATE_SCALARS) if name not in rest]
        if missing:
            raise ContractError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(
            update_index=rest["update_index"],
            stats=UpdateStats(heads=heads, **{name: rest[name] for name in UPDATE_SCALARS}),
            mean_return=rest.get("mean_return"),
            host_accuracy=rest.get("host_accuracy"),
        )

    def summary(self) -> str:
        return f"update {self.update_index}: {self.stats.summary()}"


@dataclass(frozen=True, kw_only=True)
class PPOUpdateSkipped(Payload):
    """A batch whose update applied no optimizer step (e.g. every minibatch non-finite)."""

    reason: str
    batch: int
    update_index: int
    nonfinite: dict[str, int] = field(default_factory=dict)  # head -> non-finite samples

    EVENT_TYPE: ClassVar[EventType] = EventType.PPO_UPDATE_SKIPPED

    def severity(self) -> Severity:
        return "warning"

    def summary(self) -> str:
        return f"update {self.update_index} skipped (batch {self.batch}): {self.reason}"


@dataclass(frozen=True, kw_only=True)
class RatioExplosion(Payload):
    """The joint ratio left the trust region in one update; which heads drove it.

    On disk the report's fields sit beside `update_index` (see `ExplosionReport`); a log
    written before `driver` could be null still loads.
    """

    update_index: int
    report: ExplosionReport

    EVENT_TYPE: ClassVar[EventType] = EventType.RATIO_EXPLOSION
    _REPORT_TYPES: ClassVar[dict[str, Any]] = {
        "joint_ratio_max": float,
        "worst_log_ratios": dict[str, float],
        "shares": dict[str, float],
        "driver": str | None,
        "hidden_by_heads": bool,
    }

    def __post_init__(self) -> None:
        where = type(self).__name__
        _checked(int, self.update_index, f"{where}.update_index")
        if not isinstance(self.report, ExplosionReport):
            raise ContractError(
                f"{where}.report: expected ExplosionReport, got {_type_name(self.report)}"
            )
        values = {
            name: _coerce(tp, getattr(self.report, name), f"{where}.{name}")
            for name, tp in self._REPORT_TYPES.items()
        }
        if set(values["shares"]) != set(values["worst_log_ratios"]):
            raise ContractError(f"{where}: shares and worst_log_ratios name different heads")
        if values["driver"] is not None and values["driver"] not in values["shares"]:
            raise ContractError(f"{where}.driver: {values['driver']!r} is not a head")
        object.__setattr__(self, "report", ExplosionReport(**values))

    def to_dict(self) -> dict[str, Any]:
        report = self.report
        return {
            "update_index": self.update_index,
            **{name: getattr(report, name) for name in self._REPORT_TYPES},
            "worst_log_ratios": dict(report.worst_log_ratios),
            "shares": dict(report.shares),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        where = cls.__name__
        if not isinstance(data, Mapping):
            raise ContractError(f"{where}: expected an object, got {_type_name(data)}")
        names = {"update_index", *cls._REPORT_TYPES}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ContractError(f"{where}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(names - set(data))
        if missing:
            raise ContractError(f"{where}: missing field(s) {', '.join(missing)}")
        report = ExplosionReport(**{name: data[name] for name in cls._REPORT_TYPES})
        return cls(update_index=data["update_index"], report=report)

    @property
    def shares(self) -> dict[str, float]:
        return self.report.shares

    def severity(self) -> Severity:
        return "warning"

    def summary(self) -> str:
        return f"update {self.update_index}: {self.report.summary()}"


@dataclass(frozen=True, kw_only=True)
class TelemetryDrops(Payload):
    """A live backend lost events (queue full) or failed on them; counts are cumulative."""

    backend: str
    dropped: int
    failed: int = 0
    last_error: str | None = None

    EVENT_TYPE: ClassVar[EventType] = EventType.TELEMETRY_DROPS

    def severity(self) -> Severity:
        return "warning"

    def summary(self) -> str:
        error = f" (last error: {self.last_error})" if self.last_error else ""
        return (
            f"telemetry backend {self.backend}: {self.dropped} events dropped, "
            f"{self.failed} failed{error}"
        )


@dataclass(frozen=True, kw_only=True)
class WorkerStatus(Payload):
    """One env worker after a batch's rollout: one event per worker per batch.

    `steps_per_second` is the env steps the worker took over the rollout's wall time
    (acting in the driver included), so the workers' rates add up to the run's.
    """

    worker: int
    backend: str  # "inprocess" | "processes" | "ray"
    alive: bool
    restarts: int  # replacements of this worker so far in the run
    envs: int  # envs this worker steps
    steps: int  # env steps it took in the batch
    steps_per_second: float

    EVENT_TYPE: ClassVar[EventType] = EventType.WORKER_STATUS

    def severity(self) -> Severity:
        return "info" if self.alive else "warning"

    def summary(self) -> str:
        state = f"{self.steps_per_second:.1f} env steps/s" if self.alive else "DEAD"
        return (
            f"worker {self.worker} ({self.backend}, {self.envs} envs): {state}, "
            f"{self.restarts} restarts"
        )


@dataclass(frozen=True, kw_only=True)
class WorkerRestarted(Payload):
    """A lost env worker (dead, or silent past its timeout) was replaced.

    Its envs were restored by replaying their episodes (same seeds, same actions; envs that
    report restart points from their current episode's start), so the batch goes on with
    the same numbers; `replayed_steps` is what the replay cost.
    """

    worker: int
    backend: str
    reason: str
    restarts: int  # replacements of this worker so far, this one included
    replayed_steps: int

    EVENT_TYPE: ClassVar[EventType] = EventType.WORKER_RESTARTED

    def severity(self) -> Severity:
        return "warning"

    def summary(self) -> str:
        return (
            f"worker {self.worker} ({self.backend}) lost ({self.reason}); replaced and "
            f"{self.replayed_steps} env steps replayed (restart {self.restarts})"
        )


@dataclass(frozen=True, kw_only=True)
class TrainingFinished(Payload):
    """The run ended without an exception: done, or stopped early by the operator."""

    episodes: int
    updates: int
    wall_seconds: float
    run_dir: str
    interrupted: bool = False  # stopped (Ctrl-C, stop request) before the last episode

    EVENT_TYPE: ClassVar[EventType] = EventType.TRAINING_FINISHED

    def summary(self) -> str:
        ended = "interrupted" if self.interrupted else "finished"
        return (
            f"training {ended}: {self.episodes} episodes, {self.updates} updates "
            f"in {self.wall_seconds:.1f} s"
        )


@dataclass(frozen=True, kw_only=True)
class TrainingFailed(Payload):
    """The run ended with an exception."""

    error: str
    traceback: str | None = None

    EVENT_TYPE: ClassVar[EventType] = EventType.TRAINING_FAILED

    @classmethod
    def from_exception(cls, error: BaseException | str, traceback: str | None = None) -> Self:
        """A failure from an exception: its type, message and traceback are kept."""
        if isinstance(error, BaseException):
            if traceback is None and error.__traceback__ is not None:
                traceback = "".join(tb.format_exception(error))
            error = f"{type(error).__name__}: {error}"
        return cls(error=error, traceback=traceback)

    def severity(self) -> Severity:
        return "error"

    def summary(self) -> str:
        return f"training failed: {self.error}"


#: Which payload class each event type carries.
PAYLOAD_TYPES: dict[EventType, type[Payload]] = {
    cls.EVENT_TYPE: cls
    for cls in (
        TrainingStarted,
        EpisodeCompleted,
        SeedLifecycle,
        PPOUpdatePayload,
        PPOUpdateSkipped,
        RatioExplosion,
        TelemetryDrops,
        WorkerStatus,
        WorkerRestarted,
        TrainingFinished,
        TrainingFailed,
    )
}
assert set(PAYLOAD_TYPES) == set(EventType), "every event type needs its payload"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, init=False)
class TelemetryEvent:
    """One telemetry event: envelope plus the typed payload its `event_type` calls for."""

    event_type: EventType
    timestamp: float  # seconds since the epoch
    run_id: str
    seq: int  # per run, strictly increasing from the emitter
    episode: int | None
    batch: int | None
    severity: Severity
    message: str
    payload: Payload = field(repr=False)

    def __init__(
        self,
        event_type: EventType,
        timestamp: float,
        run_id: str,
        seq: int,
        episode: int | None,
        batch: int | None,
        severity: Severity,
        message: str,
        payload: Payload,
    ) -> None:
        # The dataclass's own `__init__` of a frozen class sets each field through
        # `object.__setattr__`; one update of the instance dict does the same for a third
        # of the cost, on the driver's path for every event of every worker.
        vars(self).update(
            event_type=event_type,
            timestamp=timestamp,
            run_id=run_id,
            seq=seq,
            episode=episode,
            batch=batch,
            severity=severity,
            message=message,
            payload=payload,
        )
        # Fast path: every field already of its exact type (what the emitter builds), one
        # expression on the arguments. It accepts exactly what `_check` accepts.
        if not (
            type(timestamp) is float
            and type(run_id) is str
            and type(seq) is int
            and seq >= 0
            and type(episode) in _OPTIONAL_INT_TYPES
            and type(batch) in _OPTIONAL_INT_TYPES
            and type(message) is str
            and type(severity) is str
            and severity in SEVERITIES
            and type(event_type) is EventType
            and type(payload) is PAYLOAD_TYPES[event_type]
        ):
            self._check()

    def _check(self) -> None:
        """Every envelope check, one by one, with a message naming what is wrong."""
        if not isinstance(self.event_type, EventType):
            raise ContractError(f"event_type: expected EventType, got {self.event_type!r}")
        object.__setattr__(self, "timestamp", _checked(float, self.timestamp, "timestamp"))
        _checked(str, self.run_id, "run_id")
        if _checked(int, self.seq, "seq") < 0:
            raise ContractError(f"seq: must be >= 0, got {self.seq}")
        _checked(_OPTIONAL_INT, self.episode, "episode")
        _checked(_OPTIONAL_INT, self.batch, "batch")
        if not isinstance(self.severity, str) or self.severity not in SEVERITIES:
            raise ContractError(
                f"severity: expected one of {sorted(SEVERITIES)}, got {self.severity!r}"
            )
        _checked(str, self.message, "message")
        expected = PAYLOAD_TYPES[self.event_type]
        if type(self.payload) is not expected:
            raise ContractError(
                f"payload: {self.event_type} carries {expected.__name__}, "
                f"got {_type_name(self.payload)}"
            )


#: The keys of every event's JSON object, in the order they are written.
EVENT_KEYS: tuple[str, ...] = (
    "event_type",
    "timestamp",
    "run_id",
    "seq",
    "episode",
    "batch",
    "severity",
    "message",
    "data",
)
_EVENT_KEY_SET = frozenset(EVENT_KEYS)


def event_to_dict(event: TelemetryEvent) -> dict[str, Any]:
    """The event as the JSON object written to disk (keys `EVENT_KEYS`)."""
    return {
        "event_type": event.event_type.value,
        "timestamp": event.timestamp,
        "run_id": event.run_id,
        "seq": event.seq,
        "episode": event.episode,
        "batch": event.batch,
        "severity": event.severity,
        "message": event.message,
        "data": event.payload.to_dict(),
    }


#: The envelope's pieces that come from small fixed sets, JSON-encoded once.
_LINE_START = {t: '{"event_type":' + encode_basestring_ascii(t.value) for t in EventType}
_SEVERITY_JSON = {s: encode_basestring_ascii(s) for s in SEVERITIES}


def _int_or_null(value: int | None) -> str:
    return "null" if value is None else int.__repr__(value)


def event_to_json_line(event: TelemetryEvent) -> str:
    """One line of `events.jsonl`, without the trailing newline (JSON escapes any inside).

    Exactly `json.dumps(event_to_dict(event), allow_nan=True, separators=(",", ":"))`
    (the tests hold it to that), built faster: the envelope's keys are fixed and its
    values typed by `TelemetryEvent`, so it is joined from JSON's own spellings of its
    parts, and the payload writes its own object (`Payload.to_json`). This runs for
    every event on the driver's path.
    """
    if not math.isfinite(event.timestamp):  # spelled NaN / Infinity by the encoder
        return _encode_json(event_to_dict(event))
    return (
        f"{_LINE_START[event.event_type]},"
        f'"timestamp":{float.__repr__(event.timestamp)},'
        f'"run_id":{encode_basestring_ascii(event.run_id)},'
        f'"seq":{int.__repr__(event.seq)},'
        f'"episode":{_int_or_null(event.episode)},'
        f'"batch":{_int_or_null(event.batch)},'
        f'"severity":{_SEVERITY_JSON[event.severity]},'
        f'"message":{encode_basestring_ascii(event.message)},'
        f'"data":{event.payload.to_json()}}}'
    )


def event_from_dict(data: Mapping[str, Any]) -> TelemetryEvent:
    """Strict inverse of `event_to_dict`; any deviation is a ContractError."""
    if not isinstance(data, Mapping):
        raise ContractError(f"event: expected an object, got {_type_name(data)}")
    if not _EVENT_KEY_SET.issuperset(data):
        unknown = sorted(set(data) - _EVENT_KEY_SET)
        raise ContractError(f"event: unknown key(s) {', '.join(unknown)}")
    missing = [key for key in EVENT_KEYS if key not in data]
    if missing:
        raise ContractError(f"event: missing key(s) {', '.join(missing)}")
    raw_type = data["event_type"]
    try:
        event_type = EventType(raw_type)
    except ValueError:
        raise ContractError(f"event_type: unknown event type {raw_type!r}") from None
    try:
        payload = PAYLOAD_TYPES[event_type].from_dict(data["data"])
    except ContractError as exc:
        raise ContractError(f"data: {exc}") from None
    return TelemetryEvent(
        event_type=event_type,
        timestamp=data["timestamp"],
        run_id=data["run_id"],
        seq=data["seq"],
        episode=data["episode"],
        batch=data["batch"],
        severity=data["severity"],
        message=data["message"],
        payload=payload,
    )


def event_from_json_line(line: str) -> TelemetryEvent:
    """Parse one line of `events.jsonl`; bad JSON is a ContractError too."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an int too long to parse
        raise ContractError(f"bad JSON: {exc}") from None
    return event_from_dict(data)
