"""`esper.rl.evaluate`, `esper.morpho.baselines` and `esper eval`: baselines on the env's own
code path, statistics by hand, determinism for a fixed seed, and the one-line exit-2
contract for bad input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esper.cli.envs import env_spec
from esper.cli.main import main
from esper.morpho import baselines as bl
from esper.morpho.actions import Blueprint, Op, factored_actions, head_sizes
from esper.morpho.environment import MorphogeneticEnv
from esper.morpho.lifecycle import Stage
from esper.rl import evaluate as ev
from esper.rl.checkpoint import CHECKPOINT_NAME, save_checkpoint
from esper.rl.config import TrainConfig
from esper.rl.ppo import PPOAgent
from esper.rl.runners import InProcessRunner

LENGTH, SLOTS = 4, 3
BIN = Path(sys.executable).parent


def make_env() -> MorphogeneticEnv:
    return MorphogeneticEnv(task="spirals", n_slots=SLOTS, episode_length=LENGTH, epochs_per_step=1)


def manual_episode(seed: int, actions: list[np.ndarray]) -> tuple[float, dict[str, float]]:
    """Step one env by hand: the sum of its rewards and its episode summary."""
    env = make_env()
    env.reset(seed=seed)
    total, info = 0.0, {}
    for action in actions:
        _, reward, _, _, info = env.step(action)
        assert not info["invalid_action"]
        total += float(reward)
    return total, info["episode"]


def test_wait_and_a_heuristic_are_played_exactly_as_the_env_plays_them() -> None:
    """`play` goes through the runner the trainer uses; stepping the env by hand with the
    same actions on the same seeds gives the same returns, to the last bit."""
    seeds = [5, 6]
    grow_two = bl.GrowSchedule(Blueprint.NORM, (0, 2))
    for policy, first in ((bl.wait_policy, Op.WAIT), (grow_two, Op.GROW)):
        played = ev.play(policy, make_env, seeds)
        for seed, episode in zip(seeds, played, strict=True):
            actions = [np.zeros(8, dtype=np.int64) for _ in range(LENGTH)]
            if first == Op.GROW:
                for t, slot in ((0, 0), (2, 1)):  # first free slot each time
                    actions[t] = np.array([Op.GROW, slot, Blueprint.NORM, 0, 0, 2, 0, 0])
            total, summary = manual_episode(seed, actions)
            assert episode == summary
            assert episode["return"] == pytest.approx(total, abs=1e-12)


def test_heuristics_grow_at_their_steps_and_nothing_else() -> None:
    named = bl.heuristics(episode_length=10, n_slots=SLOTS)
    assert named["grow-norm-early"].steps == (0, 1, 2)
    assert named["grow-norm-late"].steps == (5, 6, 7)
    assert {h.blueprint for h in named.values()} >= {Blueprint.NORM, Blueprint.WIDE_MLP}
    # two steps of a 4-step schedule: exactly two seeds, both NORM
    env = make_env()
    runner = InProcessRunner([env])
    states = runner.reset([3])
    schedule = bl.GrowSchedule(Blueprint.NORM, (1, 3))
    for t in range(LENGTH):
        states = runner.step(schedule(states, t))
    stages = [lc.stage for lc in env._slots]
    assert sum(stage != Stage.DORMANT for stage in stages) == 2
    assert [lc.blueprint for lc in env._slots[:2]] == [Blueprint.NORM, Blueprint.NORM]


def test_a_schedule_grows_from_its_slot_on_and_wraps_round() -> None:
    """Slot 1 first, then the next free one (2), then round to 0; no free slot: WAIT."""
    env = make_env()
    runner = InProcessRunner([env])
    states = runner.reset([3])
    schedule = bl.GrowSchedule(Blueprint.NORM, (0, 1, 2, 3), slot=1)
    grown = []
    for t in range(4):
        action = schedule(states, t)[0]
        grown.append(int(action[1]) if action[0] == Op.GROW else None)
        states = runner.step(action[None])
    assert grown == [1, 2, 0, None]
    assert [lc.stage != Stage.DORMANT for lc in env._slots] == [True, True, True]


def test_random_legal_only_plays_valid_actions() -> None:
    actions_spec = factored_actions(SLOTS)
    policy = ev.RandomLegal(actions_spec, seed=1)
    env = make_env()
    runner = InProcessRunner([env])
    for episode in range(3):
        states = runner.reset([episode])
        for t in range(LENGTH):
            actions = policy(states, t)
            assert actions.shape == (1, 8)
            sizes = list(head_sizes(SLOTS).values())
            assert all(0 <= a < s for a, s in zip(actions[0], sizes, strict=True))
            assert actions_spec.is_legal(actions[0], states.legal[0])
            states = runner.step(actions)
            assert not states.infos[0]["invalid_action"]


def test_the_baselines_are_wait_and_the_heuristics_and_no_random() -> None:
    named = bl.baselines(episode_length=10, n_slots=SLOTS)
    assert list(named) == ["wait", *bl.heuristics(10, SLOTS)]  # table order; no random
    assert named["wait"] is bl.wait_policy
    assert {k: v for k, v in named.items() if k != "wait"} == bl.heuristics(10, SLOTS)


def test_summary_statistics_by_hand() -> None:
    episodes = [{"return": r, "final_accuracy": a, "seeds_grown": g}
                for r, a, g in ((1.0, 0.5, 0), (2.0, 0.6, 1), (3.0, 0.7, 2))]  # fmt: skip
    result = ev.summarize("x", episodes)
    assert result.mean_return == pytest.approx(2.0)
    assert result.std_return == pytest.approx(1.0)  # sample std, ddof 1
    assert result.stderr_return == pytest.approx(1.0 / math.sqrt(3))
    assert (result.host_accuracy, result.seeds_grown) == (pytest.approx(0.6), 1.0)
    deltas = (0.5, 1.0, 1.5)
    shifted = [{**e, "return": e["return"] + d} for e, d in zip(episodes, deltas, strict=True)]
    other = ev.summarize("y", shifted)
    diff, se = ev.paired_difference(other, result)
    assert diff == pytest.approx(1.0)
    assert se == pytest.approx(0.5 / math.sqrt(3))  # std of (0.5, 1.0, 1.5) is 0.5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a checkpoint as the trainer writes it (untrained agent)."""
    path = tmp_path_factory.mktemp("eval") / "run"
    cfg = TrainConfig(task="spirals", episode_length=LENGTH, epochs_per_step=1, slots=SLOTS, seed=3)
    spec = env_spec(cfg)
    agent = PPOAgent(spec.obs_dim, spec.actions, cfg.ppo, seed=3)
    save_checkpoint(path / CHECKPOINT_NAME, {"agent": agent.state_dict(), "config": cfg.to_dict()})
    return path


