"""`python -m benchmarks learning`: does Tamiyo learn the growth decisions, on every seed?

For each task and training seed, PPO trains at the default hyper-parameters
(`TrainConfig()`, the same batches, episode seeds and updates as `esper ppo`, without the
telemetry), recording the mean training return per PPO update. Then the greedy and sampled
policy and every baseline of `esper eval` play the fixed evaluation seeds. Written:
the learning curve (return per block of episodes, baselines as horizontal lines) as a PNG,
the final evaluation table, and a JSON of every number, under `benchmarks/results/`.

This is not a test: it takes minutes of CPU per seed. The pass mark on the family (the
default task) is the closed-loop one: on every seed the greedy policy beats the searched
best schedule and its own blind replay by three paired standard errors each. On a fixed
task, where one schedule is the best policy, it must reach the best fixed heuristic minus
one standard error.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import load_average, machine_info, pin_threads
from benchmarks.family import paired

RESULTS_DIR = Path(__file__).parent / "results"
TASKS = ("family", "spirals", "digits")
SEEDS = (0, 1, 2)
#: Episodes per point of the plotted curve.
BLOCK = 40


def train(task: str, seed: int, episodes: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Train one seed at the defaults (plus `overrides`); returns the agent and its curve.

    The loop is `Trainer._run_batch` without telemetry: the same episode seeds, rollouts
    and updates, so the agent is the one `esper ppo` would have trained.
    """
    import torch

    from esper.cli.envs import env_spec
    from esper.morpho.environment import MorphogeneticEnv
    from esper.rl.config import TrainConfig
    from esper.rl.ppo import PPOAgent
    from esper.rl.rollout import collect_batch
    from esper.rl.trainer import episode_seeds

    cfg = replace(TrainConfig(), task=task, seed=seed, **overrides)
    if episodes is not None:
        cfg = replace(cfg, episodes=episodes)
    torch.manual_seed(cfg.seed)
    envs = [
        MorphogeneticEnv(
            task=cfg.task,
            n_slots=cfg.slots,
            episode_length=cfg.episode_length,
            epochs_per_step=cfg.epochs_per_step,
        )
        for _ in range(cfg.envs)
    ]
    spec = env_spec(cfg)
    agent = PPOAgent(spec.obs_dim, spec.actions, cfg.ppo, seed=cfg.seed)
    returns: list[float] = []
    done = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while done < cfg.episodes:
        n = min(cfg.envs, cfg.episodes - done)
        seeds = episode_seeds(cfg.seed, done, n)
        buffer, eps = collect_batch(agent, envs[:n], cfg.episode_length, seeds)
        agent.update(buffer)
        returns += [float(ep["return"]) for ep in eps]
        done += n
    return {
        "agent": agent,
        "config": cfg.to_dict(),
        "returns": returns,
        "cpu_seconds": time.process_time() - cpu0,
        "wall_seconds": time.perf_counter() - wall0,
    }


def evaluate_agent(
    agent: Any,
    cfg: dict[str, Any],
    episodes: int,
    seed: int,
    cache: Path,
    search_seeds: int | None = None,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Every row of `esper eval` (the same function plays them) on the fixed evaluation
    seeds, and the greedy policy's episodes; the schedule search (on `esper eval`'s number
    of training seeds unless told) is cached in `cache`."""
    from esper.cli.envs import env_spec
    from esper.cli.evaluate import SEARCH_SEEDS, searched_schedule
    from esper.cli.evaluate import evaluate_agent as eval_rows
    from esper.rl import evaluate as ev
    from esper.rl.config import build_config

    config = build_config(cfg, {})

    def search(env_kwargs: dict[str, Any], avoid: list[int]) -> Any:
        return searched_schedule(cache, env_kwargs, avoid, search_seeds or SEARCH_SEEDS)

    seeds = ev.eval_seeds(seed, episodes)
    done = eval_rows(agent, env_spec(config), config, seeds, seed, search)
    return done.results, done.greedy_episodes


def block_means(returns: Sequence[float], block: int) -> list[float]:
    """Mean return of each full block of `block` consecutive episodes."""
    n = len(returns) // block
    return [float(np.mean(returns[k * block : (k + 1) * block])) for k in range(n)]


def verdict(results: Sequence[Any], closed_loop: bool) -> dict[str, Any]:
    """The pass mark. On a fixed task one schedule is the best policy, so greedy must reach
    the best fixed heuristic minus one standard error. On the task family the policy must
    read what it observes: greedy beats the searched best single schedule and its own
    blind replay, each by at least 3 paired standard errors."""
    by_name = {r.policy: r for r in results}
    greedy = by_name["tamiyo-greedy"]
    doc: dict[str, Any] = {
        "greedy_mean": greedy.mean_return,
        "vs_schedule_best": paired(greedy.returns, by_name["schedule-best"].returns),
        "vs_blind": paired(greedy.returns, by_name["tamiyo-blind"].returns),
    }
    if closed_loop:
        doc["passed"] = all(
            (doc[k]["t"] is not None and doc[k]["t"] >= 3) for k in ("vs_schedule_best", "vs_blind")
        )
        return doc
    heuristics = [r for r in results if r.policy.startswith("grow-")]
    best = max(heuristics, key=lambda r: r.mean_return)
    mark = best.mean_return - (best.stderr_return or 0.0)  # None: one eval episode
    doc.update(best_heuristic=best.policy, best_mean=best.mean_return, mark=mark)
    doc["passed"] = greedy.mean_return >= mark
    return doc


def per_kind(episodes: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """What the greedy policy did in each case it met: episodes, seeds grown, return."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for ep in episodes:
        kinds.setdefault(str(ep.get("kind", "?")), []).append(ep)
    return {
        kind: {
            "episodes": len(eps),
            "seeds_grown": float(np.mean([e["seeds_grown"] for e in eps])),
            "seeds_killed": float(np.mean([e["seeds_killed"] for e in eps])),
            "mean_return": float(np.mean([e["return"] for e in eps])),
        }
        for kind, eps in sorted(kinds.items())
    }


