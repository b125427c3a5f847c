"""HeadRatioMonitor: a hand-written PPO loop's per-head ratios, recorded like esper's own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.integrations.monitor import HeadRatioMonitor, open_run
from esper.telemetry.contracts import (
    EventType,
    PPOUpdatePayload,
    RatioExplosion,
    TrainingFailed,
    TrainingFinished,
    TrainingStarted,
)
from esper.telemetry.recorder import committed_events, read_events


def events(run_dir: Path) -> list:
    return list(read_events(run_dir / "events.jsonl"))


def of_type(run_dir: Path, kind: EventType) -> list:
    return [e.payload for e in events(run_dir) if e.event_type is kind]


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_one_update_known_answer(tmp_path: Path) -> None:
    """Two heads, two minibatches: maxima, minima, clip and counts by hand."""
    run = tmp_path / "run"
    with HeadRatioMonitor(run, ["x", "y"], clip_eps=0.2) as monitor:
        # log-ratios: x = [0.1, -0.5], y = [0.0, 0.3]
        monitor.observe(t([[-1.0, -2.0], [-1.5, -1.7]]), t([[-1.1, -2.0], [-1.0, -2.0]]))
        # log-ratios: x = [0.4], y irrelevant (its 5.0 must not count)
        monitor.observe(t([[-0.6, 3.0]]), t([[-1.0, -2.0]]), relevant=torch.tensor([[True, False]]))
        stats = monitor.end_update(policy_loss=0.25)
        monitor.episodes = 3
    x, y = stats.heads["x"], stats.heads["y"]
    assert x.ratio_max == pytest.approx(math.exp(0.4), rel=1e-6)
    assert x.ratio_min == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert x.relevant == 3 and y.relevant == 2
    assert x.clip_fraction == pytest.approx(2 / 3)  # 0.4 and -0.5 leave [0.8, 1.2]
    assert y.ratio_max == pytest.approx(math.exp(0.3), rel=1e-6)
    assert y.ratio_min == pytest.approx(1.0)
    assert y.clip_fraction == pytest.approx(1 / 2)
    expected_kl_x = sum(math.expm1(v) - v for v in (0.1, -0.5, 0.4)) / 3
    assert x.approx_kl == pytest.approx(expected_kl_x, rel=1e-5)
    # joint log-ratios: 0.1, -0.2, 0.4 -> max exp(0.4); clipped: 0.4 and -0.2 (0.819 in)
    assert stats.joint_ratio_max == pytest.approx(math.exp(0.4), rel=1e-6)
    assert stats.clip_fraction == pytest.approx(1 / 3)
    joint = (0.1, -0.2, 0.4)
    assert stats.approx_kl == pytest.approx(sum(math.expm1(v) - v for v in joint) / 3, rel=1e-5)
    assert stats.policy_loss == 0.25 and stats.minibatches_run == 2
    assert stats.explosion is None

    (started,) = of_type(run, EventType.TRAINING_STARTED)
    assert isinstance(started, TrainingStarted) and started.head_names == ["x", "y"]
    (update,) = of_type(run, EventType.PPO_UPDATE_COMPLETED)
    assert isinstance(update, PPOUpdatePayload)
    assert update.update_index == 0 and update.heads == stats.heads
    (finished,) = of_type(run, EventType.TRAINING_FINISHED)
    assert isinstance(finished, TrainingFinished) and finished.updates == 1
    assert finished.episodes == 3


def test_episodes_belong_to_the_update_they_end_before(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with HeadRatioMonitor(run, ["x"]) as monitor:
        monitor.end_episode(np.float32(1.5), length=np.int64(20))  # numpy numbers welcome
        monitor.observe(t([[-1.0]]), t([[-1.0]]))
        monitor.end_update()
        monitor.end_episode(-2.0, length=7, env_index=3)
        monitor.observe(t([[-1.0]]), t([[-1.0]]))
        monitor.end_update()
    recorded = [e for e in events(run) if e.event_type is EventType.EPISODE_COMPLETED]
    assert [(e.batch, e.episode) for e in recorded] == [(0, 0), (1, 1)]
    done = [(e.payload.episode_return, e.payload.length) for e in recorded]
    assert done == [(1.5, 20), (-2.0, 7)]
    assert recorded[1].payload.env_index == 3 and recorded[1].payload.final_accuracy is None
    assert recorded[1].message == "env 3 episode done: return -2.000"
    (finished,) = of_type(run, EventType.TRAINING_FINISHED)
    assert finished.episodes == 2
    with pytest.raises(RuntimeError, match="after close"):
        monitor.end_episode(0.0, length=1)


@pytest.mark.parametrize("interrupted", [False, True])
def test_episodes_after_the_last_update_count_when_the_run_ends_cleanly(
    tmp_path: Path, interrupted: bool
) -> None:
    """A loop's last episodes often end after its last update: a run that finished counts
    them (readers agree with TRAINING_FINISHED); an interrupted one, which may be
    continued, does not."""
    run = tmp_path / "run"
    monitor = HeadRatioMonitor(run, ["x"])
    monitor.end_episode(1.5, length=5)
    monitor.observe(t([[-1.0]]), t([[-1.0]]))
    monitor.end_update()
    monitor.end_episode(2.5, length=5)
    monitor.end_episode(3.5, length=5)
    monitor.close(interrupted=interrupted)
    counted = [
        e.payload.episode_return
        for e in committed_events(events(run))
        if e.event_type is EventType.EPISODE_COMPLETED
    ]
    assert counted == ([1.5] if interrupted else [1.5, 2.5, 3.5])


def test_scalars_may_be_numpy_or_tensor_numbers(tmp_path: Path) -> None:
    with HeadRatioMonitor(tmp_path / "r", ["a"]) as monitor:
        monitor.observe(t([[0.0]]), t([[0.0]]))
        stats = monitor.end_update(
            policy_loss=np.float32(0.5), value_loss=torch.tensor(2.0), epochs_run=np.int64(3)
        )
    assert (stats.policy_loss, stats.value_loss, stats.epochs_run) == (0.5, 2.0, 3)
    (update,) = of_type(tmp_path / "r", EventType.PPO_UPDATE_COMPLETED)
    assert update.stats.value_loss == 2.0


def test_nonfinite_samples_are_counted_not_used(tmp_path: Path) -> None:
    with HeadRatioMonitor(tmp_path / "r", ["a", "b"]) as monitor:
        monitor.observe(t([[math.nan, -1.0], [-1.0, -1.0]]), t([[-1.0, -1.2], [-1.1, -1.0]]))
        stats = monitor.end_update()
    a, b = stats.heads["a"], stats.heads["b"]
    assert a.nonfinite == 1 and a.relevant == 1
    assert a.ratio_max == pytest.approx(math.exp(0.1), rel=1e-6)
    assert b.nonfinite == 0 and b.ratio_max == pytest.approx(math.exp(0.2), rel=1e-6)
    # the NaN sample leaves the joint; the other sample's joint log-ratio is 0.1 + 0.0
    assert stats.joint_ratio_max == pytest.approx(math.exp(0.1), rel=1e-6)


def test_head_never_relevant_reads_neutral(tmp_path: Path) -> None:
    with HeadRatioMonitor(tmp_path / "r", ["a", "b"]) as monitor:
        monitor.observe(t([[-1.0, 9.0]]), t([[-1.0, 0.0]]), torch.tensor([[True, False]]))
        stats = monitor.end_update()
    assert stats.heads["b"].relevant == 0 and stats.heads["b"].ratio_max == 1.0
    assert not stats.heads["b"].measured


def test_explosion_hidden_by_heads_is_recorded(tmp_path: Path) -> None:
    """Five heads each at exp(0.18) = 1.197, inside the clip; the joint is exp(0.9) = 2.46."""
    names = [f"h{i}" for i in range(5)]
    with HeadRatioMonitor(tmp_path / "r", names, explosion_threshold=2.0) as monitor:
        old = torch.full((4, 5), -1.0)
        new = old.clone()
        new[2] += 0.18
        monitor.observe(new, old)
        stats = monitor.end_update()
    assert stats.joint_ratio_max == pytest.approx(math.exp(0.9), rel=1e-5)
    assert stats.explosion is not None and stats.explosion.hidden_by_heads
    (explosion,) = of_type(tmp_path / "r", EventType.RATIO_EXPLOSION)
    assert isinstance(explosion, RatioExplosion)
    assert explosion.shares == pytest.approx(dict.fromkeys(names, 0.2))


def test_entropy_is_normalised_by_head_size(tmp_path: Path) -> None:
    with HeadRatioMonitor(tmp_path / "r", {"a": 3, "b": 4}) as monitor:
        zeros = torch.zeros(2, 2)
        entropy = torch.tensor([[math.log(3), math.log(4) / 2], [math.log(3), math.log(4) / 2]])
        monitor.observe(zeros, zeros, entropy=entropy)
        stats = monitor.end_update()
    assert stats.heads["a"].entropy == pytest.approx(1.0)
    assert stats.heads["b"].entropy == pytest.approx(0.5)
    assert stats.entropy == pytest.approx(0.75)
    (started,) = of_type(tmp_path / "r", EventType.TRAINING_STARTED)
    assert started.head_sizes == {"a": 3, "b": 4}


def test_observe_reads_no_values(tmp_path: Path) -> None:
    """Meta tensors hold no data: observe accepts them, so it cannot read (or sync) any."""
    monitor = HeadRatioMonitor(tmp_path / "r", {"a": 2, "b": 2})
    meta = torch.empty(8, 2, device="meta")
    for _ in range(3):
        monitor.observe(meta, meta, torch.empty(8, 2, dtype=torch.bool, device="meta"), meta)
    assert monitor.minibatches_pending == 3
    monitor.close()


def test_updates_are_numbered_and_max_is_per_update(tmp_path: Path) -> None:
    with HeadRatioMonitor(tmp_path / "r", ["a"]) as monitor:
        monitor.observe(t([[0.5]]), t([[0.0]]))
        first = monitor.end_update()
        monitor.observe(t([[0.1]]), t([[0.0]]))
        second = monitor.end_update()
    assert first.heads["a"].ratio_max == pytest.approx(math.exp(0.5), rel=1e-6)
    assert second.heads["a"].ratio_max == pytest.approx(math.exp(0.1), rel=1e-6)
    updates = of_type(tmp_path / "r", EventType.PPO_UPDATE_COMPLETED)
    assert [u.update_index for u in updates] == [0, 1]


def test_failure_in_the_loop_is_recorded(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), HeadRatioMonitor(tmp_path / "r", ["a"]):
        raise RuntimeError("boom")
    (failed,) = of_type(tmp_path / "r", EventType.TRAINING_FAILED)
    assert isinstance(failed, TrainingFailed) and "boom" in failed.error


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    with HeadRatioMonitor(tmp_path / "r", ["a", "b"]) as monitor:
        with pytest.raises(ValueError, match=r"\[batch, 2\]"):
            monitor.observe(torch.zeros(4, 3), torch.zeros(4, 3))
        with pytest.raises(ValueError, match="old_logp"):
            monitor.observe(torch.zeros(4, 2), torch.zeros(5, 2))
        with pytest.raises(ValueError, match="head sizes"):
            monitor.observe(torch.zeros(4, 2), torch.zeros(4, 2), entropy=torch.zeros(4, 2))
        with pytest.raises(TypeError, match="unknown update scalar"):
            monitor.end_update(polcy_loss=1.0)
    with pytest.raises(ValueError, match="head name"):
        HeadRatioMonitor(tmp_path / "s", ["bad name"])
    with pytest.raises(ValueError, match="already holds a recorded run"):
        HeadRatioMonitor(tmp_path / "r", ["a"])
    with pytest.raises(ValueError, match="expected a JSON value"):
        HeadRatioMonitor(tmp_path / "t", ["a"], config={"where": tmp_path})
    assert not (tmp_path / "t").exists()  # refused before anything was written
    for clip in (0.0, 1.0):  # a clip of 1 or more never bounds a falling ratio: no bands
        with pytest.raises(ValueError, match=r"clip_eps must be in \(0, 1\)"):
            HeadRatioMonitor(tmp_path / "u", ["a"], clip_eps=clip)
    assert not (tmp_path / "u").exists()


def test_the_run_header_records_the_clip_and_a_reopened_run_repeats_it(tmp_path: Path) -> None:
    with HeadRatioMonitor(tmp_path / "r", ["a"], clip_eps=0.1) as first:
        first.observe(t([[0.5]]), t([[0.0]]))
        first.end_update()
    with first.reopen():
        pass
    starts = of_type(tmp_path / "r", EventType.TRAINING_STARTED)
    assert [s.clip_eps for s in starts] == [0.1, 0.1]


def test_reopen_continues_the_run_and_its_numbering(tmp_path: Path) -> None:
    run = tmp_path / "r"
    with HeadRatioMonitor(run, ["a"], config={"lr": 0.1}) as first:
        first.observe(t([[0.5]]), t([[0.0]]))
        first.end_update()
        first.episodes = 2
    with first.reopen() as second:
        second.observe(t([[0.1]]), t([[0.0]]))
        second.end_update()
        second.episodes += 1
    seen = events(run)
    assert [e.seq for e in seen] == list(range(len(seen)))
    assert {e.run_id for e in seen} == {first.run_id}
    kinds = [e.event_type for e in seen]
    assert kinds == [
        EventType.TRAINING_STARTED,
        EventType.PPO_UPDATE_COMPLETED,
        EventType.TRAINING_FINISHED,
        EventType.TRAINING_STARTED,
        EventType.PPO_UPDATE_COMPLETED,
        EventType.TRAINING_FINISHED,
    ]
    assert seen[3].payload.resumed_from_update == 1
    assert seen[3].payload.config == seen[0].payload.config
    assert [e.payload.update_index for e in seen if e.event_type is kinds[1]] == [0, 1]
    assert seen[-1].payload.updates == 2 and seen[-1].payload.episodes == 3
    info = json.loads((run / "run.json").read_text())
    assert len(info["resumed_at"]) == 1
    with pytest.raises(RuntimeError, match="close"):
        second.reopen().reopen()


def test_open_run_defaults_to_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = open_run(None, {"k": 1})
    run.hub.close()
    assert run.run_dir.parent == Path("runs") and run.run_dir.name == run.run_id
    assert (tmp_path / "runs" / run.run_id / "run.json").is_file()


def test_a_default_run_id_already_taken_draws_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two default runs started in the same second whose four random digits collide (seen
    once in sb3-contrib's suite) must not refuse the second: nobody chose that directory."""
    import esper.integrations.monitor as monitor_module

    monkeypatch.chdir(tmp_path)
    ids = iter(["20260101-000000-aaaa", "20260101-000000-aaaa", "20260101-000000-bbbb"])
    monkeypatch.setattr(monitor_module, "new_run_id", lambda: next(ids))
    first = open_run(None, {"k": 1})
    first.close()
    second = open_run(None, {"k": 2})
    second.close()
    assert (first.run_id, second.run_id) == ("20260101-000000-aaaa", "20260101-000000-bbbb")
    assert json.loads((tmp_path / "runs" / first.run_id / "run.json").read_text())["config"] == {
        "k": 1
    }


