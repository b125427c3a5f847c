"""The driver's telemetry path per event: emit + hub publish + the run recorder's write.

This is what the training thread pays for every event a worker's step produces (docs/
scaling.md): `TelemetryEmitter` builds and validates the payload and the envelope,
`TelemetryHub.publish` hands it to every backend, and the synchronous `RunRecorder`
serialises it and writes one JSON line. The stream is a 100-worker run's mix (docs/
scaling.md): per 100 events 94 `SEED_LIFECYCLE`, 3 `EPISODE_COMPLETED` and 3
`WORKER_STATUS`, then the batch's PPO update (8 heads), whose write carries the batch's
lines to the file; the update's fsync is stubbed out while timing (its cost is the
disk's, once per batch, and durability's price). Timed in thread CPU time over a block
of events, per event; each round also
times the same stream through a hub that also feeds the dashboard (a queued Sanctum
lane, as `esper ppo` with its TUI), in wall time since its worker thread competes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Row, Section, cpu_clock, interleaved, spread, timed, wall_clock

TARGET_US = 10.0
#: One cycle of the 100-worker mix (see the module docstring).
LIFECYCLE, EPISODES, STATUS = 94, 3, 3
STAGES = ("DORMANT", "GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED")
_UPDATE: Any = None  # one UpdateStats, built on first use (no import at module load)


def _update_stats() -> Any:
    from esper.morpho.actions import HEAD_NAMES
    from esper.telemetry.heads import HeadStats, UpdateStats

    head = HeadStats(ratio_max=1.2, ratio_min=0.85, clip_fraction=0.1, entropy=0.7, relevant=40)
    return UpdateStats(heads=dict.fromkeys(HEAD_NAMES, head), minibatches_run=16)


def emit_cycle(emitter: Any, cycle: int) -> int:
    """Emit one 100-event cycle of the mix; returns how many events it emitted."""
    from esper.telemetry.contracts import EpisodeCompleted, SeedLifecycle, WorkerStatus
    from esper.telemetry.emitter import emit_update

    global _UPDATE
    if _UPDATE is None:
        _UPDATE = _update_stats()

    for i in range(LIFECYCLE):
        stage = i % (len(STAGES) - 1)
        lifecycle = SeedLifecycle(
            env_index=i % 100, worker=i % 100, slot=i % 3,
            from_stage=STAGES[stage], to_stage=STAGES[stage + 1],
            blueprint="conv_light" if stage == 0 else None, alpha=0.25 * (stage % 4),
        )  # fmt: skip
        emitter.emit(lifecycle, episode=cycle * 100 + i, batch=cycle)
    for i in range(EPISODES):
        episode = EpisodeCompleted(
            env_index=i, worker=i, episode_return=1.5 + i, final_accuracy=0.9,
            seeds_grown=2, seeds_fossilized=1, seeds_killed=0, length=25,
        )  # fmt: skip
        emitter.emit(episode, episode=cycle * 100 + i, batch=cycle)
    for i in range(STATUS):
        status = WorkerStatus(
            worker=i, backend="processes", alive=True, restarts=0, envs=1,
            steps=25 * cycle, steps_per_second=80.0,
        )  # fmt: skip
        emitter.emit(status, batch=cycle)
    emit_update(emitter, _UPDATE, batch=cycle)
    return LIFECYCLE + EPISODES + STATUS + 1


class EmitSide:
    """A hub (recorder, optionally the dashboard lane) in a temp run dir; times `cycles`."""

    def __init__(self, root: Path, name: str, dashboard: bool, cycles: int) -> None:
        from esper.sanctum.aggregator import SanctumAggregator, SanctumBackend
        from esper.telemetry.emitter import TelemetryEmitter
        from esper.telemetry.hub import TelemetryHub
        from esper.telemetry.recorder import RunRecorder

        self.hub = TelemetryHub()
        self.hub.add_backend(RunRecorder(root / name, config={}, run_id=name))
        if dashboard:
            self.hub.add_backend(SanctumBackend(SanctumAggregator()))
        self.emitter = TelemetryEmitter(self.hub, run_id=name)
        self.cycles, self.done = cycles, 0
        self.events = cycles * (LIFECYCLE + EPISODES + STATUS + 1)

    def block(self) -> None:
        import os

        fsync, os.fsync = os.fsync, lambda fd: None  # the disk's cost, not the driver's
        try:
            for _ in range(self.cycles):
                emit_cycle(self.emitter, self.done)
                self.done += 1
        finally:
            os.fsync = fsync

    def timing(self, clock: Callable[[], float]) -> Callable[[], float]:
        run = timed(self.block, clock)
        return lambda: run() / self.events


def profile(cycles: int = 20) -> list[tuple[str, float, int]]:
    """cProfile of the recorder-only path: (function, own seconds per event, calls)."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory(prefix="bench_emit_") as tmp:
        side = EmitSide(Path(tmp), "profiled", dashboard=False, cycles=cycles)
        profiler = cProfile.Profile()
        profiler.runcall(side.block)
        side.hub.close()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = [
        (f"{Path(file).name}:{line}({name})", tottime / side.events, calls)
        for (file, line, name), (calls, _, tottime, _, _) in stats.items()
    ]
    return sorted(rows, key=lambda r: -r[1])[:12]


def run(quick: bool) -> Section:
    """Per-event cost, headless (the figure with a target) and with the dashboard lane."""
    rounds, cycles = (5, 10) if quick else (15, 20)
    with tempfile.TemporaryDirectory(prefix="bench_emit_") as tmp:
        root = Path(tmp)
        headless = EmitSide(root, "headless", dashboard=False, cycles=cycles)
        with_tui = EmitSide(root, "dashboard", dashboard=True, cycles=cycles)
        samples = interleaved(
            {
                "headless_cpu": headless.timing(cpu_clock),
                "dashboard_wall": with_tui.timing(wall_clock),
            },
            rounds=rounds,
            warmup=1,
        )
        headless.hub.close()
        with_tui.hub.close()
    us = {name: spread(values).scaled(1e6) for name, values in samples.items()}
    raw: dict[str, Any] = {
        "rounds": rounds,
        "events_per_round": headless.events,
        "mix_per_100": {
            "SEED_LIFECYCLE": LIFECYCLE,
            "EPISODE_COMPLETED": EPISODES,
            "WORKER_STATUS": STATUS,
            "PPO_UPDATE_COMPLETED (fsync stubbed)": 1,
        },
        **{f"{name}_us": s.as_dict() for name, s in us.items()},
        "profile_us_per_event": [
            {"function": f, "own_us": round(t * 1e6, 2), "calls": c} for f, t, c in profile()
        ],
    }
    rows = [
        Row("emit_us_per_event",
            "driver telemetry path, emit + publish + record, CPU per event (100-worker mix)",
            us["headless_cpu"], "µs", TARGET_US, higher_is_better=False),
        Row("emit_us_per_event_dashboard",
            "the same with the dashboard's queued lane too, wall per event",
            us["dashboard_wall"], "µs"),
    ]  # fmt: skip
    return Section("emit_path", rows, raw)
