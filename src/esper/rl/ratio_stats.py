"""Per-head PPO probability-ratio statistics (TELE-151) and the joint ratio (TELE-150).

Per-head clipping bounds each head, not their product: eight heads at 1.2 give a joint
ratio of 1.2**8 = 4.3. These statistics let an operator see which head moves and whether
the joint ratio escapes while every head looks healthy.

Everything here is reducible (max, min, sums of counts), stays on the tensor's device and
never synchronises with the host, so PPO can fold the statistics of every minibatch of
every epoch and pay for a single device->host transfer per update (`reading_tensor`, then
`read` turns the host values into the typed per-head records of `esper.telemetry.heads`).
Ratios are taken against the log-probs stored at rollout time, over the samples where a
head was causally relevant. A relevant sample whose new or old log-prob is not finite is
counted in `nonfinite` and left out of every other statistic, so one NaN never poisons a max.

The reductions work head-major, on [H, N] tensors, with masks held as 0/1 values of the
log-ratios' dtype and selection done by arithmetic. On a CPU that is what keeps them
cheap: boolean masks (`torch.where`, comparisons, `.any`) and reductions over the 8 heads
of each row run several times slower than float arithmetic reduced along contiguous rows
(an update of 2048 samples x 4 epochs: about 3 ms of statistics before, 0.9 ms after).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from esper.telemetry.heads import (
    LOG_RATIO_CLAMP,
    NEUTRAL_RATIO,
    ExplosionReport,
    HeadStats,
    explain_explosion,
)

#: Moves an unused log-ratio (|log r| <= 20 when used) out of reach of a max or a min.
_EXCLUDED = 1.0e4


class LogRatios(NamedTuple):
    """Clamped per-head log-ratios of N samples, head-major, and which of them count.

    Masks are 0/1 in the log-ratios' dtype (module docstring). `log_ratio` is 0 wherever
    `used` is 0, so sums over heads need no further mask.
    """

    log_ratio: Tensor  # [H, N] clamped log(pi_new / pi_old), 0 where not used
    used: Tensor  # [H, N] 1 where relevant and both log-probs finite
    nonfinite: Tensor  # [H, N] 1 where relevant but a log-prob is NaN or +-inf
    joint_log_ratio: Tensor  # [N] clamped sum over used heads, 0 where joint_valid is 0
    joint_valid: Tensor  # [N] 1 where some head is relevant and every relevant one finite


def log_ratios(new: Tensor, old: Tensor, relevant: Tensor) -> LogRatios:
    """Clamped per-head and joint log-ratios of [N, H] log-probs (a row per sample, as a
    policy scores them), with their validity masks; see `head_log_ratios`."""
    if new.shape != old.shape or new.shape != relevant.shape or new.dim() != 2:
        raise ValueError(
            f"new, old and relevant must share one [N, H] shape, got "
            f"{tuple(new.shape)}, {tuple(old.shape)}, {tuple(relevant.shape)}"
        )
    return head_log_ratios((new - old).t(), relevant.t())


def head_log_ratios(diff: Tensor, relevant: Tensor) -> LogRatios:
    """`LogRatios` of head-major [H, N] differences `new - old` and relevance (bool or 0/1).

    A difference is non-finite exactly when one of its log-probs is (log-probs are <= 0,
    so `new - old` cannot overflow). A sample with no relevant head carries no policy
    change and stays out of the joint. No boolean indexing: nothing here syncs the device.
    Three [H, N] buffers, the rest in place: on a CPU, fresh buffers of this size cost
    page faults that show up in an update's time.
    """
    if diff.shape != relevant.shape or diff.dim() != 2:
        raise ValueError(
            f"diff and relevant must share one [H, N] shape, got "
            f"{tuple(diff.shape)}, {tuple(relevant.shape)}"
        )
    diff = diff.detach()

    def rows() -> Tensor:  # contiguous [H, N], whatever the layout of the inputs
        return torch.empty(diff.shape, dtype=diff.dtype, device=diff.device)

    log_ratio = rows().copy_(diff)
    used = rows().copy_(relevant.to(torch.bool))  # relevance (any nonzero) as 0/1 for now
    any_relevant = used.amax(dim=0)
    # x - x is 0 for a finite x and NaN for NaN or +-inf.
    nonfinite = torch.sub(log_ratio, log_ratio).nan_to_num_(nan=1.0).mul_(used)
    used.sub_(nonfinite)
    log_ratio.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    log_ratio.clamp_(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).mul_(used)
    joint_valid = any_relevant.mul_(nonfinite.amax(dim=0).neg_().add_(1.0))
    joint = log_ratio.sum(dim=0).clamp_(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).mul_(joint_valid)
    return LogRatios(log_ratio, used, nonfinite, joint, joint_valid)


def _count_sum(mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of 0/1 values as float64, exact: summed in the mask's own dtype while that is
    exact (fewer than 2**24 values per sum for float32), converted after."""
    n = mask.numel() if dim is None else mask.shape[dim]
    dtype = mask.dtype if n < 2 / torch.finfo(mask.dtype).eps else torch.float64
    total = mask.sum(dtype=dtype) if dim is None else mask.sum(dim=dim, dtype=dtype)
    return total.to(torch.float64)


