"""`esper eval`: a run's policy beside the baselines it has to beat, on fixed seeds.

The trained agent is played greedy and sampled, with `random` (uniform over the legal
values) and the blind replay of its own most frequent greedy action sequence (`-blind`:
the paired difference greedy minus blind is what reading the observation is worth), on
the run's own environment (`esper.cli.envs`); on the morphogenetic task also `wait`, the
fixed grow schedules and the closed-loop `rule-stall` of `esper.morpho.baselines`. The
statistics and the playing are `esper.rl.evaluate`'s; this module reads the run and
prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from esper.rl.evaluate import (
    EVAL_EPISODES,
    EVAL_FILE,
    EVAL_SEED,
    PolicyResult,
    format_table,
    write_eval,
)

#: The row every other row is paired against: `wait` on the morphogenetic task (what the
#: host reaches alone), `random` on any other environment.
MORPHO_REFERENCE = "wait"
OTHER_REFERENCE = "random"


class EvalError(ValueError):
    """A run directory or flag `esper eval` cannot work with; the message is one line."""


def load_run_agent(run_dir: Path) -> tuple[Any, Any, bool]:
    """The run's PPO agent restored from its checkpoint, the run's environment, and
    whether that is the morphogenetic task.

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
    return agent, spec, config.env_id is None


def evaluate_run(
    run_dir: Path, episodes: int = EVAL_EPISODES, seed: int = EVAL_SEED
) -> tuple[list[PolicyResult], str]:
    """The trained policy (greedy, sampled) and every baseline on seeds `seed`.., with the
    name of the reference row.

    Deterministic for a fixed seed: the envs come from the seeds, the sampled policy
    draws from the checkpoint's own generator state and `random` from `seed`.
    """
    if isinstance(episodes, bool) or episodes < 1:
        raise EvalError(f"--episodes must be a whole number >= 1, got {episodes}")
    if seed < 0:
        raise EvalError(f"--seed must be a whole number >= 0, got {seed}")
    from esper.rl.evaluate import (
        RandomLegal,
        agent_policies,
        blind_replay,
        eval_seeds,
        evaluate_policies,
        summarize,
    )

    agent, spec, morpho = load_run_agent(run_dir)
    prefix = "tamiyo" if morpho else "agent"
    seeds = eval_seeds(seed, episodes)
    policies: dict[str, Any] = dict(agent_policies(agent, prefix))
    # The greedy policy is played first and recorded: its most frequent action sequence,
    # replayed blindly (`NAME-blind`), is what it would be worth if it never looked.
    greedy_episodes, replay = blind_replay(policies.pop(f"{prefix}-greedy"), spec.make, seeds)
    if morpho:
        from esper.morpho.baselines import StallRule, baselines

        n_slots = spec.actions.head_sizes["slot"]
        both = baselines(spec.episode_length, n_slots)
        policies["wait"] = both.pop("wait")
        policies["random"] = RandomLegal(spec.actions, seed)
        policies.update(both)
        policies["rule-stall"] = StallRule(n_slots)
    else:
        policies["random"] = RandomLegal(spec.actions, seed)
    policies[f"{prefix}-blind"] = replay
    results = [summarize(f"{prefix}-greedy", greedy_episodes)]
    results += evaluate_policies(policies, spec.make, seeds)
    return results, MORPHO_REFERENCE if morpho else OTHER_REFERENCE


# -- the `esper eval` command -----------------------------------------------------------

EXIT_USAGE = 2


def add_eval_command(sub: Any) -> None:
    """Register `esper eval` on the `esper` sub-parsers (sets `handler`)."""
    p = sub.add_parser(
        "eval",
        allow_abbrev=False,
        help="play a run's policy and the baselines on fixed seeds",
        description="Play the run's policy (greedy and sampled) and the baselines (random; "
        "on the morphogenetic task also wait and fixed grow schedules) on the same fixed "
        "seeds; print one table and "
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
        results, reference = evaluate_run(args.run_dir, args.episodes, args.seed)
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
    print(format_table(results, reference))
    print(f"wrote {path}")
    return 0
