"""Sanctum under load: aggregator ingest rate and the time to draw one dashboard frame.

The event stream is synthetic but built by the real `TelemetryEmitter` (so payloads are
validated exactly as in a run) from a seeded generator: per batch, `LIFECYCLE_PER_UPDATE`
seed-lifecycle and episode events, then one PPO update carrying every per-head field.
Building the events is not timed; `SanctumAggregator.handle_event` is, in thread CPU
time, as is a dashboard frame (see `frame_times`).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.common import Row, Section, cpu_clock, interleaved, spread, timed

INGEST_TARGET = 50_000.0  # events per second
FRAME_TARGET_MS = 16.0  # one 60 Hz frame
HISTORY_UPDATES = 10_000
#: Terminal sizes of the frame benchmark; the first (that of `sanctum --screenshot`) is
#: the headline figure.
FRAME_SIZES: tuple[tuple[int, int], ...] = ((120, 40), (160, 50))
#: Lifecycle and episode events per PPO update in the mixed stream.
LIFECYCLE_PER_UPDATE = 50
N_ENVS = 2
STAGES = ("DORMANT", "GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED", "KILLED")
BLUEPRINTS = ("LINEAR", "MLP", "WIDE_MLP", "LOW_RANK", "NORM")


class EventList(list[Any]):
    """An emitter sink that keeps every event, in order."""

    def publish(self, event: Any) -> None:
        self.append(event)


def update_stats(rng: np.random.Generator, drift: npt.NDArray[np.float64]) -> Any:
    """A plausible `UpdateStats` of one PPO update: every head measured, ratios near 1.

    Each head's ratio max wanders away from 1 and back (`drift`, one value per head, is
    advanced in place as a mean-reverting walk): PPO ratios drift from update to update
    rather than jump, and that is what the history sparklines draw.
    """
    from esper.morpho.actions import HEAD_NAMES
    from esper.telemetry.heads import HeadStats, UpdateStats

    drift *= 0.9
    drift += rng.normal(0.0, 0.04, size=drift.shape)
    shift = np.abs(drift)
    ratio_max = (1.0 + shift).tolist()
    ratio_min = (1.0 - shift / 2).tolist()
    clip = rng.uniform(0.0, 0.3, size=shift.shape)
    entropy = rng.uniform(0.2, 1.0, size=shift.shape)
    kl = rng.uniform(0.0, 0.02, size=shift.shape)
    relevant = rng.integers(1, 50, size=shift.shape).tolist()
    heads = {
        head: HeadStats(
            ratio_max=ratio_max[i],
            ratio_min=ratio_min[i],
            clip_fraction=float(clip[i]),
            entropy=float(entropy[i]),
            approx_kl=float(kl[i]),
            relevant=int(relevant[i]),
            nonfinite=0,
        )
        for i, head in enumerate(HEAD_NAMES)
    }
    scalars = rng.uniform(0.0, 1.0, size=4)
    return UpdateStats(
        heads=heads,
        joint_ratio_max=1.0 + float(shift.sum()),
        approx_kl=float(kl.mean()),
        clip_fraction=float(clip.mean()),
        policy_loss=float(scalars[0] - 0.5),
        value_loss=float(scalars[1]),
        entropy=float(entropy.mean()),
        explained_variance=float(2 * scalars[2] - 1),
        grad_norm=float(scalars[3] / 2),
        epochs_run=4,
        minibatches_run=16,
    )


def event_stream(updates: int, per_update: int, seed: int = 0) -> list[Any]:
    """TRAINING_STARTED, then per batch `per_update` lifecycle/episode events and an update."""
    from esper import __version__
    from esper.morpho.actions import HEAD_NAMES, head_sizes
    from esper.telemetry.contracts import EpisodeCompleted, SeedLifecycle, TrainingStarted
    from esper.telemetry.emitter import TelemetryEmitter, emit_update

    rng = np.random.default_rng(seed)
    drift = np.zeros(len(head_sizes(3)))
    sink = EventList()
    ticks = itertools.count(1_700_000_000)
    emitter = TelemetryEmitter(sink, "bench", clock=lambda: float(next(ticks)))
    emitter.emit(
        TrainingStarted(
            config={},
            task="spirals",
            head_names=list(HEAD_NAMES),
            head_sizes=head_sizes(3),
            episodes_total=updates * N_ENVS,
            n_envs=N_ENVS,
            device="cpu",
            esper_version=__version__,
        )
    )
    for batch in range(updates):
        for k in range(per_update):
            env = int(rng.integers(N_ENVS))
            if k % 25 == 24:  # an episode ends every 25 events, like a 25-epoch episode
                episode = EpisodeCompleted(
                    env_index=env,
                    episode_return=float(rng.normal()),
                    final_accuracy=float(rng.uniform()),
                    seeds_grown=int(rng.integers(3)),
                    seeds_fossilized=int(rng.integers(2)),
                    seeds_killed=int(rng.integers(2)),
                    length=25,
                )
                emitter.emit(episode, batch=batch)
                continue
            src, dst = rng.choice(len(STAGES), size=2, replace=False)
            lifecycle = SeedLifecycle(
                env_index=env,
                slot=int(rng.integers(3)),
                from_stage=STAGES[src],
                to_stage=STAGES[dst],
                blueprint=str(rng.choice(BLUEPRINTS)),
                alpha=float(rng.uniform()),
            )
            emitter.emit(lifecycle, batch=batch)
        emit_update(emitter, update_stats(rng, drift), batch=batch, mean_return=0.0)
    return sink


def ingest_seconds(events: list[Any]) -> float:
    """Seconds for a fresh aggregator to fold `events`."""
    from esper.sanctum.aggregator import SanctumAggregator

    aggregator = SanctumAggregator()
    handle = aggregator.handle_event

    def fold() -> None:
        for event in events:
            handle(event)

    return timed(fold, cpu_clock)()


def encoding_app_class() -> type:
    """`SanctumApp` that encodes every frame for a terminal, as it does on a real one.

    Under `run_test` Textual's driver is headless and `App._display` then skips turning the
    composited frame into escape sequences: a third of a real frame's cost. Reporting
    "not headless" runs that step; the headless driver still discards what it is given.
    `bytes_written` counts the encoded output (it must be non-zero for the figure to hold).
    """
    from esper.sanctum.app import SanctumApp

    class EncodingSanctumApp(SanctumApp):  # type: ignore[misc, valid-type]
        # Textual resolves a relative CSS_PATH against the defining class's module
        CSS_PATH = str(Path(inspect.getfile(SanctumApp)).parent / str(SanctumApp.CSS_PATH))
        bytes_written = 0

        @property
        def is_headless(self) -> bool:
            return False

        def _display(self, screen: Any, renderable: Any) -> None:
            driver = self._driver
            if driver is not None and not hasattr(driver, "_bench_counted"):
                write = driver.write

                def counted(data: str) -> None:
                    type(self).bytes_written += len(data)
                    write(data)

                driver.write = counted  # type: ignore[method-assign]
                driver._bench_counted = True  # type: ignore[attr-defined]
            super()._display(screen, renderable)

    return EncodingSanctumApp


async def frame_times(
    events: list[Any], frames: int, size: tuple[int, int], encode: bool = True
) -> list[float]:
    """CPU seconds per dashboard frame: assigning a new `app.snapshot` plus the repaint.

    The aggregator has folded `events` (the history) first; each frame folds one more
    update so every snapshot differs (panels skip a snapshot they already show).
    `pilot.pause()` lets the bound panels redraw, each in its own turn, and the app lay
    out, repaint and (with `encode`) encode the frame for the terminal, then idles until
    the process is quiet; the app's thread CPU time counts the work and not that idle wait.
    """
    from esper.sanctum.aggregator import SanctumAggregator
    from esper.sanctum.app import SanctumApp

    aggregator = SanctumAggregator()
    for event in events:
        aggregator.handle_event(event)
    extra = event_stream(frames + 1, 0, seed=1)[1:]  # the first frame warms up, untimed
    app_class = encoding_app_class() if encode else SanctumApp
    app = app_class(aggregator.snapshot, refresh_interval=3600.0, clock=lambda: 1.8e9)
    seconds: list[float] = []
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for event in extra:
            aggregator.handle_event(event)
            snapshot = aggregator.snapshot()
            start = cpu_clock()
            app.snapshot = snapshot  # what a poll does
            await pilot.pause()
            seconds.append(cpu_clock() - start)
    return seconds[1:]


def run(quick: bool) -> Section:
    """Ingest rates of the mixed and the update-only stream, and the frame time."""
    updates = 400 if quick else 2_000
    rounds = 5 if quick else 9
    mixed = event_stream(updates, LIFECYCLE_PER_UPDATE)
    ppo_only = event_stream(updates * 5, 0)
    samples = interleaved(
        {"mixed": lambda: ingest_seconds(mixed), "ppo_only": lambda: ingest_seconds(ppo_only)},
        rounds,
        repeats=2,
    )
    rates = {
        "mixed": spread(samples["mixed"]).inverted(len(mixed)),
        "ppo_only": spread(samples["ppo_only"]).inverted(len(ppo_only)),
    }
    history = event_stream(HISTORY_UPDATES, 0)
    frames = {
        size: spread(asyncio.run(frame_times(history, 10 if quick else 30, size))).scaled(1e3)
        for size in FRAME_SIZES
    }
    rows = [
        Row(
            "sanctum_ingest_events_per_s",
            f"Sanctum ingest, 1 update per {LIFECYCLE_PER_UPDATE} lifecycle/episode events",
            rates["mixed"],
            "events/s",
            INGEST_TARGET,
        ),
        Row(
            "sanctum_ppo_update_ingest_events_per_s",
            "Sanctum ingest, PPO updates only",
            rates["ppo_only"],
            "events/s",
            INGEST_TARGET,
        ),
    ]
    for size, frame_ms in frames.items():
        cols, lines = size
        rows.append(
            Row(
                "sanctum_frame_ms" + ("" if size == FRAME_SIZES[0] else f"_{cols}x{lines}"),
                f"Sanctum frame CPU, {cols}x{lines}, {HISTORY_UPDATES} updates of history",
                frame_ms,
                "ms",
                FRAME_TARGET_MS,
                higher_is_better=False,
            )
        )
    raw = {
        "mixed_events": len(mixed),
        "ppo_only_events": len(ppo_only),
        "rounds": rounds,
        "mixed_events_per_s": rates["mixed"].as_dict(),
        "ppo_only_events_per_s": rates["ppo_only"].as_dict(),
        "history_updates": HISTORY_UPDATES,
        **{f"frame_ms_{c}x{r}": ms.as_dict() for (c, r), ms in frames.items()},
    }
    return Section("sanctum_load", rows, raw)
