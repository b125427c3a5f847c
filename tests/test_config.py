"""Run configuration: defaults, files, flag precedence, the nested PPO settings and the
one validator that refuses every value a run cannot work with."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper.rl.config import (
    MAX_ENVS,
    MAX_SEED,
    MAX_SLOTS,
    ConfigError,
    FaultSpec,
    OneOf,
    PPOConfig,
    SettingFlag,
    TrainConfig,
    build_config,
    field_flags,
    flag,
    parse_fault,
    read_config_file,
    setting_flags,
)


def test_defaults_are_valid_and_batches_round_up() -> None:
    cfg = TrainConfig()
    assert (cfg.task, cfg.episodes, cfg.envs, cfg.ppo.epochs, cfg.ppo.minibatches) == (
        "family",
        10,
        8,
        4,
        4,
    )
    assert TrainConfig(episodes=5, envs=2).batches == 3
    assert TrainConfig(episodes=4, envs=2).batches == 2


def test_ppo_config_lives_in_the_torch_free_module_and_ppo_reexports_it() -> None:
    from esper.rl import ppo

    assert ppo.PPOConfig is PPOConfig
    assert TrainConfig().to_dict()["ppo"]["clip_eps"] == 0.2


def test_a_morphogenetic_run_starts_from_its_tuned_ppo_and_a_gymnasium_one_from_the_usual() -> None:
    from esper.rl.config import MORPHOGENETIC_PPO

    usual, tuned = PPOConfig(), MORPHOGENETIC_PPO
    assert (usual.gamma, usual.gae_lambda, usual.entropy_coef) == (0.99, 0.95, 0.01)
    assert (tuned.gamma, tuned.gae_lambda, tuned.entropy_coef) == (1.0, 0.98, 0.1)
    assert TrainConfig().ppo == tuned == build_config({}, {}).ppo
    assert build_config({}, {"env_id": "CartPole-v1"}).ppo == usual
    # what a user sets wins on either side
    assert build_config({}, {"env_id": "CartPole-v1", "gamma": 0.9}).ppo.gamma == 0.9
    assert build_config({"ppo": {"entropy_coef": 0.0}}, {}).ppo.entropy_coef == 0.0
    assert build_config({"ppo": {"entropy_coef": 0.0}}, {}).ppo.gamma == 1.0


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("episodes", 0, "episodes must be a whole number in [1, 1000000000], got 0"),
        ("episodes", -3, "episodes must be a whole number in [1, "),
        ("episodes", True, "episodes must be a whole number in [1, "),
        ("envs", 1_000_000_000, f"envs must be a whole number in [1, {MAX_ENVS}]"),
        ("slots", 10_000_000, f"slots must be a whole number in [1, {MAX_SLOTS}]"),
        ("seed", 10**30, f"seed must be a whole number in [0, {MAX_SEED}]"),
        ("seed", -1, "seed must be a whole number in [0, "),
        ("task", "", "task must be a non-empty string, got ''"),
        ("task", 3, "task must be a non-empty string, got 3"),
        ("env_id", "Cart Pole", "env_id must be none or a gymnasium id like CartPole-v1 or "),
        ("env_id", "a:b:c", "env_id must be none or a gymnasium id like CartPole-v1 or "),
        ("bins", 1, "bins must be none or a whole number in [2, 1000], got 1"),
        ("rollout_steps", 0, "rollout_steps must be none or a whole number in [1, 100000]"),
        ("device", "tpu", "device must be cpu, cuda, cuda:N or mps"),
        ("device", "cpu:abc", "device must be cpu, cuda, cuda:N or mps, got 'cpu:abc'"),
        ("device", "cuda:x", "device must be cpu, cuda, cuda:N or mps"),
        ("backend", "slurm", "backend must be one of inprocess, processes, ray"),
        ("max_bad_updates", 0, "max_bad_updates must be a whole number in [1, "),
        ("ray_address", " ", "ray_address must be none or a non-empty string"),
    ],
)
def test_bad_run_values_name_the_field(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("clip", 0.0, "clip must be a finite number in (0, 1), got 0.0"),
        ("clip", 1.5, "clip must be a finite number in (0, 1), got 1.5"),
        ("clip", 5, "clip must be a finite number in (0, 1), got 5"),
        ("clip", math.inf, "clip must be a finite number in (0, 1), got inf"),
        ("lr", math.inf, "lr must be a finite number in (0, 1], got inf"),
        ("lr", math.nan, "lr must be a finite number in (0, 1], got nan"),
        ("lr", -1e-3, "lr must be a finite number in (0, 1]"),
        ("lr", 10**400, "lr must be a finite number in (0, 1]"),
        ("gamma", True, "gamma must be a finite number in [0, 1], got True"),
        ("gamma", 1.5, "gamma must be a finite number in [0, 1]"),
        ("gae_lambda", "0.9", "gae_lambda must be a finite number in [0, 1], got '0.9'"),
        ("epochs", 0, "epochs must be a whole number in [1, 1000]"),
        ("epochs", 2.0, "epochs must be a whole number in [1, 1000], got 2.0"),
        ("minibatches", 10**9, "minibatches must be a whole number in [1, 65536]"),
        ("hidden", 10**7, "hidden must be a whole number in [1, 8192]"),
        ("clip_mode", "both", "clip_mode must be one of per_head, joint"),
        ("entropy_coef", -0.1, "entropy_coef must be a finite number >= 0"),
        ("value_coef", math.inf, "value_coef must be a finite number >= 0"),
        ("max_grad_norm", 0, "max_grad_norm must be a finite number > 0"),
        ("target_kl", 0.0, "target_kl must be none or a finite number > 0"),
        ("joint_ratio_limit", 1.0, "joint_ratio_limit must be none or a finite number > 1"),
        ("explosion_threshold", math.nan, "explosion_threshold must be a finite number > 1"),
    ],
)
def test_bad_ppo_values_are_refused_under_the_name_the_user_typed(
    key: str, value: object, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({key: value}, {})
    assert str(info.value) == fragment or fragment in str(info.value)


def test_ppo_config_itself_runs_the_same_validator() -> None:
    with pytest.raises(ConfigError, match=r"^invalid PPOConfig: clip_eps must be .*, got 1\.5$"):
        PPOConfig(clip_eps=1.5)
    with pytest.raises(ConfigError, match="normalize_advantage must be true or false, got 1"):
        PPOConfig(normalize_advantage=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ppo must be a PPOConfig"):
        TrainConfig(ppo={"lr": 0.1})  # type: ignore[arg-type]


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans() | st.none())
def test_a_value_is_accepted_only_if_it_is_a_finite_clip_in_range(value: Any) -> None:
    """Property: build_config accepts `clip` exactly when it is a real number in (0, 1)."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value < 1
    )
    if value is None:  # "not given": the default stands
        assert build_config({}, {"clip": value}).ppo.clip_eps == 0.2
        return
    if ok:
        assert build_config({"clip": value}, {}).ppo.clip_eps == value
    else:
        with pytest.raises(ConfigError):
            build_config({"clip": value}, {})


