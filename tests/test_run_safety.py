"""Reliability II: one writer per run directory, starts that leave nothing behind,
SIGTERM, runs that die before their first checkpoint, I/O failures, non-finite updates."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from esper.cli.main import main
from esper.telemetry.recorder import EVENTS_FILE, RunRecorder
from esper.telemetry.rundir import LOCK_FILE, RunDirBusy, RunLock

BIN = Path(sys.executable).parent
SMALL = [
    "--task",
    "spirals",
    "--envs",
    "2",
    "--episode-length",
    "4",
    "--epochs",
    "1",
    "--minibatches",
    "2",
    "--no-tui",
]


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]


def kinds(run_dir: Path) -> list[str]:
    return [e["event_type"] for e in events_of(run_dir)]


def update_indices(events: list[dict[str, Any]]) -> list[int]:
    wanted = ("PPO_UPDATE_COMPLETED", "PPO_UPDATE_SKIPPED")
    return [e["data"]["update_index"] for e in events if e["event_type"] in wanted]


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def esper(*args: str, cwd: Path, limit_bytes: int | None = None) -> subprocess.Popen[str]:
    """`esper ppo ARGS` as a child process, optionally under a file-size limit (ulimit -f)."""

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen(
        [str(BIN / "esper"), "ppo", *args], cwd=cwd, text=True, preexec_fn=limit,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip


# ------------------------------------------------------------------ 1. one writer per run


HOLDER = """
import sys, time
from pathlib import Path
from esper.telemetry.rundir import RunLock
lock = RunLock(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_writer_or_resumer_is_refused_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    before = (run_dir / EVENTS_FILE).read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        err = usage_error(["ppo", "--resume", str(run_dir), "--episodes", "4"], capsys)
        assert f"{run_dir} is in use by process {holder.pid} (one writer per run" in err
        # a plain start names the holder too, not only that the directory holds a run
        err = usage_error(["ppo", *SMALL, "--run-dir", str(run_dir)], capsys)
        assert f"{run_dir} is in use by process {holder.pid} (one writer per run" in err
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with RunLock(fresh):  # a fresh start into a directory someone is writing to
            err = usage_error(["ppo", *SMALL, "--run-dir", str(fresh)], capsys)
            assert f"is in use by process {os.getpid()}" in err
        # readers never need the lock
        assert main(["query", str(run_dir), "SELECT count(*) FROM ppo_updates", "--csv"]) == 0
    finally:
        holder.communicate("", timeout=30)
    assert (run_dir / EVENTS_FILE).read_bytes() == before
    assert main(["ppo", "--resume", str(run_dir), "--episodes", "4", "--no-tui"]) == 0


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    with pytest.raises(RunDirBusy, match=f"process {holder.pid}"):
        RunLock(tmp_path)
    holder.kill()
    holder.wait()
    with RunLock(tmp_path) as lock:  # no stale lock after a SIGKILL
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert lock.path == tmp_path / LOCK_FILE


@pytest.mark.slow  # two interpreters importing torch side by side (~10-25 s on 2 cores)
def test_two_concurrent_fresh_starts_record_one_run(tmp_path: Path) -> None:
    args = ["--episodes", "4", *SMALL, "--run-dir", "shared"]
    procs = [esper(*args, "--seed", str(seed), cwd=tmp_path) for seed in (0, 1)]
    outcomes = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for code, err in outcomes if code == 2)
    assert "is in use by process" in refused or "already holds a recorded run" in refused
    events = events_of(tmp_path / "shared")
    assert len({e["run_id"] for e in events}) == 1
    assert update_indices(events) == [0, 1]


