"""Evaluation: a policy's return on fixed seeds, beside the baselines it has to beat.

Every policy, Tamiyo or baseline, is played by `play`, which steps real
`MorphogeneticEnv`s through the same `InProcessRunner` the trainer's rollouts use, one env
per evaluation seed, all of them in lock step. A baseline therefore sees exactly the
observations, masks, host initialisations and rewards a trained policy sees, and the
comparison is paired: episode k of every policy starts from the same host.

The baselines are the yardsticks a learning curve needs: `wait` (never grow: what the
host reaches alone), `random` (uniform over the valid actions: what an untrained policy
does) and a small named family of fixed grow schedules (`HEURISTICS`), which differ in the
blueprint and in the timing, so a table of them shows how much those decisions matter.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from esper.morpho.actions import (
    HEAD_INDEX,
    HEAD_NAMES,
    AlphaTarget,
    BlendStyle,
    Blueprint,
    Op,
    Tempo,
    head_sizes,
)

if TYPE_CHECKING:  # torch loads only once `esper eval` knows its arguments are good
    from esper.morpho.environment import MorphogeneticEnv
    from esper.rl.runners import EnvStates

IntArray = npt.NDArray[np.int64]

#: Evaluation seeds are SEED, SEED + 1, ...: far from the trainer's episode seeds
#: (seed * 1_000_003 + k) for every training seed below 1000 and runs under 10^4 episodes.
EVAL_SEED = 10_000
EVAL_EPISODES = 30
EVAL_FILE = "eval.json"
#: A cell with no value: a spread of one episode is undefined, not zero.
NO_VALUE = "—"

#: A batch policy: the stacked states of every env and the step index -> actions [n, 8].
BatchPolicy = Callable[["EnvStates", int], IntArray]


def _wait_actions(n: int) -> IntArray:
    return np.zeros((n, len(HEAD_NAMES)), dtype=np.int64)


def wait_policy(states: EnvStates, t: int) -> IntArray:
    """Never grow: the host trains alone."""
    return _wait_actions(states.obs.shape[0])


@dataclass
class RandomMasked:
    """Uniform over valid ops, then uniform over that op's valid slots and every other head.

    This is what a freshly initialised Tamiyo does (its logits start near zero).
    """

    seed: int
    n_slots: int
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, states: EnvStates, t: int) -> IntArray:
        sizes = head_sizes(self.n_slots)
        n = states.obs.shape[0]
        actions = _wait_actions(n)
        for i in range(n):
            op = int(self.rng.choice(np.flatnonzero(states.op_mask[i])))
            slot = int(self.rng.choice(np.flatnonzero(states.slot_by_op[i, op])))
            actions[i] = [self.rng.integers(sizes[h]) for h in HEAD_NAMES]
            actions[i, HEAD_INDEX["op"]], actions[i, HEAD_INDEX["slot"]] = op, slot
        return actions


@dataclass(frozen=True)
class GrowSchedule:
    """Grow `blueprint` into the first free slot at each step of `steps`, otherwise WAIT.

    A step at which no slot is free is a WAIT. Never mutates or kills: every seed ramps to
    its target and fossilizes on its own.
    """

    blueprint: Blueprint
    steps: tuple[int, ...]
    style: BlendStyle = BlendStyle.LINEAR_ADD
    tempo: Tempo = Tempo.FAST
    target: AlphaTarget = AlphaTarget.FULL

    def __call__(self, states: EnvStates, t: int) -> IntArray:
        n = states.obs.shape[0]
        actions = _wait_actions(n)
        if t not in self.steps:
            return actions
        for i in range(n):
            if not states.op_mask[i, Op.GROW]:
                continue
            slot = int(np.flatnonzero(states.slot_by_op[i, Op.GROW])[0])
            row = {
                "op": Op.GROW,
                "slot": slot,
                "blueprint": self.blueprint,
                "style": self.style,
                "tempo": self.tempo,
                "alpha_target": self.target,
            }
            for head, value in row.items():
                actions[i, HEAD_INDEX[head]] = int(value)
        return actions


def heuristics(episode_length: int, n_slots: int) -> dict[str, GrowSchedule]:
    """The named fixed grow schedules: blueprint choice and timing, one change at a time.

    `early` grows one seed per step from step 0 until every slot is full; `late` does the
    same from the middle of the episode, so the seeds have half the time to pay back.
    """
    early = tuple(range(n_slots))
    late = tuple(range(episode_length // 2, episode_length // 2 + n_slots))
    return {
        "grow-norm-early": GrowSchedule(Blueprint.NORM, early),
        "grow-norm-late": GrowSchedule(Blueprint.NORM, late),
        "grow-wide-early": GrowSchedule(Blueprint.WIDE_MLP, early),
        "grow-linear-early": GrowSchedule(Blueprint.LINEAR, early),
        "grow-lowrank-early": GrowSchedule(Blueprint.LOW_RANK, early),
    }


def baselines(episode_length: int, n_slots: int, seed: int) -> dict[str, BatchPolicy]:
    """WAIT, random masked play and the fixed heuristics, by name, in table order."""
    policies: dict[str, BatchPolicy] = {
        "wait": wait_policy,
        "random": RandomMasked(seed, n_slots),
    }
    policies.update(heuristics(episode_length, n_slots))
    return policies


def eval_seeds(seed: int, episodes: int) -> list[int]:
    return [seed + k for k in range(episodes)]


def play(
    policy: BatchPolicy,
    make_env: Callable[[], MorphogeneticEnv],
    seeds: Sequence[int],
    episode_length: int,
) -> list[dict[str, Any]]:
    """One episode per seed, all envs in lock step; each env's `info["episode"]`."""
    from esper.rl.runners import InProcessRunner

    envs = [make_env() for _ in seeds]
    runner = InProcessRunner(envs)
    states: EnvStates = runner.reset(list(seeds))
    episodes: list[dict[str, Any]] = [{} for _ in seeds]
    for t in range(episode_length):
        result = runner.step(policy(states, t))
        for i, info in enumerate(result.infos):
            if "episode" in info:
                episodes[i] = dict(info["episode"])
        states = result
    if any(not ep for ep in episodes):
        raise RuntimeError("an evaluation episode did not end after episode_length steps")
    return episodes


