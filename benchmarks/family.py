"""`python -m benchmarks family`: does the task family pose different problems per case?

Measured before any controller is tuned on it: a learned policy that reads its
observation can only beat every fixed schedule where the best decision differs between
cases. So the schedule family (`esper.morpho.schedules`) is searched on training seeds,
once over all of them (the best single open-loop schedule) and once per task kind (the
best schedule for that case, started from the single one); then, on evaluation seeds that
the search never saw, each evaluation episode is played with the single best schedule and
with the best schedule of its own kind. The figure is the paired difference of those two
returns (mean and standard error over the evaluation seeds), overall and per kind, with
WAIT beside them. Written: `benchmarks/results/family.json` and a table.

This is not a test: it plays thousands of episodes, on a pool of one process per CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.common import load_average, machine_info

RESULTS = Path(__file__).parent / "results" / "family.json"
#: Training seeds of the search and evaluation seeds, disjoint: the search never sees the
#: episodes it is judged on.
TRAIN_SEEDS = range(0, 60)
EVAL_SEEDS = range(50_000, 50_100)
QUICK_TRAIN_SEEDS = range(0, 20)
QUICK_EVAL_SEEDS = range(50_000, 50_030)


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of a - b, its standard error and how many standard errors from zero (None
    where every difference is the same)."""
    from esper.rl.evaluate import paired_returns

    mean, se = paired_returns(a, b)
    t = mean / se if se is not None and se > 1e-9 else None
    return {"mean": mean, "se": se, "t": t, "n": len(a)}


def run(
    train_seeds: Sequence[int],
    eval_seeds: Sequence[int],
    console: Console,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The search and the paired evaluation on the family env (`env_kwargs`: its episode
    length and epochs per step, beside `task="family"`)."""
    from esper.morpho.environment import MorphogeneticEnv
    from esper.morpho.schedules import Choice, Scorer, pooled, search_family, seeds_by_kind

    kwargs = {"task": "family", **(env_kwargs or {})}
    env = MorphogeneticEnv(**kwargs)
    n_slots = env.n_slots
    workers = max(1, len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    with pooled(kwargs, workers) as play_many:
        with console.status("searching the schedule family…") as status:
            scorer = Scorer(
                play_many,
                lambda n: status.update(f"searching the schedule family: {n} episodes played"),
            )
            found = search_family(scorer, env, list(train_seeds), n_slots)
        search_s = time.perf_counter() - start
        kinds = seeds_by_kind(env, eval_seeds)
        kind_of = {seed: kind for kind, seeds in kinds.items() for seed in seeds}
        seeds = list(eval_seeds)
        with console.status("playing the evaluation seeds…"):
            wait = play_many([(Choice(count=0), s) for s in seeds])
            single = play_many([(found.single, s) for s in seeds])
            # a kind no training seed drew has no search of its own: the single best
            own = {s: found.per_kind.get(kind_of[s], found.single) for s in seeds}
            per_kind = play_many([(own[s], s) for s in seeds])
    by_seed = {"wait": wait, "single": single, "per_kind": per_kind}
    rows = {}
    for kind, members in kinds.items():
        if not members:
            continue
        idx = [seeds.index(s) for s in members]
        pick = {name: [values[i] for i in idx] for name, values in by_seed.items()}
        rows[kind] = {
            "episodes": len(idx),
            "best": found.per_kind.get(kind, found.single).name,
            "train_return": found.per_kind_score.get(kind),
            **{f"{name}_return": float(np.mean(v)) for name, v in pick.items()},
            "per_kind_minus_single": paired(pick["per_kind"], pick["single"]),
        }
    return {
        "single": {"best": found.single.name, "train_return": found.single_score},
        "kinds": rows,
        "overall": {
            **{f"{name}_return": float(np.mean(v)) for name, v in by_seed.items()},
            "per_kind_minus_single": paired(per_kind, single),
            "single_minus_wait": paired(single, wait),
        },
        "returns": {"seeds": seeds, "kind": [kind_of[s] for s in seeds], **by_seed},
        "search": {
            "episodes": len(scorer.returns),
            "seconds": search_s,
            "train_seeds": [train_seeds[0], train_seeds[-1]],
        },
        "workers": workers,
        "env": kwargs,
    }


def table(result: dict[str, Any]) -> Table:
    t = Table(title=f"best single schedule: {result['single']['best']}")
    for col in ("kind", "n", "its best schedule", "WAIT", "single", "its best", "best - single"):
        t.add_column(col, justify="left" if col in ("kind", "its best schedule") else "right")

    def gap(p: dict[str, Any]) -> str:
        if p["t"] is None:  # the same difference on every seed (or a single one)
            return f"{p['mean']:+.3f} on every seed"
        return f"{p['mean']:+.3f} ± {p['se']:.3f} ({p['t']:.1f} SE)"

    for kind, row in result["kinds"].items():
        t.add_row(
            kind,
            str(row["episodes"]),
            row["best"],
            f"{row['wait_return']:.3f}",
            f"{row['single_return']:.3f}",
            f"{row['per_kind_return']:.3f}",
            gap(row["per_kind_minus_single"]),
        )
    o = result["overall"]
    t.add_row(
        "all",
        str(o["per_kind_minus_single"]["n"]),
        "",
        f"{o['wait_return']:.3f}",
        f"{o['single_return']:.3f}",
        f"{o['per_kind_return']:.3f}",
        gap(o["per_kind_minus_single"]),
    )
    return t


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks family", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer seeds (a few minutes)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    from esper.morpho.environment import DEFAULT_EPISODE_LENGTH, DEFAULT_EPOCHS_PER_STEP

    parser.add_argument(
        "--episode-length",
        type=int,
        default=DEFAULT_EPISODE_LENGTH,
        help="decisions per episode (default: the env's)",
    )
    parser.add_argument(
        "--epochs-per-step",
        type=int,
        default=DEFAULT_EPOCHS_PER_STEP,
        help="host epochs between two decisions (default: the env's)",
    )
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 120))
    train, evaluate = (
        (QUICK_TRAIN_SEEDS, QUICK_EVAL_SEEDS) if args.quick else (TRAIN_SEEDS, EVAL_SEEDS)
    )
    load = {"before": load_average()}
    start = time.perf_counter()
    env_kwargs = {"episode_length": args.episode_length, "epochs_per_step": args.epochs_per_step}
    result = run(train, evaluate, console, env_kwargs)
    load["after"] = load_average()
    result.update(
        mode="quick" if args.quick else "full",
        wall_s=time.perf_counter() - start,
        load_average=load,
        machine=machine_info(),
    )
    console.print(table(result))
    console.print(
        f"{result['search']['episodes']} search episodes in {result['search']['seconds']:.0f} s"
        f" on {result['workers']} processes; load {load['before']} -> {load['after']}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.output}")
    return 0
