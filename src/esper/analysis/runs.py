"""A recorded run as tidy tables: the one loading step `report`, `query` and exporters share.

`load_run` reads `events.jsonl` with the project's tolerant reader (a damaged line is
skipped and counted in `Run.stats`, never fatal) and files every event into typed,
row-per-thing tables:

- `updates`: one row per completed PPO update: per head of the run, a column per
  `HeadStats` field (`head_<h>_ratio_max`, `head_<h>_ratio_min`, ...), then the
  update-wide fields and `ratio_max_product`;
- `episodes`: one row per `EPISODE_COMPLETED`;
- `explosions`: one row per `RATIO_EXPLOSION`, its per-head dicts flattened to
  `head_<h>_share` / `head_<h>_log_ratio` and its `summary()` line kept;
- `events`: every event's envelope (type, seq, time, message), whatever its type.

The per-head columns are those of the run's own heads (`Run.head_names`: declared by
TRAINING_STARTED, in its order, then any head an update or explosion names besides), so
a run with three heads has 21 of them and one with 24 has 168. These tables are the SQL
edge: the only place here that spells flat per-head names (through `flat_key`).

Values are exactly the payloads' (no rescaling, the neutral 1.0 of an irrelevant head
included), so a query gives the numbers the aggregator shows. `measured` is where the
"no relevant sample is no measurement" rule lives for consumers that plot.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esper.analysis import AnalysisError
from esper.telemetry.contracts import (
    EpisodeCompleted,
    EventType,
    Payload,
    PPOUpdatePayload,
    RatioExplosion,
    TelemetryEvent,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
)
from esper.telemetry.heads import (
    HEAD_COUNT_STATS,
    HEAD_STATS,
    UPDATE_SCALARS,
    RatioBands,
    UpdateStats,
    flat_key,
)
from esper.telemetry.recorder import (
    EVENTS_FILE,
    RUN_FILE,
    ReadStats,
    committed_events,
    read_events,
)

#: Per-head statistics that only mean something when the head had relevant samples
#: (`head_<h>_relevant > 0`); otherwise they hold the neutral defaults. Entropy is taken
#: over every sample, relevant or not, so it is always a measurement.
RELEVANCE_GATED_STATS: tuple[str, ...] = ("ratio_max", "ratio_min", "clip_fraction", "approx_kl")


@dataclass(frozen=True)
class Column:
    """One typed column: `type` is float, int, bool or str; `nullable` allows None."""

    name: str
    type: type
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    """Rows of equal shape under named, typed columns (row-major, as events arrive)."""

    name: str
    columns: tuple[Column, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> list[Any]:
        """All values of column `name`, in row order."""
        try:
            index = self.names.index(name)
        except ValueError:
            raise KeyError(f"{self.name} has no column {name!r}") from None
        return [row[index] for row in self.rows]


def merged_columns(tables: Sequence[Table]) -> tuple[Column, ...]:
    """The union of the tables' columns, each new one placed before its successor.

    Runs with different heads concatenate into one table holding the head columns of
    every run: a column new to the union goes just before the next column its own table
    has, so heads stay together and the update-wide columns stay last. A column some
    table lacks becomes nullable.
    """
    merged = list(tables[0].columns)
    for table in tables[1:]:
        names = [c.name for c in merged]
        before = len(merged)  # where a new column goes: before the next column known
        for column in reversed(table.columns):
            if column.name not in names:
                merged.insert(before, column)
                names.insert(before, column.name)
                continue
            before = names.index(column.name)
            known = merged[before]
            if known.type is not column.type:
                raise ValueError(
                    f"{table.name}.{column.name}: {column.type.__name__} here, "
                    f"{known.type.__name__} elsewhere"
                )
            if column.nullable:
                merged[before] = dataclasses.replace(known, nullable=True)
    everywhere = set.intersection(*({c.name for c in t.columns} for t in tables))
    return tuple(
        c if c.nullable or c.name in everywhere else dataclasses.replace(c, nullable=True)
        for c in merged
    )


def concat(tables: Sequence[Table]) -> Table:
    """The rows of several tables one after another (several runs into one view).

    Tables of one schema are stacked as they are; otherwise under `merged_columns`, with
    None where a table lacks a column (e.g. a head another run does not have).
    """
    first = tables[0]
    if all(t.columns == first.columns for t in tables):
        return Table(first.name, first.columns, [row for t in tables for row in t.rows])
    columns = merged_columns(tables)
    rows: list[tuple[Any, ...]] = []
    for table in tables:
        where = {name: i for i, name in enumerate(table.names)}
        picks = [where.get(c.name) for c in columns]
        rows.extend(tuple(None if i is None else row[i] for i in picks) for row in table.rows)
    return Table(first.name, columns, rows)


# --------------------------------------------------------------------------- schemas


def _column(name: str, hint: Any) -> Column:
    """A Column from a payload annotation (`X` or `X | None` with X a scalar type)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return Column(name, inner, nullable=True)
    return Column(name, hint)