# ---------------------------------------------------------- 5. refused starts leave nothing


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--clip", "1.5"], "clip must be a finite number in (0, 1), got 1.5"),
        (["--clip", "inf"], "clip must be a finite number in (0, 1), got inf"),
        (["--lr", "inf"], "lr must be a finite number in (0, 1], got inf"),
        (["--device", "mps"], "mps"),
        (["--device", "cpu:abc"], "device must be cpu, cuda, cuda:N or mps, got 'cpu:abc'"),
        (["--seed", "1" + "0" * 30], "seed must be a whole number in [0, 4294967295]"),
        (["--slots", "10000000"], "slots must be a whole number in [1, 64]"),
        (["--envs", "1000000000"], "envs must be a whole number in [1, 4096]"),
    ],
)
def test_a_refused_start_leaves_no_directory(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if args == ["--device", "mps"]:
        import torch

        if torch.backends.mps.is_available():
            pytest.skip("an MPS device is present")
    run_dir = tmp_path / "run"
    err = usage_error(["ppo", *SMALL, *args, "--run-dir", str(run_dir)], capsys)
    assert fragment in err
    assert list(tmp_path.iterdir()) == []


def test_bad_run_dirs_and_config_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "--run-dir must name a directory" in usage_error(["ppo", "--run-dir", ""], capsys)
    err = usage_error(["ppo", *SMALL, "--run-dir", "x" * 300], capsys)
    assert "is 300 bytes; file systems take at most 255" in err
    (tmp_path / "bool.toml").write_text("gamma = true\n")
    err = usage_error(["ppo", "--config", "bool.toml", "--run-dir", "r"], capsys)
    assert "gamma must be a finite number in [0, 1], got True" in err
    (tmp_path / "clip.toml").write_text("clip = 5\n")
    assert "got 5" in usage_error(["ppo", "--config", "clip.toml", "--run-dir", "r"], capsys)
    (tmp_path / "latin.toml").write_bytes(b'task = "\xe9"\n')
    err = usage_error(["ppo", "--config", "latin.toml", "--run-dir", "r"], capsys)
    assert "is not UTF-8 text" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bool.toml", "clip.toml", "latin.toml"]


@pytest.mark.parametrize(
    ("config", "updates", "who"),
    [
        ({"algorithm": "PerHeadPPO", "n_steps": 8}, 1, "PerHeadPPO"),
        ({"lr": 0.1}, 1, "a HeadRatioMonitor"),
        ({}, 0, "a HeadRatioMonitor"),  # no update yet: run.json's config is all there is
    ],
)
def test_resuming_a_run_recorded_by_sb3_or_a_monitor_says_so(
    config: dict[str, Any],
    updates: int,
    who: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import torch

    from esper.integrations.monitor import HeadRatioMonitor

    run_dir = tmp_path / "run"
    with HeadRatioMonitor(run_dir, {"a": 2, "b": 3}, config=config) as monitor:
        for _ in range(updates):
            zeros = torch.zeros(4, 2)
            monitor.observe(zeros, zeros)
            monitor.end_update()
    before = (run_dir / EVENTS_FILE).read_bytes()
    err = usage_error(["ppo", "--resume", str(run_dir), "--episodes", "4"], capsys)
    assert f"{run_dir} was recorded by {who}, not by `esper ppo`, and cannot be resumed" in err
    assert (run_dir / EVENTS_FILE).read_bytes() == before


def test_tensorboard_paths_are_checked_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard.summary")
    monkeypatch.chdir(tmp_path)
    run = ["ppo", *SMALL, "--run-dir", "A", "--tensorboard"]
    err = usage_error([*run, ""], capsys)
    assert "argument --tensorboard: must name a directory, got an empty string" in err
    Path("file").write_text("")
    err = usage_error([*run, "file"], capsys)
    assert "--tensorboard: file exists and is not a directory" in err
    Path("tb").mkdir()
    Path("tb/A").write_text("")  # where this run's scalars would go
    err = usage_error([*run, "tb"], capsys)
    assert "--tensorboard: tb/A exists and is not a directory" in err
    err = usage_error([*run, "file/sub"], capsys)  # the run dir exists by then: undone
    assert "cannot write TensorBoard scalars into file/sub/A: Not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "tb"]


def test_resuming_a_checkpoint_that_does_not_fit_its_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**state, "config": {**state["config"], "slots": 4}}, run_dir / "checkpoint.pt")
    err = usage_error(["ppo", "--resume", str(run_dir), "--episodes", "4"], capsys)
    assert "cannot start" in err and "checkpoint is for obs_dim" in err
    torch.save({**state, "config": {**state["config"], "clip": 7}}, run_dir / "checkpoint.pt")
    err = usage_error(["ppo", "--resume", str(run_dir), "--episodes", "4"], capsys)
    assert "its configuration is refused" in err and "clip" in err
    torch.save({"agent": {}}, run_dir / "checkpoint.pt")
    err = usage_error(["ppo", "--resume", str(run_dir), "--episodes", "4"], capsys)
    assert "not an esper checkpoint" in err


