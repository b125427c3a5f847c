"""HeadRatioMonitor under torch.distributed: known answers on 2 and 3 gloo ranks.

One spawn of three CPU processes runs every case (a torch import per process is most of
the cost): the default group of 3 ranks, a `group=` of ranks [0, 1], and a `group=` of
ranks [1, 2] written by its second member. Each rank observes fixed tensors of its own,
planted with a head relevant on one rank only, a NaN and an -inf on one rank, and the
global joint max on rank 1 (tied on rank 2 by a different row, which must lose). The
parent process then feeds one single-process monitor the concatenation of every rank's
samples and compares.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from esper.integrations.monitor import HeadRatioMonitor
from esper.rl.ratio_stats import HeadRatioStats, log_ratios
from esper.telemetry.contracts import EventType
from esper.telemetry.heads import UpdateStats
from esper.telemetry.recorder import read_events
from esper.telemetry.rundir import RunDirError

HEADS = {"op": 4, "slot": 3, "blueprint": 5}
WORLD = 3
#: name -> (global ranks of the group, writer's rank in the group)
CASES: dict[str, tuple[tuple[int, ...], int]] = {
    "world": ((0, 1, 2), 0),
    "pair": ((0, 1), 0),
    "tail": ((1, 2), 1),
}
UPDATES = 2
Minibatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")


def rank_minibatches(group_rank: int, world: int, update: int) -> list[Minibatch]:
    """What one rank observes in one update: (new, old, relevant, entropy) per minibatch.

    Ranks hold different numbers of samples (4 + rank per minibatch). `blueprint` is
    relevant on rank 1 only, `slot` on even rows only. Rank 0 has a NaN new log-prob on a
    relevant slot and an -inf old log-prob on op. Rank 1 holds the joint max (0.5 on each
    of its three relevant heads: joint e^1.5); rank 2 ties it with op alone at 1.5. In the
    second update the last rank observes nothing at all.
    """
    if update == 1 and group_rank == world - 1:
        return []
    g = torch.Generator().manual_seed(1000 * update + 10 * group_rank + world)
    out = []
    for m in range(2):
        n = 4 + group_rank
        old = -torch.rand(n, 3, generator=g) * 2 - 0.1
        new = old + (torch.rand(n, 3, generator=g) - 0.5) * 0.4
        relevant = torch.ones(n, 3, dtype=torch.bool)
        relevant[1::2, 1] = False
        relevant[:, 2] = group_rank == 1
        entropy = torch.rand(n, 3, generator=g)
        if update == 0 and group_rank == 0 and m == 0:
            new[0, 1] = math.nan
            old[2, 0] = -math.inf
        if update == 0 and group_rank == 1 and m == 1:
            old[2], new[2] = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([-0.5, -0.5, -0.5])
        if update == 0 and group_rank == 2 and m == 0:
            old[0], new[0] = torch.tensor([-2.0, -1.0, -1.0]), torch.tensor([-0.5, -1.0, -1.0])
        out.append((new, old, relevant, entropy))
    return out


def scalars_of(group_rank: int) -> dict[str, Any]:
    """The loop's own numbers, different on every rank."""
    return {
        "policy_loss": 0.1 * (group_rank + 1),
        "epochs_run": group_rank + 1,
        "early_stopped": group_rank == 1,
        "mean_return": None if group_rank == 0 else float(group_rank),
    }


def _run_case(name: str, tmp: Path, group: Any) -> dict[str, Any]:
    ranks, writer = CASES[name]
    group_rank = dist.get_rank(group)
    mine = tmp / f"{name}-{dist.get_rank()}"  # each rank names its own dir: the writer's wins
    with HeadRatioMonitor(mine, HEADS, group=None if name == "world" else group,
                          writer_rank=writer) as monitor:  # fmt: skip
        stats = []
        for update in range(UPDATES):
            for new, old, relevant, entropy in rank_minibatches(group_rank, len(ranks), update):
                monitor.observe(new, old, relevant, entropy)
            monitor.end_episode(float(group_rank), length=10 + group_rank, env_index=group_rank)
            stats.append(monitor.end_update(**(scalars_of(group_rank) if update == 0 else {})))
        return {"stats": stats, "run_dir": str(monitor.run_dir), "episodes": monitor.episodes}


