"""SVG snapshots of the whole dashboard (pytest-textual-snapshot).

Each scenario is a fixed SanctumSnapshot and a fixed clock, so the pictures depend on
the code only. Regenerate after an intended visual change with
`pytest tests/test_snapshots.py --snapshot-update`, and look at the SVGs before committing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from synthetic_run import MANY_HEADS, XYZ_HEADS, record_synthetic_run

from esper.morpho.actions import HEAD_NAMES
from esper.sanctum.aggregator import aggregate_file
from esper.sanctum.app import SanctumApp
from esper.sanctum.schema import (
    EpisodeStats,
    EventLogEntry,
    HeadState,
    Progress,
    RunInfo,
    SanctumSnapshot,
    SlotState,
    TamiyoState,
)
from esper.telemetry.heads import HeadStats, UpdateStats
from esper.telemetry.recorder import EVENTS_FILE

SnapCompare = Callable[..., bool]
START = 1_700_000_000.0
NOW = START + 95.0
RUN = RunInfo(run_id="20250103-demo", task="digits", episodes_total=64, n_envs=4, started_at=START)
WIDE = (120, 40)
NARROW = (80, 24)


def _per_head(*values: float) -> dict[str, float]:
    return dict(zip(HEAD_NAMES, values, strict=True))


def _ramp(end: float, n: int = 16) -> tuple[float, ...]:
    """n updates moving geometrically from 1.0 to `end` (how a drifting head looks)."""
    return tuple(end ** (i / (n - 1)) for i in range(n))


def _tamiyo(ratios: dict[str, float], **heads: HeadState) -> TamiyoState:
    """The state after the 16th update: `ratios` ramped up to, default heads unless given.

    Heads are those of `ratios`, in its order; the joint is the product of the first three.
    """
    states = {
        h: heads.get(h)
        or HeadState(
            HeadStats(
                ratio_max=ratios[h],
                ratio_min=min(ratios[h], 1 / ratios[h] ** 0.5),
                clip_fraction=0.04 * (i % 8),
                entropy=1.0 - 0.08 * (i % 8),
                approx_kl=0.002,
                relevant=96 if i == 0 else 40,
            ),
            ratio_max_history=_ramp(ratios[h]),
        )
        for i, h in enumerate(ratios)
    }
    joint = math.prod(list(ratios.values())[:3])
    return TamiyoState(
        head_names=tuple(ratios),
        heads=states,
        update=UpdateStats(
            heads={h: s.stats for h, s in states.items() if s.stats is not None},
            joint_ratio_max=joint,
            approx_kl=0.0061,
            clip_fraction=0.087,
            policy_loss=-0.0213,
            value_loss=0.412,
            entropy=0.734,
            explained_variance=0.58,
            epochs_run=4,
        ),
        ppo_updates_count=16,
        last_update_index=15,
        last_update_batch=15,
        last_update_time=START + 90.0,
        joint_ratio_max_history=_ramp(joint),
    )


def _events(*extra: EventLogEntry) -> tuple[EventLogEntry, ...]:
    routine = tuple(
        EventLogEntry(START + 6.0 * i, "info", f"episode {i} finished: return {0.1 * i:.2f}")
        for i in range(1, 14)
    )
    return (EventLogEntry(START, "info", "training started: digits, 4 envs"), *routine, *extra)


BEFORE_DATA = SanctumSnapshot(
    run=RUN,
    progress=Progress(episodes_done=3, last_event_time=START + 90.0),
    # TRAINING_STARTED declared the heads; no update has measured them yet
    tamiyo=TamiyoState(head_names=HEAD_NAMES, heads={h: HeadState() for h in HEAD_NAMES}),
    slots=(SlotState(0, "TRAINING", "MLP", 0.0), SlotState(1), SlotState(2)),
    events=(EventLogEntry(START, "info", "training started: digits, 4 envs"),),
    events_read=7,
)

HEALTHY = SanctumSnapshot(
    run=RUN,
    progress=Progress(episodes_done=64, batches_done=16, last_event_time=START + 90.0),
    tamiyo=_tamiyo(_per_head(1.08, 1.12, 1.05, 1.15, 1.03, 1.1, 1.07, 1.02)),
    episodes=EpisodeStats(0.42, 0.37, 0.951, seeds_grown=5, seeds_fossilized=2, seeds_killed=1),
    slots=(
        SlotState(0, "FOSSILIZED", "MLP", 1.0),
        SlotState(1, "BLENDING", "LOW_RANK", 0.35),
        SlotState(2),
    ),
    events=_events(),
    events_read=412,
)

def _troubled_update(tamiyo: TamiyoState) -> TamiyoState:
    """The update stopped early, after 2 epochs, with 3 minibatches skipped."""
    assert tamiyo.update is not None
    update = replace(tamiyo.update, minibatches_skipped=3, early_stopped=True, epochs_run=2)
    return replace(tamiyo, update=update)


_TROUBLED_RATIOS = dict(
    zip(HEAD_NAMES, (1.18, 1.34, 2.41, 1.1, 1.0, 1.12, 1.09, 0.72), strict=True)
)
TROUBLED = replace(
    HEALTHY,
    progress=replace(HEALTHY.progress, batches_done=18),  # two batches past the update: stale
    tamiyo=_troubled_update(
        _tamiyo(
            _TROUBLED_RATIOS,
            # no GROW this update: tempo had no relevant sample (entropy is over all of them)
            tempo=HeadState(HeadStats(entropy=0.68), ratio_max_history=(1.0,) * 16),
            alpha_speed=HeadState(
                HeadStats(ratio_max=1.09, ratio_min=0.9, entropy=0.41, relevant=22, nonfinite=3),
                nan_latched=True,
                ratio_max_history=_ramp(1.09),
            ),
        )
    ),
    events=_events(
        EventLogEntry(
            START + 88.0,
            "warning",
            "ratio explosion: joint 3.81 driven by blueprint 2.41, slot 1.34",
        ),
        EventLogEntry(START + 89.0, "error", "non-finite log-probs in alpha_speed: 3 minibatches"),
        EventLogEntry(START + 90.0, "warning", "PPO update skipped for batch 16: no finite loss"),
    ),
    lines_skipped=2,
    drops=5,
)


def _app(snapshot: SanctumSnapshot) -> SanctumApp:
    return SanctumApp(lambda: snapshot, clock=lambda: NOW)


def test_dashboard_before_the_first_ppo_update(snap_compare: SnapCompare) -> None:
    """Every head value is a dim dash; nothing reads as a healthy 1.000."""
    assert snap_compare(_app(BEFORE_DATA), terminal_size=WIDE)


def test_dashboard_healthy_run(snap_compare: SnapCompare) -> None:
    """All heads inside the clip range: green values, empty-ish bars, low sparklines."""
    assert snap_compare(_app(HEALTHY), terminal_size=WIDE)


def test_dashboard_red_head_nan_head_and_stale_update(snap_compare: SnapCompare) -> None:
    """blueprint red (2.410), alpha_speed NaN-latched, tempo without samples, STALE banner."""
    assert snap_compare(_app(TROUBLED), terminal_size=WIDE)


def test_dashboard_at_80x24(snap_compare: SnapCompare) -> None:
    """The narrow layout: wrapped head titles and bars, stacked panels, body scrolls."""
    assert snap_compare(_app(TROUBLED), terminal_size=NARROW)


def test_dashboard_replay_frame(snap_compare: SnapCompare) -> None:
    """Replay mode steps back one frame: header reads REPLAY 2/3."""
    frames = [BEFORE_DATA, HEALTHY, TROUBLED]
    app = SanctumApp(lambda: TROUBLED, replay=frames, clock=lambda: NOW)
    assert snap_compare(app, terminal_size=WIDE, press=["b"])


# ----------------------------------------------------------------- any heads, recorded

#: Runs recorded through the real emitter, hub and recorder (test_report's synthetic run)
#: with 1, 3, 8 and 24 heads, then aggregated from their events.jsonl like `sanctum DIR`.
RECORDED_HEADS = {"1": ("policy",), "3": XYZ_HEADS, "8": HEAD_NAMES, "24": MANY_HEADS}


@pytest.mark.parametrize(
    ("heads", "size"),
    [("1", WIDE), ("3", WIDE), ("8", WIDE), ("24", WIDE), ("24", NARROW)],
    ids=["1-heads", "3-heads", "8-heads", "24-heads", "24-heads-80x24"],
)
def test_recorded_run_with_any_heads(
    heads: str, size: tuple[int, int], snap_compare: SnapCompare, tmp_path: Path
) -> None:
    """Every head of the run in the panel and the history; 24 wrap into tables that fit."""
    run_dir = record_synthetic_run(tmp_path / "run", heads=RECORDED_HEADS[heads])
    snapshot = aggregate_file(run_dir / EVENTS_FILE)
    assert snapshot.tamiyo.head_names == RECORDED_HEADS[heads]
    end = snapshot.progress.last_event_time
    assert snap_compare(SanctumApp(lambda: snapshot, clock=lambda: end), terminal_size=size)
