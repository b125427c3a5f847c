"""Kill a run at random moments, resume it, and count every event a reader counts once.

The reference is the same run left alone: resuming restores the agent and its random
generators from the checkpoint (or starts afresh before the first one), so the resumed
run must commit exactly the reference's episodes, lifecycle changes, worker reports and
updates, each once, as Sanctum, the analysis tables and the raw committed stream see them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from esper.analysis.runs import load_run
from esper.cli.main import main
from esper.sanctum.aggregator import aggregate_file
from esper.telemetry.contracts import EventType, event_to_dict
from esper.telemetry.recorder import EVENTS_FILE, committed_events, read_events

BIN = Path(sys.executable).parent
#: 4 batches of 2 tiny spirals episodes; the settings live in a config file, as a user's would.
CONFIG = """
task = "spirals"
episodes = 8
envs = 2
episode_length = 12
[ppo]
epochs = 1
minibatches = 2
hidden = 16
"""
COUNTED = {
    EventType.EPISODE_COMPLETED,
    EventType.SEED_LIFECYCLE,
    EventType.WORKER_STATUS,
    EventType.PPO_UPDATE_COMPLETED,
    EventType.PPO_UPDATE_SKIPPED,
}
#: Fields that differ between two runs of the same numbers (time, identity, speed).
VOLATILE = {"timestamp", "run_id", "seq", "message", "steps_per_second", "wall_seconds"}


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [str(BIN / "esper"), "ppo", "--no-tui", *argv],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_after(proc: subprocess.Popen[bytes], events: Path, lines: int) -> bool:
    """SIGKILL once `events` has `lines` lines; False if the run ended first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _lines(events) >= lines:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.communicate(timeout=60)
    return False


def _plain(value: Any) -> Any:
    """JSON data with volatile fields dropped, hashable, NaN-safe (compared as text)."""
    return json.dumps(
        {k: v for k, v in value.items() if k not in VOLATILE} if isinstance(value, dict) else value,
        sort_keys=True,
    )


def counted(run_dir: Path) -> Counter[str]:
    """Each counted event of the committed stream, without what differs between runs."""
    out: Counter[str] = Counter()
    for event in committed_events(read_events(run_dir / EVENTS_FILE)):
        if event.event_type in COUNTED:
            record = event_to_dict(event)
            data = {k: v for k, v in record.pop("data").items() if k not in VOLATILE}
            out[_plain({**record, "data": _plain(data)})] += 1
    return out


_REFERENCES: dict[str, Path] = {}


def reference_run(backend: str, root: Path) -> Path:
    """The same run left alone on `backend` (worker reports differ between backends)."""
    if backend not in _REFERENCES:
        (root / "run.toml").write_text(CONFIG)
        run_dir = root / f"ref-{backend}"
        argv = ["ppo", "--no-tui", "--config", str(root / "run.toml"), "--backend", backend]
        assert main([*argv, "--run-dir", str(run_dir)]) == 0
        _REFERENCES[backend] = run_dir
    return _REFERENCES[backend]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize(
    ("backend", "kills"),
    [
        ("inprocess", "one"),  # before or after the first checkpoint, at random
        pytest.param("inprocess", "both", marks=pytest.mark.slow),
        pytest.param("processes", "both", marks=pytest.mark.slow),
    ],
)
def test_killed_at_random_moments_and_resumed_counts_every_event_once(
    backend: str, kills: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    reference = reference_run(backend, tmp_path_factory.getbasetemp())
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ref_lines = _lines(reference / EVENTS_FILE)
    raw = [json.loads(line)["event_type"] for line in (reference / EVENTS_FILE).open()]
    first_update = raw.index("PPO_UPDATE_COMPLETED") + 1  # lines up to the first commit
    # a kill before the first checkpoint can exist, and one well after it
    moments = [rng.randint(1, first_update - 2), rng.randint(first_update + 1, ref_lines - 4)]
    if kills == "one":
        moments = [rng.choice(moments)]
    (tmp_path / "run.toml").write_text(CONFIG)
    run_dir = tmp_path / "run"
    events = run_dir / EVENTS_FILE
    argv = ["--config", "run.toml", "--backend", backend, "--run-dir", "run"]
    kills = 0
    proc = _start(argv, tmp_path)
    for moment in moments:
        written = _lines(events)  # a resumed run appends: count its own lines on top
        if _kill_after(proc, events, max(moment, written + 1)):
            kills += 1
        proc = _start(["--resume", "run", "--backend", backend], tmp_path)
    _finish(proc)
    assert kills >= 1, f"seed {seed}: the run always finished before it could be killed"
    starts = [e for e in read_events(events) if e.event_type == EventType.TRAINING_STARTED]
    assert len(starts) == len(moments) + 1, f"seed {seed}"
    assert counted(run_dir) == counted(reference), f"seed {seed}: moments {moments}"
    # what the readers show: Sanctum's progress and the analysis tables
    shown, expected = aggregate_file(events), aggregate_file(reference / EVENTS_FILE)
    assert shown.progress.episodes_done == expected.progress.episodes_done == 8
    assert shown.episodes.seeds_grown == expected.episodes.seeds_grown
    run, ref = load_run(run_dir), load_run(reference)
    assert len(run.episodes.rows) == len(ref.episodes.rows) == 8
    assert len(run.updates.rows) == len(ref.updates.rows) == 4
