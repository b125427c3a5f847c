"""`esper report`: a recorded run (or two) to one self-contained HTML page or a PNG.

The run is `synthetic_run.record_synthetic_run`: metrics made up by formula and recorded
through the real emitter, hub and recorder, so every expected number is known.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from synthetic_run import (
    HEAD_SETS,
    XYZ_HEADS,
    ratio_max,
    record_synthetic_run,
    started,
)

from esper.analysis.commands import report_target
from esper.analysis.runs import load_run, measured
from esper.cli.main import main
from esper.morpho.actions import HEAD_NAMES
from esper.telemetry.contracts import EpisodeCompleted
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import ExplosionReport, HeadStats, UpdateStats, explosion_shares
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import RunRecorder

matplotlib_image = pytest.importorskip("matplotlib.image")
report = pytest.importorskip("esper.analysis.report")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_synthetic_run(tmp_path_factory.mktemp("report") / "run-a")


@pytest.fixture(scope="module")
def other_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_synthetic_run(tmp_path_factory.mktemp("report") / "run-b", run_id="other")


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"esper {command}: error: "), err
    return err


# ----------------------------------------------------------------- pure helpers


def test_band_spans_tile_the_axis_in_dashboard_order() -> None:
    spans = report.band_spans((0.8, 1.2), (0.5, 1.5), (0.4, 2.5))
    assert spans == [
        (0.4, 0.5, "critical"),
        (0.5, 0.8, "warning"),
        (0.8, 1.2, "healthy"),
        (1.2, 1.5, "warning"),
        (1.5, 2.5, "critical"),
    ]
    # Limits inside the warning band cut the stripes and drop the critical ones.
    assert report.band_spans((0.8, 1.2), (0.5, 1.5), (0.6, 1.3)) == [
        (0.6, 0.8, "warning"),
        (0.8, 1.2, "healthy"),
        (1.2, 1.3, "warning"),
    ]


@given(
    st.floats(0.01, 0.79),
    st.floats(1.21, 100.0),
)
def test_band_spans_are_contiguous_for_any_limits(lo: float, hi: float) -> None:
    spans = report.band_spans((0.8, 1.2), (0.5, 1.5), (lo, hi))
    assert spans[0][0] == lo and spans[-1][1] == hi
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert [s[2] for s in spans].count("healthy") == 1


def test_log_limits_cover_the_bands_and_every_finite_value() -> None:
    assert report.log_limits([]) == (0.4, 2.5)
    assert report.log_limits([1.1, 3.0]) == pytest.approx((0.4, 3.6))
    assert report.log_limits([0.1, math.nan, math.inf, -1.0]) == pytest.approx((0.1 / 1.2, 2.5))


def test_log_ticks_are_band_edges_and_decades_in_range() -> None:
    assert report.log_ticks((0.4, 2.5), (0.8, 1.2, 0.5, 1.5)) == [0.5, 0.8, 1.0, 1.2, 1.5]
    assert report.log_ticks((0.05, 30.0), (0.8, 1.2)) == [0.1, 0.8, 1.0, 1.2, 10.0]


def test_an_irrelevant_head_is_a_gap_never_a_neutral_one(run_dir: Path) -> None:
    updates = load_run(run_dir).updates
    speed = measured(updates, "alpha_speed", "ratio_max")
    assert math.isnan(speed[1])  # recorded as the neutral 1.0 with relevant = 0
    assert updates.column("head_alpha_speed_ratio_max")[1] == 1.0
    assert speed[0] == ratio_max(0, "alpha_speed")
    # Entropy is measured over every sample, relevant or not: no gap.
    assert measured(updates, "alpha_speed", "entropy")[1] == pytest.approx(1.0 - 0.05 * 6)


def test_report_target_rules(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert report_target([a], None, png=False) == (a / "report.html", "html")
    assert report_target([a], None, png=True) == (a / "report.png", "png")
    assert report_target([a, b], tmp_path / "c.PNG", png=False) == (tmp_path / "c.PNG", "png")
    assert report_target([a, b], tmp_path / "c.html", png=False) == (tmp_path / "c.html", "html")
    assert report_target([a], tmp_path / "c.HTML", png=False) == (tmp_path / "c.HTML", "html")


@pytest.mark.parametrize("name", ["events.jsonl", "run.json", "checkpoint.pt", "x.pdf", "report"])
def test_out_must_be_html_or_png_so_recorded_data_is_never_overwritten(
    name: str, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = run_dir / name
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(["report", str(run_dir), "--out", str(target)]) == 2
    assert "--out must end in .html or .png" in one_error_line(capsys, "report")
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing overwritten


# ----------------------------------------------------------------- rendering


def test_html_report_holds_every_head_series_and_the_explosion_table(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'}" in capsys.readouterr().out
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    for stat in ("ratio_max", "entropy", "approx_kl", "clip_fraction"):
        for head in HEAD_NAMES:
            assert f'id="run0-{stat}-{head}"' in page, (stat, head)
    for head in HEAD_NAMES:  # the legend names every head as text, not as glyph paths
        assert re.search(rf">\s*{head}\s*<", page), head
    for gid in ("joint_ratio_max", "ratio_max_product", "explosions", "nonfinite"):
        assert f'id="run0-{gid}"' in page
    assert "<th>Joint ratio max</th>" in page and "<th>Driver</th>" in page
    assert "driven by slot (69%), op (23%)" in page  # shares of the positive log-ratios
    # Self-contained: nothing fetched from elsewhere.
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|href=\"(?!#)|url\((?!#)", page)


def test_png_report_opens_with_the_documented_size(run_dir: Path, other_run_dir: Path) -> None:
    assert main(["report", str(run_dir), "--png"]) == 0
    image = matplotlib_image.imread(run_dir / "report.png")
    width, height = report.png_size(1)
    assert image.shape[:2] == (height, width)
    assert image.std() > 0.05  # something was drawn
    # One column per run: two runs make a figure twice as wide and as tall.
    runs = [load_run(run_dir), load_run(other_run_dir)]
    two = report.build_figure(runs, explosion_text=True).get_size_inches() * report.DPI
    assert tuple(two.round()) == (2 * width, height)


def test_two_runs_render_side_by_side(
    run_dir: Path, other_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compare.html"
    assert main(["report", str(run_dir), str(other_run_dir), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    for column in (0, 1):
        for head in HEAD_NAMES:
            assert f'id="run{column}-ratio_max-{head}"' in page
    assert "<td>run-a</td>" in page and "<td>run-b</td>" in page
    assert "run-a: 4 updates" in capsys.readouterr().out


def test_several_runs_need_out(
    run_dir: Path, other_run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run_dir), str(other_run_dir)]) == 2
    assert "needs --out" in one_error_line(capsys, "report")


@pytest.mark.parametrize(
    ("target", "fragment"),
    [("missing", "no run directory at"), ("empty", "holds no events.jsonl")],
)
def test_bad_run_dir_is_one_line_and_exit_2(
    target: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / target)]) == 2
    assert fragment in one_error_line(capsys, "report")


def test_missing_matplotlib_names_the_extra(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.html")]) == 2
    assert "pip install 'esper-ppo[report]'" in one_error_line(capsys, "report")
    assert not (tmp_path / "r.html").exists()


def test_a_run_without_updates_renders_and_says_so(tmp_path: Path) -> None:
    with TelemetryHub([RunRecorder(tmp_path, config={})]) as hub:
        TelemetryEmitter(hub, "fresh").emit(started(("x",), task="digits"))
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "no PPO updates yet" in page and "No ratio explosions recorded." in page
    assert "<td>unfinished</td>" in page and "<td>digits</td>" in page


# ----------------------------------------------------------------- any heads


def test_head_colours_are_distinct_for_up_to_32_heads() -> None:
    assert report.head_colours(HEAD_NAMES) == {h: f"C{i}" for i, h in enumerate(HEAD_NAMES)}
    for n in (11, 20, 24, 32):
        colours = report.head_colours([f"h{i}" for i in range(n)])
        assert len(set(colours.values())) == n, n


def test_legend_fits_three_rows_for_many_heads() -> None:
    assert report.legend_columns(8, 1) == 4  # two rows of esper's heads
    assert report.legend_columns(8, 2) == 8  # one row across two columns of runs
    assert report.legend_columns(3, 1) == 3
    for n in (1, 3, 8, 24, 32):
        assert math.ceil(n / report.legend_columns(n, 1)) <= 3, n


@pytest.mark.parametrize("heads", list(HEAD_SETS.values()), ids=list(HEAD_SETS))
def test_report_draws_every_head_the_run_declares(heads: tuple[str, ...], tmp_path: Path) -> None:
    run_dir = record_synthetic_run(tmp_path / "run", heads=heads)
    run = load_run(run_dir)
    assert run.head_names == heads
    assert report.nonfinite_updates(run) == [2]  # the NaN head, whichever it is
    svg = report.figure_bytes(report.build_figure([run]), "svg").decode()
    for stat in ("ratio_max", "entropy", "approx_kl", "clip_fraction"):
        for head in heads:
            assert f'id="run0-{stat}-{head}"' in svg, (stat, head)
    for head in heads:  # the legend names each head
        assert re.search(rf">\s*{head}\s*<", svg), head
    assert f"driven by {heads[1] if len(heads) > 1 else heads[0]}" in report.render_html(
        [run], b"<svg></svg>"
    )


def test_runs_with_different_heads_compare_side_by_side(run_dir: Path, tmp_path: Path) -> None:
    """esper's heads beside x, y, z: each column draws its own heads, colours never clash."""
    xyz = record_synthetic_run(tmp_path / "xyz", run_id="xyz", heads=XYZ_HEADS)
    runs = [load_run(run_dir), load_run(xyz)]
    assert report.figure_heads(runs) == [*HEAD_NAMES, *XYZ_HEADS]
    svg = report.figure_bytes(report.build_figure(runs), "svg").decode()
    assert 'id="run1-ratio_max-x"' in svg and 'id="run0-ratio_max-x"' not in svg
    assert 'id="run0-ratio_max-op"' in svg and 'id="run1-ratio_max-op"' not in svg
    colours = report.head_colours(report.figure_heads(runs))
    assert len(set(colours.values())) == len(HEAD_NAMES) + len(XYZ_HEADS)