def test_a_checkpoint_from_before_nesting_still_resumes(tmp_path: Path) -> None:
    """run.json/checkpoint configs written with flat PPO keys (clip, lr) read back."""
    import torch

    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    nested = dict(state["config"])
    ppo = nested.pop("ppo")
    flat = {**nested, "clip": ppo["clip_eps"]}
    flat |= {k: v for k, v in ppo.items() if k not in ("clip_eps", "normalize_advantage")}
    torch.save({**state, "config": flat}, run_dir / "checkpoint.pt")
    assert main(["ppo", "--resume", str(run_dir), "--episodes", "4", "--no-tui"]) == 0
    assert update_indices(events_of(run_dir)) == [0, 1]


# -------------------------------------------------------------------------- 6. SIGTERM


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_ends_the_run_like_ctrl_c_with_exit_143(tmp_path: Path) -> None:
    proc = esper("--episodes", "400", *SMALL, "--run-dir", "run", cwd=tmp_path)
    events = tmp_path / "run" / EVENTS_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if events.exists() and events.read_text().count("PPO_UPDATE_COMPLETED") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = events_of(tmp_path / "run")[-1]
    assert last["event_type"] == "TRAINING_FINISHED" and last["data"]["interrupted"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


# ----------------------------------------- 2 + 7. death before the first checkpoint, I/O


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_file_size_limit_at_the_first_checkpoint_then_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ulimit -f below the checkpoint's size: one line, nothing durable, then resumable."""
    proc = esper("--episodes", "4", *SMALL, "--run-dir", "run", cwd=tmp_path, limit_bytes=100_000)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "cannot write checkpoint" in err and "File too large" in err
    assert "no update is durable yet" in err
    assert "checkpoint kept" not in err
    run_dir = tmp_path / "run"
    assert not (run_dir / "checkpoint.pt").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".checkpoint-")]
    assert kinds(run_dir)[-1] == "TRAINING_FAILED"
    err = usage_error(["ppo", "--episodes", "4", *SMALL, "--run-dir", str(run_dir)], capsys)
    assert f"--resume {run_dir}" in err
    assert main(["ppo", "--resume", str(run_dir), "--no-tui"]) == 0
    events = events_of(run_dir)
    assert update_indices(events) == [0, 1]
    restart = [e for e in events if e["event_type"] == "TRAINING_STARTED"][-1]
    assert restart["data"]["resumed_from_batch"] == 0


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_event_log_write_failure_is_one_line_naming_the_last_durable_update(
    tmp_path: Path,
) -> None:
    (tmp_path / "tiny.toml").write_text("[ppo]\nhidden = 8\nepochs = 1\nminibatches = 1\n")
    args = ("--episodes", "400", *SMALL, "--config", "tiny.toml", "--run-dir", "run")
    proc = esper(*args, cwd=tmp_path, limit_bytes=60_000)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    line = next(line for line in err.splitlines() if "training failed" in line)
    assert f"cannot write run{os.sep}{EVENTS_FILE}: File too large; last durable update: " in line
    durable = int(line.rsplit(": ", 1)[1])
    logged = update_indices(
        [json.loads(x) for x in (tmp_path / "run" / EVENTS_FILE).read_text().splitlines()[:-1]]
    )
    assert logged and durable >= max(logged)


