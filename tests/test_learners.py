"""`esper ppo --learners N`, end to end through the command line, on CPU gloo ranks.

Each test runs the real CLI in a subprocess: it spawns its ranks as torchrun would, and
with `ESPER_LEARNER_DUMP` every rank also dumps its own per-update statistics and final
parameters, so the recorded statistics can be checked against the reduction of what
each rank saw, and the replicas against each other.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import torch.distributed as dist

from esper.common.spaces import FactoredActions
from esper.rl.config import PPOConfig
from esper.rl.learners import DUMP_ENV, Learners
from esper.rl.ppo import PPOAgent, _Minibatches
from esper.rl.ratio_stats import HeadRatioStats
from esper.telemetry.contracts import EventType
from esper.telemetry.recorder import committed_events, read_events

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

#: Small and fast: 4 envs (2 per learner) x 5 decisions on the spirals host.
TINY = ["--no-tui", "--envs", "4", "--episode-length", "5", "--seed", "7"]


def esper(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """Run `esper ppo ARGS` to the end: the completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "esper.cli.main", "ppo", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


def events(run_dir: Path) -> list[Any]:
    """The committed events of a run (what a reader counts after any resume)."""
    return list(committed_events(read_events(run_dir / "events.jsonl")))


def updates(run_dir: Path) -> list[Any]:
    """The PPO update payloads: `update_index` and `stats` (an `UpdateStats`) each."""
    return [e.payload for e in events(run_dir) if e.event_type is EventType.PPO_UPDATE_COMPLETED]


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b))


