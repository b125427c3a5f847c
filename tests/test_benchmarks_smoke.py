"""The benchmarks still run against the code (not their timings: benchmarks are not tests).

Benchmarks are run by hand, so an API change can leave one broken until the next full
run; each check here drives one section's own code on a tiny input and checks what it
computed, in seconds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the `benchmarks` package

from benchmarks import emit_path, sanctum_load, telemetry_overhead
from benchmarks.learning import train
from esper.sanctum.aggregator import SanctumAggregator
from esper.telemetry.recorder import read_events


def test_emit_path_records_its_whole_mix() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        side = emit_path.EmitSide(Path(tmp), "smoke", dashboard=False, cycles=2)
        side.block()
        side.hub.close()
        events = list(read_events(Path(tmp) / "smoke" / "events.jsonl"))
    assert len(events) == side.events == 2 * 101


def test_telemetry_overhead_sides_run_the_same_epochs() -> None:
    result = telemetry_overhead.measure("default", rounds=1, repeats=1)
    assert set(result["epochs_run"]) == {"ours", "ours_joint_clip", "baseline"}
    assert len(set(result["epochs_run"].values())) == 1  # the same work on every side
    counts = result["ops_per_update"]
    assert counts["ours"]["total"] > counts["baseline"]["total"]  # ours does per-head work


def test_sanctum_load_stream_aggregates() -> None:
    aggregator = SanctumAggregator()
    for event in sanctum_load.event_stream(updates=3, per_update=5):
        aggregator.handle_event(event)
    assert aggregator.snapshot().tamiyo.ppo_updates_count == 3


def test_learning_trains_at_the_defaults() -> None:
    result = train("spirals", seed=0, episodes=8)
    assert len(result["returns"]) == 8
