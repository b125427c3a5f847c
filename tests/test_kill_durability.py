"""A run SIGKILLed mid-write keeps every PPO update whose emit returned, and nothing torn."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from esper.telemetry.contracts import PPOUpdatePayload
from esper.telemetry.recorder import EVENTS_FILE, ReadStats, read_events

#: Updates the child must report before it is killed.
KILL_AFTER = 40

CHILD = """
import sys
from esper.telemetry.contracts import EpisodeCompleted
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import HeadStats, UpdateStats
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import RunRecorder

hub = TelemetryHub([RunRecorder(sys.argv[1], {"purpose": "kill test"})])
emitter = TelemetryEmitter(hub, "killed")
for batch in range(1_000_000):  # bounded only in case the parent never kills us
    for env in range(3):
        emitter.emit(EpisodeCompleted(
            env_index=env, episode_return=0.5, final_accuracy=0.9, seeds_grown=1,
            seeds_fossilized=0, seeds_killed=0, length=8,
        ), batch=batch)
    slot = HeadStats(ratio_max=1.0 + batch / 1000, relevant=8)
    (event,) = emit_update(emitter, UpdateStats({"slot": slot}, minibatches_run=1), batch=batch)
    print(event.payload.update_index, flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkilled_run_keeps_every_returned_update(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    try:
        for _ in range(KILL_AFTER):
            assert child.stdout.readline(), "the child stopped before it was killed"
    finally:
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    # every index the child printed, its emit had returned before the print
    returned = KILL_AFTER + len(rest.split())

    stats = ReadStats()
    events = list(read_events(tmp_path / EVENTS_FILE, stats=stats))
    assert stats.malformed == []  # every complete line parses; at most the tail is torn
    assert stats.skipped == int(stats.torn_tail)
    assert [e.seq for e in events] == list(range(len(events)))  # no hole before the kill
    indices = [e.payload.update_index for e in events if isinstance(e.payload, PPOUpdatePayload)]
    assert indices[:returned] == list(range(returned))
    assert len(indices) >= returned
