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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from esper.telemetry.heads import (
    HEAD_STATS,
    LOG_RATIO_CLAMP,
    NEUTRAL_RATIO,
    ExplosionReport,
    HeadStats,
    explain_explosion,
)


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


@dataclass(frozen=True, eq=False)
class HeadRatioStats:
    """Reducible ratio statistics of one or more minibatches, as device tensors.

    The empty value (`empty`) is the identity of `combine`: ratio max 0 (every ratio is at
    least exp(-20)), ratio min +inf, sums and counts 0; `reading_tensor` maps "no sample"
    to the neutral 1.0. Entropies come from the caller (the policy knows its
    distributions): summed nats per head over `entropy_count` samples.
    """

    head_names: tuple[str, ...]
    ratio_max: Tensor  # [H]
    ratio_min: Tensor  # [H]
    clip_count: Tensor  # [H] int64, |ratio - 1| > clip_eps
    relevant_count: Tensor  # [H] int64, relevant samples with finite log-probs
    nonfinite_count: Tensor  # [H] int64, relevant samples left out as NaN/+-inf
    kl_sum: Tensor  # [H] float64, sum of (r - 1) - log r over the relevant samples
    entropy_sum: Tensor  # [H] float64, nats summed over entropy_count samples
    entropy_count: Tensor  # [] float64, samples whose entropies were summed
    joint_max: Tensor  # [] max joint ratio, 0 when joint_count == 0
    joint_count: Tensor  # [] int64, samples that entered the joint
    joint_clip_count: Tensor  # [] int64, |joint ratio - 1| > clip_eps
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
        count = torch.zeros(n, dtype=torch.int64, device=device)
        scalar_count = torch.zeros((), dtype=torch.int64, device=device)
        return cls(
            head_names=tuple(head_names),
            ratio_max=zeros,
            ratio_min=torch.full((n,), torch.inf, dtype=dtype, device=device),
            clip_count=count,
            relevant_count=count,
            nonfinite_count=count,
            kl_sum=sums,
            entropy_sum=sums,
            entropy_count=torch.zeros((), dtype=torch.float64, device=device),
            joint_max=torch.zeros((), dtype=dtype, device=device),
            joint_count=scalar_count,
            joint_clip_count=scalar_count,
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
        n_samples, n_heads = lr.log_ratio.shape
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
        joint = torch.exp(lr.joint_log_ratio.detach())
        joint_ranked = torch.where(lr.joint_valid, joint, torch.zeros_like(joint))
        worst = torch.argmax(joint_ranked).reshape(1)
        # log_ratio is 0 on unused heads; the joint_valid factor zeroes a non-joint sample.
        worst_row = log_ratio.index_select(0, worst) * lr.joint_valid.index_select(0, worst)
        ratio = torch.exp(log_ratio)
        # (r - 1) - log r is 0 where the head is unused (log_ratio 0 there).
        kl = torch.special.expm1(log_ratio) - log_ratio
        return cls(
            head_names=tuple(head_names),
            ratio_max=torch.where(lr.used, ratio, torch.zeros_like(ratio)).amax(dim=0),
            ratio_min=torch.where(lr.used, ratio, torch.full_like(ratio, torch.inf)).amin(dim=0),
            clip_count=(lr.used & ((ratio - 1.0).abs() > clip_eps)).sum(dim=0),
            relevant_count=lr.used.sum(dim=0),
            nonfinite_count=lr.nonfinite.sum(dim=0),
            kl_sum=kl.sum(dim=0, dtype=torch.float64),
            entropy_sum=entropy_sum,
            entropy_count=entropy_count,
            joint_max=joint_ranked.index_select(0, worst).squeeze(0),
            joint_count=lr.joint_valid.sum(),
            joint_clip_count=(lr.joint_valid & ((joint - 1.0).abs() > clip_eps)).sum(),
            worst_log_ratio=worst_row.squeeze(0),
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
        return cls.from_log_ratios(
            log_ratios(new.detach(), old.detach(), relevant), clip_eps, head_names
        )

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

    @property
    def reading_size(self) -> int:
        """Length of `reading_tensor`: the head records, the worst sample, the joint."""
        return (len(HEAD_STATS) + 1) * len(self.head_names) + 2

    def reading_tensor(self, log_head_sizes: Tensor | None = None) -> Tensor:
        """Every reported value as one float64 device tensor, for a single host transfer.

        Layout: one [H] row per `HEAD_STATS` entry, the worst-sample log-ratios [H], the
        joint ratio max and the joint clip fraction. Entropy is normalised here, once, by
        ln(head size) when `log_head_sizes` is given (so 1 means uniform).
        """
        seen = self.relevant_count > 0
        neutral = torch.full_like(self.ratio_max, NEUTRAL_RATIO)
        relevant = self.relevant_count.clamp(min=1)
        entropy = self.entropy_sum / self.entropy_count.clamp(min=1)
        if log_head_sizes is not None:
            sizes = log_head_sizes.to(entropy)
            entropy = torch.where(sizes > 0, entropy / sizes.clamp(min=1e-12), 0.0)
        rows = {
            "ratio_max": torch.where(seen, self.ratio_max, neutral),
            "ratio_min": torch.where(seen, self.ratio_min, neutral),
            "clip_fraction": self.clip_count.double() / relevant,
            "entropy": entropy,
            "approx_kl": self.kl_sum / relevant,
            "relevant": self.relevant_count,
            "nonfinite": self.nonfinite_count,
        }
        joint = torch.where(
            self.joint_count > 0, self.joint_max, torch.full_like(self.joint_max, NEUTRAL_RATIO)
        )
        joint_clip = self.joint_clip_count.double() / self.joint_count.clamp(min=1)
        parts = [rows[stat] for stat in HEAD_STATS]
        parts += [self.worst_log_ratio, joint.reshape(1), joint_clip.reshape(1)]
        return torch.cat([p.to(torch.float64).reshape(-1) for p in parts])

    def read(self, values: Sequence[float]) -> RatioReading:
        """Typed records from the host copy of `reading_tensor` (pure; no tensor touched)."""
        n = len(self.head_names)
        if len(values) != self.reading_size:
            raise ValueError(f"expected {self.reading_size} values, got {len(values)}")
        rows = {stat: values[i * n : (i + 1) * n] for i, stat in enumerate(HEAD_STATS)}
        heads = {
            head: HeadStats(
                ratio_max=rows["ratio_max"][i],
                ratio_min=rows["ratio_min"][i],
                clip_fraction=rows["clip_fraction"][i],
                entropy=rows["entropy"][i],
                approx_kl=rows["approx_kl"][i],
                relevant=int(rows["relevant"][i]),
                nonfinite=int(rows["nonfinite"][i]),
            )
            for i, head in enumerate(self.head_names)
        }
        offset = len(HEAD_STATS) * n
        worst = dict(zip(self.head_names, values[offset : offset + n], strict=True))
        return RatioReading(
            heads=heads,
            joint_ratio_max=values[offset + n],
            joint_clip_fraction=values[offset + n + 1],
            worst_log_ratios=worst,
        )

    def to_reading(self, log_head_sizes: Tensor | None = None) -> RatioReading:
        """The statistics on the host: the one device->host transfer of these values."""
        return self.read(self.reading_tensor(log_head_sizes).tolist())


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
