"""`esper report` shows a failed run's skipped and non-finite updates on every panel."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from esper.analysis.runs import Run, Table, load_run
from esper.cli.main import main

report = pytest.importorskip("esper.analysis.report")


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Batch 0 trains; every later update is non-finite, so the run stops after 2 skips."""
    root = tmp_path_factory.mktemp("bad")
    (root / "cfg.toml").write_text("max_bad_updates = 2\n")
    argv = ["ppo", "--task", "spirals", "--episodes", "20", "--envs", "2", "--episode-length", "4"]
    argv += ["--no-tui"]
    argv += ["--epochs", "1", "--minibatches", "2"]
    argv += ["--fault", "slot=nan@1-20", "--config", str(root / "cfg.toml")]
    assert main([*argv, "--run-dir", str(root / "run")]) == 1
    return load_run(root / "run")


def test_skipped_updates_are_found_on_both_axes(failed_run: Run) -> None:
    bad = report.bad_updates(failed_run)
    assert bad.skipped == [1, 2] and bad.updates == [1, 2]
    assert bad.episodes == [2, 3, 4, 5]  # two envs per batch: batches 1 and 2
    assert failed_run.updates.column("update_index") == [0]


def test_every_panel_marks_the_bad_updates(failed_run: Run) -> None:
    svg = report.figure_bytes(report.build_figure([failed_run]), "svg").decode()
    for panel in report.PANELS:
        assert f'id="run0-{panel.key}-bad-updates"' in svg, panel.key
    fig = report.build_figure([failed_run])
    for ax, panel in zip(fig.axes, report.PANELS, strict=False):
        lo, hi = ax.get_xlim()
        last = 2 if panel.over_updates else 5
        assert lo <= 0 and hi >= last, (panel.key, lo, hi)


def test_a_nan_joint_ratio_does_not_collapse_the_joint_axis(failed_run: Run) -> None:
    u = failed_run.updates
    nan_cols = {u.names.index("joint_ratio_max"), u.names.index("ratio_max_product")}
    rows = [tuple(math.nan if k in nan_cols else v for k, v in enumerate(row)) for row in u.rows]
    run = dataclasses.replace(failed_run, updates=Table(u.name, u.columns, rows))
    fig = report.build_figure([run])
    joint = fig.axes[[p.key for p in report.PANELS].index("joint")]
    lo, hi = joint.get_xlim()
    assert lo <= 0 and hi >= 2 and hi - lo >= 1


def test_a_clean_run_draws_no_marks(tmp_path: Path) -> None:
    argv = ["ppo", "--task", "spirals", "--episodes", "4", "--episode-length", "4", "--no-tui"]
    argv += ["--epochs", "1", "--minibatches", "2"]
    assert main([*argv, "--run-dir", str(tmp_path / "ok")]) == 0
    run = load_run(tmp_path / "ok")
    assert report.bad_updates(run) == report.BadUpdates([], [], [])
    assert "bad-updates" not in report.figure_bytes(report.build_figure([run]), "svg").decode()
