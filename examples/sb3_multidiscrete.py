"""Stable-Baselines3 PPO, watched head by head: MuJoCo HalfCheetah with one head per joint.

HalfCheetah's six torques become six categorical heads (11 levels each) with
`DiscretizeActions`, so SB3 trains a factored policy: it multiplies six per-head ratios
into one and clips only that. `PerHeadPPO` is SB3's PPO with the same maths that also
records every head's ratio range, clip fraction, entropy and KL per update, so you can
see which joint's head moved when the joint ratio jumps.

    python examples/sb3_multidiscrete.py                    # 8192 steps, 4 PPO updates
    python examples/sb3_multidiscrete.py --env Pendulum-v1  # any Box-action task
    sanctum runs/<run-id>                                   # the dashboard
    esper report runs/<run-id>                              # plots
    esper query runs/<run-id> "select update_index, joint_ratio_max from ppo_updates"

Needs the `sb3` extra: pip install 'esper-ppo[sb3]'.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium

from esper.integrations.gym import DiscretizeActions


def head_names_for(env: gymnasium.Env[Any, Any]) -> list[str]:
    """One name per action dimension: MuJoCo actuator names when the task has them."""
    dims = int(env.action_space.shape[0]) if env.action_space.shape else 1
    model = getattr(env.unwrapped, "model", None)
    names = []
    for i in range(dims):
        try:
            raw = str(model.actuator(i).name) if model is not None else ""
        except Exception:
            raw = ""
        name = re.sub(r"\W", "_", raw)[:32]
        names.append(name if name and not name[0].isdigit() else f"a{i}")
    return names if len(set(names)) == len(names) else [f"a{i}" for i in range(dims)]


def make_env(env_id: str, bins: int) -> DiscretizeActions:
    return DiscretizeActions(gymnasium.make(env_id), bins)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5", help="a Box-action gymnasium task")
    parser.add_argument("--bins", type=int, default=11, help="levels per action dimension")
    parser.add_argument("--timesteps", type=int, default=8192, help="environment steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, help="default runs/<run-id>")
    parser.add_argument("--tiny", action="store_true", help="a few seconds: CI's smoke run")
    args = parser.parse_args(argv)

    from esper.integrations.sb3 import PerHeadPPO

    env = make_env(args.env, args.bins)
    sizes: dict[str, Any] = {}  # SB3's defaults: 2048 steps, minibatches of 64, 10 epochs
    timesteps = args.timesteps
    if args.tiny:
        sizes = {"n_steps": 64, "batch_size": 32, "n_epochs": 2}
        timesteps = 128
    model = PerHeadPPO(
        "MlpPolicy",
        env,
        run_dir=args.run_dir,
        head_names=head_names_for(env),
        seed=args.seed,
        **sizes,
    )
    model.learn(timesteps)
    run = model.recorded_run_dir
    print(f"recorded {args.env} with heads {', '.join(model.head_names)} in {run}")
    print(f"  watch:  sanctum {run}")
    print(f"  plots:  esper report {run}")
    print(f'  SQL:    esper query {run} "select update_index, joint_ratio_max from ppo_updates"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
