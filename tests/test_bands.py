"""Health bands from the run's own clip range: declared once, recorded in the run's start
event, and used by the dashboard and the report alike.

The known answers: at clip eps the healthy band is [1 - eps, 1 + eps] and the warning band
[1 - 2.5 eps, 1 + 2.5 eps] (the low edge floored at a quarter of 1 - eps); at eps 0.2
these are the spec's 0.8/1.2 and 0.5/1.5, and the joint's 1.5/3.0, exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from factories import started, update_stats
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text
from synthetic_run import record_synthetic_run

from esper.analysis.runs import load_run, runs_table
from esper.sanctum.aggregator import SanctumAggregator, aggregate_file
from esper.sanctum.schema import SanctumSnapshot
from esper.sanctum.widgets.heads import head_state, heads_table
from esper.sanctum.widgets.history import history_grid
from esper.sanctum.widgets.ppo import ppo_rows
from esper.sanctum.widgets.style import CRITICAL, HEALTHY, NO_DATA, WARNING
from esper.telemetry.contracts import ContractError, TelemetryEvent, TrainingStarted
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import SPEC_BANDS, Band, HeadStats, RatioBands
from esper.telemetry.recorder import EVENTS_FILE

FIXTURE = Path(__file__).parent / "data" / "pre_heads_as_data"

# ------------------------------------------------------------------ the rule


def test_at_the_spec_clip_the_bands_are_the_spec_numbers_exactly() -> None:
    bands = RatioBands(0.2)
    assert bands.healthy == (0.8, 1.2)
    assert bands.warning == (0.5, 1.5)
    assert (bands.joint_healthy, bands.joint_warning) == (1.5, 3.0)
    assert RatioBands() == SPEC_BANDS == bands


@pytest.mark.parametrize(
    ("eps", "healthy", "warning"),
    [
        (0.1, (0.9, 1.1), (0.75, 1.25)),  # 1 -+ 0.1, 1 -+ 0.25
        (0.2, (0.8, 1.2), (0.5, 1.5)),  # 1 -+ 0.2, 1 -+ 0.5
        (0.3, (0.7, 1.3), (0.25, 1.75)),  # 1 -+ 0.3, 1 -+ 0.75
    ],
)
def test_bands_follow_the_clip_range(
    eps: float, healthy: tuple[float, float], warning: tuple[float, float]
) -> None:
    bands = RatioBands(eps)
    assert bands.healthy == pytest.approx(healthy, abs=1e-12)
    assert bands.warning == pytest.approx(warning, abs=1e-12)


@pytest.mark.parametrize(
    ("eps", "low"),
    [
        (0.4, 0.15),  # 1 - 2.5 * 0.4 = 0: floored at 0.6 / 4
        (0.5, 0.125),  # 1 - 1.25 < 0: floored at 0.5 / 4
        (0.9, 0.025),  # 0.1 / 4
    ],
)
def test_the_warning_low_edge_stays_positive_for_a_wide_clip(eps: float, low: float) -> None:
    bands = RatioBands(eps)
    assert bands.warning[0] == pytest.approx(low)
    assert 0 < bands.warning[0] < bands.healthy[0]
    assert bands.warning[1] == pytest.approx(1 + 2.5 * eps)  # the high side is never floored


def test_the_linear_rule_and_the_floor_meet_at_a_third() -> None:
    bands = RatioBands(1 / 3)
    assert bands.warning[0] == pytest.approx(1 - 2.5 / 3) == pytest.approx((2 / 3) / 4)


def test_joint_bands_count_clip_edges() -> None:
    """1.5 and 3.0 are 1.2^k at eps 0.2; another clip gets (1 + eps)^k with the same k."""
    k_healthy, k_warning = math.log(1.5) / math.log(1.2), math.log(3.0) / math.log(1.2)
    assert (k_healthy, k_warning) == pytest.approx((2.2239, 6.0257), abs=1e-4)
    bands = RatioBands(0.1)
    assert bands.joint_healthy == pytest.approx(1.1**k_healthy) == pytest.approx(1.2361, abs=1e-4)
    assert bands.joint_warning == pytest.approx(1.1**k_warning) == pytest.approx(1.7759, abs=1e-4)


@given(st.floats(0.001, 0.999))
def test_bands_nest_for_any_clip(eps: float) -> None:
    b = RatioBands(eps)
    assert 0 < b.warning[0] < b.healthy[0] < 1 < b.healthy[1] < b.warning[1]
    assert 1 < b.joint_healthy < b.joint_warning


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.0, 1.5, math.nan, math.inf])
def test_a_clip_outside_zero_to_one_has_no_bands(eps: float) -> None:
    with pytest.raises(ValueError, match="clip_eps must be in"):
        RatioBands(eps)


@pytest.mark.parametrize(
    ("eps", "ratio", "band"),
    [
        (0.1, 1.15, Band.WARNING),  # past the clip edge 1.1 by half a clip range
        (0.2, 1.15, Band.HEALTHY),  # inside the clip range
        (0.1, 1.1, Band.HEALTHY),  # edges belong to the inner band
        (0.1, 1.25, Band.WARNING),
        (0.1, 1.26, Band.CRITICAL),
        (0.1, 0.8, Band.WARNING),
        (0.1, 0.74, Band.CRITICAL),
        (0.3, 1.3, Band.HEALTHY),
        (0.3, 0.3, Band.WARNING),
        (0.3, 1.8, Band.CRITICAL),
        (0.2, math.nan, Band.CRITICAL),
        (0.2, math.inf, Band.CRITICAL),
        (0.2, -math.inf, Band.CRITICAL),
        (0.2, None, Band.NO_DATA),
    ],
)
def test_band_of_a_head_ratio(eps: float, ratio: float | None, band: Band) -> None:
    assert RatioBands(eps).band(ratio) is band


@pytest.mark.parametrize(
    ("eps", "ratio", "band"),
    [
        (0.2, 1.5, Band.HEALTHY),
        (0.2, 3.0, Band.WARNING),
        (0.2, 1 / 3.0, Band.WARNING),
        (0.1, 1.3, Band.WARNING),  # above 1.236
        (0.1, 1.8, Band.CRITICAL),  # above 1.776
        (0.1, 0.0, Band.CRITICAL),
        (0.1, math.nan, Band.CRITICAL),
        (0.1, None, Band.NO_DATA),
    ],
)
def test_band_of_a_joint_ratio(eps: float, ratio: float | None, band: Band) -> None:
    assert RatioBands(eps).joint_band(ratio) is band


def test_a_run_that_records_no_clip_gets_the_spec_bands() -> None:
    assert RatioBands.for_clip(None) is SPEC_BANDS
    assert RatioBands.for_clip(0.1) == RatioBands(0.1)


# ------------------------------------------------------------------ the run header


def test_the_start_event_carries_the_clip_through_its_json_line() -> None:
    payload = started(clip_eps=0.1)
    back = TrainingStarted.from_dict(json.loads(payload.to_json()))
    assert back.clip_eps == 0.1 and back == payload
    assert TrainingStarted.from_dict(json.loads(started().to_json())).clip_eps is None


def test_a_start_event_written_before_runs_recorded_their_clip_still_loads() -> None:
    data = started().to_dict()
    del data["clip_eps"]
    assert TrainingStarted.from_dict(data).clip_eps is None


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, math.nan])
def test_a_start_event_with_an_impossible_clip_is_a_contract_error(bad: float) -> None:
    with pytest.raises(ContractError, match=r"TrainingStarted\.clip_eps"):
        started(clip_eps=bad)


def test_a_start_event_with_a_clip_of_the_wrong_type_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match=r"TrainingStarted\.clip_eps"):
        TrainingStarted.from_dict(started().to_dict() | {"clip_eps": "0.1"})


# ------------------------------------------------------------------ the dashboard


class _Direct:
    def __init__(self, aggregator: SanctumAggregator) -> None:
        self.aggregator = aggregator

    def publish(self, event: TelemetryEvent) -> None:
        self.aggregator.handle_event(event)


NAMES = ("op", "slot")


def snapshot_at(clip_eps: float | None, op: HeadStats, joint: float = 1.0) -> SanctumSnapshot:
    """The dashboard's snapshot after a run clipping at `clip_eps` had one update."""
    aggregator = SanctumAggregator()
    ticks = itertools.count(1000)
    emitter = TelemetryEmitter(_Direct(aggregator), "run", clock=lambda: float(next(ticks)))
    emitter.emit(started(NAMES, clip_eps=clip_eps))
    emit_update(emitter, update_stats({"op": op}, NAMES, joint_ratio_max=joint), batch=0)
    return aggregator.snapshot()


