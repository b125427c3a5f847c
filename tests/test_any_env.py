"""esper's own PPO on environments other than its own: gymnasium ids, users' factories,
masks of either kind, through the algorithm in process and the real CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import toy_envs

from esper.common.spaces import FactoredActions
from esper.integrations.gym import EnvIdError, FactoredGymEnv, make_factored_env, make_gym_env
from esper.rl.config import PPOConfig
from esper.rl.ppo import PPOAgent
from esper.rl.rollout import ContinuingRollout
from esper.rl.runners import EPISODE_START

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent  # where `toy_envs` is imported from


def _agent(env: FactoredGymEnv, **ppo: object) -> PPOAgent:
    config = PPOConfig(target_kl=None, hidden=16, **ppo)  # type: ignore[arg-type]
    return PPOAgent(env.obs_dim, env.factored_actions, config, seed=0)


def test_a_selector_conditioned_env_is_never_handed_an_illegal_action() -> None:
    envs = [FactoredGymEnv(toy_envs.PickAndDrop()) for _ in range(3)]
    agent = _agent(envs[0])
    rollout = ContinuingRollout(agent, envs, n_steps=40, seeds=[1, 2, 3])
    ended = 0
    for _ in range(3):  # the env raises IllegalAction on any illegal step
        buffer, episodes = rollout.collect()
        agent.update(buffer)
        ended += len(episodes)
    assert ended == 3 * (3 * 40 // toy_envs.PickAndDrop.LENGTH)  # 7 whole episodes per env


def test_per_head_relevance_counts_equal_the_declaration() -> None:
    envs = [FactoredGymEnv(toy_envs.PickAndDrop()) for _ in range(2)]
    agent = _agent(envs[0], epochs=3, minibatches=2)
    buffer, _ = ContinuingRollout(agent, envs, n_steps=24, seeds=[5, 6]).collect()
    actions = buffer.actions.flatten(0, 1).numpy()
    stats = agent.update(buffer)
    kinds = actions[:, 0]
    n = actions.shape[0]
    assert stats.heads["kind"].relevant == 3 * n
    assert stats.heads["cell"].relevant == 3 * int((kinds != toy_envs.NOOP).sum())
    assert 0 < (kinds != toy_envs.NOOP).sum() < n  # both cases occurred


def test_continuing_episodes_reset_themselves_with_fresh_seeds() -> None:
    env = FactoredGymEnv(toy_envs.PickAndDrop())
    agent = _agent(env)
    rollout = ContinuingRollout(agent, [env], n_steps=50, seeds=[9])
    buffer, ended = rollout.collect()
    assert [summary["length"] for _, summary in ended] == [16, 16, 16]
    # the step after each episode's last opens the next one
    starts = buffer.episode_starts[:, 0].numpy()
    assert np.flatnonzero(starts).tolist() == [0, 16, 32, 48]
    _, more = rollout.collect()  # the fourth episode goes on across the batch boundary
    assert more[0][1]["length"] == 16


def test_a_restart_point_puts_a_fresh_env_where_the_run_was() -> None:
    """A fresh env restarted at a reported point, given the same actions, goes on with the
    same observations, rewards and summaries, and the later episodes' points (seeds) too."""
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(300, 1))

    def run(env: FactoredGymEnv, acts: np.ndarray) -> list[tuple[object, ...]]:
        out = []
        for a in acts:
            obs, reward, terminated, truncated, info = env.step(a)
            out.append((obs.tolist(), float(reward), terminated, truncated, info))
        return out

    env = make_factored_env("CartPole-v1")
    first, _ = env.reset(seed=4)
    steps = run(env, actions)
    starts = [(t, info[EPISODE_START]) for t, (*_, info) in enumerate(steps) if "episode" in info]
    assert [p["episode"] for _, p in starts] == list(range(1, len(starts) + 1))
    assert len(starts) >= 5 and all(p["seed"] == 4 for _, p in starts)
    for t, point in [(-1, {"seed": 4, "episode": 0}), *starts[2:4]]:
        again = make_factored_env("CartPole-v1")
        obs, _ = again.restart(point)
        assert obs.tolist() == (first.tolist() if t < 0 else steps[t][0])
        assert run(again, actions[t + 1 :]) == steps[t + 1 :]


def test_an_sb3_flat_mask_is_honoured() -> None:
    envs = [FactoredGymEnv(toy_envs.MaskedCorridor()) for _ in range(4)]
    assert envs[0].factored_actions.names == ("move", "speed")
    agent = _agent(envs[0])
    rollout = ContinuingRollout(agent, envs, n_steps=64, seeds=[0, 1, 2, 3])
    for _ in range(2):
        buffer, _ = rollout.collect()
        agent.update(buffer)


