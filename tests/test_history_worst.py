"""worst_ratio's fast path agrees with its definition; sparkline cells are unchanged by caching."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from esper.sanctum.widgets.history import worst_ratio
from esper.sanctum.widgets.style import (
    RATIO_BAR_FULL,
    SPARK_LEVELS,
    ratio_color,
    ratio_sparkline,
    spark_level,
)
from esper.telemetry.heads import SPEC_BANDS


def reference_worst(values: list[float]) -> float:
    """The definition: the value farthest from 1 in log space, non-finite or <= 0 first."""

    def badness(v: float) -> tuple[bool, float]:
        finite = math.isfinite(v) and v > 0.0
        return (not finite, abs(math.log(v)) if finite else 0.0)

    return max(values, key=badness)


ratios = st.one_of(
    st.floats(min_value=1e-6, max_value=1e6),
    st.sampled_from([0.5, 2.0, 1.0, 0.0, -1.0, math.inf, math.nan]),
)


@given(st.lists(ratios, min_size=1, max_size=40))
def test_fast_worst_equals_the_definition(values: list[float]) -> None:
    got, want = worst_ratio(values), reference_worst(values)
    assert got == want or (math.isnan(got) and math.isnan(want))  # type: ignore[arg-type]


def test_known_worst_values() -> None:
    assert worst_ratio([]) is None
    assert worst_ratio([1.1, 0.5, 1.9]) == 0.5  # |ln 0.5| > |ln 1.9|
    assert worst_ratio([0.5, 2.0]) == 0.5 and worst_ratio([2.0, 0.5]) == 2.0  # ties: first
    assert worst_ratio([1.0, math.inf, math.nan]) == math.inf


@given(st.lists(ratios, min_size=0, max_size=30))
def test_sparkline_cells_and_colours(values: list[float]) -> None:
    def color(v: float | None) -> str:
        return ratio_color(v, SPEC_BANDS)

    text = ratio_sparkline(values, RATIO_BAR_FULL, color)
    assert text.plain == "".join(SPARK_LEVELS[spark_level(v, RATIO_BAR_FULL)] for v in values)
    for i, v in enumerate(values):
        styles = [str(s.style) for s in text.spans if s.start <= i < s.end]
        assert styles == [ratio_color(v, SPEC_BANDS)]