def test_flags_override_file_and_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('task = "spirals"\nepisodes = 6\nepochs = 3\n')
    cfg = build_config(read_config_file(path), {"episodes": 8, "epochs": None})
    assert (cfg.task, cfg.episodes, cfg.ppo.epochs) == ("spirals", 8, 3)


def test_a_ppo_table_and_old_flat_keys_both_configure_ppo(tmp_path: Path) -> None:
    nested = tmp_path / "nested.toml"
    nested.write_text("episodes = 4\n[ppo]\nclip_eps = 0.1\nlr = 0.001\nhidden = 16\n")
    cfg = build_config(read_config_file(nested), {"lr": 0.002})
    assert (cfg.ppo.clip_eps, cfg.ppo.lr, cfg.ppo.hidden, cfg.episodes) == (0.1, 0.002, 16, 4)
    flat = tmp_path / "flat.toml"
    flat.write_text("clip = 0.1\nlr = 0.001\nhidden = 16\nepisodes = 4\n")
    assert build_config(read_config_file(flat), {"lr": 0.002}) == cfg


def test_a_saved_config_reads_back_equal_whether_nested_or_flat() -> None:
    cfg = build_config({"clip": 0.3, "epochs": 2, "task": "spirals"}, {})
    assert build_config(cfg.to_dict(), {}) == cfg
    assert build_config(json.loads(json.dumps(cfg.to_dict())), {}) == cfg
    # a run.json/checkpoint written before PPO settings were nested (flat keys)
    old = {"task": "spirals", "clip": 0.3, "epochs": 2, "minibatches": 4, "lr": 3e-4}
    assert build_config(old, {}) == cfg