def _worker(rank: int, tmp: str) -> None:
    """One rank: every case, then its results pickled for the parent."""
    torch.set_num_threads(1)
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )  # fmt: skip
    results: dict[str, Any] = {}
    try:
        groups = {name: dist.new_group(list(ranks)) for name, (ranks, _) in CASES.items()}
        for name, (ranks, _) in CASES.items():
            if rank in ranks:
                results[name] = _run_case(name, Path(tmp), groups[name])
        with HeadRatioMonitor(Path(tmp) / "reopened", HEADS) as first:
            first.observe(*rank_minibatches(rank, WORLD, 0)[0])
            first.end_update()
        with first.reopen() as second:  # the writer continues the run, every rank with it
            second.observe(*rank_minibatches(rank, WORLD, 0)[1])
            results["reopened"] = (str(second.run_dir), second.end_update())
        try:  # a writer that cannot open its run directory fails every rank, none hangs
            HeadRatioMonitor(Path(tmp) / "busy", HEADS)
            results["busy"] = None
        except RunDirError as exc:
            results["busy"] = str(exc)
        # The statistics' own reduction, without the monitor.
        parts = rank_minibatches(rank, WORLD, 0)
        new, old, relevant = (torch.cat([p[i] for p in parts]) for i in range(3))
        local = HeadRatioStats.from_log_ratios(log_ratios(new, old, relevant), 0.2, list(HEADS))
        results["all_reduce"] = local.all_reduce().reading_tensor().tolist()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(Path(tmp) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(results, f)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """Every rank's results, from one spawn of WORLD gloo processes."""
    tmp = tmp_path_factory.mktemp("dist")
    with HeadRatioMonitor(tmp / "busy", HEADS):  # a run is already there
        pass
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, str(tmp))) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
    assert not stuck, "a rank hung in a collective"
    assert [p.exitcode for p in procs] == [0] * WORLD
    return tmp, [pickle.loads((tmp / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


def reference(name: str, tmp: Path) -> tuple[list[UpdateStats], Path]:
    """One process fed the concatenation of every rank's samples, rank by rank (the order
    that makes "ties to the lowest rank" the first maximum, as `argmax` takes it)."""
    ranks, _ = CASES[name]
    world = len(ranks)
    run = tmp / f"reference-{name}"
    stats = []
    with HeadRatioMonitor(run, HEADS) as monitor:
        for update in range(UPDATES):
            for group_rank in range(world):
                for new, old, relevant, entropy in rank_minibatches(group_rank, world, update):
                    monitor.observe(new, old, relevant, entropy)
            stats.append(monitor.end_update())
    return stats, run


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def assert_same_statistics(got: UpdateStats, want: UpdateStats) -> None:
    assert list(got.heads) == list(want.heads)
    for head, g in got.heads.items():
        w = want.heads[head]
        assert (g.relevant, g.nonfinite) == (w.relevant, w.nonfinite), head  # exactly
        for field in ("ratio_max", "ratio_min", "clip_fraction", "entropy", "approx_kl"):
            assert close(getattr(g, field), getattr(w, field)), (head, field)
    for field in ("joint_ratio_max", "clip_fraction", "approx_kl", "entropy"):
        assert close(getattr(got, field), getattr(want, field)), field
    assert (got.explosion is None) == (want.explosion is None)
    if got.explosion is not None and want.explosion is not None:
        assert got.explosion.driver == want.explosion.driver
        for head, value in want.explosion.worst_log_ratios.items():
            assert close(got.explosion.worst_log_ratios[head], value), head
            assert close(got.explosion.shares[head], want.explosion.shares[head]), head


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_record_what_one_process_fed_every_sample_records(
    ranks: tuple[Path, list[dict[str, Any]]], name: str
) -> None:
    tmp, results = ranks
    members, _ = CASES[name]
    want, _ = reference(name, tmp)
    first = results[members[0]][name]
    for rank in members:  # every rank got the same stats back, bit for bit
        assert results[rank][name]["stats"] == first["stats"]
    for got, expected in zip(first["stats"], want, strict=True):
        assert_same_statistics(got, expected)
    update = first["stats"][0]
    # the planted features survived the reduction
    assert update.heads["blueprint"].relevant == want[0].heads["blueprint"].relevant > 0
    assert update.heads["slot"].nonfinite == 1 and update.heads["op"].nonfinite == 1
    assert update.explosion is not None
    assert update.explosion.worst_log_ratios == pytest.approx(
        {"op": 0.5, "slot": 0.5, "blueprint": 0.5}
    )  # rank 1's row, not rank 2's tie [1.5, 0, 0]
    assert close(update.joint_ratio_max, math.exp(1.5))
    # the loop's scalars: floats averaged, counts their max, flags any rank's
    world = len(members)
    assert close(update.policy_loss, sum(0.1 * (r + 1) for r in range(world)) / world)
    assert update.epochs_run == world and update.early_stopped
    # minibatches_run counts steps of the lock-step loop: the most any rank observed
    # (the reference saw every rank's in turn); in the second update the last rank
    # observed nothing, the others still count
    assert [u.minibatches_run for u in first["stats"]] == [2, 2]


@pytest.mark.parametrize("name", list(CASES))
def test_only_the_writer_rank_writes_the_run_directory(
    ranks: tuple[Path, list[dict[str, Any]]], name: str
) -> None:
    tmp, results = ranks
    members, writer = CASES[name]
    writer_dir = tmp / f"{name}-{members[writer]}"
    assert {results[r][name]["run_dir"] for r in members} == {str(writer_dir)}
    assert sorted(p.name for p in tmp.glob(f"{name}-*")) == [writer_dir.name]
    recorded = list(read_events(writer_dir / "events.jsonl"))
    kinds = [e.event_type for e in recorded]
    assert kinds.count(EventType.TRAINING_STARTED) == 1
    assert kinds.count(EventType.TRAINING_FINISHED) == 1
    assert recorded[0].payload.config["ranks"] == len(members)
    updates = [e.payload for e in recorded if e.event_type is EventType.PPO_UPDATE_COMPLETED]
    assert [u.update_index for u in updates] == list(range(UPDATES))
    _, reference_dir = reference(name, tmp / "again")
    expected = [
        e.payload
        for e in read_events(reference_dir / "events.jsonl")
        if e.event_type is EventType.PPO_UPDATE_COMPLETED
    ]
    for got, want in zip(updates, expected, strict=True):
        for head, stats in want.heads.items():
            assert (got.heads[head].relevant, got.heads[head].nonfinite) == (
                stats.relevant,
                stats.nonfinite,
            )
            assert close(got.heads[head].ratio_max, stats.ratio_max)
            assert close(got.heads[head].ratio_min, stats.ratio_min)
    # every rank's episodes, each once, ahead of the update they ended before
    episodes = [
        (e.payload.env_index, e.batch)
        for e in recorded
        if e.event_type is EventType.EPISODE_COMPLETED
    ]
    assert sorted(episodes) == sorted((r, u) for u in range(UPDATES) for r in range(len(members)))
    assert recorded[-1].payload.episodes == UPDATES * len(members)
    assert {results[r][name]["episodes"] for r in members} == {UPDATES * len(members)}
    # mean_return: the mean of the ranks that passed one (rank 0 passed None)
    assert close(updates[0].mean_return, sum(range(1, len(members))) / (len(members) - 1))


def test_a_writer_that_cannot_open_the_run_fails_every_rank(
    ranks: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, results = ranks
    messages = [r["busy"] for r in results]
    assert all(m is not None and "busy" in m for m in messages)
    assert "writer rank 0" in messages[1] and "writer rank 0" in messages[2]


def test_all_reduce_of_the_statistics_alone(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    _, results = ranks
    parts = [rank_minibatches(r, WORLD, 0) for r in range(WORLD)]
    new, old, relevant = (torch.cat([m[i] for p in parts for m in p]) for i in range(3))
    whole = HeadRatioStats.from_log_ratios(log_ratios(new, old, relevant), 0.2, list(HEADS))
    want = whole.reading_tensor().tolist()
    for result in results:
        got = result["all_reduce"]
        assert got == results[0]["all_reduce"]
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_a_closed_run_reopens_on_every_rank(ranks: tuple[Path, list[dict[str, Any]]]) -> None:
    tmp, results = ranks
    assert {r["reopened"][0] for r in results} == {str(tmp / "reopened")}
    assert len({repr(r["reopened"][1]) for r in results}) == 1
    recorded = list(read_events(tmp / "reopened" / "events.jsonl"))
    starts = [e.payload for e in recorded if e.event_type is EventType.TRAINING_STARTED]
    assert [s.resumed_from_update for s in starts] == [None, 1]
    updates = [e.payload for e in recorded if e.event_type is EventType.PPO_UPDATE_COMPLETED]
    assert [u.update_index for u in updates] == [0, 1]
    relevant = sum(len(rank_minibatches(r, WORLD, 0)[1][0]) for r in range(WORLD))
    assert updates[1].heads["op"].relevant + updates[1].heads["op"].nonfinite == relevant