AT_1_15 = HeadStats(ratio_max=1.15, ratio_min=0.95, relevant=10)


def _ratio_max_cell(snapshot: SanctumSnapshot, head: str) -> Text:
    table = heads_table(snapshot.tamiyo, 116)
    row = list(table.columns[0].cells).index("ratio max")
    column = 1 + snapshot.tamiyo.head_names.index(head)
    cell = list(table.columns[column].cells)[row]
    assert isinstance(cell, Text)
    return cell


@pytest.mark.parametrize(("clip", "colour"), [(0.1, WARNING), (0.2, HEALTHY), (None, HEALTHY)])
def test_a_head_at_1_15_is_a_warning_at_clip_0_1_and_healthy_at_clip_0_2(
    clip: float | None, colour: str
) -> None:
    snapshot = snapshot_at(clip, AT_1_15)
    assert snapshot.run.clip_eps == clip
    assert snapshot.tamiyo.bands == RatioBands.for_clip(clip)
    cell = _ratio_max_cell(snapshot, "op")
    assert (cell.plain, cell.style) == ("1.150 █░░░░", colour)  # the bar does not move
    assert head_state(snapshot.tamiyo, "op").style == colour
    # the history's worst value, and the sparkline's cell, are coloured by the same bands
    grid = history_grid(snapshot.tamiyo, NAMES, joint=False)
    worst = list(grid.columns[2].cells)[1]  # row 0 is the title row
    assert isinstance(worst, Text) and (worst.plain, worst.style) == ("1.150", colour)
    spark = list(grid.columns[1].cells)[1]
    cells = Console(width=40).render_lines(spark, pad=False)[0]
    assert [str(segment.style) for segment in cells if segment.text.strip()] == [colour]