@dataclass(frozen=True)
class RatioReading:
    """The host values of a `HeadRatioStats`: typed per-head records and the joint."""

    heads: dict[str, HeadStats]
    joint_ratio_max: float
    joint_clip_fraction: float
    worst_log_ratios: dict[str, float]  # per head, at the sample of the largest joint ratio

    def explosion(self, clip_eps: float, threshold: float) -> ExplosionReport | None:
        """The explosion report when the joint ratio max exceeds `threshold`, else None."""
        if not self.joint_ratio_max > threshold:
            return None
        return explain_explosion(
            self.heads, self.joint_ratio_max, self.worst_log_ratios, clip_eps
        )


#: `reading_tensor`'s layout: these [H] fields in this order, then `_READ_SCALARS`.
_READ_ROWS = (
    "ratio_max",
    "ratio_min",
    "clip_count",
    "relevant_count",
    "nonfinite_count",
    "kl_sum",
    "entropy_sum",
    "worst_log_ratio",
)
_READ_SCALARS = ("entropy_count", "joint_max", "joint_count", "joint_clip_count")


@dataclass(frozen=True, eq=False)
class HeadRatioStats:
    """Reducible ratio statistics of one or more minibatches, as device tensors.

    The empty value (`empty`) is the identity of `combine`: ratio max 0 (every ratio is at
    least exp(-20)), ratio min +inf, sums and counts 0; `read` maps "no sample" to the
    neutral 1.0. Counts are float64 (exact to 2**53). Entropies come from the caller (the
    policy knows its distributions): summed nats per head over `entropy_count` samples.
    """

    head_names: tuple[str, ...]
    ratio_max: Tensor  # [H]
    ratio_min: Tensor  # [H]
    clip_count: Tensor  # [H] |ratio - 1| > clip_eps
    relevant_count: Tensor  # [H] relevant samples with finite log-probs
    nonfinite_count: Tensor  # [H] relevant samples left out as NaN/+-inf
    kl_sum: Tensor  # [H] float64, sum of (r - 1) - log r over the relevant samples
    entropy_sum: Tensor  # [H] float64, nats summed over entropy_count samples
    entropy_count: Tensor  # [] float64, samples whose entropies were summed
    joint_max: Tensor  # [] max joint ratio, 0 when joint_count == 0
    joint_count: Tensor  # [] samples that entered the joint
    joint_clip_count: Tensor  # [] |joint ratio - 1| > clip_eps
    worst_log_ratio: Tensor  # [H] per-head clamped log-ratios at the joint max (0 if irrelevant)

    @classmethod
    def empty(
        cls,
        head_names: Sequence[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> HeadRatioStats:
        """The identity of `combine`: statistics of no sample at all."""
        n = len(head_names)
        zeros = torch.zeros(n, dtype=dtype, device=device)
        sums = torch.zeros(n, dtype=torch.float64, device=device)
        scalar = torch.zeros((), dtype=torch.float64, device=device)
        return cls(
            head_names=tuple(head_names),
            ratio_max=zeros,
            ratio_min=torch.full((n,), torch.inf, dtype=dtype, device=device),
            clip_count=sums,
            relevant_count=sums,
            nonfinite_count=sums,
            kl_sum=sums,
            entropy_sum=sums,
            entropy_count=scalar,
            joint_max=torch.zeros((), dtype=dtype, device=device),
            joint_count=scalar,
            joint_clip_count=scalar,
            worst_log_ratio=zeros,
        )

    @classmethod
    def from_log_ratios(
        cls,
        lr: LogRatios,
        clip_eps: float,
        head_names: Sequence[str],
        entropy_sum: Tensor | None = None,
        entropy_count: Tensor | None = None,
    ) -> HeadRatioStats:
        """Reduce one batch of `log_ratios` to its statistics (no host synchronisation)."""
        n_heads, n_samples = lr.log_ratio.shape
        if n_heads == 0:
            raise ValueError("ratio statistics need at least one head")
        if n_heads != len(head_names):
            raise ValueError(f"{n_heads} heads in the tensors but {len(head_names)} names")
        log_ratio = lr.log_ratio.detach()
        device = log_ratio.device
        entropy_sum = (
            torch.zeros(n_heads, dtype=torch.float64, device=device)
            if entropy_sum is None
            else entropy_sum.detach().to(torch.float64)
        )
        entropy_count = (
            torch.zeros((), dtype=torch.float64, device=device)
            if entropy_count is None
            else entropy_count.detach().to(torch.float64).reshape(())
        )
        if n_samples == 0:
            empty = cls.empty(head_names, device, log_ratio.dtype)
            return dataclasses.replace(
                empty, entropy_sum=entropy_sum, entropy_count=entropy_count
            )
        log_ratio, used = lr.log_ratio.detach(), lr.used
        # r - 1 computed as expm1(log r): no cancellation near r = 1. It gives the clip
        # test |r - 1| > eps (in place, as 0/1) and the KL estimate (r - 1) - log r; both
        # are 0 on unused heads, whose log-ratio is 0.
        r_minus_1 = torch.special.expm1(log_ratio)
        clip_count = _count_sum(r_minus_1.abs().gt_(clip_eps), dim=1)
        kl_sum = r_minus_1.sub_(log_ratio).sum(dim=1, dtype=torch.float64)
        # exp is monotone: the ratio max/min are exp of the log-ratio max/min over the used
        # samples. The buffer moves the others to -1e4 for the max, then to +1e4 for the
        # min (-(x - 1e4) + 2x = x + 1e4 where x is 0, x where used).
        excluded = torch.sub(used, 1.0, out=r_minus_1).mul_(_EXCLUDED).add_(log_ratio)
        log_max = excluded.amax(dim=1)
        log_min = excluded.neg_().add_(log_ratio, alpha=2.0).amin(dim=1)
        joint_log_ratio = lr.joint_log_ratio.detach()
        # exp, not expm1 + 1: a tiny joint ratio (e^-17 in float32) must still outrank 0.
        ranked = torch.exp(joint_log_ratio).mul_(lr.joint_valid)
        joint_minus_1 = torch.special.expm1(joint_log_ratio)
        worst = torch.argmax(ranked).reshape(1)
        # log_ratio is 0 on unused heads; the joint_valid factor zeroes a non-joint sample
        # (+ 0.0 turns the -0.0 of a negative log-ratio times 0 into 0.0).
        worst_row = log_ratio.index_select(1, worst).squeeze(1)
        worst_row = worst_row.mul_(lr.joint_valid.index_select(0, worst)).add_(0.0)
        return cls(
            head_names=tuple(head_names),
            ratio_max=log_max.exp_(),
            ratio_min=log_min.exp_(),
            clip_count=clip_count,
            relevant_count=_count_sum(used, dim=1),
            nonfinite_count=_count_sum(lr.nonfinite, dim=1),
            kl_sum=kl_sum,
            entropy_sum=entropy_sum,
            entropy_count=entropy_count,
            joint_max=ranked.index_select(0, worst).squeeze(0),
            joint_count=_count_sum(lr.joint_valid),
            joint_clip_count=_count_sum(joint_minus_1.abs_().gt_(clip_eps)),  # 0 if not valid
            worst_log_ratio=worst_row,
        )

    @classmethod
    def from_tensors(
        cls,
        new: Tensor,
        old: Tensor,
        relevant: Tensor,
        clip_eps: float,
        head_names: Sequence[str],
    ) -> HeadRatioStats:
        """Statistics of [N, H] new/old log-probs with an [N, H] bool relevance mask."""
        return cls.from_log_ratios(log_ratios(new, old, relevant), clip_eps, head_names)

    @classmethod
    def combine(cls, parts: Sequence[HeadRatioStats]) -> HeadRatioStats:
        """Merge any number of statistics in one reduction per field (max, min or sum).

        The worst-sample log-ratios follow the largest joint ratio (the first on a tie).
        This is also how workers or ranks merge: every field is a max, a min or a sum.
        """
        if not parts:
            raise ValueError("combine needs at least one HeadRatioStats")
        first = parts[0]
        if any(p.head_names != first.head_names for p in parts):
            raise ValueError("cannot merge statistics of different heads")

        def stacked(name: str) -> Tensor:
            return torch.stack([getattr(p, name) for p in parts])

        joint = stacked("joint_max")
        worst = torch.argmax(joint).reshape(1)
        return cls(
            head_names=first.head_names,
            ratio_max=stacked("ratio_max").amax(dim=0),
            ratio_min=stacked("ratio_min").amin(dim=0),
            clip_count=stacked("clip_count").sum(dim=0),
            relevant_count=stacked("relevant_count").sum(dim=0),
            nonfinite_count=stacked("nonfinite_count").sum(dim=0),
            kl_sum=stacked("kl_sum").sum(dim=0),
            entropy_sum=stacked("entropy_sum").sum(dim=0),
            entropy_count=stacked("entropy_count").sum(),
            joint_max=joint.amax(),
            joint_count=stacked("joint_count").sum(),
            joint_clip_count=stacked("joint_clip_count").sum(),
            worst_log_ratio=stacked("worst_log_ratio").index_select(0, worst).squeeze(0),
        )

    def merge(self, other: HeadRatioStats) -> HeadRatioStats:
        """Combine with the statistics of other samples. Neither input changes."""
        return HeadRatioStats.combine([self, other])

    def all_reduce(self, group: Any = None) -> HeadRatioStats:
        """The statistics of every rank of `group` (default: the initialised default group)
        combined, identical on every rank; see `reduce_across_ranks`. Without
        torch.distributed initialised this is `self`."""
        return reduce_across_ranks(self, group=group).stats

    @classmethod
    def from_reading_tensor(
        cls, head_names: Sequence[str], values: Tensor, dtype: torch.dtype = torch.float32
    ) -> HeadRatioStats:
        """The statistics whose `reading_tensor` is `values` (on its device, no host sync).

        Every float of `reading_tensor` is exact in float64, so this round trip loses
        nothing; the ratio fields come back in `dtype`, the sums and counts in float64.
        """
        n = len(head_names)
        expected = len(_READ_ROWS) * n + len(_READ_SCALARS)
        if values.shape != (expected,):
            raise ValueError(f"expected a [{expected}] reading tensor, got {tuple(values.shape)}")
        fields: dict[str, Tensor] = {}
        for i, name in enumerate(_READ_ROWS):
            fields[name] = values[i * n : (i + 1) * n]
        for i, name in enumerate(_READ_SCALARS):
            fields[name] = values[len(_READ_ROWS) * n + i]
        for name in ("ratio_max", "ratio_min", "joint_max", "worst_log_ratio"):
            fields[name] = fields[name].to(dtype)
        return cls(head_names=tuple(head_names), **fields)

    @property
    def reading_size(self) -> int:
        """Length of `reading_tensor`: the [H] fields, then the scalars."""
        return len(_READ_ROWS) * len(self.head_names) + len(_READ_SCALARS)

    def reading_tensor(self) -> Tensor:
        """The fields as one float64 device tensor, for a single host transfer.

        The raw maxima, minima, sums and counts only: the few divisions that turn them into
        what is reported run on the host in `read`, not as a dozen tiny device kernels.
        """
        fields = [getattr(self, name) for name in _READ_ROWS]
        fields += [getattr(self, name).reshape(1) for name in _READ_SCALARS]
        return torch.cat(fields).to(torch.float64)

    def read(
        self, values: Sequence[float], *, head_sizes: Sequence[int] | None = None
    ) -> RatioReading:
        """Typed records from the host copy of `reading_tensor` (pure; no tensor touched).

        A head with no relevant sample reads the neutral ratio 1.0. With `head_sizes`,
        entropy is normalised by ln(size), so 1 means uniform (0 for a one-value head).
        """
        n = len(self.head_names)
        if len(values) != self.reading_size:
            raise ValueError(f"expected {self.reading_size} values, got {len(values)}")
        if head_sizes is not None and len(head_sizes) != n:
            raise ValueError(f"{len(head_sizes)} head sizes for {n} heads")
        rows = {name: values[i * n : (i + 1) * n] for i, name in enumerate(_READ_ROWS)}
        entropy_count, joint_max, joint_count, joint_clip_count = values[len(_READ_ROWS) * n :]
        heads = {}
        for i, head in enumerate(self.head_names):
            relevant = rows["relevant_count"][i]
            seen, per_sample = relevant > 0, max(relevant, 1.0)
            entropy = rows["entropy_sum"][i] / max(entropy_count, 1.0)
            if head_sizes is not None:
                size = head_sizes[i]
                entropy = entropy / math.log(size) if size > 1 else 0.0
            heads[head] = HeadStats(
                ratio_max=rows["ratio_max"][i] if seen else NEUTRAL_RATIO,
                ratio_min=rows["ratio_min"][i] if seen else NEUTRAL_RATIO,
                clip_fraction=rows["clip_count"][i] / per_sample,
                entropy=entropy,
                approx_kl=rows["kl_sum"][i] / per_sample,
                relevant=int(relevant),
                nonfinite=int(rows["nonfinite_count"][i]),
            )
        return RatioReading(
            heads=heads,
            joint_ratio_max=joint_max if joint_count > 0 else NEUTRAL_RATIO,
            joint_clip_fraction=joint_clip_count / max(joint_count, 1.0),
            worst_log_ratios=dict(zip(self.head_names, rows["worst_log_ratio"], strict=True)),
        )

    def to_reading(self, *, head_sizes: Sequence[int] | None = None) -> RatioReading:
        """The statistics on the host: the one device->host transfer of these values."""
        return self.read(self.reading_tensor().tolist(), head_sizes=head_sizes)


def is_distributed(group: Any = None) -> bool:
    """Whether statistics are reduced across ranks: a `group` is given, or torch.distributed
    has an initialised default process group."""
    return group is not None or (dist.is_available() and dist.is_initialized())


@dataclass(frozen=True, eq=False)
class RankReduction:
    """What `reduce_across_ranks` returns, on the statistics' device.

    `stats` is the combination over the ranks; `extras` holds every rank's extra values,
    one row per rank in group-rank order, for the caller to reduce as each value needs
    (a sum of losses, a max of step counts, the row of one rank).
    """

    stats: HeadRatioStats
    extras: Tensor  # [ranks, E] float64


def reduce_across_ranks(
    stats: HeadRatioStats, extra: Tensor | None = None, *, group: Any = None
) -> RankReduction:
    """Combine the statistics of every rank of a torch.distributed group, exactly.

    One collective, whatever the number of heads or ranks: an `all_gather` of each rank's
    `reading_tensor` (8H + 4 float64 values) with `extra` appended, after which every rank
    runs `HeadRatioStats.combine` over the gathered rows, in group-rank order. So the
    result is, on every rank and bit for bit alike, what one process gets from combining
    the ranks' statistics: max of the maxima, min of the minima, sums of the counts and
    sums, and the worst-sample row (`worst_log_ratio`) of the rank that holds the largest
    joint ratio, ties to the lowest rank. That is the row a single process fed every
    rank's samples in rank order picks (`argmax` takes the first maximum), and as each
    rank has already left its non-finite samples out and counted them, NaN and inf are
    handled exactly as there too; maxima, minima and counts agree bit for bit, float sums
    up to rounding order.

    Why a gather and not all-reduces: the worst row is an argmax with a payload, which no
    reduce op carries (torch.distributed has no MAXLOC). With reduces it takes a MAX and,
    once the winner is known, a second round (a MIN over the rank ids that hold the max,
    then a SUM in which only the winner contributes its row), so at least two collectives
    in sequence; the gather does all of it in one, and at 8 heads moves 68 values per rank
    (5.4 kB from 10 ranks), which costs latency, not bandwidth, at any plausible size.

    `extra` (any shape, flattened to float64) rides in the same collective: a trainer adds
    its own per-update sums and flags there instead of paying another collective. Every
    rank of the group must call this with the same heads and the same `extra` size, as
    with any collective. The tensors stay on the statistics' device (a CUDA device for
    NCCL, the CPU for gloo); nothing here waits for the host. Without torch.distributed
    (no `group` and no initialised default group) it returns `stats` and `extra` as one
    rank.
    """
    row = stats.reading_tensor()
    if extra is not None:
        row = torch.cat([row, extra.detach().reshape(-1).to(row)])
    k = stats.reading_size
    if not is_distributed(group):
        return RankReduction(stats, row[k:].unsqueeze(0))
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size(group))]
    dist.all_gather(rows, row, group=group)
    dtype = stats.ratio_max.dtype
    parts = [HeadRatioStats.from_reading_tensor(stats.head_names, r[:k], dtype) for r in rows]
    return RankReduction(HeadRatioStats.combine(parts), torch.stack([r[k:] for r in rows]))


def head_ratio_stats(
    new_log_probs: Mapping[str, Tensor],
    old_log_probs: Mapping[str, Tensor],
    relevant: Mapping[str, Tensor] | None = None,
    clip_eps: float = 0.2,
) -> HeadRatioStats:
    """Ratio statistics of per-head 1-D log-prob tensors over the same samples.

    A head missing from `relevant` counts as relevant at every sample.
    """
    names = tuple(new_log_probs)
    if set(old_log_probs) != set(names):
        raise ValueError(
            f"old log-probs heads {sorted(old_log_probs)} differ from new {sorted(names)}"
        )
    unknown = set(relevant or {}) - set(names)
    if unknown:
        raise ValueError(f"relevance given for unknown heads {sorted(unknown)}")
    new = torch.stack([new_log_probs[h] for h in names], dim=1)
    old = torch.stack([old_log_probs[h] for h in names], dim=1)
    masks = relevant or {}
    rel = torch.stack(
        [
            masks[h].to(torch.bool) if h in masks else torch.ones_like(new[:, i], dtype=torch.bool)
            for i, h in enumerate(names)
        ],
        dim=1,
    )
    return HeadRatioStats.from_tensors(new, old, rel, clip_eps, names)
