"""`esper report`: a recorded run (or two) to one self-contained HTML page or a PNG.

`record_synthetic_run` (also used by test_query and test_exporters) records a small run
in-process through the real emitter, hub and recorder, with metrics made up by formula,
so every expected number below is known without training anything.
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

from esper.actions import HEAD_INDEX, HEAD_NAMES
from esper.analysis.commands import report_target
from esper.analysis.runs import load_run, measured
from esper.cli import main
from esper.telemetry.emitter import TelemetryEmitter
from esper.telemetry.hub import TelemetryHub
from esper.telemetry.recorder import RunRecorder

matplotlib_image = pytest.importorskip("matplotlib.image")
report = pytest.importorskip("esper.analysis.report")

# ----------------------------------------------------------------- the synthetic run

N_UPDATES = 4
N_ENVS = 2
#: update index -> heads with no relevant sample in that update (neutral values recorded).
IRRELEVANT = {1: ("alpha_speed", "alpha_curve")}
#: (update index, head) whose ratio went non-finite.
NAN_AT = (2, "tempo")
EXPLOSION_UPDATE = 3
EXPLOSION_LOG_RATIOS = {"op": 0.3, "slot": 0.9, "blueprint": 0.1, "style": -0.2}
EXPLOSION_JOINT = 3.0


def ratio_max(update: int, head: str) -> float:
    """The recorded ratio max: 1 + 0.1 (k + 1)(i + 1) / 8 for update k, head number i."""
    return 1.0 + 0.1 * (update + 1) * (HEAD_INDEX[head] + 1) / len(HEAD_NAMES)


def relevant(update: int, head: str) -> bool:
    return head not in IRRELEVANT.get(update, ())


def update_metrics(update: int) -> dict[str, float]:
    """PPOAgent.update()-style metrics for update `update` (irrelevant heads left out)."""
    metrics: dict[str, float] = {
        "joint_ratio_max": 1.0 + 0.2 * update,
        "approx_kl": 0.01 * (update + 1),
        "clip_fraction": 0.05 * update,
        "policy_loss": -0.1 * update,
        "value_loss": 1.0 / (update + 1),
    }
    for head in HEAD_NAMES:
        i = HEAD_INDEX[head]
        metrics[f"head_{head}_entropy"] = 1.0 - 0.05 * i
        if not relevant(update, head):
            continue
        metrics.update(
            {
                f"head_{head}_ratio_max": ratio_max(update, head),
                f"head_{head}_ratio_min": 1.0 / ratio_max(update, head),
                f"head_{head}_clip_fraction": 0.01 * i,
                f"head_{head}_approx_kl": 0.001 * (i + 1) * (update + 1),
                f"head_{head}_relevant": 10.0 + i,
            }
        )
    if NAN_AT[0] == update:
        metrics[f"head_{NAN_AT[1]}_ratio_max"] = math.nan
        metrics[f"head_{NAN_AT[1]}_nonfinite"] = 1.0
    return metrics


def episode_return(episode: int) -> float:
    return 0.25 * episode - 0.5


def final_accuracy(episode: int) -> float:
    return 0.5 + 0.05 * episode


def record_synthetic_run(run_dir: Path, run_id: str = "synthetic") -> Path:
    """Record the synthetic run into `run_dir` and return it."""
    ticks = itertools.count(1_000)
    hub = TelemetryHub()
    hub.add_backend(RunRecorder(run_dir, config={"task": "spirals"}, run_id=run_id))
    emitter = TelemetryEmitter(hub, run_id, clock=lambda: float(next(ticks)))
    emitter.emit_training_started(
        config={"task": "spirals"},
        task="spirals",
        head_sizes=dict.fromkeys(HEAD_NAMES, 3),
        episodes_total=N_UPDATES * N_ENVS,
        n_envs=N_ENVS,
        device="cpu",
    )
    for update in range(N_UPDATES):
        for env in range(N_ENVS):
            episode = update * N_ENVS + env
            emitter.emit_episode_completed(
                env_index=env,
                episode_return=episode_return(episode),
                final_accuracy=final_accuracy(episode),
                seeds_grown=1,
                seeds_fossilized=0,
                seeds_killed=env,
                length=10,
                episode=episode,
                batch=update,
            )
        emitter.emit_ppo_update(
            update_metrics(update),
            batch=update,
            mean_return=None if update == 0 else 0.1 * update,
            host_accuracy=0.5,
        )
        if update == EXPLOSION_UPDATE:
            emitter.emit_ratio_explosion(
                joint_ratio_max=EXPLOSION_JOINT,
                worst_log_ratios=EXPLOSION_LOG_RATIOS,
                hidden_by_heads=True,
                batch=update,
            )
    emitter.emit_training_finished(
        episodes=N_UPDATES * N_ENVS, updates=N_UPDATES, wall_seconds=1.0, run_dir=run_dir
    )
    hub.close()
    return run_dir


#: Events the synthetic run records: start, episodes, updates, one explosion, finish.
N_EVENTS = 1 + N_UPDATES * N_ENVS + N_UPDATES + 1 + 1


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
    assert "pip install 'esper[report]'" in one_error_line(capsys, "report")
    assert not (tmp_path / "r.html").exists()


def test_a_run_without_updates_renders_and_says_so(tmp_path: Path) -> None:
    with TelemetryHub([RunRecorder(tmp_path, config={})]) as hub:
        TelemetryEmitter(hub, "fresh").emit_training_started(
            config={}, task="digits", head_sizes={}, episodes_total=4, n_envs=2, device="cpu"
        )
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "no PPO updates yet" in page and "No ratio explosions recorded." in page
    assert "<td>unfinished</td>" in page and "<td>digits</td>" in page
