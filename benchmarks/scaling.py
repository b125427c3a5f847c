"""Scale-out: training episodes/s with the envs in this process, over 1 and 2 worker
processes, and over 1 and 2 Ray actors (when Ray is installed).

Each side is a runner plus its own seed-0 agent, started before any timing (spawning
workers and starting Ray are one-off costs, not throughput). One round is one training
batch per side: the product defaults (digits, 2 envs x 25 epochs) collected and one PPO
update (4 epochs x 4 minibatches), so the figure is what an operator's episodes/s would
be, the learner's serial share included. Every side sees the same episode seeds in the
same order, so every side does identical work (the runners give identical numbers), and
the sides are interleaved round by round (`common.interleaved`). The speed-up rows are
per-round ratios of 2 workers over 1 on the same backend.

Other agents may be loading this machine, and then two workers cannot get two cores. So
each round also times a CPU-bound calibration, one pure-Python burner alone vs two in
parallel processes: its ratio is the parallelism the machine offered in that round, and
the scaling efficiency (speed-up over that parallelism, per round) is the figure with a
target, since it does not move with the load.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from benchmarks.common import (
    DEFAULT_ENVS,
    DEFAULT_EPISODE_LENGTH,
    DEFAULT_SLOTS,
    SEED,
    Row,
    Section,
    Spread,
    interleaved,
    paired_ratios,
    spread,
    timed,
)

TASK = "digits"  # the product default: the host epoch is the cost being spread out
#: Speed-up over the parallelism the machine offered: the env share of a batch (about 90%)
#: spreads, the driver's acting and PPO update do not, and each step pays a round trip.
EFFICIENCY_TARGET = 0.75
#: Iterations of the calibration burner (about 0.3 s of one core).
BURN = 3_000_000


def burn(n: int) -> float:
    """Pure-Python CPU work: no threads, no I/O, one core for its whole run."""
    total = 0
    for i in range(n):
        total += i * i
    return float(total)


def calibration(pool: Any) -> dict[str, Callable[[], float]]:
    """Timed sides: one burner alone, and two at once in the pool's two processes."""
    return {
        "cpu_1": timed(lambda: pool.apply(burn, (BURN,))),
        "cpu_2": timed(lambda: pool.map(burn, [BURN, BURN], chunksize=1)),
    }


def training_round(agent: Any, runner: Any) -> Callable[[], float]:
    """A timed batch on `runner` (collect + update); each call takes the next seeds."""
    from esper.rollout import collect_batch
    from esper.trainer import episode_seeds

    batches = iter(range(1_000_000))

    def run() -> float:
        seeds = episode_seeds(SEED, next(batches) * DEFAULT_ENVS, DEFAULT_ENVS)

        def batch() -> None:
            buffer, _ = collect_batch(agent, runner, DEFAULT_EPISODE_LENGTH, seeds)
            agent.update(buffer)

        return timed(batch)()

    return run


@contextmanager
def started_runners(with_ray: bool) -> Iterator[dict[str, Any]]:
    """Every side's runner, started (and a local Ray instance when asked); closed on exit."""
    from esper.environment import MorphogeneticEnv
    from esper.runners import InProcessRunner, ProcessRunner, RayRunner

    make = functools.partial(
        MorphogeneticEnv, task=TASK, n_slots=DEFAULT_SLOTS, episode_length=DEFAULT_EPISODE_LENGTH
    )
    factories = [make] * DEFAULT_ENVS
    with ExitStack() as stack:
        runners: dict[str, Any] = {"inprocess": InProcessRunner([f() for f in factories])}
        for workers in (1, 2):
            runners[f"processes_{workers}"] = stack.enter_context(ProcessRunner(factories, workers))
        if with_ray:
            import ray

            # logical CPUs, one per actor of both Ray sides (Ray does not pin cores)
            ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)  # fmt: skip
            stack.callback(ray.shutdown)
            for workers in (1, 2):
                runners[f"ray_{workers}"] = stack.enter_context(RayRunner(factories, workers))
        yield runners


