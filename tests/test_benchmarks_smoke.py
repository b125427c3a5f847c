"""The benchmarks still run against the code (not their timings: benchmarks are not tests).

Benchmarks are run by hand, so an API change can leave one broken until the next full
run; each check here drives one section's own code on a tiny input and checks what it
computed, in seconds. Ray stays out (starting it alone takes longer than all of these).
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the `benchmarks` package

from benchmarks import (
    cli_run,
    emit_path,
    family,
    foreign_env,
    memory,
    sanctum_load,
    sb3_overhead,
    scaling,
    telemetry_overhead,
    versus_sb3,
)
from benchmarks.learning import evaluate_agent, greedy_plays, per_kind, train, verdict
from esper.morpho.actions import BlendStyle, Blueprint, Op
from esper.morpho.tasks import FAMILY
from esper.sanctum.aggregator import SanctumAggregator
from esper.telemetry.recorder import read_events


@pytest.fixture(autouse=True)
def private_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a section writes goes to this test's own folder, not the system temp dir.

    Sections make their run folders with `tempfile`, SB3's default logger makes an
    `SB3-<time>` folder there per `learn()`, child processes follow $TMPDIR, and MuJoCo
    appends its warnings to MUJOCO_LOG.TXT in the working directory.
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)


def positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_emit_path_records_its_whole_mix(tmp_path: Path) -> None:
    side = emit_path.EmitSide(tmp_path, "smoke", dashboard=False, cycles=2)
    side.block()
    side.hub.close()
    events = list(read_events(tmp_path / "smoke" / "events.jsonl"))
    assert len(events) == side.events == 2 * 101


def test_telemetry_overhead_sides_run_the_same_epochs() -> None:
    result = telemetry_overhead.measure("default", rounds=1, repeats=1)
    assert set(result["epochs_run"]) == {"ours", "ours_joint_clip", "baseline"}
    assert len(set(result["epochs_run"].values())) == 1  # the same work on every side
    counts = result["ops_per_update"]
    assert counts["ours"]["total"] > counts["baseline"]["total"]  # ours does per-head work


def test_sanctum_load_stream_aggregates() -> None:
    aggregator = SanctumAggregator()
    for event in sanctum_load.event_stream(updates=3, per_update=5):
        aggregator.handle_event(event)
    assert aggregator.snapshot().tamiyo.ppo_updates_count == 3


def test_learning_trains_at_the_defaults() -> None:
    result = train("spirals", seed=0, episodes=8)
    assert len(result["returns"]) == 8


def test_learning_evaluates_the_rows_of_esper_eval(tmp_path: Path) -> None:
    """The trained agent and every baseline, in `esper eval`'s order, on short episodes."""
    trained = train("spirals", seed=0, episodes=2, episode_length=4, epochs_per_step=1)
    cache = tmp_path / "search.json"
    results, greedy = evaluate_agent(
        trained["agent"], trained["config"], episodes=2, seed=10_000, cache=cache, search_seeds=2
    )
    names = [r.policy for r in results]
    assert names[:4] == ["tamiyo-greedy", "tamiyo-sampled", "wait", "random"]
    assert "grow-norm-early" in names and "grow-norm-late" in names
    assert names[-3:] == ["schedule-best", "rule-stall", "tamiyo-blind"]
    assert all(r.episodes == 2 and math.isfinite(r.mean_return) for r in results)
    assert [ep["return"] for ep in greedy] == results[0].returns
    assert cache.is_file()  # the search is kept for the next seed
    check = verdict(results, closed_loop=False)
    assert check["best_heuristic"].startswith("grow-") and "passed" in check


def test_learning_verdict_on_the_family_is_the_closed_loop_mark() -> None:
    """Greedy must beat schedule-best and its blind replay by 3 paired standard errors
    each: hand-made rows, one that clears both marks and one that clears only one."""
    from esper.rl.evaluate import summarize

    def row(name: str, returns: list[float]) -> Any:
        return summarize(name, [{"return": r} for r in returns])

    greedy = [1.0, 1.2, 1.1, 1.3]
    best = [0.5, 0.6, 0.6, 0.7]  # differences 0.5 0.6 0.5 0.6: t = 0.55 / 0.029 = 19
    rows = [row("tamiyo-greedy", greedy), row("schedule-best", best)]
    passing = verdict([*rows, row("tamiyo-blind", best)], closed_loop=True)
    assert passing["passed"] and passing["vs_schedule_best"]["mean"] == pytest.approx(0.55)
    assert passing["vs_schedule_best"]["t"] == pytest.approx(0.55 / (0.1 / 2 / math.sqrt(3)))
    failing = verdict([*rows, row("tamiyo-blind", greedy)], closed_loop=True)
    assert not failing["passed"] and failing["vs_blind"]["t"] is None  # equal on every seed