def test_a_setting_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="clip is given twice"):
        build_config({"clip": 0.1, "ppo": {"clip_eps": 0.2}}, {})


def test_json_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"envs": 3, "clip": 0.1}))
    cfg = build_config(read_config_file(path), {})
    assert (cfg.envs, cfg.ppo.clip_eps) == (3, 0.1)


def test_unknown_config_keys_are_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("episodes = 2\nepisdoes = 3\n[ppo]\nclip = 0.1\n")
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    message = str(info.value)
    assert "unknown key(s) in " in message
    assert ": episdoes, ppo.clip; known keys: " in message
    assert "clip, clip_mode" in message and "ppo.clip_eps" in message


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
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'task = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 11 is 0xe9\)"):
        read_config_file(latin)


def test_wrong_type_in_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"episodes": "ten"}))
    with pytest.raises(ConfigError, match="episodes must be a whole number"):
        build_config(read_config_file(path), {})
    path.write_text(json.dumps({"ppo": 3}))
    with pytest.raises(ConfigError, match="ppo must be a table of PPO settings, got 3"):
        build_config(read_config_file(path), {})


def test_the_config_module_imports_no_environment() -> None:
    """The algorithm's settings must load without the morphogenetic env (or gymnasium)."""
    code = (
        "import sys, esper.rl.config; "
        "print(sorted(m for m in sys.modules if m.startswith(('esper.morpho', 'gymnasium'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_a_task_name_is_not_looked_up_by_the_config() -> None:
    """Which tasks exist is the environment's business; the CLI checks it (test_cli)."""
    assert TrainConfig(task="mnist").task == "mnist"
    assert build_config({"task": "my_task"}, {}).task == "my_task"


def test_a_fault_is_checked_for_its_form_only() -> None:
    nan = parse_fault("slot=nan@3")
    assert (nan.head, math.isnan(nan.value), nan.first, nan.last) == ("slot", True, 3, 3)
    assert parse_fault("op=inf@0") == FaultSpec(head="op", value=math.inf, first=0, last=0)
    spec = parse_fault("action_0=inf@2-5")  # any head name: the trainer knows the run's heads
    assert (spec.head, spec.value, spec.first, spec.last) == ("action_0", math.inf, 2, 5)
    assert TrainConfig(fault="policy=NaN@0").fault == "policy=NaN@0"
    bad_faults = ("=nan@1", "a b=nan@1", "slot=zero@1", "slot=nan@", "slot=nan@5-2", "9=nan@1")
    for bad in bad_faults:
        with pytest.raises(ConfigError, match=r"fault must look like HEAD=nan@FIRST\[-LAST\]"):
            parse_fault(bad)


def test_env_id_settings_default_to_none_and_read_back() -> None:
    cfg = TrainConfig()
    assert (cfg.env_id, cfg.bins, cfg.rollout_steps) == (None, None, None)
    gym = build_config({"env_id": "Pendulum-v1", "bins": 7, "rollout_steps": 64}, {})
    assert (gym.env_id, gym.bins, gym.rollout_steps) == ("Pendulum-v1", 7, 64)
    assert build_config(json.loads(json.dumps(gym.to_dict())), {}) == gym
    assert TrainConfig(env_id="my_pkg.envs:make_env").env_id == "my_pkg.envs:make_env"
    assert TrainConfig(env_id="ALE/Pong-v5", bins=2, rollout_steps=100_000).bins == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bins": 5}, "bins needs env_id (it discretises an env's Box actions), got bins=5 "
         "without env_id"),
        ({"rollout_steps": 32}, "rollout_steps needs env_id (the morphogenetic env steps "
         "episode_length per episode), got rollout_steps=32 without env_id"),
    ],
)  # fmt: skip
def test_env_id_only_settings_without_env_id_are_refused(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values, {})
    assert str(info.value) == message


