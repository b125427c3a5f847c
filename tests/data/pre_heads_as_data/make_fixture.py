"""Writes `events.jsonl` and `expected/` here with esper as of commit 515288d.

The fixture is a run recorded before per-head statistics became typed records (every
PPO update a flat object of 8 heads x 7 statistics). It is kept as recorded; this script
documents how, and only runs against that commit's code:

    git archive 515288d | tar -x -C /tmp/old
    cd /tmp/old && PYTHONPATH=src python <this file> <this directory>

It also writes what that code showed for the run (the dashboard SVG at two sizes, the
SQL tables' columns and rows), which test_pre_change_log.py compares the new code with.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
from pathlib import Path

from esper.analysis.runs import load_run
from esper.morpho.actions import HEAD_NAMES
from esper.sanctum.aggregator import aggregate_file, replay_snapshots
from esper.sanctum.app import screenshot_svg
from esper.telemetry.emitter import TelemetryEmitter
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import EVENTS_FILE, RunRecorder

UPDATES = 6
#: The replay frame also kept: update 4 (blueprint red, alpha_curve without samples).
REPLAY_FRAME = 4


def metrics(k: int) -> dict[str, float]:
    """Update k: every head drifting up with k; troubles at updates 2, 3 and 4."""
    out: dict[str, float] = {
        "joint_ratio_max": 1.1 + 0.3 * k,
        "approx_kl": 0.002 * (k + 1),
        "clip_fraction": 0.02 * k,
        "policy_loss": -0.01 * k,
        "value_loss": 0.5 / (k + 1),
        "entropy": 0.9 - 0.05 * k,
        "explained_variance": 0.1 * k,
        "grad_norm": 0.3,
        "epochs_run": 4.0,
        "minibatches_run": 8.0,
    }
    for i, h in enumerate(HEAD_NAMES):
        ratio = 1.0 + 0.01 * (i + 1) * (k + 1)
        out |= {
            f"head_{h}_ratio_max": ratio,
            f"head_{h}_ratio_min": 1.0 / ratio,
            f"head_{h}_clip_fraction": 0.01 * i,
            f"head_{h}_entropy": 1.0 - 0.07 * i,
            f"head_{h}_approx_kl": 0.001 * (i + 1),
            f"head_{h}_relevant": 20.0 + i,
        }
    if k == 2:
        out["head_tempo_ratio_max"] = math.nan
        out["head_tempo_nonfinite"] = 2.0
    if k == 4:
        out["head_blueprint_ratio_max"] = 2.41
        out["head_alpha_curve_relevant"] = 0.0
        out["head_alpha_curve_ratio_max"] = 1.0
        out["head_alpha_curve_ratio_min"] = 1.0
        out["head_alpha_curve_clip_fraction"] = 0.0
        out["head_alpha_curve_approx_kl"] = 0.0
        out["minibatches_skipped"] = 1.0
        out["early_stopped"] = 1.0
    return out


def record(run_dir: Path) -> None:
    ticks = itertools.count(1_700_000_000)
    with TelemetryHub([RunRecorder(run_dir, {"task": "spirals"}, run_id="pre-change")]) as hub:
        emitter = TelemetryEmitter(hub, "pre-change", clock=lambda: float(next(ticks)))
        emitter.emit_training_started(
            config={"task": "spirals"},
            task="spirals",
            head_sizes={"op": 4, "slot": 3, "blueprint": 5, "style": 3, "tempo": 3,
                        "alpha_target": 3, "alpha_speed": 3, "alpha_curve": 3},
            episodes_total=2 * (UPDATES + 1),
            n_envs=2,
            device="cpu",
            esper_version="0.1.0",
        )  # fmt: skip
        for k in range(UPDATES + 1):
            emitter.emit_seed_lifecycle(
                env_index=0, slot=k % 3, from_stage="DORMANT", to_stage="TRAINING",
                blueprint="MLP", alpha=0.1 * k, batch=k,
            )  # fmt: skip
            for env in range(2):
                emitter.emit_episode_completed(
                    env_index=env, episode_return=0.1 * k - 0.05 * env, final_accuracy=0.6,
                    seeds_grown=1, seeds_fossilized=env, seeds_killed=0, length=10,
                    episode=2 * k + env, batch=k,
                )  # fmt: skip
            emitter.emit_worker_status(
                worker=0, backend="inprocess", alive=True, restarts=0, envs=2, steps=20,
                steps_per_second=400.0 + k, batch=k,
            )  # fmt: skip
            if k == UPDATES:  # the last batch's update is skipped: the panel goes stale
                emitter.emit_ppo_skipped(
                    reason="every minibatch non-finite", batch=k, nonfinite={"alpha_speed": 3}
                )
                continue
            emitter.emit_ppo_update(metrics(k), batch=k, mean_return=0.1 * k, host_accuracy=0.6)
            if k == 3:
                emitter.emit_ratio_explosion(
                    joint_ratio_max=2.0,
                    worst_log_ratios={"op": 0.3, "slot": 0.9, "blueprint": 0.1, "style": -0.2},
                    hidden_by_heads=True,
                    batch=k,
                )
        emitter.emit_telemetry_drops("sanctum", 2)


def table_json(table: object) -> dict[str, object]:
    return {
        "columns": [[c.name, c.type.__name__, c.nullable] for c in table.columns],  # type: ignore
        "rows": [list(row) for row in table.rows],  # type: ignore
    }


def main(out: Path) -> None:
    run_dir = out
    (run_dir / EVENTS_FILE).unlink(missing_ok=True)
    (run_dir / "run.json").unlink(missing_ok=True)
    record(run_dir)
    expected = out / "expected"
    expected.mkdir(exist_ok=True)
    snapshot = aggregate_file(run_dir / EVENTS_FILE)
    for cols, rows in ((120, 40), (80, 24)):
        svg = asyncio.run(screenshot_svg(snapshot, size=(cols, rows)))
        (expected / f"dashboard_{cols}x{rows}.svg").write_text(svg, encoding="utf-8")
    frame = replay_snapshots(run_dir / EVENTS_FILE)[REPLAY_FRAME]
    svg = asyncio.run(screenshot_svg(frame, size=(120, 40)))
    (expected / f"replay_frame_{REPLAY_FRAME}_120x40.svg").write_text(svg, encoding="utf-8")
    run = load_run(run_dir)
    tables = {"ppo_updates": table_json(run.updates), "explosions": table_json(run.explosions)}
    (expected / "tables.json").write_text(json.dumps(tables, indent=None), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
