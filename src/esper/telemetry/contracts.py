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
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal, Self

from esper.actions import HEAD_NAMES


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
        return value
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
    """

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

    def __post_init__(self) -> None:
        for spec in self._specs():
            value = getattr(self, spec.name)
            if type(value) in spec.exact:  # the common case, kept cheap
                continue
            checked = _coerce(spec.tp, value, f"{type(self).__name__}.{spec.name}")
            if checked is not value:
                object.__setattr__(self, spec.name, checked)

    def to_dict(self) -> dict[str, Any]:
        """The payload's fields as fresh plain JSON data (the event's `data` object)."""
        out = {spec.name: getattr(self, spec.name) for spec in self._specs()}
        for spec in self._specs():
            if not spec.exact:
                out[spec.name] = json_value(out[spec.name], spec.name)
        return out

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

    config: dict
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


@dataclass(frozen=True, kw_only=True)
class EpisodeCompleted(Payload):
    """One environment finished one episode (one host training run)."""

    env_index: int
    episode_return: float
    final_accuracy: float
    seeds_grown: int
    seeds_fossilized: int
    seeds_killed: int
    length: int
    worker: int | None = None  # the worker that stepped the env (None in older logs)


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


#: The per-head statistics other than ratio max (TELE-151, spelled out below): name ->
#: (type, neutral default). `relevant` counts the samples where the head was causally
#: used; 0 means the ratio fields are the neutral defaults, not measurements.
PER_HEAD_STATS: dict[str, tuple[type, float | int]] = {
    "ratio_min": (float, 1.0),
    "clip_fraction": (float, 0.0),
    "entropy": (float, 0.0),
    "approx_kl": (float, 0.0),
    "relevant": (int, 0),
    "nonfinite": (int, 0),
}

#: Base of PPOUpdatePayload holding `head_{h}_{stat}` for every head and PER_HEAD_STATS
#: entry: 48 fields generated here, in this one place, so no head can be forgotten.
_PPOPerHeadStats = dataclasses.make_dataclass(
    "_PPOPerHeadStats",
    [
        (f"head_{head}_{stat}", tp, dataclasses.field(default=default))
        for head in HEAD_NAMES
        for stat, (tp, default) in PER_HEAD_STATS.items()
    ],
    bases=(Payload,),
    frozen=True,
    kw_only=True,
)


@dataclass(frozen=True, kw_only=True)
class PPOUpdatePayload(_PPOPerHeadStats):  # type: ignore[misc,valid-type]
    """One PPO update's statistics, as returned by `PPOAgent.update()`.

    Ratios are against the log-probs stored at rollout time, maxima over the samples where
    the head was causally relevant, across every epoch and minibatch of the update. The
    eight `head_*_ratio_max` fields are the TELE-151 record and stay spelled out.
    """

    update_index: int
    head_op_ratio_max: float = 1.0
    head_slot_ratio_max: float = 1.0
    head_blueprint_ratio_max: float = 1.0
    head_style_ratio_max: float = 1.0
    head_tempo_ratio_max: float = 1.0
    head_alpha_target_ratio_max: float = 1.0
    head_alpha_speed_ratio_max: float = 1.0
    head_alpha_curve_ratio_max: float = 1.0
    joint_ratio_max: float = 1.0
    approx_kl: float = 0.0
    clip_fraction: float = 0.0
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy: float = 0.0
    explained_variance: float = 0.0
    grad_norm: float = 0.0
    epochs_run: int = 0
    minibatches_run: int = 0
    minibatches_skipped: int = 0
    early_stopped: bool = False
    intervened: bool = False
    mean_return: float | None = None
    host_accuracy: float | None = None

    #: Fields the emitter fills from the update's metrics dict (all but the ones it owns).
    METRIC_FIELDS: ClassVar[tuple[str, ...]]

    def head(self, head: str, stat: str) -> Any:
        """`head_{head}_{stat}`, e.g. `payload.head("slot", "ratio_max")`."""
        return getattr(self, f"head_{head}_{stat}")

    def worst_head(self) -> str | None:
        """The relevant head whose ratio max is furthest from 1 in log space (NaN first)."""

        def badness(head: str) -> float:
            ratio = self.head(head, "ratio_max")
            return math.inf if math.isnan(ratio) or ratio <= 0 else abs(math.log(ratio))

        relevant = [h for h in HEAD_NAMES if self.head(h, "relevant") > 0]
        return max(relevant, key=badness) if relevant else None

    def summary(self) -> str:
        """One line for logs and the event panel: worst head, joint ratio, KL."""
        worst = self.worst_head()
        head = (
            f"worst head {worst} ratio max {self.head(worst, 'ratio_max'):.3f}"
            if worst is not None
            else "no relevant samples"
        )
        return (
            f"update {self.update_index}: {head}, joint {self.joint_ratio_max:.3f}, "
            f"KL {self.approx_kl:.4f}"
        )


PPOUpdatePayload.METRIC_FIELDS = tuple(
    spec.name
    for spec in PPOUpdatePayload._specs()
    if spec.name not in ("update_index", "mean_return", "host_accuracy")
)


@dataclass(frozen=True, kw_only=True)
class PPOUpdateSkipped(Payload):
    """A batch whose update applied no optimizer step (e.g. every minibatch non-finite)."""

    reason: str
    batch: int
    update_index: int
    nonfinite: dict[str, int] = field(default_factory=dict)  # head -> non-finite samples


@dataclass(frozen=True, kw_only=True)
class RatioExplosion(Payload):
    """The joint ratio left the trust region; which heads drove it.

    `worst_log_ratios[h]` is head h's log-ratio at the sample with the largest joint
    ratio, `shares[h]` its share of that sample's joint log-ratio, `driver` the head with
    the largest share, and `hidden_by_heads` whether every head's own ratio stayed inside
    the clip range (the explosion is invisible to per-head clipping).
    """

    update_index: int
    joint_ratio_max: float
    worst_log_ratios: dict[str, float]
    shares: dict[str, float]
    driver: str
    hidden_by_heads: bool

    def summary(self, top: int = 3, min_share: float = 0.1) -> str:
        """E.g. "joint 4.30 driven by slot (41%), op (22%) — every head inside clip"."""
        ranked = sorted(self.shares.items(), key=lambda item: -item[1])
        shown = [(h, s) for h, s in ranked[:top] if s >= min_share] or ranked[:1]
        drivers = ", ".join(f"{h} ({s:.0%})" for h, s in shown) or self.driver
        hidden = " — every head inside clip" if self.hidden_by_heads else ""
        return (
            f"update {self.update_index}: joint {self.joint_ratio_max:.2f} "
            f"driven by {drivers}{hidden}"
        )


@dataclass(frozen=True, kw_only=True)
class TelemetryDrops(Payload):
    """A live backend lost events (queue full) or failed on them; counts are cumulative."""

    backend: str
    dropped: int
    failed: int = 0
    last_error: str | None = None


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


@dataclass(frozen=True, kw_only=True)
class WorkerRestarted(Payload):
    """A lost env worker (dead, or silent past its timeout) was replaced.

    Its envs were restored by replaying their episodes (same seeds, same actions), so the
    batch goes on with the same numbers; `replayed_steps` is what the replay cost.
    """

    worker: int
    backend: str
    reason: str
    restarts: int  # replacements of this worker so far, this one included
    replayed_steps: int


@dataclass(frozen=True, kw_only=True)
class TrainingFinished(Payload):
    """The run ended without an exception: done, or stopped early by the operator."""

    episodes: int
    updates: int
    wall_seconds: float
    run_dir: str
    interrupted: bool = False  # stopped (Ctrl-C, stop request) before the last episode


@dataclass(frozen=True, kw_only=True)
class TrainingFailed(Payload):
    """The run ended with an exception."""

    error: str
    traceback: str | None = None


#: Which payload class each event type carries.
PAYLOAD_TYPES: dict[EventType, type[Payload]] = {
    EventType.TRAINING_STARTED: TrainingStarted,
    EventType.EPISODE_COMPLETED: EpisodeCompleted,
    EventType.SEED_LIFECYCLE: SeedLifecycle,
    EventType.PPO_UPDATE_COMPLETED: PPOUpdatePayload,
    EventType.PPO_UPDATE_SKIPPED: PPOUpdateSkipped,
    EventType.RATIO_EXPLOSION: RatioExplosion,
    EventType.TELEMETRY_DROPS: TelemetryDrops,
    EventType.WORKER_STATUS: WorkerStatus,
    EventType.WORKER_RESTARTED: WorkerRestarted,
    EventType.TRAINING_FINISHED: TrainingFinished,
    EventType.TRAINING_FAILED: TrainingFailed,
}


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
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

    def __post_init__(self) -> None:
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


def event_to_json_line(event: TelemetryEvent) -> str:
    """One line of `events.jsonl`, without the trailing newline (JSON escapes any inside)."""
    return json.dumps(event_to_dict(event), allow_nan=True, separators=(",", ":"))


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
