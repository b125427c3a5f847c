"""Evaluation: policies' returns on fixed seeds, paired episode by episode.

Every policy, a trained one or a baseline, is played by `play`, which steps the real
environment through the same `InProcessRunner` the trainer's rollouts use, one env per
evaluation seed, all of them in lock step. A baseline therefore sees exactly the
observations, legal values and rewards a trained policy sees, and the comparison is
paired: episode k of every policy starts from the same seed.

What the algorithm brings for any environment is the trained agent (greedy and sampled)
and `random` (uniform over the legal values: what an untrained policy does). An
environment adds its own baselines (`esper.morpho.baselines` for the morphogenetic task).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from esper.common.spaces import FactoredActions
from esper.rl.runners import EnvStates, FactoredEnv, InProcessRunner

IntArray = npt.NDArray[np.int64]

#: Evaluation seeds are SEED, SEED + 1, ...: far from the trainer's episode seeds
#: (seed * 1_000_003 + k) for every training seed below 1000 and runs under 10^4 episodes.
EVAL_SEED = 10_000
EVAL_EPISODES = 30
EVAL_FILE = "eval.json"
#: A cell with no value: a spread of one episode is undefined, not zero.
NO_VALUE = "—"
#: Steps after which an evaluation episode that has not ended is an error.
MAX_EVAL_STEPS = 100_000

#: A batch policy: the stacked states of every env and the step index -> actions [n, H].
BatchPolicy = Callable[[EnvStates, int], IntArray]


@dataclass
class RandomLegal:
    """Uniform over the legal values: the selector first, then every other head under the
    legal values of the selector's choice. What a freshly initialised policy does (its
    logits start near zero)."""

    actions: FactoredActions
    seed: int
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, states: EnvStates, t: int) -> IntArray:
        spec = self.actions
        sel = spec.selector_index
        out = np.zeros((states.obs.shape[0], spec.n_heads), dtype=np.int64)
        for i, legal in enumerate(states.legal):
            case = 0
            if sel is not None:
                case = int(self.rng.choice(np.flatnonzero(legal[0, sel, : spec.sizes[sel]])))
            for h, size in enumerate(spec.sizes):
                out[i, h] = (
                    case if h == sel else self.rng.choice(np.flatnonzero(legal[case, h, :size]))
                )
        return out


def agent_policies(agent: Any, name: str) -> dict[str, BatchPolicy]:
    """A trained agent played greedy (`NAME-greedy`, the mode of every head) and sampled."""

    def greedy(states: EnvStates, t: int) -> IntArray:
        actions, _, _ = agent.act(states.obs, states.legal, True)
        return actions

    def sampled(states: EnvStates, t: int) -> IntArray:
        actions, _, _ = agent.act(states.obs, states.legal, False)
        return actions

    return {f"{name}-greedy": greedy, f"{name}-sampled": sampled}


class Recording:
    """A policy played as it is, its actions kept per env and step (for `Replay`)."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self.steps: list[IntArray] = []

    def __call__(self, states: EnvStates, t: int) -> IntArray:
        actions = np.asarray(self.policy(states, t))
        self.steps.append(actions.copy())
        return actions

    def most_frequent_sequence(
        self, lengths: Sequence[int] | None = None, actions: FactoredActions | None = None
    ) -> IntArray:
        """The action sequence [steps, H] most episodes played (ties: the first env's).

        `lengths[i]` cuts env i's sequence where its first episode ended. With `actions`,
        two sequences that differ only in heads their selector makes irrelevant are the
        same behaviour and are counted together: a greedy WAIT still picks some value for
        every other head, and that value may change with the observation.
        """
        played = np.stack(self.steps, axis=1)  # [envs, steps, H]
        if lengths is None:
            lengths = [played.shape[1]] * played.shape[0]
        sequences = [played[i, :n] for i, n in enumerate(lengths)]
        if actions is None:
            keys = [seq.tobytes() for seq in sequences]
        else:
            keys = [np.where(actions.relevant(seq), seq, 0).tobytes() for seq in sequences]
        # Counter keeps first-seen order, so a tie goes to the lowest env index
        most, _ = Counter(keys).most_common(1)[0]
        return sequences[keys.index(most)]


