"""What the Sanctum dashboard shows: immutable snapshots built by the aggregator.

These types are the contract between `SanctumAggregator` (which fills them from
telemetry events) and the widgets (which only read them). They import no torch, so
the dashboard starts fast and runs wherever a run directory can be copied to.

Every value that can be absent says so (`None` or a `*_received` flag): a default
1.0 must never be mistaken for a healthy reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from esper.telemetry.heads import NEUTRAL_RATIO, SPEC_BANDS, HeadStats, RatioBands, UpdateStats

#: How many PPO updates of per-head history the sparklines keep (a bounded ring).
HISTORY_LEN = 120
#: How many recent events the event log keeps.
EVENT_LOG_LEN = 200


@dataclass(frozen=True)
class HeadState:
    """One action head as the dashboard shows it: latest reading, run latches, history.

    `stats` is the head's record from the latest PPO update, as measured (ratio max and
    min, clip fraction, entropy, KL, counts); None when no update has carried the head
    yet. `stats.relevant == 0` means no sample of that update used the head: its ratios
    are the neutral 1.0 and must be shown as "no data", not as healthy.
    """

    stats: HeadStats | None = None
    nan_latched: bool = False  # a NaN was ever seen for this head in this run
    inf_latched: bool = False  # an infinity was ever seen for this head in this run
    ratio_max_history: tuple[float, ...] = ()  # oldest first, at most HISTORY_LEN


@dataclass(frozen=True)
class TamiyoState:
    """The policy's health as of the latest PPO update (TELE-150/151/170 and siblings).

    `head_names` are the run's heads in display order (declared by TRAINING_STARTED, or
    taken from the first update of a log without one); `heads` maps each to its
    `HeadState`. Nothing here assumes how many heads there are or what they are called.
    `update` is the latest completed update as it arrived (its update-wide values: joint
    ratio, KL, losses, ...); None until the first one, so no default reads as a reading.
    `bands` are the run's health bands, from the clip range its start event records (the
    spec's eps 0.2 when it records none); every panel colours a ratio by them.
    """

    head_names: tuple[str, ...] = ()
    heads: Mapping[str, HeadState] = field(default_factory=dict)
    update: UpdateStats | None = None
    ppo_updates_count: int = 0
    last_update_index: int | None = None
    last_update_batch: int | None = None  # the batch the shown values come from
    last_update_time: float | None = None  # event timestamp, seconds since the epoch
    joint_ratio_max_history: tuple[float, ...] = ()
    bands: RatioBands = SPEC_BANDS

    @property
    def ppo_data_received(self) -> bool:
        """Whether a PPO update has arrived (before it, every value is a dash)."""
        return self.update is not None

    def head(self, name: str) -> HeadState:
        """The state of head `name` (an empty one for a head the run has not shown)."""
        return self.heads.get(name) or _NO_HEAD

    def stats(self, name: str) -> HeadStats | None:
        """Head `name`'s latest measured record, or None before any update carried it."""
        return self.head(name).stats

    def ratio_max(self, head: str) -> float:
        """The TELE-151 ratio max of `head` in the latest update (neutral 1.0 if none)."""
        stats = self.head(head).stats
        return NEUTRAL_RATIO if stats is None else stats.ratio_max


_NO_HEAD = HeadState()


@dataclass(frozen=True)
class SlotState:
    """One slot of the host as last reported by a lifecycle event."""

    index: int
    stage: str = "DORMANT"
    blueprint: str | None = None
    alpha: float = 0.0


@dataclass(frozen=True)
class RunInfo:
    """Identity and configuration of the run, from TRAINING_STARTED."""

    run_id: str = ""
    task: str = ""
    episodes_total: int = 0
    n_envs: int = 0
    device: str = ""
    started_at: float | None = None
    #: Slots of esper's host, from the run's `slot` head; 0 for a run with no host (an SB3
    #: or hand-written run), None until the run's start is read.
    host_slots: int | None = None
    #: The clip range the run's start event records; None when it records none (an older
    #: log), whose bands are then the spec's (`TamiyoState.bands`).
    clip_eps: float | None = None


@dataclass(frozen=True)
class Progress:
    """How far the run is, for the header."""

    episodes_done: int = 0
    batches_done: int = 0  # batches whose rollouts finished (PPO may still be running)
    last_event_time: float | None = None
    finished: bool = False
    failed: bool = False
    failure: str | None = None


@dataclass(frozen=True)
class EpisodeStats:
    """Episode outcomes, latest and recent mean."""

    last_return: float | None = None
    mean_return: float | None = None  # over the recent window
    last_accuracy: float | None = None
    return_history: tuple[float, ...] = ()
    seeds_grown: int = 0
    seeds_fossilized: int = 0
    seeds_killed: int = 0
    #: Best episode return so far in the run: the level a learning policy's recent
    #: returns should approach (see the Host panel's return sparkline).
    best_return: float | None = None


@dataclass(frozen=True)
class EventLogEntry:
    """One line of the dashboard's event log."""

    timestamp: float
    severity: str  # "info" | "warning" | "error"
    message: str


@dataclass(frozen=True)
class WorkerState:
    """One env worker as last reported (WORKER_STATUS, WORKER_RESTARTED)."""

    worker: int
    backend: str = ""
    alive: bool = True
    restarts: int = 0
    envs: int = 0
    steps_per_second: float | None = None  # None until its first status
    batch: int | None = None  # the batch of its latest status


@dataclass(frozen=True)
class SanctumSnapshot:
    """Everything the dashboard draws, frozen at one moment."""

    run: RunInfo = field(default_factory=RunInfo)
    progress: Progress = field(default_factory=Progress)
    tamiyo: TamiyoState = field(default_factory=TamiyoState)
    episodes: EpisodeStats = field(default_factory=EpisodeStats)
    slots: tuple[SlotState, ...] = ()
    events: tuple[EventLogEntry, ...] = ()
    events_read: int = 0
    lines_skipped: int = 0  # malformed lines the reader passed over
    drops: int = 0  # events a live backend dropped, as reported by the hub
    workers: tuple[WorkerState, ...] = ()  # env workers, by worker id

    @property
    def is_stale(self) -> bool:
        """Shown PPO values are older than the latest finished batch (e.g. skipped update)."""
        t = self.tamiyo
        return (
            t.ppo_data_received
            and t.last_update_batch is not None
            and self.progress.batches_done > t.last_update_batch + 1
        )
