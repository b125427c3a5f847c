"""The trainer: wires environments, the PPO agent and the telemetry emitter.

This is the only place that knows both PPO internals and telemetry: it turns the
agent's metrics dict into events and never lets a downstream consumer see a tensor.
It trains on whatever `EnvSpec` it is handed (the command line builds one for the
morphogenetic task or for any gymnasium env), knowing the env only by its declared heads.
It also picks where the envs step (`config.backend`, see `esper.rl.runners`); what workers
report (lifecycle changes, episode outcomes, restarts, throughput) is emitted here,
tagged with the worker, through the same emitter as everything else.

With several learners (`esper.rl.learners`) every rank runs a `Trainer` on its share of
the envs, in lock step: the agent averages gradients and reduces the statistics, and once
per batch the ranks exchange their episodes, lifecycle changes and stop requests, so each
holds the same batch record and computes the same update events. Only rank 0's emitter
reaches a recorder, and only rank 0 writes the checkpoint (with every rank's sampling
generator, so a resume continues each rank's stream).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from esper import __version__
from esper.common.spaces import FactoredActions
from esper.rl.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from esper.rl.config import ConfigError, TrainConfig, parse_fault
from esper.rl.learners import DUMP_ENV, Learners, LearnersLost, RankDump
from esper.rl.ppo import PPOAgent
from esper.rl.rollout import ContinuingRollout, collect_batch
from esper.rl.runners import (
    EnvFactory,
    EnvRunner,
    FactoredEnv,
    InProcessRunner,
    RestartNotice,
    WorkerError,
    WorkerInfo,
    make_runner,
)
from esper.rl.threads import learner_threads
from esper.telemetry.contracts import (
    PAYLOAD_TYPES,
    TERMINAL_EVENTS,
    EpisodeCompleted,
    EventType,
    Payload,
    SeedLifecycle,
    TelemetryEvent,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
    WorkerRestarted,
    WorkerStatus,
)
from esper.telemetry.emitter import TelemetryEmitter, update_payloads
from esper.telemetry.recorder import EVENTS_FILE, RUN_FILE, read_events

UPDATE_EVENTS = frozenset({EventType.PPO_UPDATE_COMPLETED, EventType.PPO_UPDATE_SKIPPED})


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite updates)."""


@dataclass(frozen=True)
class TrainResult:
    """How a run ended, for the CLI's exit code and final summary."""

    episodes: int
    updates: int
    wall_seconds: float
    interrupted: bool


@dataclass(frozen=True)
class EnvSpec:
    """The environment a run trains on, as the trainer needs to know it.

    `make` builds one env (picklable: worker processes and Ray actors call it).
    `episode_length` set: every episode lasts exactly that many steps, and each batch runs
    one fresh, seeded episode per env (the morphogenetic task). None: episodes end when
    they end; each batch runs `batch_steps` steps per env and the envs carry on between
    batches, resetting themselves (`esper.rl.rollout.ContinuingRollout`). `name` is
    recorded as the run's task.
    """

    make: EnvFactory
    obs_dim: int
    actions: FactoredActions
    name: str
    episode_length: int | None
    batch_steps: int

    def __post_init__(self) -> None:
        if self.episode_length is not None and self.batch_steps != self.episode_length:
            raise ValueError("an env of fixed episode length runs one episode per batch")


