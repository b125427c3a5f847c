"""The examples run end to end (at their --tiny size) and leave a run directory esper reads."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from esper.telemetry.contracts import EventType
from esper.telemetry.recorder import read_events

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHEETAH_JOINTS = ["bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["sb3_multidiscrete", "cleanrl_style_ppo"])
def test_example_records_a_run_with_the_joints_as_heads(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    if name == "sb3_multidiscrete":
        pytest.importorskip("stable_baselines3")
    run = tmp_path / "run"
    assert load(name).main(["--tiny", "--run-dir", str(run)]) == 0
    assert f"sanctum {run}" in capsys.readouterr().out
    events = list(read_events(run / "events.jsonl"))
    assert events[0].event_type is EventType.TRAINING_STARTED
    assert events[0].payload.head_names == CHEETAH_JOINTS
    assert events[0].payload.head_sizes == dict.fromkeys(CHEETAH_JOINTS, 11)
    updates = [e.payload for e in events if e.event_type is EventType.PPO_UPDATE_COMPLETED]
    assert len(updates) == 2
    for update in updates:
        assert list(update.heads) == CHEETAH_JOINTS
        assert all(h.relevant > 0 and h.ratio_max >= 1.0 for h in update.heads.values())
        assert 0.0 < update.stats.entropy <= 1.0
    assert events[-1].event_type is EventType.TRAINING_FINISHED


def test_ddp_example_on_two_gloo_ranks_records_one_run_of_both_ranks(tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks: rank 0 alone writes, and what it writes covers both ranks."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(EXAMPLES / "ddp_factored_ppo.py"),
               "--tiny", "--run-dir", str(run)]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sanctum {run}" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # one run directory, no runs/
    events = list(read_events(run / "events.jsonl"))
    kinds = [e.event_type for e in events]
    assert kinds[0] is EventType.TRAINING_STARTED and kinds[-1] is EventType.TRAINING_FINISHED
    assert events[0].payload.config["ranks"] == 2 and events[0].payload.n_envs == 4
    updates = [e.payload for e in events if e.event_type is EventType.PPO_UPDATE_COMPLETED]
    assert [u.update_index for u in updates] == [0, 1]
    samples = 2 * 2 * 16 * 2  # ranks x envs x steps x epochs: every rank's samples counted
    for update in updates:
        assert update.heads["kind"].relevant == samples
        assert 0 < update.heads["cell"].relevant < samples  # not after a WAIT
        assert update.stats.minibatches_run == 2 * 2  # per rank: epochs x minibatches
    envs = {e.payload.env_index for e in events if e.event_type is EventType.EPISODE_COMPLETED}
    assert envs == {0, 1, 2, 3}  # rank 1's envs are 2 and 3
    assert events[-1].payload.episodes == 2 * 2 * 2  # ranks x envs x one episode an update