def test_a_named_run_dir_that_holds_a_run_is_still_refused(tmp_path: Path) -> None:
    open_run(tmp_path / "mine", {}).close()
    with pytest.raises(ValueError, match="already holds a recorded run"):
        open_run(tmp_path / "mine", {})


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.integers(1, 6).flatmap(
            lambda n: st.lists(
                st.tuples(st.floats(-30, 30), st.floats(-30, 30)), min_size=n * 2, max_size=n * 2
            )
        ),
        min_size=1,
        max_size=4,
    )
)
def test_ratio_max_is_the_clamped_max_over_all_minibatches(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple[float, float]]]
) -> None:
    run = tmp_path_factory.mktemp("prop") / "r"
    all_rows = []
    with HeadRatioMonitor(run, ["a", "b"]) as monitor:
        for batch in batches:
            rows = np.array(batch, dtype=np.float32).reshape(-1, 2, 2)  # [n, head, (new, old)]
            monitor.observe(torch.from_numpy(rows[..., 0]), torch.from_numpy(rows[..., 1]))
            all_rows.append(rows)
        stats = monitor.end_update()
    rows = np.concatenate(all_rows)
    log_ratio = np.clip(rows[..., 0].astype(np.float64) - rows[..., 1], -20, 20)
    for i, head in enumerate("ab"):
        expected = math.exp(log_ratio[:, i].max())
        assert stats.heads[head].ratio_max == pytest.approx(expected, rel=1e-5)