def payload_columns(cls: type[Payload], names: Iterable[str]) -> tuple[Column, ...]:
    """Typed columns for the named scalar fields of a payload class, in the given order."""
    hints = typing.get_type_hints(cls)
    return tuple(_column(name, hints[name]) for name in names)


#: Update-wide columns of `ppo_updates`, after the per-head ones.
UPDATE_FIELDS: tuple[str, ...] = (*UPDATE_SCALARS, "mean_return", "host_accuracy")
EPISODE_FIELDS = tuple(f.name for f in dataclasses.fields(EpisodeCompleted))

_RUN_ID = Column("run_id", str)
_SEQ = Column("seq", int)
_TIMESTAMP = Column("timestamp", float)
_BATCH = Column("batch", int, nullable=True)

_UPDATE_HINTS = {**typing.get_type_hints(UpdateStats), **typing.get_type_hints(PPOUpdatePayload)}
_UPDATE_FIELD_COLUMNS = tuple(_column(name, _UPDATE_HINTS[name]) for name in UPDATE_FIELDS)


def head_columns(head_names: Sequence[str], nullable: Iterable[str] = ()) -> tuple[Column, ...]:
    """A column per statistic of each head (`head_<h>_<stat>`), head by head.

    Heads in `nullable` were absent from some update (a run may declare a head that an
    update does not carry): their columns hold NULL there.
    """
    absent = frozenset(nullable)
    return tuple(
        Column(flat_key(h, s), int if s in HEAD_COUNT_STATS else float, nullable=h in absent)
        for h in head_names
        for s in HEAD_STATS
    )


def update_columns(head_names: Sequence[str], nullable: Iterable[str] = ()) -> tuple[Column, ...]:
    """The columns of `ppo_updates` for a run with these heads."""
    return (
        _RUN_ID,
        Column("update_index", int),
        _BATCH,
        _SEQ,
        _TIMESTAMP,
        *head_columns(head_names, nullable),
        *_UPDATE_FIELD_COLUMNS,
        Column("ratio_max_product", float),
    )


EPISODE_COLUMNS: tuple[Column, ...] = (
    _RUN_ID,
    Column("episode", int, nullable=True),
    _BATCH,
    _SEQ,
    _TIMESTAMP,
    *payload_columns(EpisodeCompleted, EPISODE_FIELDS),
)


def explosion_columns(head_names: Sequence[str]) -> tuple[Column, ...]:
    """The columns of `explosions` for a run with these heads (NULL: not in the sample)."""
    return (
        _RUN_ID,
        Column("update_index", int),
        _BATCH,
        _SEQ,
        _TIMESTAMP,
        Column("joint_ratio_max", float),
        Column("driver", str, nullable=True),
        Column("hidden_by_heads", bool),
        Column("summary", str),
        *(Column(flat_key(h, "share"), float, nullable=True) for h in head_names),
        *(Column(flat_key(h, "log_ratio"), float, nullable=True) for h in head_names),
    )


EVENT_COLUMNS: tuple[Column, ...] = (
    _RUN_ID,
    _SEQ,
    _TIMESTAMP,
    Column("event_type", str),
    Column("severity", str),
    Column("episode", int, nullable=True),
    _BATCH,
    Column("message", str),
)


# --------------------------------------------------------------------------- derived values


def ratio_max_product(payload: PPOUpdatePayload) -> float:
    """Product of the relevant heads' ratio maxima (1.0 when no head was relevant).

    What per-head clipping lets the joint ratio reach if every head's extreme fell on one
    sample: with every maximum >= 1 it bounds `joint_ratio_max` from above, and a joint
    close to it means the heads moved together.
    """
    return math.prod(s.ratio_max for s in payload.heads.values() if s.relevant > 0)


