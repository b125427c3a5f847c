"""`esper ppo` as an operator runs it: start-up to the first env step, and thread counts.

Each round starts fresh `esper ppo --no-tui` processes (digits, the product defaults),
interleaved, the order alternating:

- "policy": the thread count `esper.rl.threads` chooses (one, at these sizes);
- "torch default": `--threads N` with N = torch's own default in a fresh process (the
  count the CLI used before it chose one).

Figures: the time from process start (just before `Popen`) to the first
`MorphogeneticEnv.step` of the policy side, and the ratio of the training wall time
(`Trainer.run`, as TRAINING_FINISHED records it) of torch's default over the policy's. Each child is
the real CLI entry point with one probe: `MorphogeneticEnv.step` is wrapped to print the
wall-clock time of its first call. The probe imports the environment module before the
CLI would (it imports it itself moments later), so the order of imports changes, not
their sum.

A separate breakdown times what the start-up imports cost, each in a fresh process:
torch, then `torch._dynamo` on top of it (every `torch.optim` optimiser imports it on
construction and on `step`), then scikit-learn's datasets (the digits task's loader).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import Row, Section, interleaved, paired_ratios, spread

EPISODES_QUICK, EPISODES_FULL = 2, 10
PROBE = """
import sys, time
import esper.morpho.environment as _env
_step = _env.MorphogeneticEnv.step
def _first(self, action):
    print("FIRST_STEP_AT", repr(time.time()), flush=True)
    _env.MorphogeneticEnv.step = _step
    return _step(self, action)
_env.MorphogeneticEnv.step = _first
from esper.cli.main import main
raise SystemExit(main(sys.argv[1:]))
"""
IMPORTS = {
    "torch": "import torch",
    "torch_dynamo": "import torch; import torch._dynamo",
    "sklearn_datasets": "import torch; import sklearn.datasets",
}


def torch_default_threads() -> int:
    """torch's intra-op thread count in a fresh process (this one is pinned)."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


class CliSide:
    """One `esper ppo` child per call: returns its training seconds, keeps its start-up."""

    def __init__(self, episodes: int, threads: int | None) -> None:
        self.episodes, self.threads = episodes, threads
        self.startup: list[float] = []

    def __call__(self) -> float:
        with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
            run_dir = Path(tmp) / "run"
            args = ["ppo", "--no-tui", "--episodes", str(self.episodes), "--run-dir", str(run_dir)]
            if self.threads is not None:
                args += ["--threads", str(self.threads)]
            start = time.time()
            proc = subprocess.run(
                [sys.executable, "-c", PROBE, *args],
                capture_output=True,
                text=True,
                cwd=tmp,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"esper ppo failed: {proc.stderr.strip()[-500:]}")
            last = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()[-1]
        first = re.search(r"FIRST_STEP_AT (\S+)", proc.stdout)
        finished = json.loads(last)
        if first is None or finished["event_type"] != "TRAINING_FINISHED":
            raise RuntimeError(f"unexpected esper ppo output: {proc.stdout[-500:]}")
        self.startup.append(float(first.group(1)) - start)
        return float(finished["data"]["wall_seconds"])


def import_seconds(statement: str) -> Callable[[], float]:
    """Wall seconds of a fresh interpreter running `statement` (start-up included)."""

    def run() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        return time.perf_counter() - start

    return run


def run(quick: bool) -> Section:
    """Thread-count speed-up of the training loop and start-up to the first env step."""
    episodes = EPISODES_QUICK if quick else EPISODES_FULL
    rounds = 2 if quick else 6
    default = torch_default_threads()
    sides = {"policy": CliSide(episodes, None), "torch_default": CliSide(episodes, default)}
    train = interleaved(dict(sides), rounds=rounds, warmup=0)
    # the import breakdown explains the start-up figure; --quick leaves it out
    imports = interleaved(
        {name: import_seconds(code) for name, code in IMPORTS.items()} if not quick else {},
        rounds=5,
        warmup=0,
    )
    speedup = spread(paired_ratios(train["torch_default"], train["policy"]))
    startup = spread(sides["policy"].startup)
    breakdown = {
        f"{name}_extra_s" if name != "torch" else "torch_s": spread(
            [s - t for s, t in zip(seconds, imports["torch"], strict=True)]
            if name != "torch"
            else seconds
        ).as_dict()
        for name, seconds in imports.items()
    }
    raw: dict[str, Any] = {
        "episodes": episodes,
        "rounds": rounds,
        "torch_default_threads": default,
        "train_seconds": {name: spread(v).as_dict() for name, v in train.items()},
        "startup_to_first_step_s": {
            name: spread(side.startup).as_dict() for name, side in sides.items()
        },
        "threads_speedup": speedup.as_dict(),
        "import_breakdown": breakdown,
    }
    rows = [
        Row(
            "threads_speedup",
            f"esper ppo training time, torch default ({default} threads) / policy "
            f"(digits, {episodes} episodes)",
            speedup,
            "x",
            1.0,
        ),
        Row(
            "startup_to_first_step_s",
            "esper ppo: process start to the first env step (digits)",
            startup,
            "s",
        ),
    ]
    return Section("cli_run", rows, raw)