def measure(rounds: int, with_ray: bool) -> dict[str, Any]:
    """Interleaved seconds per training batch of every side, and episodes/s spreads."""
    from esper.actions import head_sizes
    from esper.ppo import PPOAgent

    with (
        started_runners(with_ray) as runners,
        multiprocessing.get_context("spawn").Pool(2) as pool,
    ):
        sides = {
            name: training_round(
                PPOAgent(runner.obs_dim, head_sizes(DEFAULT_SLOTS), seed=SEED), runner
            )
            for name, runner in runners.items()
        }
        samples = interleaved({**sides, **calibration(pool)}, rounds=rounds, warmup=1)
    cpu_1, cpu_2 = samples.pop("cpu_1"), samples.pop("cpu_2")
    parallelism = [2 * one / two for one, two in zip(cpu_1, cpu_2, strict=True)]
    result: dict[str, Any] = {
        "task": TASK,
        "envs": DEFAULT_ENVS,
        "episode_length": DEFAULT_EPISODE_LENGTH,
        "rounds": rounds,
        "seconds_per_batch": {name: spread(s).as_dict() for name, s in samples.items()},
        "episodes_per_second": {
            name: spread(s).inverted(DEFAULT_ENVS) for name, s in samples.items()
        },
        "cpu_parallelism": spread(parallelism),
    }
    for backend in ("processes", "ray"):
        if f"{backend}_1" in samples:  # speed-up = time(1 worker) / time(2 workers)
            speedups = paired_ratios(samples[f"{backend}_1"], samples[f"{backend}_2"])
            result[f"{backend}_speedup"] = spread(speedups)
            result[f"{backend}_efficiency"] = spread(paired_ratios(speedups, parallelism))
    return result


def _rows(result: dict[str, Any]) -> list[Row]:
    eps = result["episodes_per_second"]
    what = f"{result['task']}, {result['envs']} envs x {result['episode_length']} epochs + PPO"
    rows = [
        Row("scaling_inprocess_eps", f"episodes/s, envs in this process ({what})",
            eps["inprocess"], "ep/s"),
        Row("scaling_cpu_parallelism", "CPU parallelism on offer (2 burners vs 1)",
            result["cpu_parallelism"], "x"),
    ]  # fmt: skip
    for backend, label in (("processes", "worker processes"), ("ray", "Ray actors")):
        if f"{backend}_speedup" not in result:
            continue
        for workers in (1, 2):
            rows.append(Row(f"scaling_{backend}_{workers}w_eps",
                            f"episodes/s, {workers} {label} ({what})",
                            eps[f"{backend}_{workers}"], "ep/s"))  # fmt: skip
        rows.append(Row(f"scaling_{backend}_speedup", f"speed-up of 2 {label} over 1",
                        result[f"{backend}_speedup"], "x"))  # fmt: skip
        rows.append(Row(f"scaling_{backend}_efficiency",
                        f"{backend} speed-up / CPU parallelism on offer",
                        result[f"{backend}_efficiency"], "x", EFFICIENCY_TARGET))  # fmt: skip
    return rows


def run(quick: bool) -> Section:
    """Episodes/s per backend with 1 and 2 workers, the 2-over-1 speed-ups, efficiencies."""
    # --quick leaves Ray out: starting a local Ray instance alone costs ~20 s of its budget.
    with_ray = not quick and importlib.util.find_spec("ray") is not None
    result = measure(rounds=3 if quick else 12, with_ray=with_ray)
    raw = {
        **result,
        "episodes_per_second": {k: v.as_dict() for k, v in result["episodes_per_second"].items()},
        **{k: v.as_dict() for k, v in result.items() if isinstance(v, Spread)},
        "ray_installed": with_ray,
    }
    return Section("scaling", _rows(result), raw)
