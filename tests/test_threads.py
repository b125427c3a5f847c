"""The learner's thread policy: known answers, properties, the override and run.json."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from esper.cli.main import _esper_parser, config_from_args, main
from esper.rl.config import ConfigError, PPOConfig, TrainConfig
from esper.rl.threads import (
    PARALLEL_MIN_MACS,
    choose_threads,
    learner_threads,
    minibatch_macs,
    usable_cpus,
)


def test_known_answers() -> None:
    assert minibatch_macs(13, 128) == 13 * 128 * 128
    assert choose_threads(0, 8) == 1
    assert choose_threads(PARALLEL_MIN_MACS - 1, 8) == 1
    assert choose_threads(PARALLEL_MIN_MACS, 8) == 1
    assert choose_threads(2 * PARALLEL_MIN_MACS, 8) == 2
    assert choose_threads(3 * PARALLEL_MIN_MACS + 5, 8) == 3
    assert choose_threads(100 * PARALLEL_MIN_MACS, 4) == 4
    assert choose_threads(100 * PARALLEL_MIN_MACS, 1) == 1
    with pytest.raises(ValueError, match="cpus"):
        choose_threads(1, 0)


def test_learner_threads_by_size_and_override() -> None:
    # product defaults: 8 envs x 25 steps / 4 minibatches = 50 samples x 128 x 128
    assert learner_threads(TrainConfig(), cpus=64) == 1
    # 64 envs x 256 steps / 1 minibatch x hidden 1024: 16384 * 2**20 = 128 x the threshold
    big = TrainConfig(envs=64, episode_length=256, ppo=PPOConfig(minibatches=1, hidden=1024))
    assert learner_threads(big, cpus=64) == 64
    assert learner_threads(big, cpus=2) == 2
    assert learner_threads(big, None, 2) == 2  # cpus is the third positional
    # a continuing env adds `steps_per_env` samples per env, whatever the episode length
    short = dataclasses.replace(big, episode_length=2)
    assert learner_threads(short, cpus=64) == 1
    assert learner_threads(short, steps_per_env=256, cpus=64) == 64
    assert learner_threads(TrainConfig(threads=3), cpus=64) == 3
    assert 1 <= learner_threads(TrainConfig()) <= usable_cpus()


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1, 256))
def test_choice_is_bounded_and_monotone(a: int, b: int, cpus: int) -> None:
    lo, hi = sorted((a, b))
    assert 1 <= choose_threads(lo, cpus) <= choose_threads(hi, cpus) <= cpus


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_thread_counts_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"threads must be none or a whole number in \[1, 1024\]"):
        TrainConfig(threads=bad)  # type: ignore[arg-type]


def test_threads_flag_sets_the_config() -> None:
    args = _esper_parser().parse_args(["ppo", "--threads", "3"])
    assert config_from_args(args).threads == 3


def test_threads_flag_zero_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "esper.cli.main", "ppo", "--threads", "0", "--no-tui"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "esper ppo: error: threads must be none or a whole number in [1, 1024], got 0"
    ]
    assert not (tmp_path / "runs").exists()


def test_run_json_records_the_count_applied(tmp_path: Path) -> None:
    previous = torch.get_num_threads()
    run_dir = tmp_path / "run"
    try:
        torch.set_num_threads(2)
        code = main(
            ["ppo", "--episodes", "1", "--envs", "1", "--no-tui", "--task", "spirals",
             "--episode-length", "2", "--run-dir", str(run_dir)]
        )  # fmt: skip
        applied = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    recorded = json.loads((run_dir / "run.json").read_text())["config"]["threads"]
    assert recorded == applied == 1  # 2 samples x 128 x 128: far below the threshold
