"""Per-head statistics as data: one typed record per head, one structure per PPO update.

A PPO update measures, for every action head, its probability-ratio range against the
rollout-time log-probs (TELE-151), clip fraction, entropy and approximate KL, plus the
joint ratio the heads multiply into (TELE-150). These types carry those numbers from the
PPO update to the panel for any set of heads, under any names, in the run's own order:
nothing downstream knows how many heads there are or what they are called.

Flat `head_<name>_<stat>` names exist only at the edges (the JSON line, SQL columns,
TensorBoard tags); `flat_key` and `split_flat_key` are the one place that spells them.
No torch here: the dashboard and the reader import this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Final

#: Reported for a head (or the joint) with no sample: "no policy change". A consumer tells
#: it from a measured 1.0 by `HeadStats.relevant == 0` (and for the joint, by every head).
NEUTRAL_RATIO: Final = 1.0
#: Log-ratios are clamped to +-20 before exp: exp(88) overflows float32, and exp(20)
#: (about 4.9e8) already says the policy diverged.
LOG_RATIO_CLAMP: Final = 20.0
#: Longest head name a run may declare (it becomes part of JSON keys and SQL columns).
MAX_HEAD_NAME = 32
#: Most heads a run may declare (the dashboard wraps them; 32 is plenty for factored PPO).
MAX_HEADS = 32


@dataclass(frozen=True, slots=True)
class HeadStats:
    """One head's statistics over every epoch and minibatch of one PPO update.

    Ratios are exp(clamped log pi_new - log pi_old) against the rollout-time log-probs,
    over the samples where the head was causally relevant and both log-probs finite.
    `relevant == 0` means no such sample: the ratio fields then hold the neutral 1.0 and
    must be shown as "no data". `entropy` is normalised once, by ln(head size), to [0, 1].
    """

    ratio_max: float = NEUTRAL_RATIO
    ratio_min: float = NEUTRAL_RATIO
    clip_fraction: float = 0.0
    entropy: float = 0.0
    approx_kl: float = 0.0
    relevant: int = 0
    nonfinite: int = 0

    @property
    def measured(self) -> bool:
        """Whether any sample of the update used this head (the ratios are readings)."""
        return self.relevant > 0

    def badness(self) -> float:
        """How far the ratio range strays from 1 in log space (inf for NaN/non-positive)."""
        worst = 0.0
        for ratio in (self.ratio_max, self.ratio_min):
            if math.isnan(ratio) or ratio <= 0:
                return math.inf
            worst = max(worst, abs(math.log(ratio)))
        return worst



class Band(StrEnum):
    """Health of one ratio reading, as every consumer (dashboard, report) shows it."""

    HEALTHY = "healthy"
    WARNING = "warning"
    CRITICAL = "critical"
    NO_DATA = "no data"  # no reading (None): never shown as healthy


#: The clip range the health bands are stated for, and the one assumed for a run whose
#: start event does not record its own (logs written before runs recorded it).
SPEC_CLIP_EPS: Final = 0.2
#: A head's warning band reaches this many clip ranges from 1: 0.5 and 1.5 at eps 0.2.
WARNING_CLIP_RANGES: Final = 2.5
#: Below 1 the warning band never reaches under this share of the healthy low edge 1 - eps.
#: Without it a clip of 0.4 or more would put the edge at or below 0 (ratios are positive,
#: so nothing would ever be critical there); the two rules meet at eps = 1/3, so every clip
#: in common use (0.1 to 0.3) gets the linear edge.
WARNING_LOW_FLOOR: Final = 0.25
#: The joint's edges at eps 0.2: 1.5 (about two heads at the clip edge, 1.2^2 = 1.44) and
#: 3.0 (about six, 1.2^6 = 2.99: a GROW uses six heads, the most any op of esper's uses).
SPEC_JOINT_HEALTHY: Final = 1.5
SPEC_JOINT_WARNING: Final = 3.0


@dataclass(frozen=True, slots=True)
class RatioBands:
    """The health bands of per-head and joint ratios for a run clipping at `clip_eps`.

    A head's ratio is healthy inside the clip range [1 - eps, 1 + eps], a warning up to
    `WARNING_CLIP_RANGES` clip ranges from 1 (the low edge floored at `WARNING_LOW_FLOOR`
    of the healthy one, so it stays positive), critical beyond. The bands follow the
    run's own clip: at eps 0.1 a head at 1.15 is already past the clip edge by half a
    clip range, which at eps 0.2 is still inside it. At eps 0.2 they are the spec's
    0.8/1.2 and 0.5/1.5 exactly.

    The joint bands are symmetric in log space, because the joint is a product of heads:
    they count clip edges, `SPEC_JOINT_*` = (1.2)^k at eps 0.2, so for another clip they
    are (1 + eps)^k with the same k (1.5 and 3.0 exactly at 0.2).
    """

    clip_eps: float = SPEC_CLIP_EPS

    def __post_init__(self) -> None:
        if not 0.0 < self.clip_eps < 1.0:  # also rejects NaN
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")

    @classmethod
    def for_clip(cls, clip_eps: float | None) -> RatioBands:
        """The bands of a run's recorded clip; the spec's (eps 0.2) when none is recorded."""
        return SPEC_BANDS if clip_eps is None else cls(clip_eps)

    @property
    def healthy(self) -> tuple[float, float]:
        """[low, high] of the healthy band: the clip range itself."""
        return 1.0 - self.clip_eps, 1.0 + self.clip_eps

    @property
    def warning(self) -> tuple[float, float]:
        """[low, high] of the warning band (it contains the healthy band)."""
        width = WARNING_CLIP_RANGES * self.clip_eps
        low = max(1.0 - width, WARNING_LOW_FLOOR * (1.0 - self.clip_eps))
        return low, 1.0 + width

    @property
    def joint_healthy(self) -> float:
        """Joint ratios within this factor of 1 (either way) are healthy."""
        return self._joint_edge(SPEC_JOINT_HEALTHY)

    @property
    def joint_warning(self) -> float:
        """Joint ratios within this factor of 1 (either way) are at most a warning."""
        return self._joint_edge(SPEC_JOINT_WARNING)

    def _joint_edge(self, spec_edge: float) -> float:
        # spec_edge ** 1.0 at eps 0.2 (1 + 0.2 == 1.2 in floating point): the spec exactly.
        return float(spec_edge ** (math.log(1.0 + self.clip_eps) / math.log(1.0 + SPEC_CLIP_EPS)))

    def band(self, ratio: float | None) -> Band:
        """Band of one head's ratio; NaN and infinities are critical, None is no data."""
        if ratio is None:
            return Band.NO_DATA
        if not math.isfinite(ratio):
            return Band.CRITICAL
        low, high = self.healthy
        if low <= ratio <= high:
            return Band.HEALTHY
        low, high = self.warning
        if low <= ratio <= high:
            return Band.WARNING
        return Band.CRITICAL

    def joint_band(self, ratio: float | None) -> Band:
        """Band of a joint ratio, by its factor from 1 either way; <= 0 is critical."""
        if ratio is None:
            return Band.NO_DATA
        if not math.isfinite(ratio) or ratio <= 0.0:
            return Band.CRITICAL
        edge = self.joint_healthy
        if 1.0 / edge <= ratio <= edge:
            return Band.HEALTHY
        edge = self.joint_warning
        if 1.0 / edge <= ratio <= edge:
            return Band.WARNING
        return Band.CRITICAL