def test_an_explosion_no_head_drove_lists_no_driver(tmp_path: Path) -> None:
    quiet = {"x": 0.0, "y": 0.0}
    report_ = ExplosionReport(3.0, quiet, explosion_shares(quiet), None, hidden_by_heads=False)
    stats = UpdateStats(heads={"x": HeadStats(), "y": HeadStats()}, explosion=report_)
    with TelemetryHub([RunRecorder(tmp_path, config={})]) as hub:
        emitter = TelemetryEmitter(hub, "quiet")
        emitter.emit(started(("x", "y")))
        emit_update(emitter, stats, batch=0)
    run = load_run(tmp_path)
    assert run.explosions.column("driver") == [None]  # NULL in SQL, a dash on the page
    page = report.render_html([run], b"<svg></svg>")
    assert "<td>—</td><td>no</td><td>update 0: joint 3.00, no head moved</td>" in page


def test_a_run_without_host_accuracy_says_so_instead_of_a_made_up_axis(tmp_path: Path) -> None:
    """SB3 and hand-written runs record `final_accuracy: null` for every episode."""
    with TelemetryHub([RunRecorder(tmp_path, config={})]) as hub:
        emitter = TelemetryEmitter(hub, "sb3")
        emitter.emit(started(("x",), task="CartPole-v1"))
        for episode in range(3):
            done = EpisodeCompleted(env_index=0, episode_return=10.0 + episode, length=10)
            emitter.emit(done, episode=episode, batch=0)
        emit_update(emitter, UpdateStats(heads={"x": HeadStats()}), batch=0)  # commits them
    run = load_run(tmp_path)
    assert run.episodes.column("final_accuracy") == [None, None, None]
    fig = report.build_figure([run])
    panels = {ax.get_title(loc="left"): ax for ax in fig.axes}
    accuracy = panels["Host accuracy at episode end"]
    assert list(accuracy.get_yticks()) == [] and not accuracy.lines  # no axis around nothing
    (note,) = accuracy.texts
    assert note.get_text().startswith("no host accuracy in this run")
    assert accuracy.get_xlim() == (0.0, 2.0)  # the episodes that were recorded
    returns = panels["Episode return"]  # the return panel is drawn as ever
    assert list(returns.lines[0].get_ydata()) == [10.0, 11.0, 12.0]
    svg = report.figure_bytes(fig, "svg").decode()
    assert 'id="run0-final_accuracy-none"' in svg and "no host accuracy in this run" in svg
