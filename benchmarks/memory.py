"""Memory of a long headless run: resident set size per PPO update, in its own process.

The run is the real command, `esper ppo --no-tui` on spirals with short episodes (so
hundreds of updates fit in a minute), started as a child process so that its RSS is its
own. Its console prints one line per completed update; at each line the parent samples
the child's RSS (psutil) and its peak (VmHWM, Linux). Growth is the RSS at the last
update over the RSS at update `BASELINE_UPDATE`: after the warm-up allocations, a
bounded process stays flat.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Row, Section, single, spread

TARGET = 1.10
BASELINE_UPDATE = 50
EPISODE_LENGTH = 5
UPDATE_LINE = re.compile(r"^update\s+(\d+)\s+\|")
MIB = 1024 * 1024


def peak_rss(pid: int) -> int | None:
    """The process's peak resident set size in bytes (Linux VmHWM), None elsewhere."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def command(updates: int, run_dir: Path) -> list[str]:
    """`esper ppo` for `updates` updates of one short spirals episode each."""
    return [
        sys.executable,
        "-m",
        "esper.cli.main",
        "ppo",
        "--no-tui",
        "--task",
        "spirals",
        "--episodes",
        str(updates),
        "--envs",
        "1",
        "--episode-length",
        str(EPISODE_LENGTH),
        "--epochs-per-step",
        "1",
        "--run-dir",
        str(run_dir),
    ]


def sample_run(updates: int) -> dict[str, Any]:
    """Run the child to the end; RSS (bytes) after each update line, and the peak."""
    import psutil

    rss: dict[int, int] = {}
    peak = 0
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        cmd = command(updates, Path(tmp) / "run")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as child:
            process = psutil.Process(child.pid)
            assert child.stdout is not None
            tail: list[str] = []
            for line in child.stdout:
                tail = [*tail[-20:], line]
                match = UPDATE_LINE.match(line)
                if match is None:
                    continue
                rss[int(match.group(1))] = process.memory_info().rss
                peak = max(peak, peak_rss(child.pid) or 0)
            code = child.wait()
    if code != 0 or len(rss) != updates:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {code} after {len(rss)}/{updates} updates:\n" + "".join(tail)
        )
    return {"rss": rss, "peak": peak or max(rss.values()), "command": cmd}


def run(quick: bool) -> Section:
    """Growth of RSS from update `BASELINE_UPDATE` to the last one, and the peak.

    One run, so the growth has no repeat spread; its row's spread is that of RSS / RSS at
    the baseline over every update after the baseline (how far it wandered on the way).
    """
    updates = 100 if quick else 500
    result = sample_run(updates)
    rss: dict[int, int] = result["rss"]
    last = max(rss)
    relative = [rss[i] / rss[BASELINE_UPDATE] for i in sorted(rss) if i >= BASELINE_UPDATE]
    growth = dataclasses.replace(spread(relative), median=relative[-1])
    rows = [
        Row(
            "memory_growth_ratio",
            f"memory: RSS at update {last} / RSS at update {BASELINE_UPDATE} (headless run)",
            growth,
            "x",
            TARGET,
            higher_is_better=False,
        ),
        Row(
            "peak_rss_mib",
            "memory: peak RSS of the headless run",
            single(result["peak"] / MIB),
            "MiB",
        ),
    ]
    every = max(1, last // 10)
    shown = sorted({*range(0, last + 1, every), BASELINE_UPDATE, last} & set(rss))
    raw = {
        "updates": updates,
        "episode_length": EPISODE_LENGTH,
        "baseline_update": BASELINE_UPDATE,
        "command": "esper " + " ".join(result["command"][3:]),
        "rss_mib_by_update": {i: round(rss[i] / MIB, 1) for i in shown},
        "peak_rss_mib": round(result["peak"] / MIB, 1),
    }
    return Section("memory", rows, raw)