#: The spec's bands (eps 0.2): what a run that records no clip range is shown with.
SPEC_BANDS: Final = RatioBands(SPEC_CLIP_EPS)

#: The statistics of a head, in record order; the suffixes of the flat names.
HEAD_STATS: Final[tuple[str, ...]] = tuple(f.name for f in fields(HeadStats))
#: Which of them are counts (ints on disk and in SQL); the rest are floats.
HEAD_COUNT_STATS: Final = frozenset({"relevant", "nonfinite"})
#: The suffixes longest first, so `split_flat_key` matches "ratio_max" before "max".
_SUFFIXES = sorted(HEAD_STATS, key=len, reverse=True)


def flat_key(head: str, stat: str) -> str:
    """The edge name of one head statistic: `head_<head>_<stat>` (e.g. head_op_ratio_max)."""
    return f"head_{head}_{stat}"


def split_flat_key(key: str) -> tuple[str, str] | None:
    """(head, stat) of a `flat_key`, or None when `key` is not one (head names may hold `_`)."""
    if not key.startswith("head_"):
        return None
    for stat in _SUFFIXES:
        tail = f"_{stat}"
        if key.endswith(tail) and len(key) > len("head_") + len(tail):
            return key[len("head_") : -len(tail)], stat
    return None


def check_head_names(names: Iterable[object]) -> tuple[str, ...]:
    """The names as a tuple, or ValueError naming what makes them unusable.

    Names become JSON keys, SQL columns and TensorBoard tags, so they are short
    identifiers: letters, digits and `_`, not starting with a digit, unique.
    """
    out = tuple(names)
    if not 1 <= len(out) <= MAX_HEADS:
        raise ValueError(f"a run needs 1 to {MAX_HEADS} heads, got {len(out)}")
    for name in out:
        if (
            not isinstance(name, str)
            or not name
            or len(name) > MAX_HEAD_NAME
            or not name.replace("_", "a").isalnum()
            or not name.isascii()
            or name[0].isdigit()
        ):
            raise ValueError(
                f"head name {name!r} must be 1-{MAX_HEAD_NAME} ASCII letters, digits or _, "
                "not starting with a digit"
            )
    if len(set(out)) != len(out):
        raise ValueError(f"head names must be unique, got {list(out)}")
    return out  # type: ignore[return-value]  # every item checked to be str above