def measured(updates: Table, head: str, stat: str) -> list[float]:
    """Head `head`'s `stat` per update, NaN where it was not measured (no relevant sample).

    For plotting: a neutral 1.0 drawn as a point would look like a healthy reading.
    """
    values = updates.column(flat_key(head, stat))
    if stat not in RELEVANCE_GATED_STATS:
        return [math.nan if v is None else float(v) for v in values]
    relevant = updates.column(flat_key(head, "relevant"))
    return [float(v) if n else math.nan for v, n in zip(values, relevant, strict=True)]


def unique_labels(labels: Sequence[str]) -> list[str]:
    """`labels` with repeats numbered ("a", "a (2)"), so runs stay apart in a comparison."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Run:
    """One recorded run: where it is, what it was, and its events as tables."""

    run_dir: Path
    run_id: str
    label: str
    task: str | None
    status: str  # finished, interrupted, failed, or unfinished (running or cut short)
    head_names: tuple[str, ...]  # the run's heads in display order (see the module doc)
    #: The clip range the run's start event records; None when it records none.
    clip_eps: float | None
    updates: Table
    episodes: Table
    explosions: Table
    events: Table
    stats: ReadStats

    @property
    def bands(self) -> RatioBands:
        """The run's health bands: from its clip range, the spec's (eps 0.2) if unrecorded."""
        return RatioBands.for_clip(self.clip_eps)

    @property
    def lines_skipped(self) -> int:
        """Damaged or torn lines of `events.jsonl` the reader passed over."""
        return self.stats.skipped


class _RunBuilder:
    """Files events into row lists; one handler per event type that has a table."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.task: str | None = None
        self.clip_eps: float | None = None
        self.status = "unfinished"
        self.head_names: dict[str, None] = {}  # an ordered set: declared, then seen
        self.updates: list[tuple[TelemetryEvent, PPOUpdatePayload]] = []
        self.episodes: list[tuple[Any, ...]] = []
        self.explosions: list[tuple[TelemetryEvent, RatioExplosion]] = []
        self.events: list[tuple[Any, ...]] = []
        self._handlers: dict[EventType, Callable[[TelemetryEvent], None]] = {
            EventType.TRAINING_STARTED: self._started,
            EventType.PPO_UPDATE_COMPLETED: self._update,
            EventType.EPISODE_COMPLETED: self._episode,
            EventType.RATIO_EXPLOSION: self._explosion,
            EventType.TRAINING_FINISHED: self._finished,
            EventType.TRAINING_FAILED: self._failed,
        }

    def add(self, event: TelemetryEvent) -> None:
        if self.run_id is None:
            self.run_id = event.run_id
        self.events.append(
            (
                event.run_id,
                event.seq,
                event.timestamp,
                event.event_type.value,
                event.severity,
                event.episode,
                event.batch,
                event.message,
            )
        )
        handler = self._handlers.get(event.event_type)
        if handler is not None:
            handler(event)

    def _started(self, event: TelemetryEvent) -> None:
        assert isinstance(event.payload, TrainingStarted)
        self.task = event.payload.task
        if event.payload.clip_eps is not None:  # a resume that records none keeps the first
            self.clip_eps = event.payload.clip_eps
        if not self.head_names:  # the first start declares the order; a resume repeats it
            self.head_names = dict.fromkeys(event.payload.head_names)
        else:
            self.head_names.update(dict.fromkeys(event.payload.head_names))

    def _update(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, PPOUpdatePayload)
        self.head_names.update(dict.fromkeys(p.heads))
        self.updates.append((event, p))

    def update_table(self) -> Table:
        """`ppo_updates`, built once every head of the run is known."""
        heads = tuple(self.head_names)
        absent = {h for _, p in self.updates for h in heads if h not in p.heads}
        rows = []
        for event, p in self.updates:
            per_head = p.heads
            stats = p.stats
            rows.append(
                (
                    event.run_id,
                    p.update_index,
                    event.batch,
                    event.seq,
                    event.timestamp,
                    *(
                        None if h not in per_head else getattr(per_head[h], s)
                        for h in heads
                        for s in HEAD_STATS
                    ),
                    *(getattr(stats, name) for name in UPDATE_SCALARS),
                    p.mean_return,
                    p.host_accuracy,
                    ratio_max_product(p),
                )
            )
        return Table("ppo_updates", update_columns(heads, absent), rows)

    def _episode(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, EpisodeCompleted)
        self.episodes.append(
            (
                event.run_id,
                event.episode,
                event.batch,
                event.seq,
                event.timestamp,
                *(getattr(p, name) for name in EPISODE_FIELDS),
            )
        )

    def _explosion(self, event: TelemetryEvent) -> None:
        p = event.payload
        assert isinstance(p, RatioExplosion)
        self.head_names.update(dict.fromkeys(p.report.worst_log_ratios))
        self.explosions.append((event, p))

    def explosion_table(self) -> Table:
        """`explosions`, built once every head of the run is known."""
        heads = tuple(self.head_names)
        rows = [
            (
                event.run_id,
                p.update_index,
                event.batch,
                event.seq,
                event.timestamp,
                p.report.joint_ratio_max,
                p.report.driver,
                p.report.hidden_by_heads,
                p.summary(),
                *(p.report.shares.get(h) for h in heads),
                *(p.report.worst_log_ratios.get(h) for h in heads),
            )
            for event, p in self.explosions
        ]
        return Table("explosions", explosion_columns(heads), rows)

    def _finished(self, event: TelemetryEvent) -> None:
        assert isinstance(event.payload, TrainingFinished)
        self.status = "interrupted" if event.payload.interrupted else "finished"

    def _failed(self, event: TelemetryEvent) -> None:
        assert isinstance(event.payload, TrainingFailed)
        self.status = "failed"


