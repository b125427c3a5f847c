"""Several learners: a PPO update of 2048 samples on 1 learner vs 2 (1024 samples each),
and what the per-head reduction adds to the 2-learner update.

Two gloo ranks are spawned once (torch pinned to one thread each) and driven by the
parent through pipes, round by round: in each round the single-learner update (rank 0
alone, the whole buffer; rank 1 idles) and the 2-learner update (each rank its half of
the envs, gradients averaged per minibatch, the statistics reduced once) run in
alternating order, then the reduction alone is timed on both ranks. Every timed update
starts from the same policy and optimizer state (reloaded outside the timing) on the same
samples, with the KL early stop off, so each runs all 4 x 4 minibatches: the sides do
identical work every round. Times are wall clock (a 2-rank update waits in its
collectives); the load average is recorded every round.

The reduction's cost is `Learners.reduce_stats` (one all-gather of every rank's raw
statistics and loss sums, then `combine`) plus the host copy of its result, against the
same round's 2-rank update. Its collectives are counted by wrapping torch.distributed's
collectives during one update: the gradient all-reduces (one per minibatch, which also
carry the stop decisions' sums) and what the statistics add.

`python -m benchmarks learners [--quick]` runs this alone (results/learners.json);
`python -m benchmarks` runs it with the rest.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.common import (
    Row,
    Section,
    load_average,
    paired_ratios,
    pin_threads,
    spread,
    tiled_rollout,
)

TASK = "spirals"
#: 8 envs x 16 real steps tiled 16 times: 2048 samples, 1024 per rank of two.
ENVS, STEPS, REPEATS = 8, 16, 16
SAMPLES = ENVS * STEPS * REPEATS
WORLD = 2
#: Calls of the reduction timed per round (its median is the round's figure).
REDUCE_CALLS = 30


def _shard(buffer: Any, envs: slice) -> Any:
    """The envs `envs` of a [T, E] rollout buffer, as a buffer of their own."""
    from esper.rl.ppo import RolloutBuffer

    n = envs.stop - envs.start
    out = RolloutBuffer.__new__(RolloutBuffer)
    vars(out).update(vars(buffer))
    out.n_envs = n
    for name in ("obs", "actions", "log_probs", "values", "rewards", "episode_starts", "legal",
                 "advantages", "returns"):  # fmt: skip
        setattr(out, name, getattr(buffer, name)[:, envs].contiguous())
    return out


def _timed_update(agent: Any, buffer: Any, start: dict[str, Any]) -> float:
    agent.load_state_dict(start)
    began = time.perf_counter()
    agent.update(buffer)
    return time.perf_counter() - began


def _count_collectives(agent: Any, buffer: Any, start: dict[str, Any]) -> dict[str, int]:
    """Collectives one 2-rank update calls, by kind."""
    import torch.distributed as dist

    counts: dict[str, int] = {}
    originals: dict[str, Callable[..., Any]] = {}
    for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "gather"):
        original = getattr(dist, name)
        originals[name] = original

        def counting(*args: Any, _name: str = name, _f: Any = original, **kw: Any) -> Any:
            counts[_name] = counts.get(_name, 0) + 1
            return _f(*args, **kw)

        setattr(dist, name, counting)
    try:
        _timed_update(agent, buffer, start)
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    return counts


def _rank(rank: int, port: int, conn: Connection) -> None:
    """One rank: build both agents, then answer the parent's commands until "stop"."""
    import torch
    import torch.distributed as dist

    from esper.morpho.actions import factored_actions
    from esper.rl.config import PPOConfig
    from esper.rl.learners import Learners
    from esper.rl.ppo import PPOAgent

    pin_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=120),
    )  # fmt: skip
    learners = Learners(rank, WORLD)
    full, obs_dim = tiled_rollout(TASK, ENVS, STEPS, REPEATS)
    shard = _shard(full, learners.share(ENVS))
    config = PPOConfig(target_kl=None)  # every update runs every minibatch
    actions = factored_actions(3)
    single = PPOAgent(obs_dim, actions, config, seed=0)
    pair = PPOAgent(obs_dim, actions, config, seed=0, learners=learners)
    start = single.state_dict()
    captured: list[Any] = []
    pair.local_stats_hook = captured.append
    try:
        while True:
            command = conn.recv()
            if command == "stop":
                break
            if command == "single":
                conn.send(_timed_update(single, full, start) if rank == 0 else None)
            elif command == "pair":
                dist.barrier()
                conn.send(_timed_update(pair, shard, start))
            elif command == "reduce":  # the statistics and extras of a real update
                stats = captured[-1]
                extra = torch.zeros(5 + 4 * config.epochs * config.minibatches, dtype=torch.float64)
                times = []
                for _ in range(REDUCE_CALLS):
                    dist.barrier()
                    began = time.perf_counter()
                    reduced = learners.reduce_stats(stats, extra)
                    torch.cat([reduced.stats.reading_tensor(), reduced.extras.flatten()]).tolist()
                    times.append(time.perf_counter() - began)
                conn.send(statistics.median(times))
            elif command == "count":
                conn.send(_count_collectives(pair, shard, start))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(rounds: int, warmup: int = 1) -> dict[str, Any]:
    """Interleaved rounds of both updates and the reduction; raw seconds per round."""
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    pipes = [ctx.Pipe() for _ in range(WORLD)]
    procs = [ctx.Process(target=_rank, args=(r, port, pipes[r][1])) for r in range(WORLD)]
    for p in procs:
        p.start()

    def ask(command: str) -> list[Any]:
        for parent, _ in pipes:
            parent.send(command)
        return [parent.recv() for parent, _ in pipes]

    samples: dict[str, list[float]] = {"single": [], "pair": [], "reduce": []}
    loads: list[list[float] | None] = []
    try:
        counts = ask("count")[0]
        for r in range(warmup + rounds):
            order = ["single", "pair"] if r % 2 == 0 else ["pair", "single"]
            got = {side: ask(side) for side in order}
            reduce = ask("reduce")
            if r < warmup:
                continue
            samples["single"].append(got["single"][0])
            samples["pair"].append(max(got["pair"]))  # the ranks finish together
            samples["reduce"].append(max(reduce))
            loads.append(load_average())
        for parent, _ in pipes:
            parent.send("stop")  # no answer: the ranks leave their group and exit
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    return {"samples": samples, "loads": loads, "collectives": counts, "rounds": rounds}


