"""Sanctum widgets: the colour bands, bars and glyphs (known answers) and what the panels draw.

Snapshots are built from the schema dataclasses directly, so these tests pin what the
dashboard shows for a given state without any telemetry machinery.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import fields, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console, RenderableType
from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region

from esper.morpho.actions import HEAD_NAMES
from esper.sanctum.schema import (
    EpisodeStats,
    EventLogEntry,
    HeadState,
    Progress,
    RunInfo,
    SanctumSnapshot,
    SlotState,
    TamiyoState,
)
from esper.sanctum.widgets import ActionHeadsPanel, entropy_bar, ratio_bar, ratio_color
from esper.sanctum.widgets.events import TailLines, event_line, event_time, render_events
from esper.sanctum.widgets.footer import render_footer
from esper.sanctum.widgets.header import (
    HeaderView,
    elapsed_seconds,
    episodes_per_second,
    pack_fields,
    render_header,
)
from esper.sanctum.widgets.heads import (
    MIN_HEAD_COLUMN,
    head_column_width,
    head_label,
    head_rows,
    head_state,
    heads_table,
    render_action_heads,
)
from esper.sanctum.widgets.history import history_groups, render_ratio_history, worst_ratio
from esper.sanctum.widgets.ppo import render_ppo_health
from esper.sanctum.widgets.slots import render_slots
from esper.sanctum.widgets.style import (
    CRITICAL,
    HEALTHY,
    NO_DATA,
    NO_VALUE,
    WARNING,
    TailText,
    fmt_duration,
    fmt_number,
    fmt_ratio,
    joint_ratio_color,
    ratio_fill,
    round_half_up,
    sparkline,
)
from esper.telemetry.heads import SPEC_BANDS, HeadStats, UpdateStats

# ------------------------------------------------------------------ helpers


_STATE_FIELDS = {f.name for f in fields(HeadState)}


def tamiyo_after_update(
    ratios: dict[str, float] | None = None,
    relevant: dict[str, int] | None = None,
    names: Sequence[str] = HEAD_NAMES,
    **head_fields: dict[str, object],
) -> TamiyoState:
    """A TamiyoState after one PPO update: given ratio maxima, 32 relevant samples a head.

    `head_fields` maps a HeadStats or HeadState field (latches, history) to
    {head: value} for the heads that differ.
    """
    ratios = ratios or {}
    relevant = relevant or {}
    heads = {}
    for head in names:
        given = {name: values[head] for name, values in head_fields.items() if head in values}
        stats = HeadStats(
            **{
                "ratio_max": ratios.get(head, 1.1),
                "ratio_min": 0.9,
                "clip_fraction": 0.05,
                "entropy": 0.5,
                "relevant": relevant.get(head, 32),
                **{k: v for k, v in given.items() if k not in _STATE_FIELDS},
            }  # type: ignore[arg-type]
        )
        state = {k: v for k, v in given.items() if k in _STATE_FIELDS}
        heads[head] = HeadState(stats=stats, **state)  # type: ignore[arg-type]
    return TamiyoState(
        head_names=tuple(names),
        heads=heads,
        update=UpdateStats(heads={}),
        ppo_updates_count=1,
        last_update_index=0,
        last_update_batch=0,
    )


def tamiyo_declared(names: Sequence[str] = HEAD_NAMES) -> TamiyoState:
    """The state after TRAINING_STARTED declared `names`, before any PPO update."""
    return TamiyoState(head_names=tuple(names), heads={h: HeadState() for h in names})


def render_text(renderable: RenderableType, width: int = 116) -> str:
    """Plain text of a rich renderable at `width` columns."""
    console = Console(width=width, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


# ------------------------------------------------------------------ colour bands


@pytest.mark.parametrize(
    ("value", "color"),
    [
        (0.49, CRITICAL),
        (0.5, WARNING),
        (0.79, WARNING),
        (0.8, HEALTHY),
        (1.0, HEALTHY),
        (1.2, HEALTHY),
        (1.21, WARNING),
        (1.5, WARNING),
        (1.51, CRITICAL),
        (0.0, CRITICAL),
        (485_165_195.4, CRITICAL),  # exp(20), the clamp ceiling
    ],
)
def test_ratio_color_bands(value: float, color: str) -> None:
    assert ratio_color(value, SPEC_BANDS) == color


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_ratio_color_non_finite_is_red(value: float) -> None:
    assert ratio_color(value, SPEC_BANDS) == CRITICAL


def test_ratio_color_without_data_is_dim() -> None:
    assert ratio_color(None, SPEC_BANDS) == NO_DATA


@pytest.mark.parametrize(
    ("value", "color"),
    [
        (1.0, HEALTHY),
        (1.2**2, HEALTHY),  # two heads at the clip edge
        (1.5, HEALTHY),
        (1.51, WARNING),
        (1.2**6, WARNING),  # a GROW with all six heads at the clip edge: 2.986
        (3.0, WARNING),
        (3.01, CRITICAL),
        (1.2**8, CRITICAL),  # the brief's eight heads at 1.2: 4.3
        (0.7, HEALTHY),
        (0.5, WARNING),
        (0.3, CRITICAL),
        (0.0, CRITICAL),
        (math.nan, CRITICAL),
        (math.inf, CRITICAL),
    ],
)
def test_joint_ratio_color_bands(value: float, color: str) -> None:
    assert joint_ratio_color(value, SPEC_BANDS) == color


def test_joint_ratio_color_without_data_is_dim() -> None:
    assert joint_ratio_color(None, SPEC_BANDS) == NO_DATA


def test_joint_bands_are_looser_than_head_bands_where_heads_are_healthy() -> None:
    # 1.3 is a per-head warning but what two healthy heads (1.14 each) multiply to
    assert ratio_color(1.3, SPEC_BANDS) == WARNING
    assert joint_ratio_color(1.14 * 1.14, SPEC_BANDS) == HEALTHY


# ------------------------------------------------------------------ bars


@pytest.mark.parametrize(
    ("value", "bar"),
    [
        (1.0, "░░░░░"),
        (0.5, "█████"),
        (2.0, "█████"),
        (1.5, "███░░"),  # round(5 * ln 1.5 / ln 2) = round(2.92) = 3
        (1.1, "█░░░░"),  # 5 * 0.1375 = 0.69 -> 1
        (1.05, "░░░░░"),  # 5 * 0.0704 = 0.35 -> 0
        (0.25, "█████"),  # beyond full is still full
        (math.nan, "█████"),
        (math.inf, "█████"),
        (0.0, "█████"),
    ],
)
def test_ratio_bar_fill(value: float, bar: str) -> None:
    assert ratio_bar(value) == bar


def test_round_half_up_differs_from_bankers_rounding() -> None:
    assert (round_half_up(2.5), round(2.5)) == (3, 2)
    assert round_half_up(0.5) == 1
    assert round_half_up(2.49) == 2


@given(st.floats(1.0, 1e6), st.floats(1.0, 1e6))
def test_ratio_fill_grows_with_the_shift_above_one(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert 0 <= ratio_fill(low) <= ratio_fill(high) <= 5


@given(st.floats(1e-6, 1.0), st.floats(1e-6, 1.0))
def test_ratio_fill_grows_with_the_shift_below_one(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert 5 >= ratio_fill(low) >= ratio_fill(high) >= 0


@given(st.floats(0.01, 100.0))
def test_ratio_bar_is_five_cells_whose_fill_matches_ratio_fill(v: float) -> None:
    bar = ratio_bar(v)
    assert len(bar) == 5 and bar.count("█") == ratio_fill(v)
    assert bar == "█" * ratio_fill(v) + "░" * (5 - ratio_fill(v))


@pytest.mark.parametrize(
    ("entropy", "bar"),
    [(0.0, "░░░░░"), (1.0, "█████"), (0.5, "███░░"), (0.62, "███░░"), (1.7, "█████")],
)
def test_entropy_bar(entropy: float, bar: str) -> None:
    assert entropy_bar(entropy) == bar


def test_sparkline_heights_follow_log_deviation() -> None:
    # levels 0..7 = round_half_up(7 * |ln v| / ln 2): 2^(k/7) sits exactly on level k
    values = [1.0, 2 ** (1 / 7), 2 ** (-3 / 7), 2.0, 0.5, 10.0, math.nan]
    assert sparkline(values) == "▁▂▄████"


def test_tail_text_keeps_the_newest_values() -> None:
    text = render_text(TailText(Text("abcdefgh")), width=3)
    assert text.strip() == "fgh"


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.23456, "1.235"), (1.0, "1.000"), (math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")],
)
def test_fmt_ratio(value: float, shown: str) -> None:
    assert fmt_ratio(value) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.5, "0.500"), (-0.012, "-0.012"), (0.0, "0.000"), (1.5e-5, "1.50e-05"), (2e6, "2.00e+06")],
)
def test_fmt_number(value: float, shown: str) -> None:
    assert fmt_number(value) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0:00:00"), (65.9, "0:01:05"), (3723, "1:02:03")]
)
def test_fmt_duration(seconds: float, shown: str) -> None:
    assert fmt_duration(seconds) == shown


@pytest.mark.parametrize(
    ("name", "width", "label"),
    [
        ("alpha_target", 12, "alpha_target"),
        ("alpha_target", 7, "alpha_\ntarget"),
        ("blueprint", 7, "bluepr-\nint"),
        ("op", 1, "op"),  # no line is narrower than two cells
        ("left_arm_x", 7, "left_\narm_x"),  # underscores kept with the part before them
        ("shoulder_x", 7, "should-\ner_x"),
        ("gripper_force_limit", 8, "gripper_\nforce_\nlimit"),
        ("abcdefghijklmnop", 6, "abcde-\nfghij-\nklmnop"),
    ],
)
def test_head_label_breaks_long_names(name: str, width: int, label: str) -> None:
    assert head_label(name, width) == label


@given(st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True), st.integers(2, 40))
def test_head_label_keeps_every_letter_in_lines_that_fit(name: str, width: int) -> None:
    lines = head_label(name, width).split("\n")
    assert "".join(line.removesuffix("-") for line in lines) == name  # names hold no "-"
    assert all(len(line) <= max(width, 2) for line in lines)


def test_head_columns_fit_every_head_name_at_120_columns() -> None:
    # a 120-column terminal leaves 116 cells inside the panel's border and padding
    assert head_column_width(116, len(HEAD_NAMES)) >= max(len(h) for h in HEAD_NAMES)


@pytest.mark.parametrize(
    ("heads", "width", "rows"),
    [
        (8, 116, [8]),  # esper at 120 columns: one table, as always
        (8, 76, [8]),  # and at 80 columns (cells wrap under their value)
        (1, 116, [1]),
        (3, 40, [3]),
        (24, 116, [12, 12]),
        (24, 76, [8, 8, 8]),
        (32, 116, [11, 11, 10]),
        (5, 10, [1, 1, 1, 1, 1]),  # narrower than one head column: one head a table
    ],
)
def test_heads_wrap_into_even_tables_that_fit(heads: int, width: int, rows: list[int]) -> None:
    names = [f"h{i}" for i in range(heads)]
    split = head_rows(names, width)
    assert [len(r) for r in split] == rows
    assert [h for r in split for h in r] == names  # every head once, in display order
    if len(split) > 1 and rows[0] > 1:
        assert head_column_width(width, rows[0]) >= MIN_HEAD_COLUMN


@given(st.integers(1, 32), st.integers(20, 300))
def test_head_tables_never_need_more_room_than_given(heads: int, width: int) -> None:
    split = head_rows([f"h{i}" for i in range(heads)], width)
    widest = max(len(r) for r in split)
    assert widest == 1 or head_column_width(width, widest) >= MIN_HEAD_COLUMN
    assert len(split) == -(-heads // widest)  # as few tables as the widest allows


# ------------------------------------------------------------------ action heads panel


def _cells(tamiyo: TamiyoState, row: str) -> dict[str, Text]:
    """The cells of one row of the heads table, by head."""
    table = heads_table(tamiyo, 116)
    labels = list(table.columns[0].cells)
    index = labels.index(row)
    heads = tamiyo.head_names
    return {head: list(table.columns[i + 1].cells)[index] for i, head in enumerate(heads)}


def test_ratio_row_formats_three_decimals_coloured_with_bar() -> None:
    t = tamiyo_after_update({"op": 1.0, "slot": 1.31, "blueprint": 2.4, "tempo": 0.7})
    cells = _cells(t, "ratio max")
    assert (cells["op"].plain, cells["op"].style) == ("1.000 ░░░░░", HEALTHY)
    assert (cells["slot"].plain, cells["slot"].style) == ("1.310 ██░░░", WARNING)
    assert (cells["blueprint"].plain, cells["blueprint"].style) == ("2.400 █████", CRITICAL)
    assert (cells["tempo"].plain, cells["tempo"].style) == ("0.700 ███░░", WARNING)


def test_every_cell_is_a_dim_dash_before_the_first_update() -> None:
    t = tamiyo_declared()  # the heads are known, nothing is measured
    for row in ("entropy", "ratio max", "ratio min", "clip frac", "samples", "state"):
        cells = _cells(t, row)
        assert list(cells) == list(HEAD_NAMES)
        for cell in cells.values():
            assert (cell.plain, cell.style) == (NO_VALUE, NO_DATA)
    text = render_text(render_action_heads(SanctumSnapshot(tamiyo=t)))
    assert "1.000" not in text and "waiting for the first PPO update" in text
    text = render_text(render_action_heads(SanctumSnapshot()))
    assert "no heads declared yet" in text and "waiting for the first PPO update" in text


def test_a_declared_head_the_update_did_not_carry_is_all_dashes() -> None:
    t = tamiyo_after_update(names=("x", "y"))
    t = replace(t, head_names=("x", "y", "z"), heads={**t.heads, "z": HeadState()})
    for row in ("entropy", "ratio max", "ratio min", "clip frac", "samples", "state"):
        cell = _cells(t, row)["z"]
        assert (cell.plain, cell.style) == (NO_VALUE, NO_DATA), row
    assert _cells(t, "ratio max")["x"].plain == "1.100 █░░░░"


def test_head_without_relevant_samples_is_a_dash_not_a_green_one() -> None:
    t = tamiyo_after_update({"tempo": 1.0}, relevant={"tempo": 0})
    for row in ("ratio max", "ratio min", "clip frac", "state"):
        cell = _cells(t, row)["tempo"]
        assert (cell.plain, cell.style) == (NO_VALUE, NO_DATA), row
    assert _cells(t, "samples")["tempo"].plain == "0"
    assert _cells(t, "ratio max")["op"].style == HEALTHY  # the others still show


@pytest.mark.parametrize(
    ("ratio_max", "ratio_min", "glyph", "style"),
    [
        (1.1, 0.9, "✓", HEALTHY),
        (1.3, 0.9, "▲", WARNING),
        (1.1, 0.6, "▲", WARNING),  # the low side counts too
        (1.6, 0.9, "✖", CRITICAL),
        (1.3, 0.4, "✖", CRITICAL),  # worst of both ends
    ],
)
def test_state_glyph_is_the_worst_of_ratio_max_and_min(
    ratio_max: float, ratio_min: float, glyph: str, style: str
) -> None:
    t = tamiyo_after_update({"op": ratio_max}, ratio_min={"op": ratio_min})
    assert (head_state(t, "op").plain, head_state(t, "op").style) == (glyph, style)


def test_latched_nan_outranks_health_and_irrelevance() -> None:
    t = tamiyo_after_update(
        relevant={"alpha_curve": 0}, nan_latched={"alpha_curve": True}, inf_latched={"slot": True}
    )
    assert head_state(t, "alpha_curve").plain == "☢ NaN"
    assert head_state(t, "slot").plain == "☢ Inf"
    assert CRITICAL in str(head_state(t, "slot").style)


def test_non_finite_ratio_reads_nan_in_red_with_a_full_bar() -> None:
    cell = _cells(tamiyo_after_update({"style": math.nan}), "ratio max")["style"]
    assert (cell.plain, cell.style) == ("NaN █████", CRITICAL)


def test_status_line_names_the_update_index_like_esper_query() -> None:
    """Update 19 (the 17th completed: two were skipped) reads "PPO update 19"."""
    t = replace(tamiyo_after_update(), last_update_index=19, ppo_updates_count=17)
    t = replace(t, last_update_batch=19)
    text = render_text(render_action_heads(SanctumSnapshot(tamiyo=t)))
    assert "PPO update 19 · batch 19" in text


@pytest.mark.parametrize("count", [1, 3, 24, 32])
def test_panel_shows_every_head_of_any_run(count: int) -> None:
    names = [f"h{i}" for i in range(count)]
    t = tamiyo_after_update({names[-1]: 1.6}, names=names)
    text = render_text(render_action_heads(SanctumSnapshot(tamiyo=t)), width=116)
    assert text.count("ratio max") == len(head_rows(names, 116))  # one table per row
    words = text.split()
    assert all(words.count(name) == 1 for name in names)
    assert words.count("1.600") == 1 and words.count("1.100") == count - 1

    t = replace(tamiyo_after_update(), last_update_batch=3)
    fresh = SanctumSnapshot(tamiyo=t, progress=Progress(batches_done=4))
    stale = SanctumSnapshot(tamiyo=t, progress=Progress(batches_done=6))
    assert "STALE" not in render_text(render_action_heads(fresh))
    assert "STALE — last update from batch 3" in render_text(render_action_heads(stale))


class PanelApp(App[None]):
    """The smallest app that mounts one ActionHeadsPanel (heads declared, no update yet)."""

    def compose(self) -> ComposeResult:
        yield ActionHeadsPanel(SanctumSnapshot(tamiyo=tamiyo_declared()))


def _widget_text(panel: ActionHeadsPanel) -> list[str]:
    width, height = panel.outer_size
    return [strip.text for strip in panel.render_lines(Region(0, 0, width, height))]


async def test_mounted_panel_draws_dashes_then_the_update() -> None:
    app = PanelApp()
    async with app.run_test(size=(120, 12)) as pilot:
        panel = app.query_one(ActionHeadsPanel)
        before = _widget_text(panel)
        assert not any("1.000" in line for line in before)
        ratio_line = next(line for line in before if line.startswith("ratio max"))
        assert ratio_line.split()[2:] == [NO_VALUE] * 8

        t = tamiyo_after_update({"op": 1.234, "tempo": 1.0}, relevant={"tempo": 0})
        panel.snapshot = SanctumSnapshot(tamiyo=t)
        await pilot.pause()
        after = _widget_text(panel)
        header = next(line for line in after if "alpha_target" in line)
        assert header.split() == list(HEAD_NAMES)
        ratio_line = next(line for line in after if line.startswith("ratio max"))
        values = ratio_line.split()[2:]  # value and bar alternate; tempo's dash has no bar
        assert values[:2] == ["1.234", "██░░░"]  # 5 * ln 1.234 / ln 2 = 1.52 -> 2
        assert values[8] == NO_VALUE and values.count(NO_VALUE) == 1


# ------------------------------------------------------------------ other panels


def _snapshot_with_run() -> SanctumSnapshot:
    return SanctumSnapshot(
        run=RunInfo(run_id="r1", task="digits", episodes_total=100, started_at=1000.0),
        progress=Progress(episodes_done=30, batches_done=3, last_event_time=1060.0),
        tamiyo=replace(tamiyo_after_update(), ppo_updates_count=3),
        events_read=40,
    )


def test_elapsed_is_clock_based_live_and_event_based_when_over_or_replayed() -> None:
    snap = _snapshot_with_run()
    assert elapsed_seconds(snap, now=1090.0) == 90.0
    assert elapsed_seconds(snap, now=None) == 60.0
    finished = replace(snap, progress=replace(snap.progress, finished=True))
    assert elapsed_seconds(finished, now=5000.0) == 60.0
    assert elapsed_seconds(SanctumSnapshot(), now=1.0) is None


def test_episodes_per_second_uses_the_recorded_span() -> None:
    assert episodes_per_second(_snapshot_with_run()) == 0.5  # 30 episodes in 60 s
    assert episodes_per_second(SanctumSnapshot()) is None


@pytest.mark.parametrize(
    ("progress", "view", "expected"),
    [
        ({}, HeaderView(now=1061.0), "LIVE"),
        ({}, HeaderView(now=1100.0), "no events for 0:00:40"),
        ({"finished": True}, HeaderView(now=1100.0), "FINISHED"),
        ({"failed": True, "failure": "CUDA OOM"}, HeaderView(now=1100.0), "FAILED: CUDA OOM"),
        ({}, HeaderView(replay=(2, 5)), "REPLAY 2/5"),
        ({}, HeaderView(now=1061.0, paused=True), "PAUSED LIVE"),
    ],
)
def test_header_states(progress: dict[str, object], view: HeaderView, expected: str) -> None:
    snap = _snapshot_with_run()
    snap = replace(snap, progress=replace(snap.progress, **progress))
    text = render_text(render_header(snap, view), width=200)
    assert "run r1" in text and "episode 30/100" in text and "PPO updates 3" in text
    assert text.startswith(f"SANCTUM │ {expected} │ run r1")


@pytest.mark.parametrize(
    ("widths", "max_width", "lines"),
    [
        ([3, 3, 3], 20, [[0, 1, 2]]),  # 3 + 3 + 3 + 2 separators of 3 = 15
        ([3, 3, 3], 14, [[0, 1], [2]]),
        ([3, 3, 3], 9, [[0, 1], [2]]),  # exactly full
        ([3, 3, 3], 8, [[0], [1], [2]]),
        ([30, 3], 10, [[0], [1]]),  # too wide for any line: alone on its own
    ],
)
def test_pack_fields(widths: list[int], max_width: int, lines: list[list[int]]) -> None:
    assert pack_fields(widths, max_width, separator=3) == lines


def test_narrow_header_wraps_between_fields_only() -> None:
    text = render_text(render_header(_snapshot_with_run(), HeaderView(now=1065.0)), width=40)
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines == [
        "SANCTUM │ LIVE │ run r1 │ task digits",
        "episode 30/100 │ PPO updates 3",
        "elapsed 0:01:05 │ 0.50 ep/s",
    ]


def test_header_shows_elapsed_and_rate() -> None:
    text = render_text(render_header(_snapshot_with_run(), HeaderView(now=1090.0)), width=200)
    assert "elapsed 0:01:30" in text and "0.50 ep/s" in text


def test_ppo_panel_dashes_before_data_and_joint_bands_after() -> None:
    before = render_text(render_ppo_health(SanctumSnapshot()), width=40)
    assert before.count(NO_VALUE) == 9 and "1.000" not in before
    update = UpdateStats(heads={}, joint_ratio_max=4.3, early_stopped=True, epochs_run=2)
    t = replace(tamiyo_after_update(), update=update)
    after = render_text(render_ppo_health(SanctumSnapshot(tamiyo=t)), width=40)
    assert "4.300 █████" in after  # joint bar is full at x3
    assert "2 (early stop)" in after


def test_worst_ratio_is_the_largest_log_shift() -> None:
    assert worst_ratio([1.1, 0.7, 1.3]) == 0.7  # |ln 0.7| = 0.36 > ln 1.3 = 0.26
    assert math.isnan(worst_ratio([1.1, math.nan, 3.0]))  # type: ignore[arg-type]
    assert worst_ratio([]) is None


def test_history_panel_shows_newest_values_and_worst() -> None:
    t = tamiyo_after_update(ratio_max_history={"op": (1.0, 2.0, 1.0)})
    t = replace(t, joint_ratio_max_history=(1.0, 3.0))
    text = render_text(render_ratio_history(SanctumSnapshot(tamiyo=t)), width=60)
    op_line = next(line for line in text.splitlines() if line.startswith("op"))
    assert op_line.split()[1:] == ["▁█▁", "2.000"]
    joint_line = next(line for line in text.splitlines() if line.startswith("joint"))
    assert joint_line.split()[1:] == ["▁█", "3.000"]
    slot_line = next(line for line in text.splitlines() if line.startswith("slot"))
    assert slot_line.split()[1:] == [NO_VALUE, NO_VALUE]


@pytest.mark.parametrize(
    ("heads", "width", "groups"),
    [(8, 70, 1), (12, 70, 1), (13, 70, 2), (24, 70, 2), (32, 70, 2), (32, 120, 3), (24, 40, 1)],
)
def test_many_heads_spread_over_history_groups(heads: int, width: int, groups: int) -> None:
    assert history_groups(heads, width) == groups


def test_history_of_24_heads_shows_each_head_and_the_joint_once() -> None:
    names = [f"h{i:02d}" for i in range(24)]
    history = {h: (1.0, 1.0 + i / 100) for i, h in enumerate(names)}
    t = replace(tamiyo_after_update(names=names, ratio_max_history=history),
                joint_ratio_max_history=(1.0, 3.0))  # fmt: skip
    text = render_text(render_ratio_history(SanctumSnapshot(tamiyo=t)), width=70)
    words = text.split()
    assert all(words.count(h) == 1 for h in names) and words.count("joint") == 1
    assert len(text.splitlines()) == 1 + 12 + 1  # title row, 12 heads, the joint
    assert "1.230" in words and "3.000" in words


def test_slots_panel_lists_slots_in_index_order_and_empty_slots_as_dashes() -> None:
    # slot 1 was killed: DORMANT again, still carrying its last seed's blueprint
    snap = SanctumSnapshot(
        slots=(SlotState(1, "DORMANT", "NORM", 0.7), SlotState(0, "BLENDING", "MLP", 0.4)),
    )
    lines = render_text(render_slots(snap), width=44).splitlines()
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert rows == [["0", "BLENDING", "MLP", "0.40", "██░░░"], ["1", "DORMANT", NO_VALUE, NO_VALUE]]


def test_seed_counts_sit_under_their_names() -> None:
    episodes = EpisodeStats(seeds_grown=530, seeds_fossilized=20, seeds_killed=4500)
    lines = render_text(render_slots(SanctumSnapshot(episodes=episodes)), width=40).splitlines()
    assert [line.split() for line in lines[-2:]] == [
        ["grown", "fossilized", "killed"],
        ["seeds", "530", "20", "4500"],
    ]
    header, counts = lines[-2:]
    assert header.index("fossilized") + len("fossilized") == counts.index(" 20 ") + 3


def test_a_run_without_a_host_shows_its_returns_and_no_zero_seed_counts() -> None:
    """An SB3 or hand-written run (no slot head): no slot table, no seeds row of zeros."""
    episodes = EpisodeStats(last_return=-243.5, mean_return=-266.6, return_history=(-300.0,))
    no_host = SanctumSnapshot(run=RunInfo(host_slots=0), episodes=episodes)
    text = render_text(render_slots(no_host), width=44)
    assert "no host slots in this run" in text and "-243.500" in text
    assert "seeds" not in text and "no slots reported yet" not in text
    # Before the run's start is read, the panel does not know yet: it waits for slots.
    unknown = render_text(render_slots(SanctumSnapshot(episodes=episodes)), width=44)
    assert "no slots reported yet" in unknown and "seeds" in unknown


def test_event_times_are_offsets_into_the_run_or_utc() -> None:
    assert event_time(1065.0, started_at=1000.0) == "+0:01:05"
    assert event_time(3661.0, started_at=None) == "01:01:01"


def test_event_log_keeps_the_newest_lines_that_fit() -> None:
    events = tuple(EventLogEntry(1000.0 + i, "info", f"event {i}") for i in range(10))
    snap = SanctumSnapshot(run=RunInfo(started_at=1000.0), events=events)
    console = Console(width=40, color_system=None, file=io.StringIO())
    lines = console.render_lines(render_events(snap), console.options.update(height=3))
    assert ["".join(s.text for s in line).split()[-2:] for line in lines] == [
        ["event", "7"],
        ["event", "8"],
        ["event", "9"],
    ]
    assert isinstance(render_events(snap), TailLines)


def test_event_lines_are_coloured_by_severity_and_never_wrap() -> None:
    entry = EventLogEntry(0.0, "warning", "x" * 300)
    line = event_line(entry, started_at=0.0)
    assert WARNING in str(line.spans[-1].style)
    snap = SanctumSnapshot(run=RunInfo(started_at=0.0), events=(entry,))
    console = Console(width=40, color_system=None, file=io.StringIO())
    lines = console.render_lines(render_events(snap), console.options, pad=False)
    assert len(lines) == 1
    assert "".join(s.text for s in lines[0]).endswith("x…")


def test_footer_counts_and_keys() -> None:
    snap = SanctumSnapshot(events_read=12, lines_skipped=2, drops=3)
    text = render_text(render_footer(snap, "q quit"), width=120)
    assert text.split() == [
        "events",
        "read",
        "12",
        "lines",
        "skipped",
        "2",
        "drops",
        "3",
        "│",
        "q",
        "quit",
    ]


def test_host_panel_shows_recent_returns_beside_the_best_so_far() -> None:
    from esper.sanctum.widgets.slots import return_history_text, return_sparkline

    assert return_sparkline([0.0, 0.5, 1.0], top=1.0) == "▁▅█"  # 0.5 * 7 = 3.5 -> level 4
    assert return_sparkline([0.2, 0.2], top=0.2) == "██"  # flat at the best: full
    assert return_sparkline([float("nan"), 0.0, 2.0], top=2.0) == "▁▁█"
    assert return_history_text(EpisodeStats()) is None  # nothing yet: no line
    text = return_history_text(EpisodeStats(return_history=(0.4, 1.0), best_return=1.2))
    assert text is not None and text.plain == "recent ▁▆  best 1.200"
    long = EpisodeStats(return_history=(0.4, 1.0) * 20, best_return=1.2)
    narrow = return_history_text(long, width=30)  # 30 - 7 - 7 - 5 = 11 episodes fit
    assert narrow is not None and narrow.plain == "recent " + "▆▁" * 5 + "▆  best 1.200"
    assert len(narrow.plain) <= 30