def test_morphogenetic_flags_beside_env_id_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, {"env_id": "CartPole-v1", "slots": 5, "epochs_per_step": 2})
    assert str(info.value) == (
        "--slots, --epochs-per-step: settings of the morphogenetic env; they do not apply with "
        "--env-id"
    )
    # a recorded run's configuration holds every field, env_id's runs included
    recorded = TrainConfig(env_id="CartPole-v1").to_dict()
    assert build_config(recorded, {"episodes": 50}).slots == TrainConfig().slots


def test_host_epochs_per_episode_are_bounded_as_one_size() -> None:
    """Each flag alone is in range; their product is what a run must get through."""
    assert TrainConfig(episode_length=20_000, epochs_per_step=5).episode_length == 20_000
    with pytest.raises(ConfigError) as info:
        TrainConfig(episode_length=100_000, epochs_per_step=2)
    assert str(info.value) == (
        "episode_length x epochs_per_step is 200000 host epochs per episode; at most 100000 "
        "are allowed"
    )
    gym = TrainConfig(env_id="CartPole-v1", episode_length=100_000, epochs_per_step=2)
    assert gym.epochs_per_step == 2  # not the morphogenetic env's: not bounded here


def test_flags_are_described_from_the_fields_with_their_defaults() -> None:
    flags = {s.key: s for s in setting_flags()}
    assert list(flags) == [
        "task", "episodes", "envs", "episode_length", "epochs_per_step", "slots", "env_id", "bins",
        "rollout_steps", "lr", "clip", "epochs", "minibatches", "clip_mode", "seed", "device",
        "backend", "workers", "ray_address", "fault", "learners", "threads",
    ]  # fmt: skip
    clip = flags["clip"]  # PPOConfig.clip_eps, under the flat key build_config reads
    assert (clip.flag, clip.kind) == ("--clip", float)
    assert clip.help == "PPO clip range epsilon (default 0.2)"
    assert flags["episode_length"].flag == "--episode-length"
    assert flags["envs"].kind is int and flags["envs"].help.endswith("(default 8)")
    assert flags["lr"].help.endswith("(default 0.0003)")
    assert flags["backend"].choices == ("inprocess", "processes", "ray")  # from RUN_RULES
    assert flags["clip_mode"].choices == ("per_head", "joint")
    assert flags["workers"].kind is int
    assert flags["workers"].help.endswith("(default: one per env)")
    assert flags["bins"].metavar == "K" and "only with --env-id" in flags["bins"].help
    assert "--episode-length and --epochs-per-step then do not apply" in flags["env_id"].help
    assert flags["epochs_per_step"].help.endswith("(default 5)")
    assert flags["fault"].hidden and not flags["threads"].hidden
    assert "max_bad_updates" not in flags and "gamma" not in flags  # no flag declared


@dataclass(frozen=True)
class _Toy:
    """Every kind of field a flag can be derived from."""

    size: int | None = field(default=None, metadata=flag("a size", unset="automatic"))
    rate: float = field(default=0.5, metadata=flag("a rate"))
    mode: Literal["a", "b"] = field(default="a", metadata=flag("a mode"))
    name: str = field(default="x", metadata=flag("a name"))
    fast: bool = field(default=False, metadata=flag("go fast"))
    pick: str = field(default="p", metadata=flag("a pick"))
    plain: int = 3


def test_field_flags_take_type_choices_and_default_from_the_declaration() -> None:
    got = field_flags(_Toy, {"pick": OneOf(("p", "q"))}, key=lambda n: f"toy_{n}")
    described = [(s.key, s.flag, s.kind, s.choices, s.help) for s in got]
    assert described == [
        ("toy_size", "--toy-size", int, None, "a size (default: automatic)"),
        ("toy_rate", "--toy-rate", float, None, "a rate (default 0.5)"),
        ("toy_mode", "--toy-mode", str, ("a", "b"), "a mode (default a)"),
        ("toy_name", "--toy-name", str, None, "a name (default x)"),
        ("toy_fast", "--toy-fast", bool, None, "go fast (default False)"),
        ("toy_pick", "--toy-pick", str, ("p", "q"), "a pick (default p)"),
    ]
    assert all(isinstance(s, SettingFlag) and not s.hidden for s in got)