@dataclass
class Replay:
    """One fixed action sequence played blindly, whatever the env shows: what is left of a
    policy that never reads its observation. Past its end it repeats its last action; an
    action that is illegal in some episode is the env's to handle (the morphogenetic env
    executes it as WAIT), exactly as a blind schedule would fare."""

    sequence: IntArray

    def __call__(self, states: EnvStates, t: int) -> IntArray:
        row = self.sequence[min(t, len(self.sequence) - 1)]
        return np.repeat(row[None], states.obs.shape[0], axis=0).astype(np.int64)


def blind_replay(
    policy: BatchPolicy,
    make_env: Callable[[], FactoredEnv],
    seeds: Sequence[int],
    actions: FactoredActions | None = None,
) -> tuple[list[dict[str, Any]], Replay]:
    """Play `policy` on `seeds`, then the replay of its most frequent action sequence
    (counted by what `actions` makes relevant, when given); returns the policy's own
    episodes and the replay."""
    recording = Recording(policy)
    episodes = play(recording, make_env, seeds)
    lengths = [int(ep.get("length", len(recording.steps))) for ep in episodes]
    return episodes, Replay(recording.most_frequent_sequence(lengths, actions))


def eval_seeds(seed: int, episodes: int) -> list[int]:
    return [seed + k for k in range(episodes)]


def play(
    policy: BatchPolicy,
    make_env: Callable[[], FactoredEnv],
    seeds: Sequence[int],
    max_steps: int = MAX_EVAL_STEPS,
) -> list[dict[str, Any]]:
    """The first episode of each seed, all envs in lock step; each env's `info["episode"]`.

    An env that ends before the others goes on stepping (it reset itself, or its episodes
    all last as long); what it does after its first episode is not counted.
    """
    envs = [make_env() for _ in seeds]
    runner = InProcessRunner(envs)
    states: EnvStates = runner.reset(list(seeds))
    episodes: list[dict[str, Any] | None] = [None] * len(seeds)
    for t in range(max_steps):
        result = runner.step(policy(states, t))
        for i, info in enumerate(result.infos):
            if episodes[i] is None and (result.terminated[i] or result.truncated[i]):
                episodes[i] = dict(info.get("episode", {}))
        states = result
        if all(ep is not None for ep in episodes):
            return [ep for ep in episodes if ep is not None]
    raise RuntimeError(f"an evaluation episode did not end within {max_steps} steps")


@dataclass(frozen=True)
class PolicyResult:
    """One row of the evaluation table (and one entry of eval.json).

    `std_return` and `stderr_return` are None (null in eval.json) for a single episode:
    a sample spread needs two, and 0.0 would claim a certainty one episode cannot give.
    `host_accuracy` and `seeds_grown` are the morphogenetic task's; None where the
    environment reports no such thing.
    """

    policy: str
    mean_return: float
    std_return: float | None
    stderr_return: float | None
    episodes: int
    host_accuracy: float | None
    seeds_grown: float | None
    returns: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean_of(episodes: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(ep[key]) for ep in episodes if key in ep]
    return float(np.mean(values)) if values and len(values) == len(episodes) else None


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
        host_accuracy=_mean_of(episodes, "final_accuracy"),
        seeds_grown=_mean_of(episodes, "seeds_grown"),
        returns=[float(r) for r in returns],
    )


def paired_difference(a: PolicyResult, b: PolicyResult) -> tuple[float, float | None]:
    """Mean and standard error of a - b, episode by episode (same seeds, same hosts).

    The standard error is None (undefined) with fewer than two episodes.
    """
    return paired_returns(a.returns, b.returns)