def explosion_shares(log_ratios: Mapping[str, float]) -> dict[str, float]:
    """Each head's share of the joint log-ratio at the worst sample (the one definition).

    Only heads pushing the ratio up drive an explosion: shares are the positive parts of
    the per-head log-ratios over their sum, so they sum to 1. With no positive part (the
    joint ratio collapsed rather than exploded) the magnitudes are shared instead; with
    no movement at all every share is 0.
    """
    positive = {h: max(v, 0.0) for h, v in log_ratios.items()}
    weights = positive if sum(positive.values()) > 0 else {h: abs(v) for h, v in log_ratios.items()}
    total = sum(weights.values())
    return {h: (w / total if total > 0 else 0.0) for h, w in weights.items()}


@dataclass(frozen=True)
class ExplosionReport:
    """Which heads drove a joint-ratio explosion, read at the sample of the largest joint ratio.

    `worst_log_ratios[h]` is head h's clamped log-ratio there (0 where irrelevant),
    `shares` follow `explosion_shares`, `driver` is the head with the largest share (None
    when no head moved), and `hidden_by_heads` says every head's own ratio range stayed
    inside the clip range while the joint ratio did not: the case TELE-151 exists for.
    """

    joint_ratio_max: float
    worst_log_ratios: dict[str, float]
    shares: dict[str, float]
    driver: str | None
    hidden_by_heads: bool

    def summary(self, top: int = 3, min_share: float = 0.1) -> str:
        """E.g. "joint 4.30 driven by slot (41%), op (22%) — every head inside clip"."""
        if self.driver is None:
            return f"joint {self.joint_ratio_max:.2f}, no head moved"
        ranked = sorted(self.shares.items(), key=lambda item: -item[1])
        shown = [(h, s) for h, s in ranked[:top] if s >= min_share] or ranked[:1]
        drivers = ", ".join(f"{h} ({s:.0%})" for h, s in shown)
        hidden = " — every head inside clip" if self.hidden_by_heads else ""
        return f"joint {self.joint_ratio_max:.2f} driven by {drivers}{hidden}"


