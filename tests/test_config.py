"""Run configuration: defaults, files, flag precedence and the messages for bad values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.config import ConfigError, TrainConfig, build_config, read_config_file


def test_defaults_are_valid_and_batches_round_up() -> None:
    cfg = TrainConfig()
    assert (cfg.task, cfg.episodes, cfg.envs, cfg.epochs, cfg.minibatches) == (
        "spirals",
        10,
        8,
        4,
        4,
    )
    assert TrainConfig(episodes=5, envs=2).batches == 3
    assert TrainConfig(episodes=4, envs=2).batches == 2


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("episodes", 0, "episodes must be a whole number >= 1"),
        ("episodes", -3, "episodes must be a whole number >= 1"),
        ("epochs", 0, "epochs must be a whole number >= 1"),
        ("clip", 0.0, "clip must be a number > 0"),
        ("clip", -0.1, "clip must be a number > 0"),
        ("task", "mnist", "unknown task 'mnist'; known tasks: digits, spirals"),
        ("clip_mode", "both", "clip_mode must be one of per_head, joint"),
        ("gamma", 1.5, "gamma must be in [0, 1]"),
        ("device", "tpu", "device must be cpu, cuda[:N] or mps"),
        ("episodes", True, "episodes must be a whole number >= 1"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        TrainConfig(**{field: value})  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_flags_override_file_and_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('task = "spirals"\nepisodes = 6\nepochs = 3\n')
    cfg = build_config(read_config_file(path), {"episodes": 8, "epochs": None})
    assert (cfg.task, cfg.episodes, cfg.epochs) == ("spirals", 8, 3)


def test_json_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"envs": 3, "clip": 0.1}))
    cfg = build_config(read_config_file(path), {})
    assert (cfg.envs, cfg.clip) == (3, 0.1)


def test_unknown_config_keys_are_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("episodes = 2\nepisdoes = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in .*: episdoes"):
        read_config_file(path)


def test_unreadable_and_malformed_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("episodes = = 3\n")
    with pytest.raises(ConfigError, match="is not valid toml"):
        read_config_file(bad)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a table"):
        read_config_file(listing)


def test_wrong_type_in_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"episodes": "ten"}))
    with pytest.raises(ConfigError, match="episodes must be a whole number"):
        build_config(read_config_file(path), {})