def events_path(path: Path | str) -> Path:
    """The `events.jsonl` of a run directory (or the file itself); AnalysisError if absent."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise AnalysisError(f"no run directory at {path}")
    events = path / EVENTS_FILE
    if not events.is_file():
        raise AnalysisError(f"{path} holds no {EVENTS_FILE}; is it an esper run directory?")
    return events


def declared_heads(run_dir: Path) -> list[str]:
    """The heads run.json declares, in display order ([] when it declares none or is damaged).

    The start event declares the same heads; this keeps their order when that line is lost.
    """
    try:
        heads = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))["heads"]["names"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [h for h in heads if isinstance(h, str)] if isinstance(heads, list) else []


def load_run(path: Path | str, label: str | None = None) -> Run:
    """Read one run (its directory or its `events.jsonl`) into tables; see the module doc."""
    events = events_path(path)
    run_dir = events.parent
    stats = ReadStats()
    builder = _RunBuilder()
    builder.head_names = dict.fromkeys(declared_heads(run_dir))
    try:
        for event in committed_events(read_events(events, stats=stats)):
            builder.add(event)
    except OSError as exc:
        raise AnalysisError(f"cannot read {events}: {exc.strerror or exc}") from None
    name = run_dir.resolve().name
    return Run(
        run_dir=run_dir,
        run_id=builder.run_id or name,
        label=label or name,
        task=builder.task,
        status=builder.status,
        head_names=tuple(builder.head_names),
        clip_eps=builder.clip_eps,
        updates=builder.update_table(),
        episodes=Table("episodes", EPISODE_COLUMNS, builder.episodes),
        explosions=builder.explosion_table(),
        events=Table("events", EVENT_COLUMNS, builder.events),
        stats=stats,
    )


RUN_COLUMNS: tuple[Column, ...] = (
    _RUN_ID,
    Column("label", str),
    Column("run_dir", str),
    Column("task", str, nullable=True),
    Column("status", str),
    Column("clip_eps", float, nullable=True),
    Column("updates", int),
    Column("episodes", int),
    Column("explosions", int),
    Column("events", int),
    Column("lines_skipped", int),
)


def runs_table(runs: Sequence[Run]) -> Table:
    """One row per run: identity, outcome and counts, damaged lines included."""
    rows = [
        (
            r.run_id,
            r.label,
            str(r.run_dir),
            r.task,
            r.status,
            r.clip_eps,
            len(r.updates),
            len(r.episodes),
            len(r.explosions),
            len(r.events),
            r.lines_skipped,
        )
        for r in runs
    ]
    return Table("runs", RUN_COLUMNS, rows)


def load_runs(paths: Sequence[Path | str]) -> list[Run]:
    """Several runs, labelled by directory name (repeats numbered), for side-by-side use."""
    if not paths:
        raise AnalysisError("name at least one RUN_DIR")
    names = [events_path(p).parent.resolve().name for p in paths]
    return [load_run(p, label) for p, label in zip(paths, unique_labels(names), strict=True)]
