"""How many torch intra-op threads the learner uses: one, unless its matrices are large.

The envs already step at one thread (`esper.rl.runners.ENV_THREADS`): a host epoch is many
tiny kernels. The learner's kernels are tiny too: a minibatch of 13 samples through a
128-unit trunk is far below the size at which splitting a matrix product over cores
pays for waking the other threads. Measured on the 2-CPU reference machine with other
processes running (BENCHMARKS.md, "Threads"), one update at torch's default of 2 threads
took 50x (50 samples) and 30x (2048 samples, hidden 128 and 512) as long as at one: each
parallel region waits for a thread whose core is busy elsewhere. So the policy is one
thread below `PARALLEL_MIN_MACS` of work per minibatch layer, and one more thread per
multiple of it above, up to the CPUs this process may use. The count is a choice of
speed, never of results the run depends on; `threads` in the config overrides it.

Pure: no torch import, so the CLI can resolve the count before loading the training stack
and record it in run.json.
"""

from __future__ import annotations

import math
import os

from esper.rl.config import TrainConfig

#: Multiply-accumulates of the trunk's hidden x hidden layer on one minibatch below which
#: one thread is fastest. The largest size measured (256 samples x hidden 512, 2**26)
#: still ran 28x faster at one thread than at two, so the threshold sits above it.
PARALLEL_MIN_MACS = 1 << 27


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def minibatch_macs(minibatch: int, hidden: int) -> int:
    """Work of the learner's largest layer on one minibatch (hidden x hidden products)."""
    return minibatch * hidden * hidden


def choose_threads(macs: int, cpus: int) -> int:
    """One thread below `PARALLEL_MIN_MACS`, one more per multiple of it, at most `cpus`."""
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    return max(1, min(cpus, macs // PARALLEL_MIN_MACS))


def learner_threads(
    config: TrainConfig, steps_per_env: int | None = None, cpus: int | None = None
) -> int:
    """The intra-op thread count for a run: `config.threads` if set, else the policy's.

    `steps_per_env` is what each env adds to a batch (default: the morphogenetic
    episode length, one episode per env).
    """
    if config.threads is not None:
        return config.threads
    samples = config.envs * (config.episode_length if steps_per_env is None else steps_per_env)
    minibatch = math.ceil(samples / config.ppo.minibatches)
    return choose_threads(minibatch_macs(minibatch, config.ppo.hidden), cpus or usable_cpus())
