"""`esper eval`: a run's policy beside the baselines it has to beat, on fixed seeds.

The trained agent is played greedy and sampled, with `random` (uniform over the legal
values) and the blind replay of its own most frequent greedy action sequence (`-blind`:
the paired difference greedy minus blind is what reading the observation is worth), on
the run's own environment (`esper.cli.envs`); on the morphogenetic task also `wait`, the
fixed grow schedules, `schedule-best` (the best single schedule of the whole schedule
family, searched on training seeds disjoint from the evaluation seeds, `esper.morpho.
schedules`; cached in the run directory) and the closed-loop `rule-stall` of
`esper.morpho.baselines`. The statistics and the playing are `esper.rl.evaluate`'s; this
module reads the run and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper.rl.evaluate import (
    EVAL_EPISODES,
    EVAL_FILE,
    EVAL_SEED,
    PolicyResult,
    format_table,
    write_eval,
)

if TYPE_CHECKING:
    from esper.morpho.schedules import SearchedSchedule

#: The row every other row is paired against: `wait` on the morphogenetic task (what the
#: host reaches alone), `random` on any other environment.
MORPHO_REFERENCE = "wait"
OTHER_REFERENCE = "random"
#: Training seeds the schedule search plays each candidate on, unless told otherwise.
SEARCH_SEEDS = 40
#: The searched schedule, cached per run directory (keyed by the env settings and seeds).
SEARCH_FILE = "schedule_search.json"


class EvalError(ValueError):
    """A run directory or flag `esper eval` cannot work with; the message is one line."""


def load_run_agent(run_dir: Path) -> tuple[Any, Any, Any]:
    """The run's PPO agent restored from its checkpoint, the run's environment and its
    `TrainConfig`.

    The checkpoint is read with `weights_only=True` (see `esper.rl.checkpoint`). The agent
    is rebuilt from the checkpoint's own shapes (observation size, heads, trunk width) and
    the environment from the run's configuration (`esper.cli.envs.env_spec`). Anything
    missing, foreign or of the wrong shape is an `EvalError`.
    """
    from esper.cli.envs import env_spec
    from esper.rl.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from esper.rl.config import PPOConfig, build_config
    from esper.rl.ppo import PPOAgent

    path = run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise EvalError(f"{run_dir} is not a directory")
    if not path.is_file():
        raise EvalError(f"{run_dir} has no {CHECKPOINT_NAME}; is it an esper run directory?")
    try:
        state = load_checkpoint(path)
        config = build_config(state["config"], {})
        spec = env_spec(config)
        saved = state["agent"]
        hidden = int(saved["policy"]["value_head.weight"].shape[1])
        agent = PPOAgent(
            obs_dim=int(saved["obs_dim"]),
            actions=spec.actions,
            config=PPOConfig(hidden=hidden),
            device="cpu",
        )
        agent.load_state_dict(saved)
    except Exception as exc:  # any unreadable or foreign checkpoint: one line, no traceback
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise EvalError(f"cannot load the checkpoint in {run_dir}: {first}") from None
    return agent, spec, config


def searched_schedule(
    cache: Path, env_kwargs: dict[str, Any], avoid: list[int], n_seeds: int
) -> SearchedSchedule:
    """The best single schedule for the env (`esper.morpho.schedules.best_schedule`),
    searched on `n_seeds` training seeds outside `avoid`, on one process per CPU, with a
    progress line on stderr; cached in the file `cache`."""
    import os

    from rich.console import Console

    from esper.morpho.schedules import best_schedule, search_seeds

    seeds = search_seeds(n_seeds, avoid)
    workers = min(len(os.sched_getaffinity(0)), 8) if n_seeds >= 8 else 1
    what = f"searching the schedule family on {n_seeds} training seeds"
    with Console(stderr=True).status(f"{what}…") as status:
        return best_schedule(
            env_kwargs,
            seeds,
            workers,
            progress=lambda n: status.update(f"{what}: {n} episodes played"),
            cache=cache,
        )


@dataclass(frozen=True)
class Evaluation:
    """What `esper eval` plays and finds: the table's rows (greedy first), the row the
    others are paired against, what the searched rows were found to be, and the greedy
    policy's own episode summaries (the morphogenetic env's carry the case it drew)."""

    results: list[PolicyResult]
    reference: str
    searched: dict[str, Any]
    greedy_episodes: list[dict[str, Any]]


def evaluate_agent(
    agent: Any,
    spec: Any,
    config: Any,
    seeds: list[int],
    seed: int,
    search: Callable[[dict[str, Any], list[int]], SearchedSchedule],
) -> Evaluation:
    """Every row of `esper eval` for a trained agent on `seeds`: the one place that says
    which baselines a policy is judged against (`python -m benchmarks learning` plays the
    same). `search(env_kwargs, seeds)` finds the best single schedule, kept off `seeds`.
    """
    from esper.rl.evaluate import (
        RandomLegal,
        agent_policies,
        blind_replay,
        evaluate_policies,
        summarize,
    )

    morpho = config.env_id is None
    prefix = "tamiyo" if morpho else "agent"
    policies: dict[str, Any] = dict(agent_policies(agent, prefix))
    searched: dict[str, Any] = {}
    # The greedy policy is played first and recorded: its most frequent action sequence,
    # replayed blindly (`NAME-blind`), is what it would be worth if it never looked.
    greedy_episodes, replay = blind_replay(
        policies.pop(f"{prefix}-greedy"), spec.make, seeds, spec.actions
    )
    if morpho:
        from esper.morpho.baselines import StallRule, baselines

        n_slots = spec.actions.head_sizes["slot"]
        both = baselines(spec.episode_length, n_slots)
        policies["wait"] = both.pop("wait")
        policies["random"] = RandomLegal(spec.actions, seed)
        policies.update(both)
        env_kwargs = {"task": config.task, "n_slots": n_slots,
                      "episode_length": spec.episode_length,
                      "epochs_per_step": config.epochs_per_step}  # fmt: skip
        found = search(env_kwargs, seeds)
        policies["schedule-best"] = found.choice.schedule()
        searched["schedule-best"] = found.to_dict()
        policies["rule-stall"] = StallRule(n_slots)
    else:
        policies["random"] = RandomLegal(spec.actions, seed)
    policies[f"{prefix}-blind"] = replay
    results = [summarize(f"{prefix}-greedy", greedy_episodes)]
    results += evaluate_policies(policies, spec.make, seeds)
    reference = MORPHO_REFERENCE if morpho else OTHER_REFERENCE
    return Evaluation(results, reference, searched, greedy_episodes)


def evaluate_run(
    run_dir: Path,
    episodes: int = EVAL_EPISODES,
    seed: int = EVAL_SEED,
    search_seeds: int = SEARCH_SEEDS,
) -> tuple[list[PolicyResult], str, dict[str, Any]]:
    """The trained policy (greedy, sampled) and every baseline on seeds `seed`.., the
    name of the reference row, and what the searched rows were found to be.

    Deterministic for a fixed seed: the envs come from the seeds, the sampled policy
    draws from the checkpoint's own generator state and `random` from `seed`.
    """
    if isinstance(episodes, bool) or episodes < 1:
        raise EvalError(f"--episodes must be a whole number >= 1, got {episodes}")
    if seed < 0:
        raise EvalError(f"--seed must be a whole number >= 0, got {seed}")
    if isinstance(search_seeds, bool) or search_seeds < 1:
        raise EvalError(f"--search-seeds must be a whole number >= 1, got {search_seeds}")
    from esper.rl.evaluate import eval_seeds

    agent, spec, config = load_run_agent(run_dir)

    def search(env_kwargs: dict[str, Any], avoid: list[int]) -> SearchedSchedule:
        return searched_schedule(run_dir / SEARCH_FILE, env_kwargs, avoid, search_seeds)

    done = evaluate_agent(agent, spec, config, eval_seeds(seed, episodes), seed, search)
    return done.results, done.reference, done.searched


# -- the `esper eval` command -----------------------------------------------------------

EXIT_USAGE = 2


def add_eval_command(sub: Any) -> None:
    """Register `esper eval` on the `esper` sub-parsers (sets `handler`)."""
    p = sub.add_parser(
        "eval",
        allow_abbrev=False,
        help="play a run's policy and the baselines on fixed seeds",
        description="Play the run's policy (greedy and sampled, and its blind replay) and "
        "the baselines (random; on the morphogenetic task also wait, fixed grow schedules, "
        "the best single schedule searched on other seeds and a closed-loop rule) on the "
        "same fixed seeds; print one table and "
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
    p.add_argument(
        "--search-seeds",
        type=int,
        default=SEARCH_SEEDS,
        metavar="N",
        help="training seeds the schedule-best search plays each candidate on (default "
        f"{SEARCH_SEEDS}; the result is cached in the run directory as {SEARCH_FILE})",
    )
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """`esper eval`: the table on stdout, eval.json in the run; bad input exit 2, one line."""
    try:
        results, reference, searched = evaluate_run(
            args.run_dir, args.episodes, args.seed, args.search_seeds
        )
        path = write_eval(args.run_dir, results, args.seed, searched, reference)
    except EvalError as exc:
        print(f"esper eval: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"esper eval: error: cannot write {EVAL_FILE}: {exc.strerror or exc}", file=sys.stderr
        )
        return EXIT_USAGE
    first, last = args.seed, args.seed + args.episodes - 1
    plays = f"{args.episodes} episode{'s' if args.episodes != 1 else ''} per policy"
    seeds = f"seeds {first}-{last}" if last != first else f"seed {first}"
    print(f"{args.run_dir}: {plays}, {seeds}")
    print(format_table(results, reference))
    for name, found in searched.items():
        first_s, last_s = found["seeds"]
        print(
            f"{name} = {found['name']} (searched on seeds {first_s}-{last_s}: "
            f"mean return {found['train_return']:.3f}, {found['episodes']} episodes)"
        )
    print(f"wrote {path}")
    return 0
