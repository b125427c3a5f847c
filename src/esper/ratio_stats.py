"""Per-head PPO probability-ratio statistics (TELE-151) and the joint ratio (TELE-150).

Per-head clipping bounds each head, not their product: eight heads at 1.2 give a joint
ratio of 1.2**8 = 4.3. These statistics let an operator see which head moves and whether
the joint ratio escapes while every head looks healthy.

Everything here is reducible (max, min, sums of counts), stays on the tensor's device and
never synchronises with the host, so PPO can fold the statistics of every minibatch of
every epoch and pay for a single device->host transfer per update (`metric_tensor`).
Ratios are taken against the log-probs stored at rollout time, over the samples where a
head was causally relevant. A relevant sample whose new or old log-prob is not finite is
counted in `nonfinite` and left out of every other statistic, so one NaN never poisons a max.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

#: Log-ratios are clamped to +-20 before exp: exp(88) overflows float32, and exp(20)
#: (about 4.9e8) already says the policy diverged.
LOG_RATIO_CLAMP = 20.0
#: Reported for a head (or the joint) with no sample: "no policy change". Consumers tell
#: it from a measured 1.0 by `head_{h}_relevant == 0`.
NEUTRAL_RATIO = 1.0
#: Per-head metric suffixes, in the order `metric_tensor` lays them out.
HEAD_METRICS: tuple[str, ...] = ("ratio_max", "ratio_min", "clip_fraction", "relevant", "nonfinite")


class LogRatios(NamedTuple):
    """Clamped per-head log-ratios of one batch of samples and which of them count.

    `log_ratio` is zero wherever `used` is False, so sums over heads need no further mask.
    """

    log_ratio: Tensor  # [N, H] clamped log(pi_new / pi_old), 0 where not used
    used: Tensor  # [N, H] bool: relevant and both log-probs finite
    nonfinite: Tensor  # [N, H] bool: relevant but a log-prob is NaN or +-inf
    joint_log_ratio: Tensor  # [N] clamped sum over used heads, 0 where joint_valid is False
    joint_valid: Tensor  # [N] bool: some head relevant, every relevant head finite


def log_ratios(new: Tensor, old: Tensor, relevant: Tensor) -> LogRatios:
    """Clamped per-head and joint log-ratios of [N, H] log-probs, with their validity masks.

    A sample with no relevant head carries no policy change and stays out of the joint.
    Only `torch.where` masks, never boolean indexing, so it cannot force a device sync.
    """
    if new.shape != old.shape or new.shape != relevant.shape or new.dim() != 2:
        raise ValueError(
            f"new, old and relevant must share one [N, H] shape, got "
            f"{tuple(new.shape)}, {tuple(old.shape)}, {tuple(relevant.shape)}"
        )
    relevant = relevant.to(torch.bool)
    finite = torch.isfinite(new) & torch.isfinite(old)
    used = relevant & finite
    raw = torch.clamp(new - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    log_ratio = torch.where(used, raw, torch.zeros_like(raw))
    nonfinite = relevant & ~finite
    joint_valid = relevant.any(dim=1) & ~nonfinite.any(dim=1)
    joint = torch.clamp(log_ratio.sum(dim=1), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    joint = torch.where(joint_valid, joint, torch.zeros_like(joint))
    return LogRatios(log_ratio, used, nonfinite, joint, joint_valid)


def concat_log_ratios(parts: Sequence[LogRatios]) -> LogRatios:
    """The `log_ratios` of several batches as one batch (their samples, in order).

    Reducing the concatenation once gives exactly what merging per-batch statistics gives
    (the same max, min and counts; the first of tied joint maxima), for a handful of
    kernels instead of a handful per batch.
    """
    if not parts:
        raise ValueError("concat_log_ratios needs at least one LogRatios")
    return LogRatios(*(torch.cat(field) for field in zip(*parts, strict=True)))


def joint_ratio_max(lr: LogRatios) -> Tensor:
    """Largest joint ratio of one batch (0 when no sample entered the joint), on the device."""
    joint = torch.exp(lr.joint_log_ratio.detach())
    return torch.where(lr.joint_valid, joint, torch.zeros_like(joint)).amax()


@dataclass(frozen=True, eq=False)
class HeadRatioStats:
    """Reducible ratio statistics of one or more minibatches, as device tensors.

    The empty value (`empty`) is the identity of `merge`: ratio max 0 (every ratio is at
    least exp(-20)), ratio min +inf, counts 0. `to_metrics` maps "no sample" to 1.0.
    With `per_head=False` only the joint fields are computed (the overhead benchmark).
    """

    head_names: tuple[str, ...]
    ratio_max: Tensor  # [H]
    ratio_min: Tensor  # [H]
    clip_count: Tensor  # [H] int64, |ratio - 1| > clip_eps
    relevant_count: Tensor  # [H] int64, relevant samples with finite log-probs
    nonfinite_count: Tensor  # [H] int64, relevant samples left out as NaN/+-inf
    joint_max: Tensor  # [] max joint ratio, 0 when joint_count == 0
    joint_count: Tensor  # [] int64, samples that entered the joint
    joint_clip_count: Tensor  # [] int64, |joint ratio - 1| > clip_eps
    worst_log_ratio: Tensor  # [H] per-head clamped log-ratios at the joint max (0 if irrelevant)
    per_head: bool = True

    @classmethod
    def empty(
        cls,
        head_names: Sequence[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        per_head: bool = True,
    ) -> HeadRatioStats:
        """The identity of `merge`: statistics of no sample at all."""
        n = len(head_names)
        zeros = torch.zeros(n, dtype=dtype, device=device)
        count = torch.zeros(n, dtype=torch.int64, device=device)
        scalar_count = torch.zeros((), dtype=torch.int64, device=device)
        return cls(
            head_names=tuple(head_names),
            ratio_max=zeros,
            ratio_min=torch.full((n,), torch.inf, dtype=dtype, device=device),
            clip_count=count,
            relevant_count=count,
            nonfinite_count=count,
            joint_max=torch.zeros((), dtype=dtype, device=device),
            joint_count=scalar_count,
            joint_clip_count=scalar_count,
            worst_log_ratio=zeros,
            per_head=per_head,
        )

    @classmethod
    def from_log_ratios(
        cls,
        lr: LogRatios,
        clip_eps: float,
        head_names: Sequence[str],
        per_head: bool = True,
    ) -> HeadRatioStats:
        """Reduce one batch of `log_ratios` to its statistics (no host synchronisation)."""
        n_samples, n_heads = lr.log_ratio.shape
        if n_heads != len(head_names):
            raise ValueError(f"{n_heads} heads in the tensors but {len(head_names)} names")
        log_ratio = lr.log_ratio.detach()
        if n_samples == 0:
            return cls.empty(head_names, log_ratio.device, log_ratio.dtype, per_head)
        joint = torch.exp(lr.joint_log_ratio.detach())
        joint_ranked = torch.where(lr.joint_valid, joint, torch.zeros_like(joint))
        worst = torch.argmax(joint_ranked).reshape(1)
        # log_ratio is 0 on unused heads; the joint_valid factor zeroes a non-joint sample.
        worst_row = log_ratio.index_select(0, worst) * lr.joint_valid.index_select(0, worst)
        if per_head:
            ratio = torch.exp(log_ratio)
            head_fields = {
                "ratio_max": torch.where(lr.used, ratio, torch.zeros_like(ratio)).amax(dim=0),
                "ratio_min": torch.where(lr.used, ratio, torch.full_like(ratio, torch.inf)).amin(
                    dim=0
                ),
                "clip_count": (lr.used & ((ratio - 1.0).abs() > clip_eps)).sum(dim=0),
                "relevant_count": lr.used.sum(dim=0),
                "nonfinite_count": lr.nonfinite.sum(dim=0),
            }
        else:
            identity = cls.empty(head_names, log_ratio.device, log_ratio.dtype, per_head)
            head_fields = {name: getattr(identity, name) for name in _HEAD_FIELDS}
        return cls(
            head_names=tuple(head_names),
            joint_max=joint_ranked.index_select(0, worst).squeeze(0),
            joint_count=lr.joint_valid.sum(),
            joint_clip_count=(lr.joint_valid & ((joint - 1.0).abs() > clip_eps)).sum(),
            worst_log_ratio=worst_row.squeeze(0),
            per_head=per_head,
            **head_fields,
        )

    @classmethod
    def from_tensors(
        cls,
        new: Tensor,
        old: Tensor,
        relevant: Tensor,
        clip_eps: float,
        head_names: Sequence[str],
        per_head: bool = True,
    ) -> HeadRatioStats:
        """Statistics of [N, H] new/old log-probs with an [N, H] bool relevance mask."""
        return cls.from_log_ratios(
            log_ratios(new.detach(), old.detach(), relevant), clip_eps, head_names, per_head
        )

    @classmethod
    def combine(cls, parts: Sequence[HeadRatioStats]) -> HeadRatioStats:
        """Merge any number of statistics in one reduction per field (max, min or sum).

        The worst-sample log-ratios follow the largest joint ratio (the first on a tie).
        Folding a whole update's minibatches here costs a handful of kernels, not a
        handful per minibatch.
        """
        if not parts:
            raise ValueError("combine needs at least one HeadRatioStats")
        first = parts[0]
        if any(p.head_names != first.head_names or p.per_head != first.per_head for p in parts):
            raise ValueError("cannot merge statistics of different heads or modes")

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
            joint_max=joint.amax(),
            joint_count=stacked("joint_count").sum(),
            joint_clip_count=stacked("joint_clip_count").sum(),
            worst_log_ratio=stacked("worst_log_ratio").index_select(0, worst).squeeze(0),
            per_head=first.per_head,
        )

    def merge(self, other: HeadRatioStats) -> HeadRatioStats:
        """Combine with the statistics of other samples. Neither input changes."""
        return HeadRatioStats.combine([self, other])

    def metric_names(self) -> tuple[str, ...]:
        """Names of the entries of `metric_tensor`, in order."""
        heads = (
            [f"head_{h}_{m}" for m in HEAD_METRICS for h in self.head_names]
            if self.per_head
            else []
        )
        return (*heads, "joint_ratio_max")

    def metric_tensor(self) -> Tensor:
        """Every reported metric as one float64 device tensor, for a single host transfer."""
        parts: list[Tensor] = []
        if self.per_head:
            seen = self.relevant_count > 0
            neutral = torch.full_like(self.ratio_max, NEUTRAL_RATIO)
            parts += [
                torch.where(seen, self.ratio_max, neutral),
                torch.where(seen, self.ratio_min, neutral),
                self.clip_count.double() / self.relevant_count.clamp(min=1),
                self.relevant_count,
                self.nonfinite_count,
            ]
        joint = torch.where(
            self.joint_count > 0, self.joint_max, torch.full_like(self.joint_max, NEUTRAL_RATIO)
        )
        parts.append(joint.reshape(1))
        return torch.cat([p.to(torch.float64) for p in parts])

    def joint_clip_fraction(self) -> Tensor:
        """Share of the joint samples whose joint ratio left [1 - eps, 1 + eps] (device 0-d)."""
        return self.joint_clip_count.double() / self.joint_count.clamp(min=1)

    def to_metrics(self) -> dict[str, float]:
        """The metrics as host floats: the one device->host transfer of these statistics."""
        return dict(zip(self.metric_names(), self.metric_tensor().tolist(), strict=True))


_HEAD_FIELDS: tuple[str, ...] = (
    "ratio_max",
    "ratio_min",
    "clip_count",
    "relevant_count",
    "nonfinite_count",
)


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


@dataclass(frozen=True)
class RatioExplosionReport:
    """Which heads drove a joint-ratio explosion, from the sample with the largest joint ratio.

    `shares[h]` is |log-ratio of h| over the sum across relevant heads at that sample, so
    the shares of a report sum to 1 (or are all 0 when no head moved). `hidden_by_heads` is
    the case TELE-151 exists for: every head's ratio range lies inside the clip range while
    the joint ratio does not.
    """

    joint_ratio_max: float
    worst_log_ratios: dict[str, float]
    shares: dict[str, float]
    hidden_by_heads: bool
    driver: str | None

    def summary(self) -> str:
        """One line for a console or log."""
        lead = f"joint ratio max {self.joint_ratio_max:.3f}"
        if self.driver is None:
            return f"{lead}, no head moved"
        hidden = "; every head inside the clip range" if self.hidden_by_heads else ""
        return f"{lead}, driven by {self.driver} ({self.shares[self.driver]:.0%}){hidden}"


def explain_explosion(
    metrics: Mapping[str, float],
    worst_log_ratios: Mapping[str, float],
    clip_eps: float,
) -> RatioExplosionReport:
    """Attribute the joint ratio max of host `metrics` (`to_metrics` keys) to its heads.

    `worst_log_ratios` maps each head to its log-ratio at the joint-max sample (0 where the
    head was irrelevant), as in `HeadRatioStats.worst_log_ratio`.
    """
    joint = float(metrics["joint_ratio_max"])
    magnitude = {h: abs(v) for h, v in worst_log_ratios.items()}
    total = sum(magnitude.values())
    shares = {h: (m / total if total > 0 else 0.0) for h, m in magnitude.items()}
    driver = max(shares, key=lambda h: shares[h]) if total > 0 else None
    low, high = 1.0 - clip_eps, 1.0 + clip_eps
    heads_inside = all(
        low <= metrics[f"head_{h}_ratio_min"] and metrics[f"head_{h}_ratio_max"] <= high
        for h in worst_log_ratios
    )
    return RatioExplosionReport(
        joint_ratio_max=joint,
        worst_log_ratios=dict(worst_log_ratios),
        shares=shares,
        hidden_by_heads=heads_inside and not low <= joint <= high,
        driver=driver,
    )