@pytest.fixture(scope="module")
def two_learners(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """One 2-learner run whose KL early stop trips (tiny target_kl, large steps)."""
    tmp = tmp_path_factory.mktemp("learners")
    config = tmp / "ppo.toml"
    config.write_text("[ppo]\ntarget_kl = 0.002\nlr = 0.01\n", encoding="utf-8")
    run, dump = tmp / "run", tmp / "dump"
    done = esper(*TINY, "--learners", "2", "--episodes", "12", "--config", str(config),
                 "--run-dir", str(run), env={DUMP_ENV: str(dump)})  # fmt: skip
    return run, dump, done


def test_two_learners_record_every_update_once(two_learners: tuple[Path, Path, Any]) -> None:
    run, _, done = two_learners
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "with 2 learners" in done.stdout
    recorded = events(run)
    assert [u.update_index for u in updates(run)] == [0, 1, 2]  # 12 episodes, 4 per batch
    started = recorded[0].payload
    assert started.config["learners"] == 2 and started.n_envs == 4
    episodes = [e for e in recorded if e.event_type is EventType.EPISODE_COMPLETED]
    assert [e.episode for e in episodes] == list(range(12))
    # both ranks' episodes reach the log, under global env indices, tagged by rank
    assert [(e.payload.env_index, e.payload.worker) for e in episodes[:4]] == [
        (0, 0), (1, 0), (2, 1), (3, 1)
    ]  # fmt: skip
    lifecycle = {e.payload.worker for e in recorded if e.event_type is EventType.SEED_LIFECYCLE}
    assert lifecycle <= {0, 1}
    assert not (run.parent / "dump" / "run").exists()  # one run directory, rank 0's
    assert sorted(p.name for p in run.iterdir()) == [
        ".writer.lock", "checkpoint.pt", "events.jsonl", "run.json"
    ]  # fmt: skip


def test_recorded_statistics_are_the_reduction_of_what_each_rank_saw(
    two_learners: tuple[Path, Path, Any],
) -> None:
    run, dump, done = two_learners
    assert done.returncode == 0, done.stderr
    started = events(run)[0].payload
    heads, sizes = list(started.head_names), list(started.head_sizes.values())
    per_rank = [
        [json.loads(line) for line in (dump / f"rank{r}.jsonl").read_text().splitlines()]
        for r in range(2)
    ]
    recorded = updates(run)
    assert [len(rows) for rows in per_rank] == [len(recorded)] * 2
    for i, payload in enumerate(recorded):
        update = payload.stats
        parts = [
            HeadRatioStats.from_reading_tensor(heads, torch.tensor(rows[i], dtype=torch.float64))
            for rows in per_rank
        ]
        want = HeadRatioStats.combine(parts).to_reading(head_sizes=sizes)
        mine = [p.to_reading(head_sizes=sizes) for p in parts]
        for head in heads:
            got, expect = update.heads[head], want.heads[head]
            assert (got.relevant, got.nonfinite) == (expect.relevant, expect.nonfinite), head
            assert got.relevant == sum(m.heads[head].relevant for m in mine)  # counts add
            for field in ("ratio_max", "ratio_min", "clip_fraction", "entropy", "approx_kl"):
                assert close(getattr(got, field), getattr(expect, field)), (i, head, field)
            seen = [m.heads[head].ratio_max for m in mine if m.heads[head].relevant]
            assert not seen or close(got.ratio_max, max(seen))  # the max, not a mean
        assert close(update.joint_ratio_max, want.joint_ratio_max)
    # the early stop tripped (and every rank stopped at the same minibatch: see below)
    assert any(u.stats.early_stopped for u in recorded)


def test_parameters_stay_identical_on_every_rank(two_learners: tuple[Path, Path, Any]) -> None:
    _, dump, done = two_learners
    assert done.returncode == 0, done.stderr
    first, second = (torch.load(dump / f"rank{r}-policy.pt") for r in range(2))
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name  # bit for bit
    start = torch.load(dump / "rank0-policy.pt")  # and training moved them
    assert any(v.dtype.is_floating_point and v.abs().sum() > 0 for v in start.values())


def test_one_learner_is_the_run_as_before(tmp_path: Path) -> None:
    """`--learners 1` changes nothing a single learner records."""

    def numbers(run: Path) -> list[tuple[str, Any]]:
        skip = {EventType.TRAINING_STARTED, EventType.TRAINING_FINISHED, EventType.WORKER_STATUS}
        return [(e.event_type.value, e.payload.to_dict(), e.episode, e.batch)
                for e in events(run) if e.event_type not in skip]  # fmt: skip

    default = esper(*TINY, "--episodes", "8", "--run-dir", str(tmp_path / "a"))
    one = esper(*TINY, "--episodes", "8", "--learners", "1", "--run-dir", str(tmp_path / "b"))
    assert default.returncode == one.returncode == 0, default.stderr + one.stderr
    assert "learners" not in default.stdout
    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
    assert len(updates(tmp_path / "a")) == 2


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--learners", "0"], "learners must be a whole number in [1, 1024], got 0"),
        (["--learners", "3"], "envs (4) must be a multiple of learners (3)"),
        (["--learners", "2", "--episodes", "7"], "episodes (7) must be a multiple of learners"),
        (["--learners", "2", "--backend", "processes"], "cannot be combined with it"),
    ],
)
def test_bad_learner_counts_are_refused_in_one_line(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    done = esper(*TINY, *flags, "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def _rank_process(watcher: subprocess.Popen[str], rank: int, timeout: float = 60) -> Any:
    """The spawned rank `rank` of a running `esper ppo --learners N`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(watcher.pid).children():
            try:
                if child.environ().get("RANK") == str(rank):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} never started")


def _wait_for_updates(run: Path, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "events.jsonl").exists() and len(updates(run)) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{run} never recorded {count} updates")


@pytest.mark.parametrize("victim", [0, 1])  # the writer, and a rank that only trains
def test_killing_a_learner_ends_the_run_in_one_line_and_resume_continues_it(
    tmp_path: Path, victim: int
) -> None:
    run = tmp_path / "run"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "esper.cli.main", "ppo", *TINY, "--learners", "2",
         "--episodes", "4000", "--run-dir", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        rank = _rank_process(watcher, victim)
        _wait_for_updates(run, 2)
        os.kill(rank.pid, signal.SIGKILL)
        _, stderr = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"learner {victim} (pid {rank.pid}) was killed by SIGKILL" in lines[0]
    assert f"esper ppo --resume {run}" in lines[0]
    kept = [u.update_index for u in updates(run)]
    assert kept == list(range(len(kept))) and len(kept) >= 2
    failed = [e for e in events(run) if e.event_type is EventType.TRAINING_FAILED]
    assert len(failed) == (1 if victim else 0)  # the writer, if it survived, says why
    # The resumed run gets a smaller total, so the test stays short; it must continue
    # from the checkpoint, with 2 learners again, every update recorded once.
    total = 4 * (len(kept) + 3)
    again = esper("--resume", str(run), "--no-tui", "--episodes", str(total))
    assert again.returncode == 0, again.stderr
    assert "with 2 learners" in again.stdout
    indices = [u.update_index for u in updates(run)]
    assert indices == list(range(len(indices))) and len(indices) >= len(kept) + 1
    starts = [e.payload for e in events(run) if e.event_type is EventType.TRAINING_STARTED]
    assert starts[-1].resumed_from_update is not None
    assert sum(1 for e in events(run) if e.event_type is EventType.EPISODE_COMPLETED) == total


def test_resume_keeps_the_number_of_learners(two_learners: tuple[Path, Path, Any]) -> None:
    run, _, _ = two_learners
    before = (run / "events.jsonl").read_bytes()
    refused = esper("--resume", str(run), "--learners", "1", "--episodes", "16")
    assert refused.returncode == 2 and "drop --learners" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert (run / "events.jsonl").read_bytes() == before


def test_the_learners_benchmark_measures_both_sides_and_counts_collectives() -> None:
    """The benchmark still runs against the code (one round; not its timings)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import learners as bench

    result = bench.measure(rounds=1, warmup=0)
    assert result["collectives"] == {"all_reduce": 16, "all_gather": 1}
    assert all(len(v) == 1 and v[0] > 0 for v in result["samples"].values())
    rows = {row.key: row for row in bench._rows(result)}
    assert rows["learners_reduction_collectives"].value.median == 1


#: (rank 0's, rank 1's) joint KL sum over 10 samples each; the early stop trips above
#: 1.5 * target_kl per sample. Rank 0 alone would trip in both; the mean over both ranks
#: does not in the first, does in the second (where rank 1 alone would not).
KL_CASES = {"mean_below": (0.25, 0.0), "mean_above": (0.25, 0.1)}


def _decide(rank: int, tmp: str) -> None:
    """One rank: the minibatch decisions of `PPOAgent` on planted per-rank values."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                            world_size=2)  # fmt: skip
    config = PPOConfig(target_kl=0.01, joint_ratio_limit=2.0)
    agent = PPOAgent(4, FactoredActions(names=("a", "b"), sizes=(3, 2)), config,
                     learners=Learners(rank, 2))  # fmt: skip
    record = _Minibatches(1, torch.device("cpu"))
    active = torch.ones((), dtype=torch.bool)
    out: dict[str, Any] = {}
    for name, sums in KL_CASES.items():
        kl = torch.tensor(sums[rank])
        _, _, kl_trip, _ = agent._decide_together(
            10, torch.tensor(1.0), torch.zeros(10, 2), torch.zeros(10), kl, active, record
        )
        out[name] = bool(kl_trip)
    joint = torch.full((10,), math.log(3.0) if rank == 1 else 0.0)  # only rank 1 past 2.0
    _, _, _, limit_trip = agent._decide_together(
        10, torch.tensor(1.0), torch.zeros(10, 2), joint, torch.tensor(0.0), active, record
    )
    out["limit"] = bool(limit_trip)
    loss = torch.tensor(math.nan if rank == 1 else 1.0)  # only rank 1 is not finite
    _, finite, _, _ = agent._decide_together(
        10, loss, torch.zeros(10, 2), torch.zeros(10), torch.tensor(0.0), active, record
    )
    out["finite"] = bool(finite)
    dist.destroy_process_group()
    Path(tmp, f"decide{rank}.pkl").write_bytes(pickle.dumps(out))


def test_the_ranks_decide_each_minibatch_on_the_reduced_values(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_decide, args=(r, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    got = [pickle.loads((tmp_path / f"decide{r}.pkl").read_bytes()) for r in range(2)]
    assert got[0] == got[1]  # never disagree
    assert got[0] == {"mean_below": False, "mean_above": True, "limit": True, "finite": False}
