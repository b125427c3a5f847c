"""Reliability: injected NaNs, damaged logs, kill and resume, and what a run dir may not do."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from esper.cli.main import main, sanctum_main
from esper.telemetry.recorder import EVENTS_FILE, RunRecorder

BIN = Path(sys.executable).parent
SMALL = ["--task", "spirals", "--episode-length", "6", "--envs", "2", "--no-tui"]


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def svg_text(path: Path) -> str:
    """The text a person sees in a Rich/Textual SVG screenshot (tags stripped)."""
    return re.sub(r"<[^>]+>", "", path.read_text()).replace("&#160;", " ")


def update_indices(events: list[dict[str, Any]]) -> list[int]:
    kinds = ("PPO_UPDATE_COMPLETED", "PPO_UPDATE_SKIPPED")
    return [e["data"]["update_index"] for e in events if e["event_type"] in kinds]


def test_injected_nan_skips_the_update_latches_the_head_and_training_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    code = main(
        ["ppo", "--episodes", "6", *SMALL, "--run-dir", str(run_dir), "--fault", "slot=nan@1"]
    )
    assert code == 0
    events = events_of(run_dir)
    skipped = [e for e in events if e["event_type"] == "PPO_UPDATE_SKIPPED"]
    assert [e["batch"] for e in skipped] == [1]
    assert skipped[0]["data"]["nonfinite"]["slot"] > 0
    assert update_indices(events) == [0, 1, 2]
    assert events[-1]["event_type"] == "TRAINING_FINISHED"
    assert "skipped" in capsys.readouterr().out  # the console says so too
    shot = tmp_path / "shot.svg"
    assert sanctum_main([str(run_dir), "--screenshot", str(shot)]) == 0
    assert "NaN" in shot.read_text()


def test_consecutive_bad_updates_stop_with_training_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    (tmp_path / "cfg.toml").write_text("max_bad_updates = 2\n")
    argv = ["ppo", "--episodes", "10", *SMALL, "--run-dir", str(run_dir)]
    code = main([*argv, "--fault", "op=inf@0-9", "--config", str(tmp_path / "cfg.toml")])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 consecutive PPO updates had non-finite values" in err
    assert "Traceback" not in err
    events = events_of(run_dir)
    assert events[-1]["event_type"] == "TRAINING_FAILED"
    assert "non-finite" in events[-1]["data"]["error"]
    assert update_indices(events) == [0, 1]


def test_sanctum_shows_everything_readable_of_a_damaged_log(tmp_path: Path) -> None:
    source = tmp_path / "good"
    assert main(["ppo", "--episodes", "4", *SMALL, "--run-dir", str(source)]) == 0
    lines = (source / "events.jsonl").read_text().splitlines(keepends=True)
    wrong_schema = json.dumps({**json.loads(lines[1]), "data": {"bogus": 1}}) + "\n"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    torn = lines[-1][: len(lines[-1]) // 2]  # a line still being written
    (damaged / "events.jsonl").write_text(
        "".join([*lines[:3], "garbage {\n", wrong_schema, *lines[3:-1], "\x00\x01\n", torn])
    )
    shot = tmp_path / "shot.svg"
    assert sanctum_main([str(damaged), "--screenshot", str(shot)]) == 0
    svg = svg_text(shot)
    assert "lines skipped 4" in svg  # garbage, wrong schema, binary, torn tail
    final = [json.loads(x) for x in lines if "PPO_UPDATE_COMPLETED" in x][-1]["data"]
    assert f"{final['head_op_ratio_max']:.3f}" in svg


def test_sanctum_on_an_empty_log_shows_no_data(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("")
    shot = tmp_path / "shot.svg"
    assert sanctum_main([str(tmp_path), "--screenshot", str(shot)]) == 0
    assert "—" in shot.read_text()


def _wait_for_updates(run_dir: Path, count: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        path = run_dir / "events.jsonl"
        if path.exists() and path.read_text().count("PPO_UPDATE_COMPLETED") >= count:
            return
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    raise AssertionError("no PPO updates recorded in time")


def test_sigkill_then_resume_keeps_every_update_exactly_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = [str(BIN / "esper"), "ppo", "--episodes", "40", *SMALL, "--run-dir", str(run_dir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_updates(run_dir, 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = events_of(run_dir)  # every complete line parses (a torn tail is allowed)
    survived = update_indices(before)
    assert survived == list(range(len(survived))) and len(survived) >= 3
    resumed = subprocess.run(
        [str(BIN / "esper"), "ppo", "--resume", str(run_dir), "--no-tui"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    after = events_of(run_dir)
    assert after[: len(before)] == before  # nothing recorded was rewritten
    assert update_indices(after) == list(range(20))  # 40 episodes / 2 envs, each once
    starts = [e for e in after if e["event_type"] == "TRAINING_STARTED"]
    assert starts[1]["data"]["resumed_from_update"] is not None
    assert after[-1]["event_type"] == "TRAINING_FINISHED"
    assert after[-1]["data"]["episodes"] == 40
    seqs = [e["seq"] for e in after]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    run_info = json.loads((run_dir / "run.json").read_text())
    assert len(run_info["resumed_at"]) == 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["ppo", "--episodes", "2", *SMALL, "--run-dir", str(run_dir)]) == 0
    return run_dir


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_resume_rejects_changed_settings_and_finished_runs(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["ppo", "--resume", str(finished_run), "--clip", "0.3"], capsys)
    assert "--resume takes its settings from the checkpoint; drop --clip" in err
    err = _usage_error(["ppo", "--resume", str(finished_run), "--no-tui"], capsys)
    assert "already ran 2 of 2 episodes" in err
    err = _usage_error(["ppo", "--resume", str(finished_run.parent / "nope")], capsys)
    assert "no run directory at" in err


def test_a_run_killed_after_its_last_update_resumes_to_say_it_finished(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    log = run_dir / EVENTS_FILE
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    assert json.loads(lines[-1])["event_type"] == "TRAINING_FINISHED"
    log.write_text("".join(lines[:-1]), encoding="utf-8")  # killed before saying so
    assert main(["ppo", "--resume", str(run_dir), "--no-tui"]) == 0
    text = log.read_text(encoding="utf-8")
    after = [json.loads(line)["event_type"] for line in text.splitlines()]
    assert after[: len(lines) - 1] == [json.loads(line)["event_type"] for line in lines[:-1]]
    assert after[-1] == "TRAINING_FINISHED" and "EPISODE_COMPLETED" not in after[len(lines) - 1 :]
    capsys.readouterr()
    err = _usage_error(["ppo", "--resume", str(run_dir), "--no-tui"], capsys)
    assert "already ran 2 of 2 episodes" in err  # now it has finished


def test_resume_with_fewer_episodes_than_ran_says_episodes_is_the_total(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _usage_error(["ppo", "--resume", str(finished_run), "--episodes", "1"], capsys)
    assert (
        f"--episodes 1 is the run's total, not a number to add: {finished_run} already ran "
        "2 episodes, so pass --episodes N with N > 2 to train further"
    ) in err


@pytest.mark.parametrize("run_json", ["kept", "deleted"])
def test_resume_keeps_the_run_id_and_records_the_threads_it_applies(
    run_json: str, finished_run: Path, tmp_path: Path
) -> None:
    """One run, one id: the resumed events carry the log's id, not the folder's name, and
    run.json (kept, or rebuilt from the log) records the thread count applied."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("events.jsonl", "checkpoint.pt", "run.json"):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    first = events_of(copy)[0]
    assert first["event_type"] == "TRAINING_STARTED" and first["run_id"] != "copy"
    if run_json == "deleted":
        (copy / "run.json").unlink()
    tb = tmp_path / "tb"
    argv = ["ppo", "--resume", str(copy), "--episodes", "4", "--threads", "2", "--no-tui"]
    assert main([*argv, "--tensorboard", str(tb)]) == 0
    events = events_of(copy)
    assert {e["run_id"] for e in events} == {first["run_id"]}
    resumed = [e for e in events if e["event_type"] == "TRAINING_STARTED"][-1]
    assert resumed["data"]["config"]["threads"] == 2
    info = json.loads((copy / "run.json").read_text())
    assert info["config"]["threads"] == 2 and info["config"]["episodes"] == 4
    assert info["run_id"] == first["run_id"]
    original = json.loads((finished_run / "run.json").read_text())["started_at"]
    assert info["started_at"] == (original if run_json == "kept" else first["timestamp"])
    assert list((tb / "copy").iterdir())  # DIR/<run folder name>, as the README says