def test_the_joint_is_coloured_by_the_runs_joint_bands() -> None:
    for clip, colour in ((0.1, WARNING), (0.2, HEALTHY)):
        rows = dict(ppo_rows(snapshot_at(clip, AT_1_15, joint=1.3).tamiyo))
        assert rows["joint ratio max"].style == colour
    rows = dict(ppo_rows(snapshot_at(0.1, AT_1_15, joint=1.8).tamiyo))
    assert rows["joint ratio max"].style == CRITICAL


def test_before_any_update_the_bands_are_set_and_every_cell_is_a_dash() -> None:
    aggregator = SanctumAggregator()
    TelemetryEmitter(_Direct(aggregator), "run").emit(started(NAMES, clip_eps=0.1))
    snapshot = aggregator.snapshot()
    assert snapshot.tamiyo.bands == RatioBands(0.1)
    cell = _ratio_max_cell(snapshot, "op")
    assert (cell.plain, cell.style) == ("—", NO_DATA)


def test_an_old_log_without_a_clip_loads_with_the_spec_bands() -> None:
    first = json.loads((FIXTURE / EVENTS_FILE).read_text().splitlines()[0])
    assert first["event_type"] == "TRAINING_STARTED" and "clip_eps" not in first["data"]
    snapshot = aggregate_file(FIXTURE / EVENTS_FILE)
    assert snapshot.run.clip_eps is None and snapshot.tamiyo.bands is SPEC_BANDS
    run = load_run(FIXTURE)
    assert run.clip_eps is None and run.bands is SPEC_BANDS
    assert runs_table([run]).column("clip_eps") == [None]


# ------------------------------------------------------------------ the report


def test_each_report_column_draws_its_own_runs_bands(tmp_path: Path) -> None:
    report = pytest.importorskip("esper.analysis.report")
    tight = load_run(record_synthetic_run(tmp_path / "tight", "tight", clip_eps=0.1))
    spec = load_run(record_synthetic_run(tmp_path / "spec", "spec"))
    assert (tight.clip_eps, spec.clip_eps) == (0.1, None)
    assert runs_table([tight, spec]).column("clip_eps") == [0.1, None]
    figure = report.build_figure([tight, spec])
    panels = len(report.PANELS)
    ratio_axes = {run.label: figure.axes[i * panels] for i, run in enumerate((tight, spec))}
    for label, (healthy, warning) in {
        "tight": ((0.9, 1.1), (0.75, 1.25)),
        "spec": ((0.8, 1.2), (0.5, 1.5)),
    }.items():
        ax = ratio_axes[label]
        spans = [(p.get_y(), p.get_y() + p.get_height(), p.get_facecolor()) for p in ax.patches]
        green = [(lo, hi) for lo, hi, colour in spans if _hex(colour) == "#2ca02c"]
        assert green == [pytest.approx(healthy)]
        ticks = ax.yaxis.get_majorticklocs()
        assert all(any(math.isclose(v, t) for t in ticks) for v in (*healthy, *warning))


def _hex(colour: Any) -> str:
    from matplotlib.colors import to_hex

    return str(to_hex(colour, keep_alpha=False))


# ------------------------------------------------------------------ end to end


BIN = Path(sys.executable).parent


def test_esper_ppo_records_its_clip_and_sanctum_and_report_read_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(BIN / "esper"), "ppo", "--no-tui", "--clip", "0.1", "--episodes", "2",
         "--envs", "2", "--task", "spirals", "--episode-length", "6",
         "--run-dir", str(run_dir)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first = json.loads((run_dir / EVENTS_FILE).read_text().splitlines()[0])
    assert first["event_type"] == "TRAINING_STARTED"
    assert first["data"]["clip_eps"] == 0.1
    assert json.loads((run_dir / "run.json").read_text())["config"]["ppo"]["clip_eps"] == 0.1
    snapshot = aggregate_file(run_dir / EVENTS_FILE)
    assert snapshot.run.clip_eps == 0.1 and snapshot.tamiyo.bands == RatioBands(0.1)
    assert load_run(run_dir).bands == RatioBands(0.1)
