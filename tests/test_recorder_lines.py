"""The recorder's lines are exactly the contract's `event_to_json_line`, NaN and inf included."""

from __future__ import annotations

import math
from pathlib import Path

from esper.telemetry.contracts import EpisodeCompleted, SeedLifecycle, event_to_json_line
from esper.telemetry.emitter import TelemetryEmitter
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import EVENTS_FILE, RunRecorder


class Keep:
    """A synchronous backend keeping the events it was handed."""

    synchronous = True
    name = "keep"

    def __init__(self) -> None:
        self.events: list[object] = []

    def handle(self, event: object) -> None:
        self.events.append(event)

    def flush(self) -> None: ...

    def close(self) -> None: ...


def test_recorded_lines_equal_the_contract_serialisation(tmp_path: Path) -> None:
    keep = Keep()
    hub = TelemetryHub([RunRecorder(tmp_path, config={}), keep])
    emitter = TelemetryEmitter(hub, run_id="r")
    emitter.emit(SeedLifecycle(
        env_index=1, slot=2, from_stage="DORMANT", to_stage="GERMINATED",
        blueprint="conv_light", alpha=0.0, worker=1,
    ), episode=3, batch=0)  # fmt: skip
    emitter.emit(EpisodeCompleted(
        env_index=0, episode_return=math.nan, final_accuracy=math.inf, seeds_grown=1,
        seeds_fossilized=0, seeds_killed=0, length=25,
    ), episode=0, batch=0)  # fmt: skip
    hub.close()
    lines = (tmp_path / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    assert lines == [event_to_json_line(e) for e in keep.events]  # type: ignore[arg-type]
    assert "NaN" in lines[1] and "Infinity" in lines[1]
