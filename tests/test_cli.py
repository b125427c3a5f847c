"""End to end through the real console scripts: train headless, then render the dashboard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from esper.morpho.actions import HEAD_NAMES
from esper.rl.config import ConfigError, TrainConfig

BIN = Path(sys.executable).parent


def run_cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run an installed console script the way an operator would (no terminal attached)."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="module")
def recorded_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One short headless training run shared by the tests below."""
    root = tmp_path_factory.mktemp("e2e")
    run_dir = root / "run"
    proc = run_cli(
        "esper", "ppo", "--episodes", "4", "--envs", "2", "--no-tui", "--task", "spirals",
        "--episode-length", "10", "--run-dir", str(run_dir), cwd=root,
    )  # fmt: skip
    return run_dir, proc


def test_esper_ppo_headless_records_every_head(
    recorded_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    run_dir, proc = recorded_run
    assert proc.returncode == 0, proc.stderr
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    types = [e["event_type"] for e in events]
    assert types[0] == "TRAINING_STARTED"
    assert types[-1] == "TRAINING_FINISHED"
    updates = [e for e in events if e["event_type"] == "PPO_UPDATE_COMPLETED"]
    assert [u["data"]["update_index"] for u in updates] == [0, 1]  # 4 episodes / 2 envs
    for update in updates:
        for head in HEAD_NAMES:
            value = update["data"][f"head_{head}_ratio_max"]
            assert isinstance(value, float) and value > 0
    # rollout-time log-probs and 4 epochs: the op head (always relevant) must have moved
    assert any(u["data"]["head_op_ratio_max"] != 1.0 for u in updates)
    assert (run_dir / "run.json").is_file() and (run_dir / "checkpoint.pt").is_file()
    assert "update    0 | worst head" in proc.stdout
    assert str(run_dir) in proc.stdout


def test_sanctum_screenshot_shows_the_recorded_heads(
    recorded_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    run_dir, _ = recorded_run
    out = tmp_path / "out.svg"
    proc = run_cli("sanctum", str(run_dir), "--screenshot", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    svg = out.read_text()
    last = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    final = [e for e in last if e["event_type"] == "PPO_UPDATE_COMPLETED"][-1]["data"]
    shown = f"{final['head_op_ratio_max']:.3f}"
    assert shown in svg.replace("&#160;", " ")
    for head in HEAD_NAMES:
        assert head in svg


def test_sanctum_without_argument_finds_the_latest_run(
    recorded_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    run_dir, _ = recorded_run
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "older").mkdir()
    (runs / "older" / "events.jsonl").write_text("")
    newest = runs / "newest"
    newest.mkdir()
    (newest / "events.jsonl").write_bytes((run_dir / "events.jsonl").read_bytes())
    proc = run_cli("sanctum", "--screenshot", "shot.svg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "shot.svg").is_file()


def test_a_reader_closing_the_pipe_does_not_end_the_training(tmp_path: Path) -> None:
    """`esper ppo | head -1`: the console falls silent, the run trains to its end."""
    run_dir = tmp_path / "a_run_directory_with_a_long_name_" / ("x" * 60)
    proc = subprocess.Popen(
        [str(BIN / "esper"), "ppo", "--no-tui", "--episodes", "8", "--envs", "2",
         "--task", "spirals", "--episode-length", "6", "--run-dir", str(run_dir)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["event_type"] == "TRAINING_FINISHED"


def test_the_closing_line_keeps_a_long_run_directory_whole(tmp_path: Path) -> None:
    run_dir = tmp_path / ("a_long_run_directory_name_" * 4)
    proc = run_cli(
        "esper", "ppo", "--no-tui", "--episodes", "2", "--envs", "2", "--task", "spirals",
        "--episode-length", "4", "--run-dir", str(run_dir), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(f"Run directory: {run_dir}")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--screenshot", "{run}/events.jsonl"], "give a path ending in .svg"),  # never the log
        (["--screenshot", "{run}/run.json"], "give a path ending in .svg"),
        (["--screenshot", "{tmp}/no/such/dir/x.svg"], "no directory"),
        (["--screenshot", "{tmp}/a_dir.svg"], "is a directory"),
        (["--screenshot", "{tmp}/x.svg", "--size", "100000x100000"], "too large"),
        (["--screenshot", "{tmp}/x.svg", "--replay"], "use one or the other"),
    ],
)
def test_sanctum_refuses_a_screenshot_it_should_not_write(
    recorded_run: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    fragment: str,
) -> None:
    from esper.cli.main import sanctum_main

    run_dir, _ = recorded_run
    (tmp_path / "a_dir.svg").mkdir()
    log = (run_dir / "events.jsonl").read_bytes()
    args = [a.format(run=run_dir, tmp=tmp_path) for a in extra]
    with pytest.raises(SystemExit) as exit_info:
        sanctum_main([str(run_dir), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert (run_dir / "events.jsonl").read_bytes() == log  # the run's files untouched


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["esper", "ppo", "--episodes", "0"], "episodes must be a whole number in [1, "),
        (["esper", "ppo", "--episodes", "-2"], "episodes must be a whole number in [1, "),
        (
            ["esper", "ppo", "--task", "mnist"],
            "unknown task 'mnist'; known tasks: digits, spirals, family",
        ),
        (["esper", "ppo", "--clip", "0"], "clip must be a finite number in (0, 1)"),
        (["esper", "ppo", "--clip", "2"], "clip must be a finite number in (0, 1), got 2.0"),
        (["esper", "ppo", "--envs", "x"], "argument --envs: invalid int value: 'x'"),
        (["esper", "ppo", "--clip-mode", "both"], "argument --clip-mode: invalid choice: 'both'"),
        (["esper", "ppo", "--bins", "4"], "bins needs env_id (it discretises an env's Box"),
        (["esper", "ppo", "--rollout-steps", "8"], "rollout_steps needs env_id"),
        (
            ["esper", "ppo", "--env-id", "CartPole-v1", "--rollout-steps", "0"],
            "rollout_steps must be none or a whole number in [1, 100000], got 0",
        ),
        (
            ["esper", "ppo", "--env-id", "CartPole-v1", "--bins", "1001"],
            "bins must be none or a whole number in [2, 1000], got 1001",
        ),
        # a prefix of a flag is not the flag: --env is not --envs, --epi not --episodes
        (["esper", "ppo", "--env", "CartPole-v1"], "unrecognized arguments: --env CartPole-v1"),
        (["esper", "ppo", "--epi", "3"], "unrecognized arguments: --epi 3"),
        (["esper", "report", "run", "--ou", "x.html"], "unrecognized arguments: --ou x.html"),
        (["esper", "query", "run", "SELECT 1", "--js"], "unrecognized arguments: --js"),
        (["esper", "eval", "run", "--epi", "3"], "unrecognized arguments: --epi 3"),
        (["sanctum", "--rep"], "unrecognized arguments: --rep"),
        (["esper", "ppo", "--epochs", "0"], "epochs must be a whole number in [1, "),
        (["esper", "ppo", "--episodes", "ten"], "invalid int value: 'ten'"),
        (["esper", "ppo", "--config", "missing.toml"], "cannot read config file"),
        (["esper", "ppo", "--device", "cuda:7"], "no CUDA device is available"),
        (["sanctum", "no/such/run"], "no run directory at no/such/run"),
        (["sanctum"], "no runs under runs/"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], fragment: str, tmp_path: Path) -> None:
    if "cuda" in " ".join(args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    proc = run_cli(*args, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before anything is made


def test_ppo_help_comes_from_the_config_declarations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the width, even inside --env-id
    proc = run_cli("esper", "ppo", "--help", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for shown in (
        "--episodes N episodes in total, over all parallel envs (default 10)",
        "--clip CLIP PPO clip range epsilon (default 0.2)",
        "--lr LR learning rate (default 0.0003)",
        "--clip-mode {per_head,joint}",
        "--backend {inprocess,processes,ray} where the envs step (default inprocess)",
        "--workers WORKERS worker processes or Ray actors the envs use (default: one per env)",
        "--task TASK morphogenetic host task; not used with --env-id; one of digits, spirals, "
        "family (default family)",
        "--env-id ID train on this env: a gymnasium id (CartPole-v1) or module:callable",
        "--task, --slots, --episode-length and --epochs-per-step then do not apply",
        "--epochs-per-step EPOCHS_PER_STEP host epochs between two decisions; not used with "
        "--env-id (default 5)",
        "--bins K discretise a Box action space into K levels per dimension",
        "--rollout-steps N steps each env takes per PPO batch (only with --env-id) (default: 128)",
        "--run-dir RUN_DIR",
        "--resume RUN_DIR",
    ):
        assert shown in text
    assert "--fault" not in text and "max-bad-updates" not in text


def test_settings_flags_reach_the_config_over_the_config_file(tmp_path: Path) -> None:
    from esper.cli.main import _esper_parser, config_from_args

    path = tmp_path / "gym.toml"
    path.write_text('env_id = "Pendulum-v1"\nbins = 3\nrollout_steps = 64\nepochs = 2\n')
    args = _esper_parser().parse_args(
        ["ppo", "--config", str(path), "--bins", "9", "--clip", "0.1"]
    )
    config = config_from_args(args)
    assert (config.env_id, config.bins, config.rollout_steps) == ("Pendulum-v1", 9, 64)
    assert (config.ppo.epochs, config.ppo.clip_eps) == (2, 0.1)
    with pytest.raises(ConfigError, match="--task: settings of the morphogenetic env"):
        config_from_args(_esper_parser().parse_args(["ppo", "--config", str(path), "--task", "x"]))
    plain = config_from_args(_esper_parser().parse_args(["ppo"]))
    assert plain == TrainConfig()  # no flag given: every default stands


def test_a_fault_naming_any_head_parses_but_a_malformed_one_exits_2(tmp_path: Path) -> None:
    from esper.cli.main import _esper_parser, config_from_args

    args = _esper_parser().parse_args(["ppo", "--fault", "no_such_head=nan@1"])
    assert config_from_args(args).fault == "no_such_head=nan@1"  # the trainer checks heads
    proc = run_cli("esper", "ppo", "--no-tui", "--fault", "slot=nan", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "esper ppo: error: fault must look like HEAD=nan@FIRST[-LAST] (or inf), got 'slot=nan'"
    ]


def test_an_unknown_task_in_a_config_file_is_refused_by_the_cli(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text('task = "mnist"\n')
    proc = run_cli("esper", "ppo", "--config", "cfg.toml", "--no-tui", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "esper ppo: error: unknown task 'mnist'; known tasks: digits, spirals, family"
    ]
    assert not (tmp_path / "runs").exists()


def test_unknown_config_key_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text("episodes = 2\nbogus = 1\n")
    proc = run_cli("esper", "ppo", "--config", "cfg.toml", "--no-tui", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "unknown key(s)" in proc.stderr and "bogus" in proc.stderr


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text('{"keep": true}\n')
    proc = run_cli("esper", "ppo", "--no-tui", "--run-dir", str(run_dir), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "already holds a recorded run" in proc.stderr
    assert (run_dir / "events.jsonl").read_text() == '{"keep": true}\n'


def test_esper_report_and_query_through_the_real_cli(
    recorded_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    run_dir, _ = recorded_run
    out = tmp_path / "report.html"
    proc = run_cli("esper", "report", str(run_dir), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    assert all(head in html for head in HEAD_NAMES)
    sql = "SELECT update_index, head_slot_ratio_max FROM ppo_updates ORDER BY update_index"
    proc = run_cli("esper", "query", str(run_dir), sql, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    recorded = [e["data"] for e in events if e["event_type"] == "PPO_UPDATE_COMPLETED"]
    assert [r["head_slot_ratio_max"] for r in rows] == [d["head_slot_ratio_max"] for d in recorded]
    proc = run_cli("esper", "query", str(run_dir), "SELEC nonsense", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_derived_flags_convert_and_leave_unset_as_none() -> None:
    import argparse

    from esper.cli.main import OneLineParser, add_setting_flags
    from esper.rl.config import SettingFlag

    parser = OneLineParser(prog="toy")
    add_setting_flags(
        parser,
        [
            SettingFlag("fast", "--fast", bool, None, "go fast", "(default False)", None, False),
            SettingFlag("rate", "--rate", float, None, "a rate", "(default 0.5)", None, False),
            SettingFlag("mode", "--mode", str, ("a", "b"), "a mode", "(default a)", None, True),
        ],
    )
    assert vars(parser.parse_args([])) == {"fast": None, "rate": None, "mode": None}
    got = parser.parse_args(["--no-fast", "--rate", "0.25", "--mode", "b"])
    assert (got.fast, got.rate, got.mode) == (False, 0.25, "b")
    assert parser.parse_args(["--fast"]).fast is True
    shown = parser.format_help()
    assert "--mode" not in shown and "go fast (default False)" in shown  # hidden, and shown
    assert isinstance(parser, argparse.ArgumentParser) and not parser.allow_abbrev


def test_epochs_per_step_reaches_the_envs_of_every_backend_and_the_eval(tmp_path: Path) -> None:
    """`--epochs-per-step 1 --episode-length 2`: episodes of two decisions, recorded in
    run.json, played by worker processes and by `esper eval` on the same env."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        "esper", "ppo", "--no-tui", "--episodes", "2", "--envs", "2", "--episode-length", "2",
        "--epochs-per-step", "1", "--backend", "processes", "--run-dir", str(run_dir),
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert (config["episode_length"], config["epochs_per_step"]) == (2, 1)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    episodes = [e["data"] for e in events if e["event_type"] == "EPISODE_COMPLETED"]
    assert [ep["length"] for ep in episodes] == [2, 2]
    proc = run_cli(
        "esper", "eval", str(run_dir), "--episodes", "2", "--search-seeds", "2",
        cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    search = json.loads((run_dir / "schedule_search.json").read_text())
    assert search["key"]["env"]["epochs_per_step"] == 1  # the search played the same env