def test_esper_eval_writes_one_entry_per_policy_and_is_deterministic(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(run_dir), "--episodes", "3", "--seed", "7", "--search-seeds=2"]) == 0
    out = capsys.readouterr().out
    first = json.loads((run_dir / ev.EVAL_FILE).read_text())
    names = [p["policy"] for p in first["policies"]]
    assert names[:4] == ["tamiyo-greedy", "tamiyo-sampled", "wait", "random"]
    assert "grow-norm-early" in names and "grow-norm-late" in names
    assert names[-3:] == ["schedule-best", "rule-stall", "tamiyo-blind"]
    searched = first["searched"]["schedule-best"]
    assert searched["seeds"][0] >= 900_000 and searched["episodes"] > 10
    assert f"schedule-best = {searched['name']}" in out
    assert (run_dir / "schedule_search.json").is_file()  # the next eval reads it
    for entry in first["policies"]:
        assert entry["episodes"] == 3
        assert {"policy", "mean_return", "std_return", "stderr_return"} <= set(entry)
        assert entry["stderr_return"] == pytest.approx(entry["std_return"] / math.sqrt(3))
        assert f"{entry['mean_return']:.3f}" in out
    assert main(["eval", str(run_dir), "--episodes", "3", "--seed", "7", "--search-seeds=2"]) == 0
    assert json.loads((run_dir / ev.EVAL_FILE).read_text()) == first
    assert main(["eval", str(run_dir), "--episodes", "3", "--seed", "8", "--search-seeds=2"]) == 0
    assert json.loads((run_dir / ev.EVAL_FILE).read_text()) != first


