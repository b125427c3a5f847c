"""TensorBoard and W&B backends: every per-head scalar, at its update, through the real hub."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_run import (
    HEAD_SETS,
    IRRELEVANT,
    MANY_HEADS,
    N_ENVS,
    N_UPDATES,
    episode_return,
    ratio_max,
    record_synthetic_run,
    relevant,
)

from esper.analysis import AnalysisError
from esper.analysis.exporters import (
    EPISODE_STEP,
    UPDATE_STEP,
    TensorBoardBackend,
    WandbBackend,
    all_scalar_names,
    make_exporters,
    update_scalars,
)
from esper.morpho.actions import HEAD_NAMES
from esper.telemetry.contracts import PPOUpdatePayload
from esper.telemetry.heads import HeadStats, UpdateStats
from esper.telemetry.hub import TelemetryBackend, TelemetryHub
from esper.telemetry.recorder import EVENTS_FILE, read_events


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_synthetic_run(tmp_path_factory.mktemp("exporters") / "run-a")


def replay(run_dir: Path, backend: TelemetryBackend) -> None:
    """Publish the recorded run to `backend` through a hub (a queued worker thread)."""
    with TelemetryHub([backend]) as hub:
        for event in read_events(run_dir / EVENTS_FILE):
            hub.publish(event)


def test_update_scalars_leave_out_heads_without_relevant_samples() -> None:
    heads = {"op": HeadStats(ratio_max=1.3, relevant=4), "slot": HeadStats(entropy=0.5)}
    payload = PPOUpdatePayload(update_index=3, stats=UpdateStats(heads=heads))
    scalars = update_scalars(payload)
    assert scalars["ratio_max/op"] == 1.3
    assert "ratio_max/slot" not in scalars and "approx_kl/slot" not in scalars
    assert scalars["entropy/slot"] == 0.5  # entropy is over every sample
    assert set(scalars) <= set(all_scalar_names(heads))


def test_tensorboard_holds_every_per_head_scalar(run_dir: Path, tmp_path: Path) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.util import tensor_util

    replay(run_dir, TensorBoardBackend(tmp_path / "tb"))
    events = accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()

    def series(tag: str) -> dict[int, float]:
        return {
            e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)
        }

    assert set(events.Tags()["tensors"]) == set(all_scalar_names(HEAD_NAMES))
    for head in HEAD_NAMES:
        steps = [k for k in range(N_UPDATES) if relevant(k, head)]
        got = series(f"ratio_max/{head}")
        assert sorted(got) == steps, head
        for k in steps:
            if not np.isnan(got[k]):  # the recorded NaN stays NaN (checked in test_query)
                assert got[k] == np.float32(ratio_max(k, head))
        assert sorted(series(f"entropy/{head}")) == list(range(N_UPDATES))
    for head in IRRELEVANT[1]:  # no neutral 1.0 written for an update without samples
        assert 1 not in series(f"ratio_min/{head}") and 1 in series(f"entropy/{head}")
    returns = series("episode/return")
    assert returns == {e: np.float32(episode_return(e)) for e in range(N_UPDATES * N_ENVS)}


class FakeRun:
    """Stands in for a wandb Run: records what the backend asks of it."""

    def __init__(self, **kwargs: Any) -> None:
        self.init_kwargs = kwargs
        self.defined: dict[str, str | None] = {}
        self.logged: list[dict[str, float]] = []
        self.finished = 0

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.defined[name] = step_metric

    def log(self, data: dict[str, float]) -> None:
        self.logged.append(data)

    def finish(self) -> None:
        self.finished += 1


def test_wandb_backend_logs_each_scalar_against_its_own_axis(run_dir: Path) -> None:
    backend = WandbBackend(run_dir, {"lr": 0.1}, init=FakeRun)
    replay(run_dir, backend)
    run = backend.run
    assert run.init_kwargs["mode"] == "offline" and run.init_kwargs["config"] == {"lr": 0.1}
    assert run.defined == {UPDATE_STEP: None, EPISODE_STEP: None, **all_scalar_names(HEAD_NAMES)}
    updates = [d for d in run.logged if UPDATE_STEP in d]
    episodes = [d for d in run.logged if EPISODE_STEP in d]
    assert [d[UPDATE_STEP] for d in updates] == list(range(N_UPDATES))
    assert [d[EPISODE_STEP] for d in episodes] == list(range(N_UPDATES * N_ENVS))
    assert updates[3]["ratio_max/alpha_curve"] == ratio_max(3, "alpha_curve")
    assert "ratio_max/alpha_curve" not in updates[1]
    assert run.finished == 1
    backend.close()  # idempotent: the run is finished once
    assert run.finished == 1


def test_wandb_offline_run_is_written(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")  # optional: the `wandb` extra is not in the test extra
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    backend = WandbBackend(tmp_path, {"lr": 0.1})
    with TelemetryHub([backend]) as hub:
        for event in read_events(run_dir / EVENTS_FILE):
            hub.publish(event)
        hub.flush()
        assert backend.run.summary["ratio_max/alpha_curve"] == ratio_max(3, "alpha_curve")
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.parametrize("heads", [HEAD_SETS["xyz"], MANY_HEADS], ids=["xyz", "24"])
def test_tags_are_the_runs_own_heads(heads: tuple[str, ...], tmp_path: Path) -> None:
    """TensorBoard gets a tag per statistic of every head the run has, named as the data."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run_dir = record_synthetic_run(tmp_path / "run", heads=heads)
    replay(run_dir, TensorBoardBackend(tmp_path / "tb"))
    events = accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert set(events.Tags()["tensors"]) == set(all_scalar_names(heads))
    wandb = WandbBackend(run_dir, {}, init=FakeRun)
    replay(run_dir, wandb)
    assert wandb.run.defined == {UPDATE_STEP: None, EPISODE_STEP: None, **all_scalar_names(heads)}


def test_make_exporters_builds_what_the_flags_ask(run_dir: Path, tmp_path: Path) -> None:
    assert make_exporters(None, False, run_dir, {}) == []
    (backend,) = make_exporters(tmp_path / "tb", False, run_dir, {})
    assert isinstance(backend, TensorBoardBackend) and not backend.synchronous
    assert backend.log_dir == tmp_path / "tb" / run_dir.name  # one sub-directory per run
    backend.close()


def test_missing_extra_is_an_analysis_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard.summary", None)
    with pytest.raises(AnalysisError, match=r"pip install 'esper-ppo\[tensorboard\]'"):
        TensorBoardBackend(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(AnalysisError, match=r"pip install 'esper-ppo\[wandb\]'"):
        WandbBackend(tmp_path, {})


def test_analysis_never_imports_torch() -> None:
    """The analysis commands run where a run directory is copied, without the training stack."""
    code = (
        "import sys; import esper.analysis.commands, esper.analysis.runs, "
        "esper.analysis.exporters, esper.analysis.query, esper.analysis.report; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
