"""Scale-out: training episodes/s with the envs in this process, over 1 and 2 worker
processes, and over 1 and 2 Ray actors (when Ray is installed).

Each side is a runner plus its own seed-0 agent, started before any timing (spawning
workers and starting Ray are one-off costs, not throughput). One round is one training
batch per side: the product defaults (digits, 2 envs x 25 epochs) collected and one PPO
update (4 epochs x 4 minibatches), so the figure is what an operator's episodes/s would
be, the learner's serial share included. Every side sees the same episode seeds in the
same order, so every side does identical work (the runners give identical numbers), and
the sides are interleaved round by round (`common.interleaved`).

The figures are each backend's speed-up over in-process, per round: what moving the envs
out of the driver buys (or costs) on this machine now. Other processes may be loading the
machine, so the load average is recorded with every round and reported beside the
speed-ups; the figures are not normalised by a calibration of "the parallelism on offer",
which can make a slow-down look efficient.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from benchmarks.common import (
    DEFAULT_ENVS,
    DEFAULT_EPISODE_LENGTH,
    DEFAULT_EPOCHS_PER_STEP,
    DEFAULT_SLOTS,
    SEED,
    Row,
    Section,
    Spread,
    interleaved,
    load_average,
    paired_ratios,
    spread,
    timed,
)

TASK = "digits"  # the product default: the host epoch is the cost being spread out


def training_round(agent: Any, runner: Any) -> Callable[[], float]:
    """A timed batch on `runner` (collect + update); each call takes the next seeds."""
    from esper.rl.rollout import collect_batch
    from esper.rl.trainer import episode_seeds

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
    from esper.morpho.environment import MorphogeneticEnv
    from esper.rl.runners import InProcessRunner, ProcessRunner, RayRunner

    make = functools.partial(
        MorphogeneticEnv,
        task=TASK,
        n_slots=DEFAULT_SLOTS,
        episode_length=DEFAULT_EPISODE_LENGTH,
        epochs_per_step=DEFAULT_EPOCHS_PER_STEP,
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
    from esper.rl.ppo import PPOAgent

    with started_runners(with_ray) as runners:
        sides = {
            name: training_round(PPOAgent(runner.obs_dim, runner.actions, seed=SEED), runner)
            for name, runner in runners.items()
        }
        loads: list[list[float] | None] = []
        samples = interleaved({**sides, "load": load_probe(loads)}, rounds=rounds, warmup=1)
    samples.pop("load")
    result: dict[str, Any] = {
        "task": TASK,
        "envs": DEFAULT_ENVS,
        "episode_length": DEFAULT_EPISODE_LENGTH,
        "rounds": rounds,
        "seconds_per_batch": {name: spread(s).as_dict() for name, s in samples.items()},
        "episodes_per_second": {
            name: spread(s).inverted(DEFAULT_ENVS) for name, s in samples.items()
        },
        "load_average_per_round": loads[-rounds:],
        "load_1min": spread([load[0] for load in loads[-rounds:] if load is not None] or [0.0]),
    }
    for name in samples:  # speed-up = time in process / time on the backend, per round
        if name != "inprocess":
            result[f"{name}_speedup"] = spread(paired_ratios(samples["inprocess"], samples[name]))
    return result


def load_probe(loads: list[list[float] | None]) -> Callable[[], float]:
    """A side that times nothing and records the load average once per round."""

    def probe() -> float:
        loads.append(load_average())
        return 0.0

    return probe


def _rows(result: dict[str, Any]) -> list[Row]:
    eps = result["episodes_per_second"]
    what = f"{result['task']}, {result['envs']} envs x {result['episode_length']} epochs + PPO"
    rows = [
        Row("scaling_inprocess_eps", f"episodes/s, envs in this process ({what})",
            eps["inprocess"], "ep/s"),
        Row("scaling_load_1min", "1-minute load average during the rounds (2 CPUs)",
            result["load_1min"], ""),
    ]  # fmt: skip
    for backend, label in (("processes", "worker processes"), ("ray", "Ray actors")):
        for workers in (1, 2):
            name = f"{backend}_{workers}"
            if name not in eps:
                continue
            rows.append(Row(f"scaling_{name}w_eps", f"episodes/s, {workers} {label} ({what})",
                            eps[name], "ep/s"))  # fmt: skip
            rows.append(Row(f"scaling_{name}w_speedup",
                            f"speed-up of {workers} {label} over in-process",
                            result[f"{name}_speedup"], "x"))  # fmt: skip
    return rows


def run(quick: bool) -> Section:
    """Episodes/s per backend with 1 and 2 workers and their speed-ups over in-process."""
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
