"""Cost of the per-head ratio telemetry: `PPOAgent.update()` with head statistics on vs off.

Both agents start from the same seed and, before every timed update, reload one saved
state (weights, Adam state, RNGs), then train on one fixed rollout: the only difference
left is `PPOConfig(head_stats=...)`. The joint ratio statistics (needed by the KL early
stop and the intervention) run on both sides; "off" drops the per-head max/min/clip
counts, per-head KL and the per-head metric columns. Updates are timed in thread CPU
seconds (torch runs on this one thread).
"""

from __future__ import annotations

import copy
from typing import Any

from benchmarks.common import (
    DEFAULT_ENVS,
    DEFAULT_EPISODE_LENGTH,
    DEFAULT_SLOTS,
    SEED,
    Row,
    Section,
    cpu_clock,
    fixed_rollout,
    interleaved,
    paired_ratios,
    spread,
    timed,
)

TARGET = 1.03
TASK = "spirals"  # the update never sees the task, only the rollout's shape


class ReloadingUpdate:
    """A timed `agent.update(buffer)` that first restores `state` (outside the timing).

    Keeps the metrics of the last update, e.g. to check how many epochs it ran.
    """

    def __init__(self, agent: Any, state: dict[str, Any], buffer: Any) -> None:
        self.agent, self.state, self.buffer = agent, state, buffer
        self.metrics: dict[str, float] = {}

    def __call__(self) -> float:
        self.agent.load_state_dict(copy.deepcopy(self.state))
        return timed(self._update, cpu_clock)()

    def _update(self) -> None:
        self.metrics = self.agent.update(self.buffer)


def measure(n_envs: int, rounds: int, repeats: int = 3) -> dict[str, Any]:
    """Interleaved on/off update timings on a rollout of `n_envs` x the default length."""
    from esper.actions import head_sizes
    from esper.ppo import PPOAgent, PPOConfig

    buffer, obs_dim = fixed_rollout(TASK, n_envs, DEFAULT_EPISODE_LENGTH)
    agents = {
        name: PPOAgent(obs_dim, head_sizes(DEFAULT_SLOTS), PPOConfig(head_stats=on), seed=SEED)
        for name, on in (("on", True), ("off", False))
    }
    state = copy.deepcopy(agents["on"].state_dict())
    samples = interleaved(
        {name: ReloadingUpdate(agent, state, buffer) for name, agent in agents.items()},
        rounds=rounds,
        warmup=2,
        repeats=repeats,
    )
    ratios = paired_ratios(samples["on"], samples["off"])
    return {
        "n_envs": n_envs,
        "episode_length": DEFAULT_EPISODE_LENGTH,
        "samples_per_update": n_envs * DEFAULT_EPISODE_LENGTH,
        "rounds": rounds,
        "repeats_per_round": repeats,
        "on_ms": spread(samples["on"]).scaled(1e3).as_dict(),
        "off_ms": spread(samples["off"]).scaled(1e3).as_dict(),
        "ratio": spread(ratios),
    }


def run(quick: bool) -> Section:
    """The product-default rollout (2 envs); the full run adds a wider one (8 envs)."""
    sizes = (
        {"default": DEFAULT_ENVS} if quick else {"default": DEFAULT_ENVS, "wide": 4 * DEFAULT_ENVS}
    )
    results = {name: measure(n_envs, 10 if quick else 30) for name, n_envs in sizes.items()}
    rows = [
        Row(
            "telemetry_overhead_ratio" + ("" if name == "default" else f"_{name}"),
            f"telemetry overhead: update CPU time, head stats on / off "
            f"({m['samples_per_update']} samples)",
            m["ratio"],
            "x",
            TARGET,
            higher_is_better=False,
        )
        for name, m in results.items()
    ]
    raw = {name: {**m, "ratio": m["ratio"].as_dict()} for name, m in results.items()}
    return Section("telemetry_overhead", rows, raw)
