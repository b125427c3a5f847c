"""Per-head ratio statistics (TELE-151) and the joint ratio (TELE-150): known answers
computed by hand, a loop-based oracle, and the algebra of merge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from esper.rl.ratio_stats import (
    HeadRatioStats,
    head_ratio_stats,
    log_ratios,
    reduce_across_ranks,
)
from esper.telemetry.heads import HeadStats, explain_explosion, iter_flat_heads

T = torch.tensor


def metrics(stats: HeadRatioStats) -> dict[str, float]:
    """The host reading flattened to edge names, so one dict compares every value."""
    reading = stats.to_reading()
    return {**dict(iter_flat_heads(reading.heads)), "joint_ratio_max": reading.joint_ratio_max}


def lp(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64)


# -- known answers ---------------------------------------------------------------------------


def test_log_ratio_is_clamped_at_plus_and_minus_twenty() -> None:
    m = metrics(head_ratio_stats({"a": lp(30.0, -30.0)}, {"a": zeros(2)}))
    assert m["head_a_ratio_max"] == pytest.approx(math.exp(20.0), rel=1e-12)
    assert m["head_a_ratio_min"] == pytest.approx(math.exp(-20.0), rel=1e-12)
    assert m["joint_ratio_max"] == pytest.approx(math.exp(20.0), rel=1e-12)


def test_an_irrelevant_sample_does_not_count() -> None:
    new = {"a": lp(0.1, 5.0), "b": lp(0.0, 0.0)}
    stats = head_ratio_stats(new, {"a": zeros(2), "b": zeros(2)}, {"a": T([True, False])})
    m = metrics(stats)
    assert m["head_a_ratio_max"] == pytest.approx(math.exp(0.1))
    assert m["head_a_relevant"] == 1.0
    assert m["head_b_relevant"] == 2.0  # a head left out of `relevant` counts everywhere
    # Sample 2's joint only has b (log 0); sample 1's has a (0.1) + b (0).
    assert m["joint_ratio_max"] == pytest.approx(math.exp(0.1))


def test_eight_heads_at_1_2_give_a_joint_of_4_2998() -> None:
    names = [f"h{i}" for i in range(8)]
    stats = head_ratio_stats({h: lp(math.log(1.2)) for h in names}, {h: zeros(1) for h in names})
    m = metrics(stats)
    assert all(m[f"head_{h}_ratio_max"] == pytest.approx(1.2) for h in names)
    assert m["joint_ratio_max"] == pytest.approx(4.29981696, rel=1e-9)


def test_joint_is_per_sample_not_the_product_of_head_maxima() -> None:
    # Each sample moves one head to 1.5, so the joint max is 1.5, not the 2.25 of the maxima.
    new = {"a": lp(math.log(1.5), 0.0), "b": lp(0.0, math.log(1.5))}
    m = metrics(head_ratio_stats(new, {"a": zeros(2), "b": zeros(2)}))
    assert m["joint_ratio_max"] == pytest.approx(1.5)
    assert m["head_a_ratio_max"] * m["head_b_ratio_max"] == pytest.approx(2.25)


def test_ratio_min_and_clip_fraction() -> None:
    ratios = [1.5, 1.1, 0.7, 1.0]  # |r - 1| > 0.2 for 1.5 and 0.7 only
    new = {"a": lp(*np.log(ratios))}
    m = metrics(head_ratio_stats(new, {"a": zeros(4)}, clip_eps=0.2))
    assert m["head_a_ratio_min"] == pytest.approx(0.7)
    assert m["head_a_ratio_max"] == pytest.approx(1.5)
    assert m["head_a_clip_fraction"] == 0.5
    assert m["head_a_relevant"] == 4.0


def test_a_head_with_no_relevant_sample_reports_neutral_one_and_count_zero() -> None:
    new = {"a": lp(3.0, -3.0), "b": lp(0.2, 0.2)}
    m = metrics(head_ratio_stats(new, {"a": zeros(2), "b": zeros(2)}, {"a": T([False, False])}))
    assert (m["head_a_ratio_max"], m["head_a_ratio_min"]) == (1.0, 1.0)
    assert (m["head_a_relevant"], m["head_a_clip_fraction"]) == (0.0, 0.0)


def test_an_empty_batch_reports_neutral_values() -> None:
    m = metrics(head_ratio_stats({"a": zeros(0)}, {"a": zeros(0)}))
    assert m == {
        "head_a_ratio_max": 1.0,
        "head_a_ratio_min": 1.0,
        "head_a_clip_fraction": 0.0,
        "head_a_entropy": 0.0,
        "head_a_approx_kl": 0.0,
        "head_a_relevant": 0,
        "head_a_nonfinite": 0,
        "joint_ratio_max": 1.0,
    }


def test_nonfinite_samples_are_counted_and_left_out() -> None:
    nan, inf = float("nan"), float("inf")
    new = {"a": lp(nan, 0.3, 0.1), "b": lp(0.0, inf, 0.2)}
    old = {"a": zeros(3), "b": lp(0.0, 0.0, -inf)}
    m = metrics(head_ratio_stats(new, old))
    assert m["head_a_nonfinite"] == 1.0 and m["head_b_nonfinite"] == 2.0
    assert m["head_a_ratio_max"] == pytest.approx(math.exp(0.3))
    assert m["head_a_relevant"] == 2.0 and m["head_b_relevant"] == 1.0
    # Sample 1 has a NaN in a, samples 2 and 3 a non-finite b: no sample enters the joint.
    assert m["joint_ratio_max"] == 1.0


def test_a_nonfinite_irrelevant_head_does_not_spoil_the_joint() -> None:
    new = {"a": lp(0.4), "b": lp(float("nan"))}
    m = metrics(head_ratio_stats(new, {"a": zeros(1), "b": zeros(1)}, {"b": T([False])}))
    assert m["joint_ratio_max"] == pytest.approx(math.exp(0.4))
    assert m["head_b_nonfinite"] == 0.0


def test_worst_log_ratio_is_taken_at_the_joint_max_sample() -> None:
    new = {"a": lp(0.5, 0.1), "b": lp(0.0, 0.9)}
    stats = head_ratio_stats(new, {"a": zeros(2), "b": zeros(2)}, {"a": T([True, False])})
    # Joints: exp(0.5) and exp(0.9) (a is irrelevant at sample 2, so it contributes 0).
    assert stats.worst_log_ratio.tolist() == pytest.approx([0.0, 0.9])


def test_half_precision_kl_sums_do_not_overflow() -> None:
    # 5,000 samples of log r = 3: (e^3 - 1) - 3 = 16.09 each, 80,000 in all (> float16 max).
    new, old = torch.full((5000, 1), -2.0, dtype=torch.float16), torch.full((5000, 1), -5.0)
    rel = torch.ones(5000, 1, dtype=torch.bool)
    stats = HeadRatioStats.from_tensors(new, old.half(), rel, 0.2, ("a",))
    assert stats.to_reading().heads["a"].approx_kl == pytest.approx(math.e**3 - 4, rel=1e-3)


def test_any_nonzero_relevance_counts_as_relevant() -> None:
    new = T([[-0.1, -0.2], [-0.5, -0.3]])
    old = torch.full((2, 2), -0.3)
    stats = HeadRatioStats.from_tensors(new, old, T([[2, 1], [0, 1]]), 0.2, ("a", "b"))
    a = stats.to_reading().heads["a"]
    assert (a.relevant, a.ratio_max, a.ratio_min) == (1, pytest.approx(math.exp(0.2)), a.ratio_max)


def test_a_tiny_joint_ratio_still_outranks_an_invalid_sample() -> None:
    # float32: e^-19 is representable, but expm1(-19) + 1 rounds to 0, the score of a
    # sample outside the joint (here the first, with a NaN head).
    f32 = torch.float32
    new = {"a": torch.tensor([math.nan, -18.0], dtype=f32), "b": torch.tensor([0.0, -1.0])}
    zero = {"a": torch.zeros(2, dtype=f32), "b": torch.zeros(2, dtype=f32)}
    reading = head_ratio_stats(new, zero).to_reading()
    assert reading.joint_ratio_max == pytest.approx(math.exp(-19.0), rel=1e-5)
    assert reading.worst_log_ratios == {"a": -18.0, "b": -1.0}


def test_merge_of_two_halves_equals_the_whole() -> None:
    gen = torch.Generator().manual_seed(3)
    new = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    old = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    rel = torch.rand(10, 3, generator=gen) > 0.3
    names = ("a", "b", "c")
    whole = HeadRatioStats.from_tensors(new, old, rel, 0.2, names)
    halves = HeadRatioStats.from_tensors(new[:4], old[:4], rel[:4], 0.2, names).merge(
        HeadRatioStats.from_tensors(new[4:], old[4:], rel[4:], 0.2, names)
    )
    assert metrics(halves) == pytest.approx(metrics(whole), rel=1e-12)
    assert torch.equal(halves.worst_log_ratio, whole.worst_log_ratio)


def test_the_reading_tensor_round_trip_loses_nothing() -> None:
    """Ranks exchange statistics as reading tensors; rebuilt, they are the same values."""
    gen = torch.Generator().manual_seed(5)
    new = torch.randn(12, 3, generator=gen)
    new[3, 1] = math.nan
    old, rel = torch.randn(12, 3, generator=gen), torch.rand(12, 3, generator=gen) > 0.4
    rel[:, 2] = False  # a head never relevant: ratio max 0 and min +inf must survive
    stats = HeadRatioStats.from_tensors(new, old, rel, 0.2, ("a", "b", "c"))
    again = HeadRatioStats.from_reading_tensor(stats.head_names, stats.reading_tensor())
    assert torch.equal(again.reading_tensor(), stats.reading_tensor())
    assert again.ratio_max.dtype == torch.float32 and again.clip_count.dtype == torch.float64
    with pytest.raises(ValueError, match="reading tensor"):
        HeadRatioStats.from_reading_tensor(("a",), stats.reading_tensor())


def test_without_torch_distributed_a_reduction_is_one_rank() -> None:
    stats = head_ratio_stats({"a": lp(0.3, -0.2)}, {"a": zeros(2)})
    reduced = reduce_across_ranks(stats, torch.tensor([1.0, 2.0]))
    assert reduced.stats is stats and stats.all_reduce() is stats
    assert reduced.extras.tolist() == [[1.0, 2.0]]


def test_merge_leaves_its_inputs_unchanged() -> None:
    a = head_ratio_stats({"x": lp(0.3)}, {"x": zeros(1)})
    b = head_ratio_stats({"x": lp(-0.6, 0.9)}, {"x": zeros(2)})
    before = (metrics(a), metrics(b))
    a.merge(b)
    assert (metrics(a), metrics(b)) == before


def test_empty_is_the_identity_of_merge() -> None:
    x = head_ratio_stats({"a": lp(0.3, -0.2)}, {"a": zeros(2)})
    empty = HeadRatioStats.empty(("a",), dtype=torch.float64)
    assert metrics(empty.merge(x)) == pytest.approx(metrics(x), rel=1e-12)
    assert metrics(x.merge(empty)) == pytest.approx(metrics(x), rel=1e-12)


def test_merging_different_heads_is_refused() -> None:
    a = head_ratio_stats({"a": lp(0.0)}, {"a": zeros(1)})
    b = head_ratio_stats({"b": lp(0.0)}, {"b": zeros(1)})
    with pytest.raises(ValueError, match="different heads"):
        a.merge(b)


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="differ"):
        head_ratio_stats({"a": lp(0.0)}, {"b": lp(0.0)})
    with pytest.raises(ValueError, match="unknown heads"):
        head_ratio_stats({"a": lp(0.0)}, {"a": lp(0.0)}, {"z": T([True])})


def test_approx_kl_and_entropy_per_head() -> None:
    # KL estimate (r - 1) - ln r: at r = e that is e - 2, at r = 1 it is 0; mean over 2.
    new, old, rel = lp(1.0, 0.0).view(2, 1), zeros(2).view(2, 1), T([[True], [True]])
    lr = HeadRatioStats.from_tensors(new, old, rel, 0.2, ("a",))
    entropy = HeadRatioStats.from_log_ratios(
        log_ratios(new, old, rel), 0.2, ("a",), entropy_sum=lp(3.0), entropy_count=lp(2.0)[0]
    )
    assert lr.to_reading().heads["a"].approx_kl == pytest.approx((math.e - 2) / 2)
    assert lr.to_reading().heads["a"].entropy == 0.0  # no entropy given
    # 3 nats over 2 samples, normalised by ln(4): 1.5 / 1.386
    reading = entropy.to_reading(head_sizes=[4])
    assert reading.heads["a"].entropy == pytest.approx(1.5 / math.log(4.0))


# -- explosion attribution ---------------------------------------------------------------------

HEADS = ("op", "slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve")


def heads_at(log_max: dict[str, float]) -> dict[str, HeadStats]:
    return {
        h: HeadStats(ratio_max=math.exp(log_max.get(h, 0.0)), ratio_min=0.9, relevant=1)
        for h in HEADS
    }


def test_explosion_driven_by_one_head_is_attributed_to_it() -> None:
    worst = {h: 0.0 for h in HEADS} | {
        "op": 0.1,
        "slot": 0.1,
        "blueprint": 0.4,
        "style": 0.1,
        "tempo": 0.1,
        "alpha_target": 0.2,
    }
    report = explain_explosion(heads_at(worst), math.e, worst, clip_eps=0.2)
    assert report.driver == "blueprint"
    assert report.shares["blueprint"] == pytest.approx(0.4)
    assert report.shares["alpha_target"] == pytest.approx(0.2)
    assert report.shares["alpha_speed"] == 0.0
    assert not report.hidden_by_heads  # blueprint alone is at exp(0.4) = 1.49 > 1.2
    assert "blueprint (40%)" in report.summary()


def test_explosion_hidden_by_heads_each_inside_the_clip_range() -> None:
    six = ("op", "slot", "blueprint", "style", "tempo", "alpha_target")
    worst = {h: (0.15 if h in six else 0.0) for h in HEADS}
    report = explain_explosion(heads_at(worst), math.exp(0.9), worst, clip_eps=0.2)
    assert report.hidden_by_heads  # every head at exp(0.15) = 1.16, joint at 2.46
    assert report.shares["tempo"] == pytest.approx(1 / 6)
    assert report.joint_ratio_max == pytest.approx(math.exp(0.9))


def test_explosion_with_no_head_moving_has_no_driver() -> None:
    worst = {h: 0.0 for h in HEADS}
    report = explain_explosion(heads_at(worst), 1.0, worst, clip_eps=0.2)
    assert report.driver is None and not report.hidden_by_heads
    assert set(report.shares.values()) == {0.0}


# -- properties --------------------------------------------------------------------------------

SPECIAL = st.sampled_from([float("nan"), float("inf"), -float("inf")])
LOG_PROB = st.one_of(st.floats(-60.0, 5.0), SPECIAL)


@st.composite
def batches(draw: st.DrawFn, n_heads: int = 3) -> tuple[torch.Tensor, ...]:
    n = draw(st.integers(0, 7))
    new = draw(hnp.arrays(np.float64, (n, n_heads), elements=LOG_PROB))
    old = draw(hnp.arrays(np.float64, (n, n_heads), elements=LOG_PROB))
    rel = draw(hnp.arrays(np.bool_, (n, n_heads)))
    return torch.from_numpy(new), torch.from_numpy(old), torch.from_numpy(rel)


NAMES = ("a", "b", "c")


def stats_of(batch: tuple[torch.Tensor, ...]) -> HeadRatioStats:
    return HeadRatioStats.from_tensors(*batch, 0.2, NAMES)


def oracle(batch: tuple[torch.Tensor, ...], eps: float = 0.2) -> dict[str, float]:
    """The definitions (spec section 2) applied sample by sample in plain Python."""
    new, old, rel = (x.tolist() for x in batch)
    out: dict[str, float] = {}
    for j, h in enumerate(NAMES):
        ratios, bad = [], 0
        for i in range(len(new)):
            if not rel[i][j]:
                continue
            if not (math.isfinite(new[i][j]) and math.isfinite(old[i][j])):
                bad += 1
                continue
            ratios.append(math.exp(min(20.0, max(-20.0, new[i][j] - old[i][j]))))
        out[f"head_{h}_ratio_max"] = max(ratios, default=1.0)
        out[f"head_{h}_ratio_min"] = min(ratios, default=1.0)
        clipped = sum(abs(r - 1) > eps for r in ratios)
        out[f"head_{h}_clip_fraction"] = clipped / len(ratios) if ratios else 0.0
        out[f"head_{h}_relevant"] = len(ratios)
        out[f"head_{h}_nonfinite"] = bad
        kl = [r - 1 - math.log(r) for r in ratios]
        out[f"head_{h}_approx_kl"] = sum(kl) / len(kl) if kl else 0.0
    joints = []
    for n_row, o_row, r_row in zip(new, old, rel, strict=True):
        pairs = [(a, b) for a, b, r in zip(n_row, o_row, r_row, strict=True) if r]
        if pairs and all(math.isfinite(a) and math.isfinite(b) for a, b in pairs):
            total = sum(min(20.0, max(-20.0, a - b)) for a, b in pairs)
            joints.append(math.exp(min(20.0, max(-20.0, total))))
    out["joint_ratio_max"] = max(joints, default=1.0)
    return out


@settings(max_examples=80, deadline=None)
@given(batches())
def test_statistics_match_a_sample_by_sample_oracle(batch: tuple[torch.Tensor, ...]):
    m = metrics(stats_of(batch))
    for key, value in oracle(batch).items():
        assert m[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@settings(max_examples=60, deadline=None)
@given(batches(), batches(), batches())
def test_merge_is_associative_and_order_free(
    x: tuple[torch.Tensor, ...], y: tuple[torch.Tensor, ...], z: tuple[torch.Tensor, ...]
) -> None:
    a, b, c = stats_of(x), stats_of(y), stats_of(z)
    # Sums (the KL estimate) may differ in the last bit by order; the rest is exact.
    left = pytest.approx(metrics(a.merge(b).merge(c)), rel=1e-12, nan_ok=True)
    assert metrics(a.merge(b.merge(c))) == left
    assert metrics(c.merge(a).merge(b)) == left
    assert metrics(HeadRatioStats.combine([b, c, a])) == left


@settings(max_examples=80, deadline=None)
@given(batches())
def test_joint_is_bounded_by_the_product_of_head_maxima(batch: tuple[torch.Tensor, ...]):
    m = metrics(stats_of(batch))
    bound = math.prod(max(1.0, m[f"head_{h}_ratio_max"]) for h in NAMES)
    assert m["joint_ratio_max"] <= bound * (1 + 1e-9)


@settings(max_examples=80, deadline=None)
@given(batches())
def test_outputs_are_finite_and_non_negative(batch: tuple[torch.Tensor, ...]) -> None:
    stats = stats_of(batch)
    assert all(math.isfinite(v) and v >= 0 for v in metrics(stats).values())
    assert torch.isfinite(stats.worst_log_ratio).all()


@settings(max_examples=80, deadline=None)
@given(batches())
def test_worst_log_ratios_reproduce_the_joint_max(batch: tuple[torch.Tensor, ...]) -> None:
    stats = stats_of(batch)
    if int(stats.joint_count) == 0:
        assert torch.count_nonzero(stats.worst_log_ratio) == 0
        return
    joint = math.exp(min(20.0, max(-20.0, float(stats.worst_log_ratio.sum()))))
    assert metrics(stats)["joint_ratio_max"] == pytest.approx(joint, rel=1e-12)