@dataclass(frozen=True)
class PolicyResult:
    """One row of the evaluation table (and one entry of eval.json).

    `std_return` and `stderr_return` are None (null in eval.json) for a single episode:
    a sample spread needs two, and 0.0 would claim a certainty one episode cannot give.
    """

    policy: str
    mean_return: float
    std_return: float | None
    stderr_return: float | None
    episodes: int
    host_accuracy: float
    seeds_grown: float
    returns: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(name: str, episodes: Sequence[Mapping[str, Any]]) -> PolicyResult:
    """Mean, sample std (ddof 1) and standard error of the return, plus host outcome.

    With fewer than two episodes the std and standard error are undefined: None.
    """
    returns = np.array([float(ep["return"]) for ep in episodes], dtype=np.float64)
    n = len(returns)
    std = float(returns.std(ddof=1)) if n > 1 else None
    return PolicyResult(
        policy=name,
        mean_return=float(returns.mean()),
        std_return=std,
        stderr_return=None if std is None else std / math.sqrt(n),
        episodes=n,
        host_accuracy=float(np.mean([ep["final_accuracy"] for ep in episodes])),
        seeds_grown=float(np.mean([ep["seeds_grown"] for ep in episodes])),
        returns=[float(r) for r in returns],
    )


def paired_difference(a: PolicyResult, b: PolicyResult) -> tuple[float, float | None]:
    """Mean and standard error of a - b, episode by episode (same seeds, same hosts).

    The standard error is None (undefined) with fewer than two episodes.
    """
    diff = np.asarray(a.returns) - np.asarray(b.returns)
    if diff.size < 2:
        return float(diff.mean()) if diff.size else 0.0, None
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size))


def evaluate_policies(
    policies: Mapping[str, BatchPolicy],
    make_env: Callable[[], MorphogeneticEnv],
    seeds: Sequence[int],
    episode_length: int,
) -> list[PolicyResult]:
    """Play every policy on the same seeds; one result per policy, in the given order."""
    return [
        summarize(name, play(policy, make_env, seeds, episode_length))
        for name, policy in policies.items()
    ]


def _cell(value: float | None) -> str:
    """A spread to three decimals, or the no-value dash when it is undefined."""
    return NO_VALUE if value is None else f"{value:.3f}"


def results_table_rows(results: Sequence[PolicyResult]) -> list[list[str]]:
    """The table's cells: the paired difference to `wait` when `wait` is in the table."""
    wait = next((r for r in results if r.policy == "wait"), None)
    rows = []
    for r in results:
        vs_wait = ""
        if wait is not None and r is not wait:
            diff, se = paired_difference(r, wait)
            vs_wait = f"{diff:+.3f} ± {_cell(se)}"
        rows.append(
            [
                r.policy,
                f"{r.mean_return:.3f}",
                _cell(r.std_return),
                _cell(r.stderr_return),
                vs_wait,
                f"{r.host_accuracy:.3f}",
                f"{r.seeds_grown:.2f}",
            ]
        )
    return rows


TABLE_COLUMNS = ("policy", "mean", "std", "stderr", "vs wait (paired)", "host acc", "grown/ep")


def format_table(results: Sequence[PolicyResult]) -> str:
    """A plain-text table (the CLI prints it; BENCHMARKS.md quotes it)."""
    rows = [list(TABLE_COLUMNS), *results_table_rows(results)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(TABLE_COLUMNS))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- trained runs -----------------------------------------------------------------------


class EvalError(ValueError):
    """A run directory or flag `esper eval` cannot work with; the message is one line."""


