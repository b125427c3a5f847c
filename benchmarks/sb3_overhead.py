"""What per-head recording costs a Stable-Baselines3 update: PerHeadPPO over PPO.

At SB3's defaults (2048 steps, minibatches of 64, 10 epochs) on the example task
(HalfCheetah-v5 discretised to six heads of 11 levels), each side learns one rollout
with the same seed (so both hold the same buffer and have Adam state), then `train()`
is timed on that buffer from one restored state (policy and optimizer), the recording
side writing a real run directory (one event and fsync per update). The sides alternate,
rounds are interleaved, and each figure is the median of the per-round ratios recording
/ plain. The headline is the training thread's CPU time (torch runs on that one thread
here), which other processes on a busy machine inflate far less than the wall clock;
the wall-clock ratio, fsync included, is reported beside it. The same for sb3-contrib's
MaskablePPO (no action masks: all legal).
`--quick` times PPO only, with 2 epochs per update instead of 10 (the fixed cost per
update, the one reduction and the fsync, then weighs five times more: the harsher figure).
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    SEED,
    Row,
    Section,
    cpu_clock,
    interleaved,
    load_average,
    paired_ratios,
    spread,
    timed,
)

TARGET = 1.05
ENV_ID = "HalfCheetah-v5"
BINS = 11
#: SB3's PPO defaults, spelled out so a change of theirs does not move the figure silently.
DEFAULTS: dict[str, Any] = {"n_steps": 2048, "batch_size": 64, "n_epochs": 10}


def make_env() -> Any:
    import gymnasium

    from esper.integrations.gym import DiscretizeActions

    return DiscretizeActions(gymnasium.make(ENV_ID), BINS)


class TrainSide:
    """A timed `train()` on a filled rollout buffer, from one restored state."""

    def __init__(
        self, cls: type, run_root: Path | None, sizes: dict[str, Any], learn: dict[str, Any]
    ) -> None:
        extra = {} if run_root is None else {"run_dir": run_root / "learn"}
        from stable_baselines3.common.logger import Logger

        self.model = cls("MlpPolicy", make_env(), seed=SEED, **sizes, **extra)
        # No output folder: SB3's default logger leaves an empty SB3-<date> folder in the
        # system temp directory at every learn().
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.model.learn(sizes["n_steps"], **learn)  # fills the buffer, one update
        policy = self.model.policy
        self.state = copy.deepcopy((policy.state_dict(), policy.optimizer.state_dict()))
        if run_root is not None:  # record every timed update, as learn() would
            self.model.run_dir = run_root / "timed"
            self.model.start_run()

        self.wall: list[float] = []

    def __call__(self) -> float:
        """CPU seconds of one `train()`; its wall seconds go to `wall`."""
        weights, optimizer = copy.deepcopy(self.state)
        self.model.policy.load_state_dict(weights)
        self.model.policy.optimizer.load_state_dict(optimizer)
        wall = time.perf_counter()
        cpu = timed(self.model.train, cpu_clock)()
        self.wall.append(time.perf_counter() - wall)
        return cpu

    def close(self) -> None:
        end = getattr(self.model, "end_run", None)
        if end is not None:
            end()


def measure(
    plain: type, per_head: type, sizes: dict[str, Any], rounds: int, repeats: int, **learn: Any
) -> dict:
    """Interleaved update timings of one pair; the per-round ratio per_head / plain."""
    with tempfile.TemporaryDirectory(prefix="bench_sb3_") as tmp:
        sides = {
            "plain": TrainSide(plain, None, sizes, learn),
            "per_head": TrainSide(per_head, Path(tmp), sizes, learn),
        }
        try:
            samples = interleaved(dict(sides), rounds, warmup=1, repeats=repeats)
        finally:
            for side in sides.values():
                side.close()
    # Wall times of the rounds kept: per round, each side's fastest of its repeats.
    skip = repeats  # the warm-up round
    wall = {
        name: [min(side.wall[i : i + repeats]) for i in range(skip, len(side.wall), repeats)]
        for name, side in sides.items()
    }
    return {
        "ratio": spread(paired_ratios(samples["per_head"], samples["plain"])),
        "wall_ratio": spread(paired_ratios(wall["per_head"], wall["plain"])),
        "plain_cpu_seconds": spread(samples["plain"]),
        "per_head_cpu_seconds": spread(samples["per_head"]),
        "plain_wall_seconds": spread(wall["plain"]),
        "per_head_wall_seconds": spread(wall["per_head"]),
        "samples": samples,
        "wall_samples": wall,
    }


def run(quick: bool) -> Section:
    """Both pairs at SB3's defaults; `quick`: PPO only, 2 epochs per update, fewer rounds."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    from esper.integrations.sb3 import PerHeadMaskablePPO, PerHeadPPO

    rounds, repeats = (3, 2) if quick else (8, 2)
    sizes = {**DEFAULTS, "n_epochs": 2} if quick else DEFAULTS
    load = {"before": load_average()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs: dict[str, Callable[[], dict]] = {
            "ppo": lambda: measure(PPO, PerHeadPPO, sizes, rounds, repeats),
        }
        if not quick:  # the same taps; the quick run leaves the second pair out
            pairs["maskable"] = lambda: measure(
                MaskablePPO, PerHeadMaskablePPO, sizes, rounds, repeats, use_masking=False
            )
        results = {name: fn() for name, fn in pairs.items()}
    load["after"] = load_average()
    labels = {
        "ppo": ("sb3", "SB3 PPO", "PerHeadPPO / PPO"),
        "maskable": ("sb3_maskable", "MaskablePPO", "PerHeadMaskablePPO / MaskablePPO"),
    }
    rows = []
    for name, result in results.items():
        key, what, ratio = labels[name]
        rows += [
            Row(
                f"{key}_per_head_update_ratio",
                f"{what} update CPU time, {ratio} (HalfCheetah, 6 heads)",
                result["ratio"],
                "x",
                TARGET,
                higher_is_better=False,
            ),
            Row(
                f"{key}_per_head_update_wall_ratio",
                f"{what} update wall time (fsync included), {ratio}",
                result["wall_ratio"],
                "x",
                higher_is_better=False,
            ),
        ]
    raw = {
        "env": ENV_ID,
        "bins": BINS,
        **sizes,
        "rounds": rounds,
        "repeats": repeats,
        "load_average": load,
        **{
            name: {
                key: value.as_dict() if hasattr(value, "as_dict") else value
                for key, value in result.items()
            }
            for name, result in results.items()
        },
    }
    return Section("sb3_overhead", rows, raw)