def paired_returns(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None]:
    """`paired_difference` of two lists of returns, episode k of each from the same seed."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.size < 2:
        return float(diff.mean()) if diff.size else 0.0, None
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size))


def evaluate_policies(
    policies: Mapping[str, BatchPolicy],
    make_env: Callable[[], FactoredEnv],
    seeds: Sequence[int],
) -> list[PolicyResult]:
    """Play every policy on the same seeds; one result per policy, in the given order."""
    return [summarize(name, play(policy, make_env, seeds)) for name, policy in policies.items()]


def _cell(value: float | None, digits: int = 3) -> str:
    """A number to `digits` decimals, or the no-value dash when it is undefined."""
    return NO_VALUE if value is None else f"{value:.{digits}f}"


def results_table_rows(results: Sequence[PolicyResult], reference: str) -> list[list[str]]:
    """The table's cells: the paired difference to the `reference` row, if it is there, and
    the greedy policy's paired difference to each row, where a greedy row is there (what a
    learned policy must win by)."""
    greedy = _greedy_row(results)
    rows = []
    for r, paired in zip(results, paired_entries(results, reference), strict=True):
        versus = paired.get("versus")
        row = [
            r.policy,
            f"{r.mean_return:.3f}",
            _cell(r.std_return),
            _cell(r.stderr_return),
            "" if versus is None else f"{versus['mean']:+.3f} ± {_cell(versus['se'])}",
            _cell(r.host_accuracy),
            _cell(r.seeds_grown, 2),
        ]
        if greedy is not None:
            row.append(_margin_cell(paired.get("greedy_minus_this")))
        rows.append(row)
    return rows


def _margin_cell(margin: Mapping[str, Any] | None) -> str:
    """A paired difference `{"mean", "se"}` with how many standard errors it is ("" for
    none; no count where the standard error is undefined or zero)."""
    if margin is None:
        return ""
    mean, se = float(margin["mean"]), margin["se"]
    if se is None or se <= 1e-12:
        return f"{mean:+.3f} ± {_cell(se)}"
    return f"{mean:+.3f} ± {se:.3f} ({mean / se:.1f} SE)"


def _greedy_row(results: Sequence[PolicyResult]) -> PolicyResult | None:
    """The learned policy played greedily (`<prefix>-greedy`), if it was played."""
    return next((r for r in results if r.policy.endswith("-greedy")), None)


def table_columns(reference: str, greedy: str | None = None) -> tuple[str, ...]:
    paired = f"vs {reference} (paired)"
    columns = ("policy", "mean", "std", "stderr", paired, "host acc", "grown/ep")
    return (*columns, f"{greedy} - this") if greedy else columns


def format_table(results: Sequence[PolicyResult], reference: str = "wait") -> str:
    """A plain-text table (the CLI prints it; BENCHMARKS.md quotes it)."""
    greedy = _greedy_row(results)
    columns = table_columns(reference, greedy.policy if greedy else None)
    rows = [list(columns), *results_table_rows(results, reference)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(columns))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _paired(a: PolicyResult, b: PolicyResult) -> dict[str, Any]:
    mean, se = paired_difference(a, b)
    return {"mean": mean, "se": se}


def paired_entries(results: Sequence[PolicyResult], reference: str) -> list[dict[str, Any]]:
    """Per policy, the table's paired comparisons as eval.json keeps them: `versus` (this
    row minus the `reference` row) and `greedy_minus_this` (the greedy row minus this),
    each `{"against": name, "mean", "se"}`, se null for one episode. A comparison that
    was not made (the row itself, no such row) is absent."""
    ref = next((r for r in results if r.policy == reference), None)
    greedy = _greedy_row(results)
    entries = []
    for r in results:
        entry: dict[str, Any] = {}
        if ref is not None and r is not ref:
            entry["versus"] = {"against": ref.policy, **_paired(r, ref)}
        if greedy is not None and r is not greedy:
            entry["greedy_minus_this"] = {"against": greedy.policy, **_paired(greedy, r)}
        entries.append(entry)
    return entries


def write_eval(
    run_dir: Path,
    results: Sequence[PolicyResult],
    seed: int,
    searched: Mapping[str, Any] | None = None,
    reference: str = "wait",
) -> Path:
    """eval.json: the seeds used, one entry per policy (with its paired comparisons,
    `paired_entries`) and, under `searched`, what each searched baseline row turned out to
    be (written atomically)."""
    path = run_dir / EVAL_FILE
    policies = [
        {**r.to_dict(), **extra}
        for r, extra in zip(results, paired_entries(results, reference), strict=True)
    ]
    doc: dict[str, Any] = {"first_seed": seed, "policies": policies}
    if searched:
        doc["searched"] = dict(searched)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