def tamiyo_policies(agent: Any) -> dict[str, BatchPolicy]:
    """The trained policy played greedy (mode of every head) and sampled."""

    def greedy(states: EnvStates, t: int) -> IntArray:
        actions, _, _ = agent.act(states.obs, states.op_mask, states.slot_by_op, True)
        return actions

    def sampled(states: EnvStates, t: int) -> IntArray:
        actions, _, _ = agent.act(states.obs, states.op_mask, states.slot_by_op, False)
        return actions

    return {"tamiyo-greedy": greedy, "tamiyo-sampled": sampled}


def load_run_agent(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The run's PPO agent restored from its checkpoint, and what the env needs to know.

    The checkpoint is read with `weights_only=True` (see `esper.rl.checkpoint`). The agent is
    rebuilt from the checkpoint's own shapes (observation size, head sizes, trunk width),
    so evaluation reads only `task`, `slots` and `episode_length` from the run's config.
    Anything missing, foreign or of the wrong shape is an `EvalError`.
    """
    from esper.morpho.tasks import TASKS
    from esper.rl.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from esper.rl.ppo import PPOAgent, PPOConfig

    path = run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is not a directory")
    if not path.is_file():
        raise EvalError(f"{run_dir} has no {CHECKPOINT_NAME}; is it an esper run directory?")
    try:
        state = load_checkpoint(path)
        config = state["config"]
        task, slots = str(config["task"]), int(config["slots"])
        length = int(config["episode_length"])
        env: dict[str, Any] = {"task": task, "slots": slots, "episode_length": length}
        if task not in TASKS or slots < 1 or length < 1:
            raise ValueError(f"run config names no playable environment: {env}")
        saved = state["agent"]
        hidden = int(saved["policy"]["value_head.weight"].shape[1])
        agent = PPOAgent(
            obs_dim=int(saved["obs_dim"]),
            head_sizes=dict(saved["head_sizes"]),
            config=PPOConfig(hidden=hidden),
            device="cpu",
        )
        agent.load_state_dict(saved)
    except Exception as exc:  # any unreadable or foreign checkpoint: one line, no traceback
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise EvalError(f"cannot load the checkpoint in {run_dir}: {first}") from None
    return agent, env


def evaluate_run(
    run_dir: Path, episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED
) -> list[PolicyResult]:
    """Tamiyo (greedy, sampled) and every baseline on seeds `seed`.. of the run's task.

    Deterministic for a fixed seed: the hosts come from the seeds, the sampled policy
    draws from the checkpoint's own generator state and `random` from `seed`.
    """
    if isinstance(episodes, bool) or episodes < 1:
        raise EvalError(f"--episodes must be a whole number >= 1, got {episodes}")
    if seed < 0:
        raise EvalError(f"--seed must be a whole number >= 0, got {seed}")
    agent, cfg = load_run_agent(run_dir)
    length, n_slots = int(cfg["episode_length"]), int(cfg["slots"])
    from esper.morpho.environment import MorphogeneticEnv

    def make_env() -> MorphogeneticEnv:
        return MorphogeneticEnv(task=cfg["task"], n_slots=n_slots, episode_length=length)

    policies = {**tamiyo_policies(agent), **baselines(length, n_slots, seed)}
    return evaluate_policies(policies, make_env, eval_seeds(seed, episodes), length)


def write_eval(run_dir: Path, results: Sequence[PolicyResult], seed: int) -> Path:
    """eval.json: the seeds used and one entry per policy (written atomically)."""
    path = run_dir / EVAL_FILE
    doc = {
        "first_seed": seed,
        "policies": [r.to_dict() for r in results],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# -- the `esper eval` command -----------------------------------------------------------

EXIT_USAGE = 2


def add_eval_command(sub: Any) -> None:
    """Register `esper eval` on the `esper` sub-parsers (sets `handler`)."""
    p = sub.add_parser(
        "eval",
        allow_abbrev=False,
        help="play a run's policy and the baselines on fixed seeds",
        description="Play the run's policy (greedy and sampled) and the baselines (wait, "
        "random, fixed grow heuristics) on the same fixed seeds; print one table and "
        f"write {EVAL_FILE} into the run directory.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory")
    p.add_argument(
        "--episodes",
        type=int,
        default=EVAL_EPISODES,
        help=f"episodes per policy (default {EVAL_EPISODES})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=EVAL_SEED,
        help=f"first evaluation seed (default {EVAL_SEED})",
    )
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """`esper eval`: the table on stdout, eval.json in the run; bad input exit 2, one line."""
    try:
        results = evaluate_run(args.run_dir, args.episodes, args.seed)
        path = write_eval(args.run_dir, results, args.seed)
    except EvalError as exc:
        print(f"esper eval: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"esper eval: error: cannot write {EVAL_FILE}: {exc.strerror or exc}", file=sys.stderr
        )
        return EXIT_USAGE
    first, last = args.seed, args.seed + args.episodes - 1
    print(f"{args.run_dir}: {args.episodes} episodes per policy, seeds {first}-{last}")
    print(format_table(results))
    print(f"wrote {path}")
    return 0