def test_one_episode_has_no_spread(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A std of one episode is undefined: the table shows the dash, eval.json holds null."""
    one = ev.summarize("x", [{"return": 2.5, "final_accuracy": 0.5, "seeds_grown": 1}])
    assert (one.mean_return, one.std_return, one.stderr_return) == (2.5, None, None)
    wait = ev.summarize("wait", [{"return": 1.0, "final_accuracy": 0.5, "seeds_grown": 0}])
    assert ev.paired_difference(one, wait) == (1.5, None)

    assert main(["eval", str(run_dir), "--episodes", "1", "--seed", "7", "--search-seeds=2"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((run_dir / ev.EVAL_FILE).read_text())
    table = [line for line in out.splitlines() if " = " not in line]  # not the search line
    rows = {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in table}
    for entry in doc["policies"]:
        assert entry["std_return"] is None and entry["stderr_return"] is None
        assert entry["episodes"] == 1 and math.isfinite(entry["mean_return"])
        assert entry["returns"] == [entry["mean_return"]]
        _, mean, std, stderr, *rest = rows[entry["policy"]]
        assert (mean, std, stderr) == (f"{entry['mean_return']:.3f}", "—", "—")
        vs_wait = rest[0] if entry["policy"] != "wait" else ""
        assert vs_wait == "" or re.fullmatch(r"[+-]\d+\.\d{3} ± —", vs_wait), vs_wait
    assert "0.000 ± 0.000" not in out

    from types import SimpleNamespace

    from esper.analysis.report import _eval_section

    run = SimpleNamespace(label="r1", run_dir=run_dir)
    section = _eval_section([run])  # type: ignore[list-item]
    assert "unreadable" not in section
    assert "<td>—</td><td>—</td><td>1</td>" in section  # std, stderr, episodes


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "esper"), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


BAD_INPUT = [
    (None, ["eval", "no/such/run"], "is not a directory"),
    ("empty", ["eval", "run"], "has no checkpoint.pt"),
    ("garbage", ["eval", "run"], "cannot load the checkpoint"),
    ("foreign", ["eval", "run"], "cannot load the checkpoint"),
    ("empty", ["eval", "run", "--episodes", "0"], "--episodes must be a whole number >= 1"),
    ("empty", ["eval", "run", "--episodes", "ten"], "invalid int value: 'ten'"),
    ("empty", ["eval", "run", "--seed", "-1"], "--seed must be a whole number >= 0"),
    ("empty", ["eval"], "the following arguments are required: RUN_DIR"),
]


def prepare(setup: str | None, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    if setup is not None:
        run.mkdir()
    if setup == "garbage":
        (run / CHECKPOINT_NAME).write_bytes(b"not a checkpoint at all")
    if setup == "foreign":
        save_checkpoint(run / CHECKPOINT_NAME, {"weights": [1, 2, 3]})
    return run


def assert_one_line(code: int, stderr: str, fragment: str) -> None:
    assert code == 2, stderr
    assert fragment in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("setup", "args", "fragment"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(
    setup: str | None,
    args: list[str],
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = prepare(setup, tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    assert_one_line(code, capsys.readouterr().err, fragment)
    assert not (run / ev.EVAL_FILE).exists()


@pytest.mark.parametrize(("setup", "args", "fragment"), [BAD_INPUT[0], BAD_INPUT[2]])
def test_bad_input_through_the_console_script(
    setup: str | None, args: list[str], fragment: str, tmp_path: Path
) -> None:
    prepare(setup, tmp_path)
    proc = run_cli(*args, cwd=tmp_path)
    assert_one_line(proc.returncode, proc.stderr, fragment)


def test_report_shows_eval_json_when_present(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from esper.analysis.report import _eval_section

    run = SimpleNamespace(label="r1", run_dir=tmp_path)
    assert _eval_section([run]) == ""  # type: ignore[list-item]
    result = ev.summarize("grow-norm-early", [{"return": 0.25, "final_accuracy": 0.5,
                                               "seeds_grown": 3}])  # fmt: skip
    ev.write_eval(tmp_path, [result], seed=10_000)
    section = _eval_section([run])  # type: ignore[list-item]
    assert "Evaluation on fixed seeds" in section
    assert "<td>grow-norm-early</td><td>0.250</td>" in section
    (tmp_path / ev.EVAL_FILE).write_text("{broken")
    assert "eval.json unreadable" in _eval_section([run])  # type: ignore[list-item]


def test_the_table_gives_greedy_minus_each_row_paired_with_its_standard_errors() -> None:
    """Hand-computed: differences 1, 1, 2 have mean 4/3 and standard error 1/3, so 4.0 SE."""
    from esper.rl.evaluate import PolicyResult, format_table

    def row(name: str, returns: list[float]) -> PolicyResult:
        return PolicyResult(name, sum(returns) / 3, None, None, 3, None, None, returns)

    greedy, wait = row("tamiyo-greedy", [1.0, 2.0, 3.0]), row("wait", [0.0, 1.0, 1.0])
    header, _, greedy_line, wait_line = format_table([greedy, wait]).splitlines()
    assert header.split()[-3:] == ["tamiyo-greedy", "-", "this"]
    assert wait_line.split()[0] == "wait" and wait_line.endswith("+1.333 ± 0.333 (4.0 SE)")
    assert greedy_line.split()[0] == "tamiyo-greedy" and "SE" not in greedy_line
    assert "this" not in format_table([wait]).splitlines()[0]  # no learned policy, no column


def test_eval_json_keeps_the_paired_comparisons_and_the_report_shows_them(
    tmp_path: Path,
) -> None:
    """Hand-computed as above (greedy − wait: 4/3 ± 1/3, 4.0 SE; wait − greedy the negative);
    a comparison nobody made (a row with itself, a reference not played) is absent."""
    from types import SimpleNamespace

    from esper.analysis.report import _eval_section
    from esper.rl.evaluate import PolicyResult

    def row(name: str, returns: list[float]) -> PolicyResult:
        return PolicyResult(name, sum(returns) / 3, None, None, 3, None, None, returns)

    greedy, wait = row("tamiyo-greedy", [1.0, 2.0, 3.0]), row("wait", [0.0, 1.0, 1.0])
    ev.write_eval(tmp_path, [greedy, wait], seed=10_000, reference="wait")
    doc = json.loads((tmp_path / ev.EVAL_FILE).read_text(encoding="utf-8"))
    by_name = {p["policy"]: p for p in doc["policies"]}
    g, w = by_name["tamiyo-greedy"], by_name["wait"]
    assert g["versus"]["against"] == "wait"
    assert g["versus"]["mean"] == pytest.approx(4 / 3) and g["versus"]["se"] == pytest.approx(1 / 3)
    assert "greedy_minus_this" not in g and "versus" not in w
    assert w["greedy_minus_this"]["against"] == "tamiyo-greedy"
    assert w["greedy_minus_this"]["mean"] == pytest.approx(4 / 3)

    section = _eval_section([SimpleNamespace(label="r1", run_dir=tmp_path)])  # type: ignore[list-item]
    assert "<td>+1.333 ± 0.333 (4.0 SE) vs wait</td><td></td>" in section  # greedy's row
    assert "<td></td><td>+1.333 ± 0.333 (4.0 SE)</td>" in section  # wait's row

    ev.write_eval(tmp_path, [greedy, wait], seed=10_000, reference="random")  # not played
    doc = json.loads((tmp_path / ev.EVAL_FILE).read_text(encoding="utf-8"))
    assert all("versus" not in p for p in doc["policies"])