def explain_explosion(
    heads: Mapping[str, HeadStats],
    joint_ratio_max: float,
    worst_log_ratios: Mapping[str, float],
    clip_eps: float,
) -> ExplosionReport:
    """Attribute a joint ratio max to the heads from their log-ratios at the worst sample."""
    shares = explosion_shares(worst_log_ratios)
    moved = any(s > 0 for s in shares.values())
    driver = max(shares, key=lambda h: shares[h]) if moved else None
    low, high = 1.0 - clip_eps, 1.0 + clip_eps
    inside = all(
        low <= heads[h].ratio_min and heads[h].ratio_max <= high
        for h in worst_log_ratios
        if heads[h].measured
    )
    return ExplosionReport(
        joint_ratio_max=joint_ratio_max,
        worst_log_ratios=dict(worst_log_ratios),
        shares=shares,
        driver=driver,
        hidden_by_heads=inside and not low <= joint_ratio_max <= high,
    )


@dataclass(frozen=True)
class UpdateStats:
    """What one PPO update measured: a record per head plus the joint and global scalars.

    `heads` is in the run's display order. `explosion` is set when the update's joint
    ratio max crossed the agent's threshold; it travels as its own RATIO_EXPLOSION event,
    not inside the update's JSON line. Scalars are those every PPO reports (SB3 names);
    counts and flags default to "not measured by this trainer".
    """

    heads: Mapping[str, HeadStats]
    joint_ratio_max: float = NEUTRAL_RATIO
    approx_kl: float = 0.0
    clip_fraction: float = 0.0
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy: float = 0.0
    explained_variance: float = 0.0
    grad_norm: float = 0.0
    epochs_run: int = 0
    minibatches_run: int = 0
    minibatches_skipped: int = 0
    early_stopped: bool = False
    intervened: bool = False
    explosion: ExplosionReport | None = None

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def worst_head(self) -> str | None:
        """The measured head whose ratio range strays furthest from 1 (NaN first)."""
        measured = [h for h, s in self.heads.items() if s.measured or s.nonfinite]
        return max(measured, key=lambda h: self.heads[h].badness()) if measured else None

    def nonfinite(self) -> dict[str, int]:
        """Heads that had non-finite log-probs in this update, with their sample counts."""
        return {h: s.nonfinite for h, s in self.heads.items() if s.nonfinite > 0}

    def summary(self) -> str:
        """One line: worst head, joint ratio, KL."""
        worst = self.worst_head()
        head = (
            f"worst head {worst} ratio max {self.heads[worst].ratio_max:.3f}"
            if worst is not None
            else "no relevant samples"
        )
        return f"{head}, joint {self.joint_ratio_max:.3f}, KL {self.approx_kl:.4f}"


#: The scalar fields of `UpdateStats` (everything but the heads and the explosion).
UPDATE_SCALARS: Final[tuple[str, ...]] = tuple(
    f.name for f in fields(UpdateStats) if f.name not in ("heads", "explosion")
)


def iter_flat_heads(heads: Mapping[str, HeadStats]) -> Iterator[tuple[str, float | int]]:
    """(`flat_key`, value) of every statistic of every head, head by head, in order."""
    for head, stats in heads.items():
        for stat in HEAD_STATS:
            yield flat_key(head, stat), getattr(stats, stat)


def heads_from_flat(flat: Mapping[str, Any]) -> tuple[dict[str, HeadStats], dict[str, Any]]:
    """Rebuild per-head records from `flat_key` entries; returns (heads, the other keys).

    Heads come in the order their first key appears. Strict: a head missing any of its
    statistics is a KeyError naming the key, so a log never shows a value nobody measured.
    """
    per_head: dict[str, dict[str, Any]] = {}
    rest: dict[str, Any] = {}
    for key, value in flat.items():
        split = split_flat_key(key)
        if split is None:
            rest[key] = value
        else:
            per_head.setdefault(split[0], {})[split[1]] = value
    heads: dict[str, HeadStats] = {}
    for head, values in per_head.items():
        missing = [flat_key(head, s) for s in HEAD_STATS if s not in values]
        if missing:
            raise KeyError(", ".join(missing))
        heads[head] = HeadStats(**values)
    return heads, rest