def greedy_plays(agent: Any, cfg: dict[str, Any], seeds: Sequence[int]) -> dict[str, list[str]]:
    """Per case, the greedy policy's most frequent episode on `seeds`, as one line per
    step that does something ("t0 GROW slot=1 NORM ..."; WAIT steps left out): what it
    learned to do differently from case to case, which seeds grown alone cannot say."""
    from esper.cli.envs import env_spec
    from esper.morpho.actions import HEAD_INDEX, Op, describe
    from esper.morpho.schedules import seeds_by_kind
    from esper.rl.config import build_config
    from esper.rl.evaluate import Recording, agent_policies, play

    spec = env_spec(build_config(cfg, {}))
    greedy = agent_policies(agent, "tamiyo")["tamiyo-greedy"]
    plays: dict[str, list[str]] = {}
    for kind, kind_seeds in sorted(seeds_by_kind(spec.make(), seeds).items()):
        if not kind_seeds:
            continue
        recording = Recording(greedy)
        episodes = play(recording, spec.make, kind_seeds)
        lengths = [int(ep["length"]) for ep in episodes]
        sequence = recording.most_frequent_sequence(lengths, spec.actions)
        plays[kind] = [
            f"t{t} {describe(step)}"
            for t, step in enumerate(sequence)
            if step[HEAD_INDEX["op"]] != Op.WAIT
        ] or ["WAIT"]
    return plays


def _verdict_line(task: str, seed: int, trained: dict[str, Any], check: dict[str, Any]) -> str:
    def diff(key: str) -> str:
        d = check[key]
        se = "" if d["se"] is None else f" ± {d['se']:.3f}"
        t = "" if d["t"] is None else f" ({d['t']:.1f} SE)"
        return f"{d['mean']:+.3f}{se}{t}"

    head = (
        f"\n{task} seed {seed}: {trained['cpu_seconds']:.0f} CPU-s, "
        f"{len(trained['returns'])} episodes; greedy {check['greedy_mean']:.3f}; "
        f"greedy - schedule-best {diff('vs_schedule_best')}; greedy - blind {diff('vs_blind')}"
    )
    if "mark" in check:
        head += f"; mark {check['mark']:.3f} ({check['best_heuristic']})"
    return f"{head} -> {'PASS' if check['passed'] else 'FAIL'}"