def test_learning_per_kind_says_what_greedy_grew_in_each_case() -> None:
    episodes = [
        {"kind": "moons", "seeds_grown": 0, "seeds_killed": 0, "return": 0.9},
        {"kind": "spirals3", "seeds_grown": 2, "seeds_killed": 0, "return": 0.8},
        {"kind": "spirals3", "seeds_grown": 1, "seeds_killed": 1, "return": 0.6},
    ]
    kinds = per_kind(episodes)
    assert list(kinds) == ["moons", "spirals3"]
    assert kinds["spirals3"] == {
        "episodes": 2, "seeds_grown": 1.5, "seeds_killed": 0.5, "mean_return": 0.7,
    }  # fmt: skip


def test_learning_greedy_plays_say_what_greedy_did_in_each_case() -> None:
    """A hand-written closed-loop agent (GROW NORM into slot 1 at the first step on a
    plane task of three classes or more, WAIT otherwise), one seed of each case."""

    class ReadsTheTaskBlock:
        def act(self, obs: Any, legal: Any, greedy: bool) -> tuple[Any, None, None]:
            obs = np.asarray(obs)
            actions = np.zeros((obs.shape[0], 8), dtype=np.int64)
            spiral = (obs[:, 1] > 0.4) & (obs[:, 2] < 0.2) & (obs[:, 0] == 0.0)
            actions[spiral, :6] = [Op.GROW, 1, Blueprint.NORM, BlendStyle.GATED, 0, 0]
            return actions, None, None

    trained = train("family", seed=0, episodes=1, episode_length=2, epochs_per_step=1)
    plays = greedy_plays(ReadsTheTaskBlock(), trained["config"], range(10_000, 10_006))
    assert sorted(plays) == sorted(kind.name for kind in FAMILY)
    for kind, steps in plays.items():
        if kind.startswith("spirals"):
            assert steps == ["t0 GROW slot=1 NORM GATED FAST HALF"], kind
        else:
            assert steps == ["WAIT"], kind


def test_family_pairs_each_cases_best_with_the_single_best_on_unseen_seeds() -> None:
    """A tiny search (3 training seeds) and 3 evaluation seeds: every evaluation episode is
    played by WAIT, the single best and its kind's best, and the overall gap is their
    paired difference."""
    import io

    from rich.console import Console

    short = {"episode_length": 3, "epochs_per_step": 1}
    result = family.run(range(3), range(50_000, 50_003), Console(file=io.StringIO()), short)
    returns = result["returns"]
    assert returns["seeds"] == [50_000, 50_001, 50_002]
    gap = result["overall"]["per_kind_minus_single"]
    diff = np.subtract(returns["per_kind"], returns["single"])
    assert gap["n"] == 3 and gap["mean"] == pytest.approx(diff.mean())
    assert sum(row["episodes"] for row in result["kinds"].values()) == 3
    assert set(result["kinds"]) == set(returns["kind"])
    assert result["search"]["episodes"] > 10  # the search played candidates


def test_versus_sb3_updates_run_every_epoch_on_both_sides() -> None:
    """MaskablePPO's `train()` takes our rollout, masks and log-probs, and both sides run
    every epoch (no KL stop): otherwise the update ratio compares different work."""
    pytest.importorskip("sb3_contrib", reason="versus_sb3 needs the sb3 extra")
    # one real UPDATE_STEPS-step rollout, not tiled: the smallest the comparison takes
    setup = versus_sb3.Setup("spirals", 2, versus_sb3.UPDATE_STEPS, epochs=2, minibatches=2)
    result = versus_sb3.measure_update(setup, rounds=1, repeats=1)
    assert result["epochs_run"] == {"ours": 2, "sb3": 2}
    assert (result["samples_per_update"], result["minibatch_size"]) == (64, 32)
    assert positive_finite(result["ratio"].median)


def test_versus_sb3_masks_are_the_envs_flat_masks() -> None:
    """MaskablePPO gets, per stored step, the flat mask the env's `action_masks()` gives,
    read back from the legal values our buffer stores."""
    import torch

    from esper.morpho.environment import MorphogeneticEnv

    envs = [MorphogeneticEnv(task="spirals", episode_length=4, epochs_per_step=1) for _ in range(2)]
    grow = np.array([1, 1, 0, 0, 0, 0, 0, 0])  # GROW into slot 1: the masks change
    legal, expected = [], []
    for t in range(4):
        if t == 0:
            for seed, env in enumerate(envs):
                env.reset(seed=seed)
        legal.append([env.legal_actions() for env in envs])
        expected.append([env.action_masks() for env in envs])
        for i, env in enumerate(envs):
            env.step(grow if (t, i) == (0, 1) else np.zeros(8, dtype=np.int64))
    buffer = SimpleNamespace(legal=torch.tensor(np.array(legal)))
    flat = versus_sb3.sb3_masks(buffer)
    assert flat.shape == (4, 2, 29) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat, np.array(expected, dtype=np.float32))
    assert not np.array_equal(flat[1, 0], flat[1, 1])  # env 1 grew: its masks differ


