"""A small run with made-up metrics, recorded in-process for any set of heads.

`record_synthetic_run` records it through the real emitter, hub and recorder, with
metrics made up by formula, so every number a reader shows is known without training
anything. The report, query, exporter and dashboard tests share it; the heads are a
parameter (esper's eight, three named x, y, z, or 24), and nothing in the run, the
formulas or the readers treats any head specially.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

from esper import __version__
from esper.morpho.actions import HEAD_NAMES
from esper.telemetry.contracts import EpisodeCompleted, TrainingFinished, TrainingStarted
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import ExplosionReport, HeadStats, UpdateStats, explosion_shares
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import RunRecorder

Heads = Sequence[str]
N_UPDATES = 4
N_ENVS = 2
#: Head sets a synthetic run is recorded with: esper's own, three heads named like
#: nothing in esper, and 24 heads (more than fit the dashboard's width abreast).
XYZ_HEADS: tuple[str, ...] = ("x", "y", "z")
MANY_HEADS: tuple[str, ...] = tuple(
    f"{part}_{axis}"
    for part in ("base", "shoulder", "elbow", "wrist", "finger", "thumb", "torso", "neck")
    for axis in ("x", "y", "z")
)
HEAD_SETS = {"esper": HEAD_NAMES, "xyz": XYZ_HEADS, "24": MANY_HEADS}
EXPLOSION_UPDATE = 3
EXPLOSION_JOINT = 3.0


def irrelevant_heads(update: int, heads: Heads = HEAD_NAMES) -> tuple[str, ...]:
    """Heads with no relevant sample in `update` (neutral values recorded): the last two
    in update 1."""
    return tuple(heads[-2:]) if update == 1 and len(heads) > 2 else ()


def nan_head(heads: Heads = HEAD_NAMES) -> str:
    """The head whose ratio max goes NaN in update 2 (the fifth, or the last)."""
    return heads[min(4, len(heads) - 1)]


def explosion_log_ratios(heads: Heads = HEAD_NAMES) -> dict[str, float]:
    """Per-head log-ratios at the worst sample of the explosion: the first four heads."""
    return dict(zip(heads, (0.3, 0.9, 0.1, -0.2), strict=False))


#: update index -> heads with no relevant sample in that update (esper's heads).
IRRELEVANT = {1: irrelevant_heads(1)}
#: (update index, head) whose ratio went non-finite (esper's heads).
NAN_AT = (2, nan_head())
EXPLOSION_LOG_RATIOS = explosion_log_ratios()


def ratio_max(update: int, head: str, heads: Heads = HEAD_NAMES) -> float:
    """The recorded ratio max: 1 + 0.1 (k + 1)(i + 1) / n for update k, head i of n."""
    return 1.0 + 0.1 * (update + 1) * (heads.index(head) + 1) / len(heads)


def relevant(update: int, head: str, heads: Heads = HEAD_NAMES) -> bool:
    return head not in irrelevant_heads(update, heads)


def head_stats(update: int, head: str, heads: Heads = HEAD_NAMES) -> HeadStats:
    """Head `head`'s record in `update`: neutral but for entropy where irrelevant."""
    i = heads.index(head)
    entropy = 1.0 - 0.05 * (i % 10)
    if not relevant(update, head, heads):
        return HeadStats(entropy=entropy)
    nan = (update, head) == (2, nan_head(heads))
    ratio = ratio_max(update, head, heads)
    return HeadStats(
        ratio_max=math.nan if nan else ratio,
        ratio_min=1.0 / ratio,
        clip_fraction=0.01 * i,
        entropy=entropy,
        approx_kl=0.001 * (i + 1) * (update + 1),
        relevant=10 + i,
        nonfinite=int(nan),
    )


def explosion(heads: Heads = HEAD_NAMES) -> ExplosionReport:
    """The report of the update that explodes: every head inside clip, joint at 3."""
    log_ratios = explosion_log_ratios(heads)
    shares = explosion_shares(log_ratios)
    return ExplosionReport(
        joint_ratio_max=EXPLOSION_JOINT,
        worst_log_ratios=log_ratios,
        shares=shares,
        driver=max(shares, key=shares.__getitem__),
        hidden_by_heads=True,
    )


def update_stats(update: int, heads: Heads = HEAD_NAMES) -> UpdateStats:
    """What the PPO update numbered `update` returns in the synthetic run."""
    return UpdateStats(
        heads={h: head_stats(update, h, heads) for h in heads},
        joint_ratio_max=1.0 + 0.2 * update,
        approx_kl=0.01 * (update + 1),
        clip_fraction=0.05 * update,
        policy_loss=-0.1 * update,
        value_loss=1.0 / (update + 1),
        explosion=explosion(heads) if update == EXPLOSION_UPDATE else None,
    )


def episode_return(episode: int) -> float:
    return 0.25 * episode - 0.5


def final_accuracy(episode: int) -> float:
    return 0.5 + 0.05 * episode


def started(
    heads: Heads = HEAD_NAMES, task: str = "spirals", clip_eps: float | None = None
) -> TrainingStarted:
    """The start event of a synthetic run: it declares the heads, each of size 3, and the
    clip range when given (None: recorded as runs did before they recorded it)."""
    return TrainingStarted(
        config={"task": task},
        task=task,
        head_names=list(heads),
        head_sizes=dict.fromkeys(heads, 3),
        episodes_total=N_UPDATES * N_ENVS,
        n_envs=N_ENVS,
        device="cpu",
        esper_version=__version__,
        clip_eps=clip_eps,
    )


def record_synthetic_run(
    run_dir: Path,
    run_id: str = "synthetic",
    heads: Heads = HEAD_NAMES,
    clip_eps: float | None = None,
) -> Path:
    """Record the synthetic run with `heads` into `run_dir` (real emitter, hub, recorder)."""
    ticks = itertools.count(1_000)
    hub = TelemetryHub()
    hub.add_backend(RunRecorder(run_dir, config={"task": "spirals"}, run_id=run_id))
    emitter = TelemetryEmitter(hub, run_id, clock=lambda: float(next(ticks)))
    emitter.emit(started(heads, clip_eps=clip_eps))
    for update in range(N_UPDATES):
        for env in range(N_ENVS):
            episode = update * N_ENVS + env
            done = EpisodeCompleted(
                env_index=env,
                episode_return=episode_return(episode),
                final_accuracy=final_accuracy(episode),
                seeds_grown=1,
                seeds_fossilized=0,
                seeds_killed=env,
                length=10,
            )
            emitter.emit(done, episode=episode, batch=update)
        emit_update(
            emitter,
            update_stats(update, heads),
            batch=update,
            mean_return=None if update == 0 else 0.1 * update,
            host_accuracy=0.5,
        )
    finished = TrainingFinished(
        episodes=N_UPDATES * N_ENVS, updates=N_UPDATES, wall_seconds=1.0, run_dir=str(run_dir)
    )
    emitter.emit(finished)
    hub.close()
    return run_dir


#: Events the synthetic run records: start, episodes, updates, one explosion, finish.
N_EVENTS = 1 + N_UPDATES * N_ENVS + N_UPDATES + 1 + 1
