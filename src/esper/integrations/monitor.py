"""Per-head ratio telemetry for a PPO loop esper did not write (TELE-151 for anyone).

A hand-written factored PPO (one log-prob per action head, summed into the joint) hands
`HeadRatioMonitor` each minibatch's new and rollout-time per-head log-probs; once per
update the monitor reduces them exactly as esper's own PPO does (clamped log-ratios, max
and min over every epoch and minibatch, non-finite samples left out and counted, the
explosion attribution) and records one PPO update event in a run directory that
`sanctum`, `esper report` and `esper query` read.

`observe` only keeps references to the (detached) tensors, so it neither launches
kernels nor waits for the device; `end_update` concatenates them, reduces once and
reads the result with a single device->host transfer.

Under torch.distributed (a data-parallel loop, one process per rank) every rank observes
its own minibatches and `end_update` combines the ranks' raw statistics exactly, in one
collective (`esper.rl.ratio_stats.reduce_across_ranks`): a max averaged over ranks is no
longer the max. One rank writes the run directory; every rank gets the same stats back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from esper import __version__
from esper.rl.ratio_stats import HeadRatioStats, is_distributed, log_ratios, reduce_across_ranks
from esper.telemetry.contracts import (
    EpisodeCompleted,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
)
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import UPDATE_SCALARS, HeadStats, UpdateStats, check_head_names
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import EVENTS_FILE, RunRecorder, read_events
from esper.telemetry.rundir import RunDirError, RunLock, lock_run_dir, new_run_id, prepare_run_dir

#: The joint ratio max above which an update carries an explosion report (as esper's PPO).
DEFAULT_EXPLOSION_THRESHOLD = 2.0


@dataclass(frozen=True)
class OpenRun:
    """A run directory being recorded: where, under which id, its telemetry door and lock."""

    run_dir: Path
    run_id: str
    hub: TelemetryHub
    emitter: TelemetryEmitter
    lock: RunLock

    def close(self) -> None:
        """Flush and close the recording, then let another writer have the directory."""
        try:
            self.hub.close()
        finally:
            self.lock.release()


def _unused_run_path(attempts: int = 16) -> Path:
    """A `runs/<run-id>` that holds nothing yet.

    A run id is the second plus four random hex digits, so two default runs started in
    the same second (a test suite building one model after another does) collide once in
    65,536; nobody chose that directory, so another id is drawn rather than refusing the
    run. A directory the caller names is still refused when it holds a run.
    """
    for _ in range(attempts):
        path = Path("runs") / new_run_id()
        if not path.exists():
            return path
    return path  # the same second's ids all taken: prepare_run_dir says so


def open_run(
    run_dir: Path | str | None, config: Mapping[str, Any], *, continue_run: bool = False
) -> OpenRun:
    """Create a fresh run directory (default `runs/<run-id>`) and start recording into it.

    The directory is created and locked as `esper ppo` does (`esper.telemetry.rundir`): one writer
    per run directory, an existing run refused. With `continue_run` the directory must
    hold a run instead, and recording appends to it with its run id, sequence numbers and
    update indices going on (as `esper ppo --resume` does). Raises ValueError
    (`RunDirError`) with a one-line reason; nothing is written then.
    """
    path = _unused_run_path() if run_dir is None else Path(run_dir)
    if continue_run:
        events = path / EVENTS_FILE
        if events.is_symlink() or not events.is_file():
            raise RunDirError(f"{path} holds no recorded run to continue")
        lock = lock_run_dir(path)
        run_id, last_seq, last_update = path.name, -1, -1
        for event in read_events(events):
            run_id, last_seq = event.run_id, max(last_seq, event.seq)
            index = getattr(event.payload, "update_index", None)
            if isinstance(index, int):
                last_update = max(last_update, index)
        start_seq, start_update = last_seq + 1, last_update + 1
    else:
        lock = prepare_run_dir(path).lock
        run_id = path.name if run_dir is None else new_run_id()
        start_seq = start_update = 0
    hub = TelemetryHub()
    try:
        hub.add_backend(RunRecorder(path, config=dict(config), run_id=run_id))
    except BaseException:
        lock.release()
        raise
    emitter = TelemetryEmitter(
        hub, run_id=run_id, start_seq=start_seq, start_update_index=start_update
    )
    return OpenRun(path, run_id, hub, emitter, lock)


def _head_table(
    head_names: Sequence[str] | Mapping[str, int], head_sizes: Sequence[int] | None
) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """Checked names and sizes (sizes from a name->size mapping or `head_sizes`)."""
    if isinstance(head_names, Mapping):
        if head_sizes is not None:
            raise ValueError("give head sizes either in head_names or as head_sizes, not both")
        head_sizes = list(head_names.values())
    names = check_head_names(head_names)
    if head_sizes is None:
        return names, None
    sizes = tuple(int(s) for s in head_sizes)
    if len(sizes) != len(names) or any(s < 1 for s in sizes):
        raise ValueError(f"need one size >= 1 per head ({len(names)}), got {list(sizes)}")
    return names, sizes


#: How `end_update` combines a scalar the loop passed on several ranks, by the field's type:
#: floats (losses, norms) are averaged over the ranks that passed them (each rank's mean
#: over an equal share of the batch, so their mean is the batch's), counts take the max
#: (a lock-step loop runs the same epochs and minibatches on every rank), flags any rank's.
_SCALAR_KINDS: dict[str, type] = {
    f.name: type(f.default) for f in dataclasses.fields(UpdateStats) if f.name in UPDATE_SCALARS
}

#: `end_update`'s own values per rank, ahead of the scalars it was given.
_OWN = ("joint_kl_sum", "joint_kl_count", "minibatches", "has_entropy", "episodes")


class HeadRatioMonitor:
    """Records per-head ratio statistics of a hand-written PPO loop into a run directory.

    Call `observe` once per minibatch with `[batch, heads]` log-probs, `end_update` once
    per update. `head_names` may be a mapping of name -> number of values; with the
    sizes known, per-head entropies (given to `observe` in nats) are normalised by
    ln(size) as everywhere in esper (1 = uniform). `clip_eps` may be changed between
    updates (a clip schedule); it is read at `end_update`. As a context manager, leaving
    the block records how the run ended: finished, interrupted (Ctrl-C) or failed.

    Several learners: with a torch.distributed default process group initialised, or a
    `group` given, construct the monitor on every rank of the group (it is a collective:
    the writer opens the run directory and tells every rank where it is, or why it could
    not), observe each rank's own minibatches, and call `end_update` on every rank: the
    statistics are those of all the ranks' samples together, one collective per update
    (two in an update in which a rank other than the writer ended episodes: their records
    travel to the writer). Only rank `writer_rank` of the group creates, locks and writes
    the run directory (its `run_dir` argument is the one used); every rank gets the same
    `UpdateStats` back. The tensors must be on the backend's device (CUDA for NCCL).
    """

    def __init__(
        self,
        run_dir: Path | str | None,
        head_names: Sequence[str] | Mapping[str, int],
        clip_eps: float = 0.2,
        *,
        head_sizes: Sequence[int] | None = None,
        explosion_threshold: float = DEFAULT_EXPLOSION_THRESHOLD,
        config: Mapping[str, Any] | None = None,
        task: str = "custom",
        n_envs: int = 1,
        episodes_total: int = 0,
        device: str = "cpu",
        group: Any = None,
        writer_rank: int = 0,
    ) -> None:
        self.head_names, self.head_sizes = _head_table(head_names, head_sizes)
        if not 0 < clip_eps < 1:  # a clip of 1 or more never bounds a falling ratio
            raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
        if not explosion_threshold > 1:
            raise ValueError(f"explosion_threshold must be > 1, got {explosion_threshold}")
        self.clip_eps = float(clip_eps)
        self.explosion_threshold = float(explosion_threshold)
        self._group = group
        self._distributed = is_distributed(group)
        #: This process's rank in the group and the group's size (0 and 1 without one).
        self.rank = dist.get_rank(group) if self._distributed else 0
        self.world_size = dist.get_world_size(group) if self._distributed else 1
        if not 0 <= writer_rank < self.world_size:
            raise ValueError(f"writer_rank must be in [0, {self.world_size}), got {writer_rank}")
        self.writer_rank = writer_rank
        self._parts: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = []
        self._updates = 0
        #: Episodes the loop finished, if it counts them (reported when the run ends). With
        #: several ranks: this rank's since the last update plus every rank's before it.
        self.episodes = 0
        self._episodes_since_update = 0
        #: A non-writer's finished episodes, kept for the writer until the next update.
        self._episodes_held: list[tuple[EpisodeCompleted, int | None]] = []
        self._started = time.monotonic()
        self._closed = False
        settings = {
            "clip_eps": self.clip_eps,
            "explosion_threshold": self.explosion_threshold,
            **(config or {}),
        }
        if self._distributed:
            settings.setdefault("ranks", self.world_size)
        sizes = self.head_sizes or (0,) * len(self.head_names)  # 0: size not declared
        started = TrainingStarted(  # checked (a config that is not JSON, ...) before any file
            config=settings,
            task=task,
            head_names=list(self.head_names),
            head_sizes=dict(zip(self.head_names, sizes, strict=True)),
            episodes_total=episodes_total,
            n_envs=n_envs,
            device=device,
            esper_version=__version__,
            clip_eps=self.clip_eps,  # the run's health bands
        )
        self._start = started
        self._run = self._open_shared(lambda: open_run(run_dir, started.config))
        if self._run is not None:
            self._run.emitter.emit(started)

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run directory (always, with a single process)."""
        return self.rank == self.writer_rank

    def _open_shared(self, opener: Callable[[], OpenRun]) -> OpenRun | None:
        """Open the run on the writer and tell every rank its directory and id, or the
        reason it failed: a rank must not go on to wait in a collective for a writer that
        has already given up."""
        run: OpenRun | None = None
        error: Exception | None = None
        if self.is_writer:
            try:
                run = opener()
            except Exception as exc:
                error = exc
        if not self._distributed:
            if error is not None:
                raise error
            assert run is not None
            self._run_dir, self._run_id = run.run_dir, run.run_id
            return run
        news: list[Any] = [None]
        if self.is_writer:
            news[0] = (str(error), None) if run is None else (str(run.run_dir), run.run_id)
        src = self.writer_rank if self._group is None else dist.get_global_rank(
            self._group, self.writer_rank
        )
        dist.broadcast_object_list(news, src=src, group=self._group)
        if error is not None:
            raise error
        where, run_id = news[0]
        if run_id is None:
            raise RunDirError(f"the writer rank {self.writer_rank} could not open the run: {where}")
        self._run_dir, self._run_id = Path(where), run_id
        return run

    def reopen(self) -> HeadRatioMonitor:
        """A monitor that continues this closed run in the same directory.

        The run's numbering goes on, its start event is repeated with
        `resumed_from_update`, and the update and episode counts carry over (this is what
        an SB3 `learn(reset_num_timesteps=False)` records). With several ranks it is a
        collective, as the constructor.
        """
        if not self._closed:
            raise RuntimeError("reopen() continues a closed run; close() it first")
        again = copy.copy(self)
        again._parts, again._closed, again._started = [], False, time.monotonic()
        again._episodes_held, again._episodes_since_update = [], 0
        again._run = again._open_shared(
            lambda: open_run(self.run_dir, self._start.config, continue_run=True)
        )
        if again._run is not None:
            resumed = dataclasses.replace(
                self._start, resumed_from_update=again._run.emitter.next_update_index
            )
            again._run.emitter.emit(resumed)
        return again

    @property
    def run_dir(self) -> Path:
        """The run directory, on every rank (the writer's)."""
        return self._run_dir

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def minibatches_pending(self) -> int:
        """Minibatches observed since the last `end_update`."""
        return len(self._parts)

    @property
    def updates(self) -> int:
        """Updates recorded so far."""
        return self._updates

    def observe(
        self,
        new_logp: Tensor,
        old_logp: Tensor,
        relevant: Tensor | None = None,
        entropy: Tensor | None = None,
    ) -> None:
        """Keep one minibatch: `[batch, heads]` new and rollout-time log-probs.

        `relevant` ([batch, heads] bool, default all) says which heads acted on which
        sample; `entropy` ([batch, heads], nats) is each head's entropy per sample.
        Only shapes are checked here (host metadata): no kernel runs, nothing syncs, and
        under torch.distributed no collective runs either.
        """
        if self._closed:
            raise RuntimeError("observe() after close()")
        shape = (new_logp.shape[0], len(self.head_names)) if new_logp.dim() == 2 else None
        for name, t in (("old_logp", old_logp), ("relevant", relevant), ("entropy", entropy)):
            if shape is None or (t is not None and tuple(t.shape) != shape):
                got = ", ".join(
                    f"{n} {tuple(x.shape)}"
                    for n, x in (("new_logp", new_logp), (name, t))
                    if x is not None
                )
                raise ValueError(
                    f"expected [batch, {len(self.head_names)}] tensors (one column per "
                    f"head {list(self.head_names)}), got {got}"
                )
        if entropy is not None and self.head_sizes is None:
            raise ValueError("entropy needs the head sizes: pass head_names as {name: size}")
        self._parts.append(
            (
                new_logp.detach(),
                old_logp.detach(),
                None if relevant is None else relevant.detach(),
                None if entropy is None else entropy.detach(),
            )
        )

    def end_episode(
        self,
        episode_return: float,
        *,
        length: int,
        env_index: int = 0,
        batch: int | None = None,
    ) -> None:
        """Record one finished episode: its return and length, for Sanctum's return panel,
        `esper report` and `esper query` (counted in `episodes`).

        It belongs to the update about to be recorded (`batch`, by default that update's
        index): readers count it once that update is in the log, the exactly-once rule of
        an esper run. On a rank other than the writer the episode is held and handed to
        the writer by the next `end_update` (one that ends after the last update is not
        recorded); give each rank's envs their own `env_index` (e.g. rank * envs + i).
        """
        if self._closed:
            raise RuntimeError("end_episode() after close()")
        episode = EpisodeCompleted(
            env_index=_plain_number(env_index),
            episode_return=_plain_number(episode_return),
            length=_plain_number(length),
        )
        self._episodes_since_update += 1
        if not self.is_writer:
            self._episodes_held.append((episode, batch))
            self.episodes += 1
            return
        self._emit_episode(episode, batch)

    def _emit_episode(self, episode: EpisodeCompleted, batch: int | None) -> None:
        assert self._run is not None
        self._run.emitter.emit(
            episode, episode=self.episodes, batch=self._updates if batch is None else batch
        )
        self.episodes += 1

    def _device(self) -> torch.device:
        """Where this update's statistics live: the observed tensors' device; with nothing
        observed, the one the backend's collectives need."""
        if self._parts:
            return self._parts[0][0].device
        if self._distributed and dist.get_backend(self._group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _reduce(self) -> tuple[HeadRatioStats, Tensor]:
        """Every observed minibatch as one statistics object, plus the joint's approximate
        KL as a raw sum and count ([2] float64), so that ranks can add them."""
        parts, n_heads, device = self._parts, len(self.head_names), self._device()
        if not parts:
            empty = HeadRatioStats.empty(self.head_names, device)
            return empty, torch.zeros(2, dtype=torch.float64, device=device)
        new = torch.cat([p[0] for p in parts])
        old = torch.cat([p[1] for p in parts]).to(new)
        relevant = torch.cat(
            [
                torch.ones_like(p[0], dtype=torch.bool)
                if p[2] is None
                else p[2].to(device=new.device, dtype=torch.bool)
                for p in parts
            ]
        )
        lr = log_ratios(new, old, relevant)
        entropies = [p[3] for p in parts if p[3] is not None]
        if entropies:
            joined = torch.cat(entropies)
            entropy_sum = joined.sum(dim=0, dtype=torch.float64)
            entropy_count = torch.tensor(float(joined.shape[0]), dtype=torch.float64)
        else:
            entropy_sum = torch.zeros(n_heads, dtype=torch.float64, device=new.device)
            entropy_count = torch.zeros((), dtype=torch.float64)
        stats = HeadRatioStats.from_log_ratios(
            lr, self.clip_eps, self.head_names, entropy_sum, entropy_count.to(new.device)
        )
        # The joint's own approximate KL, (r - 1) - log r, over the samples in the joint.
        joint = lr.joint_log_ratio.to(torch.float64)
        kl = torch.special.expm1(joint) - joint
        count = lr.joint_valid.sum(dtype=torch.float64)
        return stats, torch.stack([kl.sum(), count])

    def end_update(
        self,
        *,
        batch: int | None = None,
        mean_return: float | None = None,
        host_accuracy: float | None = None,
        **scalars: Any,
    ) -> UpdateStats:
        """Reduce the update's minibatches, record the PPO update event, return its stats.

        `scalars` are `UpdateStats` fields the loop measured itself (policy_loss,
        value_loss, grad_norm, ...), as Python, numpy or 0-d torch numbers. Unless given:
        `clip_fraction` and `approx_kl` are the joint ratio's, `entropy` the mean
        normalised head entropy, `minibatches_run` the minibatches observed. One
        device->host transfer (plus one per 0-d tensor passed in `scalars`).

        With several ranks, call it on every rank: the statistics are the exact
        combination of every rank's samples, `minibatches_run` the most any rank
        observed; the scalars each rank passed are combined by kind (floats averaged over
        the ranks that passed them, counts their max, flags any rank's), and so are
        `mean_return` and `host_accuracy` (averaged over the ranks that passed a finite
        value). Every rank gets the same stats back; the writer records them.
        """
        if self._closed:
            raise RuntimeError("end_update() after close()")
        unknown = sorted(set(scalars) - set(UPDATE_SCALARS))
        if unknown:
            raise TypeError(f"unknown update scalar(s) {unknown}; known: {list(UPDATE_SCALARS)}")
        given = {name: _plain_number(value) for name, value in scalars.items()}
        stats, joint_kl = self._reduce()
        has_entropy = self.head_sizes is not None and any(p[3] is not None for p in self._parts)
        own = [float(len(self._parts)), float(has_entropy), float(self._episodes_since_update)]
        if self._distributed:  # (value, given) pairs: the loop's own numbers, for every rank
            own += _slot(mean_return) + _slot(host_accuracy)
            for name in UPDATE_SCALARS:
                own += _slot(given.get(name))
        extra = torch.cat([joint_kl, torch.tensor(own, dtype=torch.float64).to(joint_kl)])
        reduced = reduce_across_ranks(stats, extra, group=self._group)
        reading_tensor = reduced.stats.reading_tensor()
        values = torch.cat([reading_tensor, reduced.extras.flatten()]).tolist()
        k, width = reduced.stats.reading_size, extra.numel()
        ranks = [values[k + r * width : k + (r + 1) * width] for r in range(self.world_size)]
        by_rank = [dict(zip(_OWN, row, strict=False)) for row in ranks]
        reading = reduced.stats.read(values[:k], head_sizes=self.head_sizes)
        heads: dict[str, HeadStats] = reading.heads
        kl_sum = sum(r["joint_kl_sum"] for r in by_rank)
        measured: dict[str, Any] = {
            "joint_ratio_max": reading.joint_ratio_max,
            "clip_fraction": reading.joint_clip_fraction,
            "approx_kl": kl_sum / max(sum(r["joint_kl_count"] for r in by_rank), 1.0),
            "minibatches_run": int(max(r["minibatches"] for r in by_rank)),
        }
        if any(r["has_entropy"] for r in by_rank):
            measured["entropy"] = sum(h.entropy for h in heads.values()) / len(heads)
        if self._distributed:
            rest = [row[len(_OWN) :] for row in ranks]
            mean_return = _mean_of_slots([r[0:2] for r in rest], finite_only=True)
            host_accuracy = _mean_of_slots([r[2:4] for r in rest], finite_only=True)
            given = {}
            for i, name in enumerate(UPDATE_SCALARS):
                combined = _combine_slots([r[4 + 2 * i : 6 + 2 * i] for r in rest], name)
                if combined is not None:
                    given[name] = combined
        explosion = reading.explosion(self.clip_eps, self.explosion_threshold)
        update = UpdateStats(heads=heads, explosion=explosion, **{**measured, **given})
        self._parts = []
        others = sum(r["episodes"] for i, r in enumerate(by_rank) if i != self.writer_rank)
        self._hand_episodes_to_the_writer(int(others))
        if not self.is_writer:  # every other rank's episodes of this update, counted here too
            self.episodes += int(sum(r["episodes"] for r in by_rank) - self._episodes_since_update)
        self._episodes_since_update = 0
        if self._run is not None:
            emit_update(
                self._run.emitter,
                update,
                batch=self._updates if batch is None else batch,
                mean_return=_finite_or_none(_plain_number(mean_return)),
                host_accuracy=_plain_number(host_accuracy),
            )
        self._updates += 1
        return update

    def _hand_episodes_to_the_writer(self, count: int) -> None:
        """Gather the other ranks' held episodes on the writer, which records them ahead of
        the update they belong to. Only when some rank holds any (`count`, known alike on
        every rank from the update's reduction), so most updates pay no second collective."""
        if count == 0:
            return
        held, self._episodes_held = self._episodes_held, []
        gathered: list[Any] | None = [None] * self.world_size if self.is_writer else None
        dst = self.writer_rank if self._group is None else dist.get_global_rank(
            self._group, self.writer_rank
        )
        dist.gather_object(held, gathered, dst=dst, group=self._group)
        if gathered is None:
            return
        for rank, rank_held in enumerate(gathered):
            if rank != self.writer_rank:  # the writer recorded its own as they ended
                for episode, batch in rank_held:
                    self._emit_episode(episode, batch)

    def close(self, error: BaseException | None = None, *, interrupted: bool = False) -> None:
        """Record how the run ended (finished, interrupted or failed) and close the files.

        No collective: a rank that fails closes alone. Only the writer writes the end.
        """
        if self._closed:
            return
        self._closed = True
        if self._run is None:
            return
        emitter = self._run.emitter
        try:
            if error is not None:
                emitter.emit(TrainingFailed.from_exception(error))
            else:
                emitter.emit(
                    TrainingFinished(
                        episodes=self.episodes,
                        updates=self._updates,
                        wall_seconds=time.monotonic() - self._started,
                        run_dir=str(self.run_dir),
                        interrupted=interrupted,
                    )
                )
        finally:
            self._run.close()

    def __enter__(self) -> HeadRatioMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self.close(interrupted=True)
        else:
            self.close(exc)


def _slot(value: Any) -> list[float]:
    """A value a rank may or may not have passed, as (value, 1.0) or (0.0, 0.0)."""
    if value is None:
        return [0.0, 0.0]
    return [float(value), 1.0]


def _mean_of_slots(slots: Sequence[Sequence[float]], *, finite_only: bool) -> float | None:
    """The mean of the ranks' given values (with `finite_only`, the finite ones)."""
    values = [v for v, given in slots if given and (math.isfinite(v) or not finite_only)]
    return sum(values) / len(values) if values else None


def _combine_slots(slots: Sequence[Sequence[float]], name: str) -> Any:
    """One `UpdateStats` scalar from every rank's, by its kind (`_SCALAR_KINDS`)."""
    values = [v for v, given in slots if given]
    if not values:
        return None
    kind = _SCALAR_KINDS[name]
    if kind is bool:
        return any(values)
    if kind is int:
        return int(max(values))
    return sum(values) / len(values)


def _plain_number(value: Any) -> Any:
    """A numpy scalar or 0-d tensor as the Python number it holds; anything else as is."""
    if isinstance(value, (bool, int, float)) or not hasattr(value, "item"):
        return value
    return value.item()


def _finite_or_none(value: float | None) -> float | None:
    """A mean return that is NaN (no episode ended yet) is recorded as missing."""
    return None if value is None or not math.isfinite(value) else float(value)