def test_foreign_env_masks_change_with_the_state_and_bar_illegal_actions() -> None:
    """The foreign env's flat masks follow its state (energy, coordinates, step), and it
    raises on an illegal action, so a side that skipped its masks could not finish."""
    env = foreign_env.ForeignEnv()
    env.reset(seed=0)
    masks = []
    for _ in range(6):
        mask = env.action_masks()
        masks.append(mask)
        parts = np.split(mask, np.cumsum(foreign_env.HEAD_SIZES)[:-1])
        env.step(np.array([np.flatnonzero(part)[0] for part in parts]))
    assert len({m.tobytes() for m in masks}) > 1
    barred = int(np.flatnonzero(~env.action_masks()[10:13])[0])
    with pytest.raises(ValueError, match="illegal action"):
        env.step(np.array([0, int(np.argmax(env.action_masks()[5:10])), barred, 0]))


def test_foreign_env_updates_and_loops_match_on_both_sides() -> None:
    """Both sides run every epoch on the same 2048-sample-shaped rollout (smaller here),
    and their loops take the same env steps (`measure_loop` raises otherwise)."""
    pytest.importorskip("sb3_contrib", reason="foreign_env needs the sb3 extra")
    setup = foreign_env.Setup(2, foreign_env.EPISODE_LENGTH, minibatch_size=32, epochs=2)
    update = foreign_env.measure_update(setup, rounds=1, repeats=1)
    assert positive_finite(update["ratio"].median)
    loop = foreign_env.measure_loop(setup, batches=1, rounds=1)
    assert loop["steps_per_loop"] == 2 * foreign_env.EPISODE_LENGTH
    assert positive_finite(loop["ratio"].median)
    assert positive_finite(loop["framework_ratio"].median)


def test_versus_sb3_loops_take_the_same_env_steps() -> None:
    """Our Trainer (telemetry on) and `model.learn` each train one batch through the timed
    env wrapper; `measure_loop` itself raises if their step counts differ."""
    pytest.importorskip("sb3_contrib", reason="versus_sb3 needs the sb3 extra")
    setup = versus_sb3.Setup("spirals", n_envs=2, episode_length=8)
    result = versus_sb3.measure_loop(setup, batches=1, rounds=1)
    assert result["steps_per_loop"] == 16
    for side in ("ours", "sb3"):
        assert 0 < result[f"{side}_env_share"]["median"] <= 1  # env.step timed inside the loop
    assert positive_finite(result["ratio"].median)
    assert positive_finite(result["framework_ratio"].median)


@pytest.mark.parametrize("pair", ["ppo", "maskable"])
def test_sb3_overhead_times_plain_and_per_head_train(pair: str) -> None:
    """Each pair learns one HalfCheetah rollout, then both `train()` on it from a restored
    state, the per-head side recording into a run started outside `learn()`."""
    pytest.importorskip("mujoco", reason="sb3_overhead runs HalfCheetah-v5 (gymnasium[mujoco])")
    pytest.importorskip("sb3_contrib", reason="sb3_overhead needs the sb3 extra")
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    from esper.integrations.sb3 import PerHeadMaskablePPO, PerHeadPPO

    plain, per_head, learn = {
        "ppo": (PPO, PerHeadPPO, {}),
        "maskable": (MaskablePPO, PerHeadMaskablePPO, {"use_masking": False}),
    }[pair]
    sizes: dict[str, Any] = {"n_steps": 64, "batch_size": 32, "n_epochs": 1}
    result = sb3_overhead.measure(plain, per_head, sizes, rounds=1, repeats=1, **learn)
    assert {name: len(s) for name, s in result["samples"].items()} == {"plain": 1, "per_head": 1}
    assert positive_finite(result["ratio"].median)
    assert positive_finite(result["wall_ratio"].median)


def test_scaling_compares_worker_processes_with_in_process() -> None:
    """One training batch on each runner (in-process, 1 and 2 worker processes), and the
    table rows built from the speed-ups."""
    result = scaling.measure(rounds=1, with_ray=False)
    assert set(result["episodes_per_second"]) == {"inprocess", "processes_1", "processes_2"}
    for workers in (1, 2):
        assert positive_finite(result[f"processes_{workers}_speedup"].median)
    keys = {row.key for row in scaling._rows(result)}
    assert {"scaling_inprocess_eps", "scaling_processes_2w_speedup"} <= keys


def test_memory_samples_every_update_line() -> None:
    """The sampler follows the real `esper ppo --no-tui` console: one RSS sample per update
    line (`sample_run` raises if the child fails or prints fewer)."""
    pytest.importorskip("psutil", reason="memory samples RSS with psutil (the bench extra)")
    result = memory.sample_run(updates=3)
    rss = result["rss"]
    assert sorted(rss) == [0, 1, 2]
    assert all(value > 0 for value in rss.values())
    assert result["peak"] >= max(rss.values())


def test_cli_run_child_reaches_training_finished() -> None:
    """An `esper ppo` child with the first-step probe and `--threads` (the torch-default
    side): its first env step is seen and its run ends with TRAINING_FINISHED."""
    threads = cli_run.torch_default_threads()
    assert threads >= 1
    side = cli_run.CliSide(cli_run.EPISODES_QUICK, threads)
    assert positive_finite(side())  # training seconds, read from TRAINING_FINISHED
    assert len(side.startup) == 1
    assert positive_finite(side.startup[0])