def test_recorder_failure_is_reported_not_raised(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, config={})
    recorder._file.close()  # every later write fails, as on a vanished disk
    recorder._file = open(os.devnull, "rb")  # noqa: SIM115 (writing to it raises OSError)
    from esper.telemetry.contracts import EventType, TelemetryDrops, TelemetryEvent

    event = TelemetryEvent(
        EventType.TELEMETRY_DROPS, 0.0, "r", 0, None, None, "warning", "m",
        TelemetryDrops(backend="x", dropped=1, failed=0, last_error=None),
    )  # fmt: skip
    recorder.handle(event)
    assert recorder.failure() is not None and "cannot write" in recorder.failure()


# ------------------------------------------------------------- 4. non-finite updates


def test_an_update_that_makes_weights_non_finite_is_reverted_and_counted_as_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `--lr inf` did: one good-looking step that leaves inf weights. It is undone,
    logged as skipped, and after max_bad_updates of them the run stops with one line."""
    import torch

    from esper.rl.ppo import PPOAgent

    original = PPOAgent.update
    poisoned: list[int] = []

    def update(self: PPOAgent, buffer: Any) -> dict[str, float]:
        metrics = original(self, buffer)
        if len(poisoned) < 2:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("inf"))
            poisoned.append(1)
        return metrics

    monkeypatch.setattr(PPOAgent, "update", update)
    run_dir = tmp_path / "run"
    (tmp_path / "cfg.toml").write_text("max_bad_updates = 3\n")
    argv = ["ppo", "--episodes", "6", *SMALL, "--run-dir", str(run_dir)]
    assert main([*argv, "--config", str(tmp_path / "cfg.toml")]) == 0
    events = events_of(run_dir)
    skipped = [e for e in events if e["event_type"] == "PPO_UPDATE_SKIPPED"]
    assert [e["batch"] for e in skipped] == [0, 1]
    assert "non-finite; reverted" in skipped[0]["data"]["reason"]
    assert update_indices(events) == [0, 1, 2]
    assert events[-1]["event_type"] == "TRAINING_FINISHED"  # batch 2 trained on finite weights

    poisoned.clear()
    monkeypatch.setattr(PPOAgent, "update", lambda self, b: (poisoned.clear(), update(self, b))[1])
    (tmp_path / "cfg.toml").write_text("max_bad_updates = 2\n")
    argv = ["ppo", "--episodes", "20", *SMALL, "--run-dir", str(tmp_path / "bad")]
    assert main([*argv, "--config", str(tmp_path / "cfg.toml")]) == 1
    err = capsys.readouterr().err
    assert "2 consecutive PPO updates had non-finite values" in err and "Traceback" not in err


# --------------------------------------------------------------- 10. the minor ones


@pytest.mark.slow  # a new fork server imports torch and scikit-learn again (~15 s)
def test_a_killed_fork_server_costs_a_worker_restart_not_a_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from multiprocessing import forkserver

    from esper.cli.envs import env_spec
    from esper.rl.config import PPOConfig, TrainConfig
    from esper.rl.trainer import Trainer
    from esper.telemetry.contracts import EventType, TelemetryEvent
    from esper.telemetry.emitter import TelemetryEmitter

    class Sink(list[TelemetryEvent]):
        def publish(self, event: TelemetryEvent) -> None:
            self.append(event)

    config = TrainConfig(
        task="spirals", episodes=4, envs=2, episode_length=4, backend="processes", workers=2,
        ppo=PPOConfig(epochs=1, minibatches=1, hidden=16),
    )  # fmt: skip
    events = Sink()
    trainer = Trainer(config, TelemetryEmitter(events, run_id="t"), tmp_path, env_spec(config))
    original = trainer._on_step

    def on_step(env_index: int, t: int, info: dict[str, Any]) -> None:
        original(env_index, t, info)
        if trainer.batch == 0 and (env_index, t) == (0, 1):
            server = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
            os.kill(server, signal.SIGKILL)
            os.kill(trainer.runner.pids()[0], signal.SIGKILL)  # type: ignore[union-attr]

    trainer._on_step = on_step  # type: ignore[method-assign]
    result = trainer.run()
    assert (result.episodes, result.interrupted) == (4, False)
    # a dead fork server reads as every worker lost (their exit pipes close): all restart
    restarted = [e.payload.worker for e in events if e.event_type is EventType.WORKER_RESTARTED]
    assert 0 in restarted
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_raw_pickle_checkpoint_is_refused_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import pickle

    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    (run_dir / "checkpoint.pt").write_bytes(pickle.dumps({"agent": 1}, protocol=4))
    capfd.readouterr()
    with pytest.raises(SystemExit):
        main(["ppo", "--resume", str(run_dir), "--episodes", "4"])
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "refused, not unpickled" in err, err


def test_query_takes_its_flags_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from esper.cli.main import main as esper_main

    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    assert esper_main(["query", str(run_dir), "--json", "SELECT count(*) AS n FROM episodes"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 2}]


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_missing_or_damaged_run_json_is_said_on_resume(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    if damage == "missing":
        (run_dir / "run.json").unlink()
    else:
        (run_dir / "run.json").write_text('{"run_id": ')
    capsys.readouterr()
    assert main(["ppo", "--resume", str(run_dir), "--episodes", "4", "--no-tui"]) == 0
    err = capsys.readouterr().err
    said = {"missing": "was missing", "corrupt": "was damaged"}[damage]
    assert f"esper ppo: note: {run_dir / 'run.json'} {said}" in err
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["episodes"] == 4 and len(info["resumed_at"]) == 1
    assert (run_dir / "run.json.damaged").exists() == (damage == "corrupt")


def test_disk_full_during_a_checkpoint_is_one_line_not_torchs_archive_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC inside torch.save surfaces as 'unexpected pos ...'; the cause must be named."""
    import errno
    import io

    import esper.rl.checkpoint

    real_fdopen = os.fdopen
    writes = {"checkpoints": 0}

    class Full(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.file = real_fdopen(fd, "wb")
            self.written = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.written += len(data)
            if writes["checkpoints"] >= 1 and self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def fileno(self) -> int:
            return self.file.fileno()

        def close(self) -> None:
            writes["checkpoints"] += 1
            self.file.close()
            super().close()

    monkeypatch.setattr(esper.rl.checkpoint.os, "fdopen", lambda fd, mode: Full(fd))
    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "6", *SMALL, "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected pos" not in err, err
    assert "No space left on device; last durable update: 0" in err
    assert update_indices(events_of(run_dir)) == [0]


def test_an_explosion_report_cut_off_by_a_kill_is_emitted_on_resume_once(
    tmp_path: Path,
) -> None:
    """Killed between an update's event and its explosion report: the update is in the
    log, so only the report is owed; the resume emits it, and a second resume does not."""
    import torch

    run_dir = tmp_path / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    explosion = {
        "joint_ratio_max": 3.5,
        "worst_log_ratios": {"op": 0.9, "slot": 0.35},
        "shares": {"op": 0.72, "slot": 0.28},
        "driver": "op",
        "hidden_by_heads": True,
    }
    report = {"event_type": "RATIO_EXPLOSION", "data": {"update_index": 0, **explosion}}
    pending = {"update_index": 0, "batch": 0, "events": [report]}
    torch.save({**state, "pending": pending}, run_dir / "checkpoint.pt")
    assert main(["ppo", "--resume", str(run_dir), "--episodes", "4", "--no-tui"]) == 0
    assert main(["ppo", "--resume", str(run_dir), "--episodes", "6", "--no-tui"]) == 0
    events = events_of(run_dir)
    reports = [e for e in events if e["event_type"] == "RATIO_EXPLOSION"]
    assert [(e["data"]["update_index"], e["data"]["driver"]) for e in reports] == [(0, "op")]
    assert update_indices(events) == [0, 1, 2]