def test_env_ids_resolve_to_their_heads_or_say_why_not() -> None:
    cartpole = make_factored_env("CartPole-v1")
    assert cartpole.factored_actions == FactoredActions(names=("action",), sizes=(2,))
    reacher = make_factored_env("Reacher-v5", bins=7)
    assert reacher.factored_actions.sizes == (7, 7)  # one head per joint
    user = make_factored_env("toy_envs:pick_and_drop")
    assert user.factored_actions.selector == "kind"
    with pytest.raises(EnvIdError, match="give --bins K"):
        make_gym_env("Reacher-v5")
    with pytest.raises(EnvIdError, match="--bins applies to a Box"):
        make_gym_env("CartPole-v1", bins=3)
    with pytest.raises(EnvIdError, match="doesn't exist"):
        make_gym_env("NoSuchEnv-v0")
    with pytest.raises(EnvIdError, match="cannot import"):
        make_gym_env("no_such_module_xyz:make")
    with pytest.raises(EnvIdError, match="not callable"):
        make_gym_env("toy_envs:CELLS")


# -------------------------------------------------------------------- the real CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
        env=env,
    )


def _events(run_dir: Path, kind: str) -> list[dict[str, object]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event_type"] == kind]


def test_cartpole_through_the_cli_records_one_head_and_every_reader_shows_it(
    tmp_path: Path,
) -> None:
    run = tmp_path / "cartpole"
    proc = _cli("esper", "ppo", "--no-tui", "--env-id", "CartPole-v1", "--episodes", "16",
                "--run-dir", str(run), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    started = _events(run, "TRAINING_STARTED")[0]["data"]
    assert started["head_names"] == ["action"] and started["head_sizes"] == {"action": 2}
    assert started["task"] == "CartPole-v1"
    update = _events(run, "PPO_UPDATE_COMPLETED")[0]["data"]
    assert update["head_action_relevant"] > 0
    assert not [k for k in update if k.startswith("head_") and not k.startswith("head_action_")]
    assert len(_events(run, "EPISODE_COMPLETED")) >= 16
    schema = _cli("esper", "query", str(run), "--schema", cwd=tmp_path)
    assert schema.returncode == 0, schema.stderr
    heads = {c.split("_")[1] for c in schema.stdout.split() if c.startswith("head_")}
    assert heads == {"action"}
    shot = tmp_path / "cartpole.svg"
    proc = _cli("sanctum", str(run), "--screenshot", str(shot), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    svg = shot.read_text(encoding="utf-8")
    assert "action" in svg and "blueprint" not in svg
    evaluated = _cli("esper", "eval", str(run), "--episodes", "3", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    rows = json.loads((run / "eval.json").read_text(encoding="utf-8"))["policies"]
    assert [r["policy"] for r in rows] == ["agent-greedy", "agent-sampled", "random", "agent-blind"]
    assert all(len(r["returns"]) == 3 and r["host_accuracy"] is None for r in rows)


def test_a_mujoco_box_env_with_bins_records_one_head_per_joint(tmp_path: Path) -> None:
    run = tmp_path / "reacher"
    proc = _cli("esper", "ppo", "--no-tui", "--env-id", "Reacher-v5", "--bins", "7",
                "--episodes", "4", "--envs", "2", "--rollout-steps", "64",
                "--run-dir", str(run), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    started = _events(run, "TRAINING_STARTED")[0]["data"]
    assert started["head_sizes"] == {"a0": 7, "a1": 7}


def test_a_users_factory_with_state_dependent_masks_trains_legally(tmp_path: Path) -> None:
    cases = (("pick_and_drop", ["kind", "cell"]), ("masked_corridor", ["move", "speed"]))
    for factory, heads in cases:
        run = tmp_path / factory
        proc = _cli("esper", "ppo", "--no-tui", "--env-id", f"toy_envs:{factory}",
                    "--episodes", "40", "--envs", "4", "--rollout-steps", "32",
                    "--run-dir", str(run), cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr  # an illegal action raises in the env
        assert _events(run, "TRAINING_STARTED")[0]["data"]["head_names"] == heads
        assert len(_events(run, "PPO_UPDATE_COMPLETED")) >= 2


def test_a_bad_env_id_is_one_line_and_exit_2_and_leaves_no_run(tmp_path: Path) -> None:
    for args, fragment in (
        (["--env-id", "NoSuchEnv-v0"], "doesn't exist"),
        (["--env-id", "Reacher-v5"], "give --bins K"),
        (["--bins", "7"], "bins"),
    ):
        proc = _cli("esper", "ppo", "--no-tui", *args, "--run-dir", str(tmp_path / "r"),
                    cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "r").exists()