def plot(
    curves: dict[str, dict[int, list[float]]], lines: dict[str, dict[str, float]], path: Path
) -> None:
    """One panel per task: per-seed block means, baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (task, per_seed) in zip(axes[0], curves.items(), strict=True):
        for seed, points in per_seed.items():
            x = [(k + 1) * BLOCK for k in range(len(points))]
            ax.plot(x, points, marker=".", label=f"Tamiyo seed {seed} (sampled)")
        styles = {"wait": ":", "random": "-."}
        for name, value in lines[task].items():
            ax.axhline(value, linestyle=styles.get(name, "--"), linewidth=1, color="grey")
            ax.text(0.01, value, name, transform=ax.get_yaxis_transform(), fontsize=7,
                    va="bottom", color="grey")  # fmt: skip
        ax.set_title(f"{task}: training return per {BLOCK} episodes")
        ax.set_xlabel("episodes")
        ax.set_ylabel("episode return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    tasks: Sequence[str],
    seeds: Sequence[int],
    episodes: int | None,
    eval_episodes: int,
    eval_seed: int,
    out: Path,
) -> dict[str, Any]:
    from esper.morpho.tasks import FAMILY_TASK
    from esper.rl import evaluate as ev

    load = {"before": load_average()}
    doc = _previous(out)  # tasks not run this time keep their last record
    doc["machine"] = machine_info()
    doc.setdefault("tasks", {})
    for task in tasks:
        runs = []
        for seed in seeds:
            trained = train(task, seed, episodes or EPISODES[task])
            cache = out / f"schedule_search_{task}.json"
            results, greedy_eps = evaluate_agent(
                trained["agent"], trained["config"], eval_episodes, eval_seed, cache
            )
            check = verdict(results, closed_loop=task == FAMILY_TASK)
            kinds = per_kind(greedy_eps)
            plays: dict[str, list[str]] = {}
            if task == FAMILY_TASK:
                seeds_played = ev.eval_seeds(eval_seed, eval_episodes)
                plays = greedy_plays(trained["agent"], trained["config"], seeds_played)
            print(_verdict_line(task, seed, trained, check))
            print(ev.format_table(results))
            if task == FAMILY_TASK:
                print("greedy per case: " + "; ".join(
                    f"{k} {v['seeds_grown']:.1f} grown, return {v['mean_return']:.3f} "
                    f"(n={v['episodes']})" for k, v in kinds.items()))  # fmt: skip
                for kind, steps in plays.items():
                    print(f"  {kind}: {'; '.join(steps)}")
            save_weights(trained["agent"], out / "agents" / f"{task}_seed{seed}.pt")
            runs.append(
                {
                    "seed": seed,
                    "config": trained["config"],
                    "cpu_seconds": trained["cpu_seconds"],
                    "wall_seconds": trained["wall_seconds"],
                    "load_average_after": load_average(),
                    "train_returns": trained["returns"],
                    "verdict": check,
                    "greedy_per_kind": kinds,
                    "greedy_plays": plays,
                    "eval": [r.to_dict() for r in results],
                    "table": ev.format_table(results),
                }
            )
            doc["tasks"][task] = runs
            _write(doc, load, out)  # after every seed: a cut run keeps its part
    print(f"\nload {load['before']} -> {load['after']}; wrote {out}/learning.png, learning.json")
    return doc


def save_weights(agent: Any, path: Path) -> None:
    """The trained policy's weights (a state dict, loadable with `weights_only=True`), so
    that what a seed learned can be looked at again without training it again."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(agent.policy.state_dict(), path)


def _previous(out: Path) -> dict[str, Any]:
    path = out / "learning.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(doc: dict[str, Any], load: dict[str, Any], out: Path) -> None:
    load["after"] = load_average()
    doc["load_average"] = load
    doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    plot_doc(doc, out / "learning.png")


def plot_doc(doc: dict[str, Any], path: Path) -> None:
    """learning.png from a learning.json document: every seed's curve, the baselines of
    each task's last seed as lines."""
    curves = {
        task: {r["seed"]: block_means(r["train_returns"], BLOCK) for r in runs}
        for task, runs in doc["tasks"].items()
    }
    lines = {}
    for task, runs in doc["tasks"].items():
        baseline = [e for e in runs[-1]["eval"] if not e["policy"].startswith("tamiyo")]
        lines[task] = {e["policy"]: e["mean_return"] for e in baseline}
    plot(curves, lines, path)


def replot(out: Path) -> None:
    """Redraw learning.png from an existing learning.json (no training)."""
    plot_doc(json.loads((out / "learning.json").read_text(encoding="utf-8")), out / "learning.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks learning", description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="training episodes per seed (default: the benchmark's)",
    )
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--eval-seed", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--replot", action="store_true", help="only redraw learning.png from learning.json"
    )
    args = parser.parse_args(argv)
    if args.replot:
        replot(args.output)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pin_threads(1)
    run(
        args.tasks,
        args.seeds,
        args.episodes,
        args.eval_episodes,
        args.eval_seed,
        args.output,
    )
    return 0


#: Training episodes per seed unless told: on the family, the full run the README names
#: (inside 15 CPU-minutes on 2 cores); a fixed task needs fewer.
EPISODES = {"family": 10_000, "spirals": 1000, "digits": 1000}