def episode_seeds(base_seed: int, first_episode: int, count: int) -> list[int]:
    """Distinct, reproducible per-episode seeds: episode k of a run always gets the same."""
    return [base_seed * 1_000_003 + first_episode + i for i in range(count)]


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run picks up: checkpoint state (None: from the start), numbering.

    `config` is the run's configuration as recorded (flat or nested PPO keys); `batch`
    is the batch the resumed run starts at: events of that batch or later written by an
    earlier attempt were never committed by an update and are void from then on.
    """

    checkpoint: dict[str, Any] | None
    config: dict[str, Any]
    next_seq: int
    start_update_index: int
    #: The run's id and start time as its log's first TRAINING_STARTED records them (None:
    #: no start event), so a resumed run goes on under its own id, whatever run.json says.
    run_id: str | None = None
    started_at: float | None = None
    #: Whether the log ends with the run's end (finished or failed): an attempt killed
    #: between its last update and saying so has every episode but not this.
    finished: bool = False

    @property
    def batch(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["batch"])


class ForeignRunError(ValueError):
    """The run directory was recorded by another trainer (an SB3 model, a HeadRatioMonitor)."""


def foreign_recorder(config: Mapping[str, Any]) -> str | None:
    """Who recorded a run whose start config this is, if not `esper ppo` (else None).

    The SB3 integration names its algorithm (`PerHeadPPO`, ...) under "algorithm", and a
    `HeadRatioMonitor` always records its `clip_eps` at the top level, where `esper ppo`
    never does (its PPO settings are nested under "ppo", or flat as "clip" in old runs).
    """
    algorithm = config.get("algorithm")
    if isinstance(algorithm, str) and algorithm:
        return algorithm
    if "clip_eps" in config:
        return "a HeadRatioMonitor"
    return None


def _run_json_config(run_dir: Path) -> dict[str, Any]:
    """The configuration run.json records, or {} if it is missing or damaged."""
    try:
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        config = info["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return config if isinstance(config, dict) else {}


def _recorded_config(run_dir: Path, started: dict[str, Any] | None) -> dict[str, Any]:
    """The configuration of a run that died before its first checkpoint."""
    config = _run_json_config(run_dir)
    if config:
        return config
    if started is not None:  # run.json damaged: the start event carries the same config
        return started
    raise ValueError(f"no checkpoint, and neither {RUN_FILE} nor the log holds the configuration")


def load_resume_point(run_dir: Path, map_location: str = "cpu") -> ResumePoint:
    """Read a run's checkpoint and event log and work out how to continue it.

    The checkpoint may hold one update whose event the kill prevented (`pending`); if the
    log already has that update it is dropped, otherwise it will be emitted on resume. A
    run that died before its first checkpoint starts again from batch 0, continuing its log.
    """
    path = run_dir / CHECKPOINT_NAME
    has_checkpoint = path.exists() or path.is_symlink()
    state = load_checkpoint(path, map_location=map_location) if has_checkpoint else None
    last_seq = -1
    logged: set[int] = set()
    exploded: set[int] = set()
    started: dict[str, Any] | None = None
    first_start: TelemetryEvent | None = None
    finished = False
    for event in read_events(run_dir / EVENTS_FILE):
        last_seq = max(last_seq, event.seq)
        finished = event.event_type in TERMINAL_EVENTS
        index = getattr(event.payload, "update_index", None)
        if event.event_type in UPDATE_EVENTS and index is not None:
            logged.add(int(index))
        if event.event_type == EventType.RATIO_EXPLOSION and index is not None:
            exploded.add(int(index))
        if event.event_type == EventType.TRAINING_STARTED and started is None:
            started = dict(getattr(event.payload, "config", {}))
            first_start = event
    recorder = foreign_recorder(started if started is not None else _run_json_config(run_dir))
    if recorder is not None:
        raise ForeignRunError(
            f"{run_dir} was recorded by {recorder}, not by `esper ppo`, and cannot be resumed by it"
        )
    run_id = None if first_start is None else first_start.run_id
    started_at = None if first_start is None else first_start.timestamp
    if state is None:
        if logged:
            raise ValueError(f"the log holds PPO updates but {CHECKPOINT_NAME} is missing")
        config = _recorded_config(run_dir, started)
        return ResumePoint(
            None, config, last_seq + 1, 0, run_id=run_id, started_at=started_at, finished=finished
        )
    for key in ("agent", "config", "episodes_done", "updates_done", "batch"):
        if key not in state:
            raise ValueError(f"not an esper checkpoint (no {key!r})")
    pending = state.get("pending")
    if pending is not None and "events" not in pending:
        raise ValueError(
            "its pending update was written by an older esper; finish or restart the run with it"
        )
    if pending is not None and int(pending["update_index"]) in logged:
        # the update is in the log; only its explosion report may still be owed
        index = int(pending["update_index"])
        owed = [
            event
            for event in pending["events"]
            if event["event_type"] == EventType.RATIO_EXPLOSION.value and index not in exploded
        ]
        pending = {**pending, "events": owed, "update_logged": True} if owed else None
        state = {**state, "pending": pending}
    start = int(state["next_update_index"])
    if pending is not None and not pending.get("update_logged"):
        start = int(pending["update_index"])
    return ResumePoint(
        checkpoint=state,
        config=dict(state["config"]),
        next_seq=last_seq + 1,
        start_update_index=start,
        run_id=run_id,
        started_at=started_at,
        finished=finished,
    )


class Trainer:
    """Runs `config.episodes` episodes in batches of parallel envs, one PPO update each.

    After each update the checkpoint is written *before* the update's event: a kill in
    between leaves the event pending in the checkpoint, and `--resume` emits it then, so
    every completed update appears in the log exactly once. A batch's other events
    (episodes, lifecycle, worker status) count once its update is in the log; a resume
    names the batch it restarts at, voiding what an earlier attempt left of it.

    `io_failure` (the recorder's) is asked after every update whether telemetry could
    not be written; if so the run stops with that one line and the last durable update.

    The env runner starts with the first batch and stops when `run` returns. With the
    in-process backend it steps `self.envs`, which a caller may wrap before `run`.
    """

    def __init__(
        self,
        config: TrainConfig,
        emitter: TelemetryEmitter,
        run_dir: Path,
        env: EnvSpec,
        stop: threading.Event | None = None,
        resume: ResumePoint | None = None,
        io_failure: Callable[[], str | None] | None = None,
        learners: Learners | None = None,
    ) -> None:
        self.config = config
        #: The ranks this trainer runs with (None: alone).
        self.learners = learners if learners is not None and learners.world > 1 else None
        #: Envs this rank steps: its share of `config.envs`.
        self.local_envs = config.envs // (1 if self.learners is None else self.learners.world)
        self.env = env
        self.emitter = emitter
        self.run_dir = run_dir
        self.stop = stop or threading.Event()
        self.fault = parse_fault(config.fault) if config.fault else None
        if self.fault is not None and self.fault.head not in env.actions.names:
            raise ConfigError(
                f"fault names head {self.fault.head!r}; this run's heads are "
                f"{', '.join(env.actions.names)}"
            )
        torch.manual_seed(config.seed)
        # the envs step at one thread (runners)
        torch.set_num_threads(learner_threads(config, env.batch_steps))
        self._make_env = env.make
        in_process = config.backend == "inprocess"
        self.envs: list[FactoredEnv] = (
            [self._make_env() for _ in range(self.local_envs)] if in_process else []
        )
        self.runner: EnvRunner | None = None
        self._continuing: ContinuingRollout | None = None
        self.agent = PPOAgent(
            obs_dim=env.obs_dim,
            actions=env.actions,
            config=config.ppo,
            device=config.device,
            seed=config.seed,
            learners=self.learners,
        )
        #: Lifecycle changes of this rank's envs in the current batch (several learners:
        #: they reach the log through rank 0 once the batch is exchanged).
        self._lifecycle: list[tuple[int, dict[str, Any]]] = []
        #: Every rank's sampling-generator state after the last exchanged batch.
        self._rank_generators: list[Tensor] | None = None
        #: Several learners: a stop every rank has heard of (set from the exchange).
        self._stop_agreed = False
        dump = os.environ.get(DUMP_ENV)
        self._dump = None if not dump else RankDump(Path(dump), self._rank)
        if self._dump is not None:
            self.agent.local_stats_hook = self._dump.stats
        self.episodes_done = 0
        self.updates_done = 0
        self.batch = 0
        self._bad_updates = 0
        self._pending: dict[str, Any] | None = None
        self._resume = resume
        self.io_failure = io_failure
        #: The last update a resume would not redo (its checkpoint is on disk), if any.
        self.durable_update: int | None = None
        #: True from the start of a batch until its checkpoint is written: the agent and
        #: its generators hold state no checkpoint may capture (the batch is redone).
        self._in_batch = False
        if resume is not None and resume.checkpoint is not None:
            self._restore(resume.checkpoint)
            last = int(resume.checkpoint.get("next_update_index", 0)) - 1
            self.durable_update = last if last >= 0 else None

    @property
    def _rank(self) -> int:
        return 0 if self.learners is None else self.learners.rank

    def _restore(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.episodes_done = int(state["episodes_done"])
        self.updates_done = int(state["updates_done"])
        self.batch = int(state["batch"])
        self._bad_updates = int(state.get("bad_updates", 0))
        self._pending = state.get("pending")
        generators = state.get("learner_sample_generators")
        if self.learners is not None and generators is not None:
            self._rank_generators = list(generators)
            self.agent.restore_sample_generator(generators[self.learners.rank])

    def _open_runner(self) -> EnvRunner:
        """The runner for the configured backend, started on first use."""
        if self.runner is None:
            cfg = self.config
            self.runner = (
                InProcessRunner(self.envs)
                if cfg.backend == "inprocess"
                else make_runner(
                    cfg.backend,
                    [self._make_env] * cfg.envs,
                    cfg.n_workers,
                    ray_address=cfg.ray_address,
                    on_restart=self._on_worker_restart,
                )
            )
        return self.runner

    def close(self) -> None:
        """Stop the env workers, if any were started; idempotent."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()

    def _worker_of(self, env_index: int) -> int | None:
        return None if self.runner is None else self.runner.worker_of(env_index)

    def _on_worker_restart(self, notice: RestartNotice) -> None:
        restarted = WorkerRestarted(
            worker=notice.worker,
            backend=notice.backend,
            reason=notice.reason,
            restarts=notice.restarts,
            replayed_steps=notice.replayed_steps,
        )
        self.emitter.emit(restarted, batch=self.batch)

    def _emit_worker_status(self, runner: EnvRunner) -> None:
        for info in runner.status():
            self.emitter.emit(_worker_status(info, runner.backend), batch=self.batch)

    def _on_step(self, env_index: int, step: int, info: dict[str, Any]) -> None:
        if self.learners is not None:  # emitted by rank 0 after the exchange
            self._lifecycle += [(env_index, dict(c)) for c in info.get("lifecycle_events", ())]
            return
        for change in info.get("lifecycle_events", ()):
            lifecycle = SeedLifecycle(
                env_index=env_index,
                worker=self._worker_of(env_index),
                slot=int(change["slot"]),
                from_stage=str(change["from_stage"]),
                to_stage=str(change["to_stage"]),
                blueprint=change.get("blueprint"),
                alpha=float(change["alpha"]),
            )
            self.emitter.emit(lifecycle, episode=self.episodes_done + env_index, batch=self.batch)

    def _batch_envs(self) -> int:
        """Envs of the coming batch over all ranks (the last batch may be smaller)."""
        cfg = self.config
        if self.env.episode_length is not None:
            return min(cfg.envs, cfg.episodes - self.episodes_done)
        return cfg.envs

    def _share(self, n: int) -> slice:
        """This rank's envs of a batch of `n`, as global env indices."""
        return slice(0, n) if self.learners is None else self.learners.share(n)

    def _collect(self, runner: EnvRunner) -> tuple[Any, list[tuple[int, dict[str, Any]]]]:
        """One batch of experience: the buffer and the episodes that ended, by (this
        rank's) env."""
        cfg = self.config
        n = self._batch_envs()
        if self.env.episode_length is not None:
            seeds = episode_seeds(cfg.seed, self.episodes_done, n)[self._share(n)]
            buffer, episodes = collect_batch(
                self.agent, runner, self.env.episode_length, seeds, on_step=self._on_step
            )
            return buffer, list(enumerate(episodes))
        if self._continuing is None:  # a resumed run starts fresh episodes
            seeds = episode_seeds(cfg.seed, self.episodes_done, n)[self._share(n)]
            self._continuing = ContinuingRollout(self.agent, runner, self.env.batch_steps, seeds)
        return self._continuing.collect(on_step=self._on_step)

    def _exchange(
        self, runner: EnvRunner, ended: list[tuple[int, dict[str, Any]]]
    ) -> list[tuple[int, int, dict[str, Any]]]:
        """Several learners: every rank's episodes, lifecycle changes, worker status, stop
        request and sampling generator, on every rank, in one all-gather; rank 0 emits
        them (the others' emitters record nothing). Returns the batch's ended episodes
        as (rank, global env index, summary), rank by rank."""
        assert self.learners is not None
        offset = self._share(self._batch_envs()).start
        mine: dict[str, Any] = {
            "ended": [(offset + i, ep) for i, ep in ended],
            "lifecycle": [(offset + i, change) for i, change in self._lifecycle],
            "status": runner.status(),
            "stop": self.stop.is_set(),
            "generator": self.agent.sample_generator_state(),
        }
        self._lifecycle = []
        ranks = self.learners.all_gather(mine)
        self._stop_agreed = any(r["stop"] for r in ranks)
        self._rank_generators = [r["generator"] for r in ranks]
        for rank, record in enumerate(ranks):
            for env_index, change in record["lifecycle"]:
                lifecycle = SeedLifecycle(
                    env_index=env_index,
                    worker=rank,
                    slot=int(change["slot"]),
                    from_stage=str(change["from_stage"]),
                    to_stage=str(change["to_stage"]),
                    blueprint=change.get("blueprint"),
                    alpha=float(change["alpha"]),
                )
                self.emitter.emit(
                    lifecycle, episode=self.episodes_done + env_index, batch=self.batch
                )
        for rank, record in enumerate(ranks):  # one in-process worker per rank
            for info in record["status"]:
                status = _worker_status(info, runner.backend, worker=rank)
                self.emitter.emit(status, batch=self.batch)
        return [(rank, i, ep) for rank, r in enumerate(ranks) for i, ep in r["ended"]]

    def _run_batch(self) -> None:
        self._in_batch = True
        runner = self._open_runner()
        buffer, local = self._collect(runner)
        if self.learners is not None:
            ended = self._exchange(runner, local)
        else:
            ended = [(runner.worker_of(i), i, ep) for i, ep in local]
        episodes = [summary for _, _, summary in ended]
        for k, (worker, i, ep) in enumerate(ended):
            accuracy = ep.get("final_accuracy")
            completed = EpisodeCompleted(
                env_index=i,
                worker=worker,
                episode_return=float(ep["return"]),
                final_accuracy=None if accuracy is None else float(accuracy),
                seeds_grown=int(ep.get("seeds_grown", 0)),
                seeds_fossilized=int(ep.get("seeds_fossilized", 0)),
                seeds_killed=int(ep.get("seeds_killed", 0)),
                length=int(ep["length"]),
            )
            self.emitter.emit(completed, episode=self.episodes_done + k, batch=self.batch)
        if self.learners is None:
            self._emit_worker_status(runner)
        faulty = self.fault is not None and self.fault.active(self.batch)
        before = {
            "policy": copy.deepcopy(self.agent.policy.state_dict()),
            "optimizer": copy.deepcopy(self.agent.optimizer.state_dict()),
        }
        if faulty:
            assert self.fault is not None
            self.agent.policy.inject_nonfinite = {self.fault.head: self.fault.value}
        try:
            stats = self.agent.update(buffer)
        finally:
            self.agent.policy.inject_nonfinite = None
        skip_reason = None
        if not _parameters_finite(self.agent.policy):
            # A step that left inf/NaN weights would poison every later rollout: undo it
            # and count the update as skipped, like one whose minibatches were all bad.
            self.agent.policy.load_state_dict(before["policy"])
            self.agent.optimizer.load_state_dict(before["optimizer"])
            stats = dataclasses.replace(
                stats, minibatches_skipped=stats.minibatches_run, explosion=None
            )
            skip_reason = "the update made the policy's parameters non-finite; reverted"
        index = self.emitter.next_update_index
        accuracies = [ep["final_accuracy"] for ep in episodes if "final_accuracy" in ep]
        payloads = update_payloads(
            stats,
            index,
            batch=self.batch,
            mean_return=float(np.mean([ep["return"] for ep in episodes])) if episodes else None,
            host_accuracy=float(np.mean(accuracies)) if accuracies else None,
            skip_reason=skip_reason,
        )
        # Plain data (the events' own JSON form), so the checkpoint loads with weights_only.
        self._pending = {
            "batch": self.batch,
            "update_index": index,
            "events": [
                {"event_type": p.EVENT_TYPE.value, "data": p.to_dict()} for p in payloads
            ],
        }
        self.episodes_done += len(ended)
        self.batch += 1
        bad = stats.minibatches_skipped > 0
        self._bad_updates = self._bad_updates + 1 if bad else 0
        if stats.minibatches_run - stats.minibatches_skipped > 0:
            self.updates_done += 1
        self._save_checkpoint()
        self._in_batch = False
        self.durable_update = int(self._pending["update_index"])
        self._emit_pending()
        self._check_io()
        if self._bad_updates >= self.config.max_bad_updates:
            raise TrainingError(
                f"{self._bad_updates} consecutive PPO updates had non-finite values "
                f"(limit max_bad_updates={self.config.max_bad_updates}); stopping"
            )

    def _emit_pending(self) -> None:
        """Emit the last update's events (skipped, or completed plus any explosion)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if not pending.get("update_logged"):  # else a kill fell between update and report
            index = self.emitter.take_update_index()
            if index != int(pending["update_index"]):
                raise TrainingError(
                    f"update numbering diverged: pending update {pending['update_index']}, "
                    f"emitter at {index}"
                )
        for event in pending["events"]:
            payload: Payload = PAYLOAD_TYPES[EventType(event["event_type"])].from_dict(
                event["data"]
            )
            self.emitter.emit(payload, batch=int(pending["batch"]))

    def _durable_text(self) -> str:
        if self.durable_update is None:
            return "no update is durable yet (resume starts at the first batch)"
        return f"last durable update: {self.durable_update}"

    def _check_io(self) -> None:
        """Stop with one line if telemetry could not be written (disk full, size limit)."""
        failure = self.io_failure() if self.io_failure is not None else None
        if failure is not None:
            raise TrainingError(f"{failure}; {self._durable_text()}")

    def _save_checkpoint(self) -> None:
        if self.learners is not None and not self.learners.is_writer:
            return  # rank 0 writes it, with every rank's generator state
        path = self.run_dir / CHECKPOINT_NAME
        try:
            self._write_checkpoint(path)
        except (OSError, RuntimeError) as exc:
            cause = _os_error(exc)  # torch wraps a failed write in an archive RuntimeError
            if cause is None:
                raise
            raise TrainingError(
                f"cannot write checkpoint {path}: {cause.strerror or cause}; {self._durable_text()}"
            ) from exc

    def _write_checkpoint(self, path: Path) -> None:
        save_checkpoint(
            path,
            {
                "agent": self.agent.state_dict(),
                "episodes_done": self.episodes_done,
                "updates_done": self.updates_done,
                "batch": self.batch,
                "bad_updates": self._bad_updates,
                "next_update_index": self.emitter.next_update_index
                + (1 if self._pending is not None else 0),
                "pending": self._pending,
                "config": self.config.to_dict(),
                **(
                    {}
                    if self.learners is None
                    else {
                        "learners": self.learners.world,
                        "learner_sample_generators": self._rank_generators,
                    }
                ),
            },
        )

    def _start(self) -> None:
        """Announce the run; a resumed run first emits an update its kill left pending."""
        cfg = self.config
        sizes = self.agent.head_sizes
        started = TrainingStarted(
            config=cfg.to_dict(),
            task=self.env.name,
            head_names=list(sizes),
            head_sizes=sizes,
            episodes_total=cfg.episodes,
            n_envs=cfg.envs,
            device=cfg.device,
            esper_version=__version__,
            resumed_from_update=None if self._resume is None else self.emitter.next_update_index,
            resumed_from_batch=None if self._resume is None else self._resume.batch,
            clip_eps=cfg.ppo.clip_eps,
        )
        self.emitter.emit(started)
        self._emit_pending()
        self._check_io()

    def _train(self) -> bool:
        """Batches until the run is done (False) or `stop` is set (True)."""
        try:
            while self.episodes_done < self.config.episodes:
                # Several learners stop together, at a batch every rank agreed on.
                if self._stop_agreed if self.learners is not None else self.stop.is_set():
                    return True
                self._run_batch()
        except WorkerError as exc:  # an infrastructure failure: one line, no traceback
            raise TrainingError(f"environment workers failed: {exc}") from exc
        except LearnersLost as exc:  # a rank died or hung: one line, no traceback
            raise TrainingError(str(exc)) from exc
        return False

    def run(self) -> TrainResult:
        """Train to the end, to `stop`, or to Ctrl-C; always leaves telemetry complete."""
        start = time.perf_counter()
        interrupted = False
        try:
            self._start()
            interrupted = self._train()
        except KeyboardInterrupt:
            interrupted = True
        except BaseException as exc:
            failed = TrainingFailed(
                error=f"{type(exc).__name__}: {exc}",
                traceback=None if isinstance(exc, TrainingError) else traceback.format_exc(),
            )
            self.emitter.emit(failed)
            raise
        finally:
            self.close()
            if self._dump is not None:
                self._dump.parameters(self.agent.policy)
        wall = time.perf_counter() - start
        if not self._in_batch:  # else the last checkpoint stands; its batch is redone
            try:
                self._save_checkpoint()
            except TrainingError as exc:
                self.emitter.emit(TrainingFailed(error=str(exc)))
                raise
        finished = TrainingFinished(
            episodes=self.episodes_done,
            updates=self.updates_done,
            wall_seconds=wall,
            run_dir=str(self.run_dir),
            interrupted=interrupted,
        )
        self.emitter.emit(finished)
        return TrainResult(self.episodes_done, self.updates_done, wall, interrupted)


def _worker_status(info: WorkerInfo, backend: str, worker: int | None = None) -> WorkerStatus:
    """A worker's status as an event (`worker`: the number to record it under, when a
    learner rank stands for the worker)."""
    return WorkerStatus(
        worker=info.worker if worker is None else worker,
        backend=backend,
        alive=info.alive,
        restarts=info.restarts,
        envs=info.envs,
        steps=info.steps,
        steps_per_second=info.steps_per_second,
    )


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, or a cause or context of it), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _parameters_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter is finite (one device->host sync per update)."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True

