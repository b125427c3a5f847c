"""The default task gives the numbers it gave when they were last changed on purpose.

`tests/data/default_task_seed3.json` holds what `esper ppo --no-tui --episodes 16 --seed 3`
records. It was first recorded before the environment and the algorithm moved into their
own packages (the move reproduced it to the last bit), and recorded again when the
observation gained its task block and the reward its seed cost, when that cost
rose from 0.03 to 0.05 (only the returns moved, by 0.02 per seed grown), and when the
default task became the family at five decisions of five epochs, with the seed cost at
0.1 and PPO's entropy 0.05, gamma 1 and lambda 0.98, and when the family's cases came to be
dealt by the episode seed, its spirals drawn larger, its classes log-scaled in the task
block and PPO's entropy raised to 0.1. A refactoring that changes
what the default task computes (a different draw order, a different mask, a different head
order) shows up here as a different per-head statistic or episode return; a deliberate
change re-records the file and says why in its commit.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "data" / "default_task_seed3.json"
BIN = Path(sys.executable).parent
#: Float32 statistics recorded on this kind of machine; the tolerance absorbs a last-bit
#: difference of a math library, not a change of what is computed.
REL_TOL = 1e-5


def _records(run_dir: Path, event_type: str) -> list[dict[str, object]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    return [e["data"] for e in events if e["event_type"] == event_type]


def _assert_same(recorded: dict[str, object], now: dict[str, object], where: str) -> None:
    assert sorted(now) == sorted(recorded), where
    for key, value in recorded.items():
        got = now[key]
        if isinstance(value, float) and isinstance(got, float):
            same = math.isclose(got, value, rel_tol=REL_TOL, abs_tol=1e-9) or (
                math.isnan(got) and math.isnan(value)
            )
            assert same, f"{where}: {key} was {value}, now {got}"
        else:
            assert got == value, f"{where}: {key} was {value!r}, now {got!r}"


def test_the_default_task_records_the_statistics_it_recorded_before(
    tmp_path: Path,
) -> None:
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(BIN / "esper"), *fixture["command"], "--run-dir", str(run_dir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    updates = _records(run_dir, "PPO_UPDATE_COMPLETED")
    episodes = _records(run_dir, "EPISODE_COMPLETED")
    assert len(updates) == len(fixture["updates"]) == 2
    assert len(episodes) == len(fixture["episodes"]) == 16
    for i, (was, now) in enumerate(zip(fixture["updates"], updates, strict=True)):
        _assert_same(was, now, f"update {i}")
    for i, (was, now) in enumerate(zip(fixture["episodes"], episodes, strict=True)):
        _assert_same(was, now, f"episode {i}")