def _rows(result: dict[str, Any]) -> list[Row]:
    s = result["samples"]
    share = [100 * a / b for a, b in zip(s["reduce"], s["pair"], strict=True)]
    counts = result["collectives"]
    gradient = counts.get("all_reduce", 0)
    added = sum(counts.values()) - gradient  # the gradient all-reduces are DDP's own
    per_round_load = [x[0] for x in result["loads"] if x]
    return [
        Row("learners_update_1_ms", f"update of {SAMPLES} samples, 1 learner",
            spread(s["single"]).scaled(1000), "ms", None, False),
        Row("learners_update_2_ms", f"update of {SAMPLES} samples, 2 learners (gloo)",
            spread(s["pair"]).scaled(1000), "ms", None, False),
        Row("learners_speedup_2", "1-learner time / 2-learner time, per round",
            spread(paired_ratios(s["single"], s["pair"])), "x"),
        Row("learners_reduction_ms", "per-head reduction (all-gather + combine + host copy)",
            spread(s["reduce"]).scaled(1000), "ms", None, False),
        Row("learners_reduction_share_pct", "per-head reduction / 2-learner update",
            spread(share), "%", 5.0, False),
        Row("learners_reduction_collectives", "collectives the statistics add per update",
            spread([float(added)]), "", 2.0, False),
        Row("learners_load_1min", "1-minute load average during the rounds",
            spread(per_round_load or [float("nan")]), "", None, False),
    ]  # fmt: skip


def run(quick: bool) -> Section:
    """5 rounds (--quick) or 20, after one warm-up round."""
    result = measure(rounds=5 if quick else 20)
    raw = {**result, "samples_per_update": SAMPLES, "world": WORLD, "task": TASK}
    return Section("learners", _rows(result), raw)