def test_resume_extends_a_finished_run_with_more_episodes(
    finished_run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("events.jsonl", "checkpoint.pt", "run.json"):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    assert main(["ppo", "--resume", str(copy), "--episodes", "4", "--no-tui"]) == 0
    assert update_indices(events_of(copy)) == [0, 1]


def test_checkpoint_with_pickled_code_is_refused(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    run_dir = tmp_path / "evil"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes((finished_run / "events.jsonl").read_bytes())
    marker = tmp_path / "pwned"
    torch.save({"payload": Exploit(str(marker))}, run_dir / "checkpoint.pt")
    err = _usage_error(["ppo", "--resume", str(run_dir), "--episodes", "9"], capsys)
    assert "cannot resume from" in err
    assert not marker.exists()  # nothing was unpickled


class Exploit:
    """Unpickling this would create a file; weights_only loading must refuse it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_symlinked_event_log_is_never_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside.txt"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").symlink_to(outside)  # dangling: exists() is False
    err = _usage_error(["ppo", *SMALL, "--run-dir", str(run_dir)], capsys)
    assert "already holds a recorded run" in err
    with pytest.raises(OSError):
        RunRecorder(run_dir, config={})
    assert not outside.exists()


@pytest.mark.slow
def test_soak_1000_updates_memory_and_descriptors_flat(tmp_path: Path) -> None:
    """1,000 PPO updates headless: RSS and open descriptors flat, log complete."""
    psutil = pytest.importorskip("psutil")
    run_dir = tmp_path / "soak"
    argv = [str(BIN / "esper"), "ppo", "--episodes", "2000", "--task", "spirals",
            "--episode-length", "4", "--epochs", "2", "--minibatches", "2", "--no-tui",
            "--run-dir", str(run_dir)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched = psutil.Process(proc.pid)
    samples: dict[int, tuple[int, int]] = {}
    while proc.poll() is None:
        path = run_dir / "events.jsonl"
        done = path.read_text().count("PPO_UPDATE_COMPLETED") if path.exists() else 0
        for mark in (50, 500, 950):
            if done >= mark and mark not in samples:
                try:
                    samples[mark] = (watched.memory_info().rss, watched.num_fds())
                except psutil.NoSuchProcess:
                    break
        time.sleep(0.5)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert update_indices(events_of(run_dir)) == list(range(1000))
    rss50, fds50 = samples[50]
    rss_end, fds_end = samples[950]
    print(f"soak RSS {rss50 / 2**20:.1f} -> {rss_end / 2**20:.1f} MiB, fds {fds50} -> {fds_end}")
    assert rss_end <= rss50 * 1.10
    assert fds_end == fds50
