"""RunRecorder writes durable runs; read_events reads them leniently, and follows them."""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from factories import started, update_stats
from hypothesis import given
from hypothesis import strategies as st

from esper import __version__
from esper.telemetry.contracts import (
    EpisodeCompleted,
    EventType,
    SeedLifecycle,
    TelemetryEvent,
    TrainingFinished,
    event_to_json_line,
)
from esper.telemetry.emitter import TelemetryEmitter, emit_update
from esper.telemetry.heads import HeadStats
from esper.telemetry.recorder import (
    EVENTS_FILE,
    RUN_FILE,
    ReadStats,
    RunRecorder,
    committed_events,
    read_events,
)

#: Safety net for waits on the follower thread; never reached when reading works.
WAIT = 10.0


class ListSink:
    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []

    def publish(self, event: TelemetryEvent) -> None:
        self.events.append(event)


def sample_events() -> list[TelemetryEvent]:
    """One event of each common kind, as the trainer would emit them."""
    sink = ListSink()
    em = TelemetryEmitter(sink, "run-x", clock=lambda: 1700000000.25)
    em.emit(started())
    em.emit(SeedLifecycle(
        env_index=0, slot=1, from_stage="DORMANT", to_stage="GERMINATED", blueprint="MLP", alpha=0.0
    ))  # fmt: skip
    em.emit(EpisodeCompleted(
        env_index=0, episode_return=1.5, final_accuracy=0.8, seeds_grown=1, seeds_fossilized=0,
        seeds_killed=0, length=8,
    ), episode=0, batch=0)  # fmt: skip
    emit_update(em, update_stats({"op": HeadStats(ratio_max=1.25, relevant=8)}), batch=0)
    em.emit(TrainingFinished(episodes=2, updates=1, wall_seconds=3.0, run_dir="runs/run-x"))
    return sink.events


SAMPLES = sample_events()
SAMPLE_LINES = [event_to_json_line(e) for e in SAMPLES]


def lines_of(events: list[TelemetryEvent]) -> list[str]:
    return [event_to_json_line(e) for e in events]


# ----------------------------------------------------------------------------- recorder


def test_recorder_writes_run_json_and_one_line_per_event(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "run-x"
    recorder = RunRecorder(run_dir, {"lr": 3e-4, "hidden": (32, 16)}, clock=lambda: 12.5)
    for e in SAMPLES:
        recorder.handle(e)
    recorder.close()
    meta = json.loads((run_dir / RUN_FILE).read_text())
    assert meta["run_id"] == "run-x"
    assert meta["started_at"] == 12.5
    assert meta["config"] == {"lr": 3e-4, "hidden": [32, 16]}
    assert meta["versions"]["esper"] == __version__
    assert sorted(p.name for p in run_dir.iterdir()) == [EVENTS_FILE, RUN_FILE]  # no temp left
    assert (run_dir / EVENTS_FILE).read_text().splitlines() == SAMPLE_LINES


def test_run_json_names_torch_only_when_already_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="9.9.9"))
    RunRecorder(tmp_path / "a", {}).close()
    monkeypatch.delitem(sys.modules, "torch")
    RunRecorder(tmp_path / "b", {}).close()
    assert json.loads((tmp_path / "a" / RUN_FILE).read_text())["versions"]["torch"] == "9.9.9"
    assert "torch" not in json.loads((tmp_path / "b" / RUN_FILE).read_text())["versions"]


def test_recorder_fsyncs_at_updates_and_run_end_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = RunRecorder(tmp_path, {})
    synced: list[EventType] = []
    current: list[EventType] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(current[-1]))
    for e in SAMPLES:
        current.append(e.event_type)
        recorder.handle(e)
    # The start event also rewrites run.json (its heads) atomically, with its own fsyncs.
    events_synced = [e for e in synced if e is not EventType.TRAINING_STARTED]
    assert events_synced == [EventType.PPO_UPDATE_COMPLETED, EventType.TRAINING_FINISHED]
    recorder.close()


def test_appending_after_a_torn_line_starts_a_fresh_line(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    path.write_text(SAMPLE_LINES[0] + "\n" + SAMPLE_LINES[1][:20])  # killed mid-write
    recorder = RunRecorder(tmp_path, {})
    recorder.handle(SAMPLES[2])
    recorder.close()
    stats = ReadStats()
    assert lines_of(list(read_events(path, stats=stats))) == [SAMPLE_LINES[0], SAMPLE_LINES[2]]
    assert [n for n, _ in stats.malformed] == [2]


# ----------------------------------------------------------------------------- reader


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    path.touch()
    stats = ReadStats()
    assert list(read_events(path, stats=stats)) == []
    assert stats == ReadStats()


def test_missing_file_raises_without_follow(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_events(tmp_path / EVENTS_FILE))


def test_torn_last_line_is_skipped_and_counted_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    path.write_text("\n".join(SAMPLE_LINES[:3]) + "\n" + SAMPLE_LINES[3][:-5])
    stats = ReadStats()
    assert lines_of(list(read_events(path, stats=stats))) == SAMPLE_LINES[:3]
    assert (stats.lines_read, stats.events, stats.skipped) == (3, 3, 1)
    assert stats.torn_tail
    assert stats.malformed == []


def _broken_event_line(index: int, breakage: str) -> str:
    data = json.loads(SAMPLE_LINES[index])
    if breakage == "drop-key":
        del data["seq"]
    elif breakage == "unknown-type":
        data["event_type"] = "SOMETHING_ELSE"
    else:  # "bad-field"
        data["data"] = {**data["data"], "bogus": 1}
    return json.dumps(data)


garbage_lines = st.one_of(
    st.text().map(lambda t: t.replace("\n", " ").encode()),
    st.binary().map(lambda b: b.replace(b"\n", b"")),
    st.builds(
        lambda i, b: _broken_event_line(i, b).encode(),
        st.integers(0, len(SAMPLES) - 1),
        st.sampled_from(["drop-key", "unknown-type", "bad-field"]),
    ),
)


@given(
    st.lists(st.one_of(st.integers(0, len(SAMPLES) - 1), garbage_lines), min_size=1, max_size=25)
)
def test_garbage_lines_are_skipped_and_counted_and_every_good_line_read(
    items: list[int | bytes],
) -> None:
    raw = [SAMPLE_LINES[i].encode() if isinstance(i, int) else i for i in items]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / EVENTS_FILE
        path.write_bytes(b"\n".join(raw) + b"\n")
        stats = ReadStats()
        got = lines_of(list(read_events(path, stats=stats)))
    assert got == [SAMPLE_LINES[i] for i in items if isinstance(i, int)]
    garbage_numbers = [n for n, item in enumerate(items, start=1) if isinstance(item, bytes)]
    assert [n for n, _ in stats.malformed] == garbage_numbers
    assert stats.skipped == len(garbage_numbers)
    assert stats.lines_read == len(items)
    assert all(reason for _, reason in stats.malformed)


# ----------------------------------------------------------------------------- follow


def _follow_into(
    path: Path, out: queue.Queue[Any], stats: ReadStats, **kw: Any
) -> threading.Thread:
    def run() -> None:
        for e in read_events(path, follow=True, poll_interval=0.005, stats=stats, **kw):
            out.put(e)
        out.put(None)  # the reader returned

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_follow_waits_for_the_file_and_yields_appended_lines(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    out: queue.Queue[Any] = queue.Queue()
    stats = ReadStats()
    thread = _follow_into(path, out, stats, until_finished=True)
    with open(path, "a", encoding="utf-8") as f:  # the file appears after the reader started
        for line in SAMPLE_LINES[:2]:
            f.write(line + "\n")
            f.flush()
            assert event_to_json_line(out.get(timeout=WAIT)) == line
        half = len(SAMPLE_LINES[2]) // 2
        f.write(SAMPLE_LINES[2][:half])  # a line written in two goes is held back...
        f.flush()
        f.write(SAMPLE_LINES[2][half:] + "\n")  # ...and read whole once it ends
        f.flush()
        assert event_to_json_line(out.get(timeout=WAIT)) == SAMPLE_LINES[2]
        f.write("not json\n" + "\n".join(SAMPLE_LINES[3:]) + "\n")  # ends with FINISHED
    assert lines_of([out.get(timeout=WAIT), out.get(timeout=WAIT)]) == SAMPLE_LINES[3:]
    assert out.get(timeout=WAIT) is None  # until_finished: the reader stopped by itself
    thread.join(WAIT)
    assert (stats.events, stats.skipped, stats.malformed[0][0]) == (5, 1, 4)


def test_follow_stops_when_asked_even_before_the_file_exists(tmp_path: Path) -> None:
    stop = threading.Event()
    out: queue.Queue[Any] = queue.Queue()
    thread = _follow_into(tmp_path / EVENTS_FILE, out, ReadStats(), stop=stop)
    stop.set()
    assert out.get(timeout=WAIT) is None
    thread.join(WAIT)
    assert not thread.is_alive()


# ----------------------------------------------------------------- committed events


OP_UPDATE = update_stats({"op": HeadStats(relevant=4)}, names=("op",))


def _attempt(em: TelemetryEmitter, batches: range, *, commit_last: bool) -> None:
    """Batches of one episode each; the last one's update only if `commit_last`."""
    for batch in batches:
        em.emit(SeedLifecycle(
            env_index=0, slot=0, from_stage="DORMANT", to_stage="GERMINATED",
            blueprint="MLP", alpha=0.0,
        ), batch=batch)  # fmt: skip
        em.emit(EpisodeCompleted(
            env_index=0, episode_return=float(batch), final_accuracy=0.5, seeds_grown=1,
            seeds_fossilized=0, seeds_killed=0, length=4,
        ), episode=batch, batch=batch)  # fmt: skip
        if batch != batches[-1] or commit_last:
            emit_update(em, OP_UPDATE, batch=batch)


def test_committed_events_count_a_redone_batch_once_and_keep_the_order() -> None:
    """Batches 0-1 commit, batch 2 dies half-written; the resume redoes 2 and does 3."""
    sink = ListSink()
    em = TelemetryEmitter(sink, "r")
    em.emit(started(["op"], episodes_total=4))
    _attempt(em, range(3), commit_last=False)
    em.emit(started(["op"], episodes_total=4, resumed_from_update=2, resumed_from_batch=2))
    _attempt(em, range(2, 4), commit_last=True)
    counted = list(committed_events(sink.events))
    episodes = [e.episode for e in counted if e.event_type == EventType.EPISODE_COMPLETED]
    assert episodes == [0, 1, 2, 3]  # raw log: 0, 1, 2, 2, 3
    assert len([e for e in sink.events if e.event_type == EventType.EPISODE_COMPLETED]) == 5
    lifecycle = [e.batch for e in counted if e.event_type == EventType.SEED_LIFECYCLE]
    assert lifecycle == [0, 1, 2, 3]
    # everything kept is in the order it was written
    assert [e.seq for e in counted] == sorted(e.seq for e in counted)
    dropped = {e.seq for e in sink.events} - {e.seq for e in counted}
    assert dropped == {e.seq for e in sink.events if e.batch == 2 and e.seq < 10}


def test_a_pending_update_commits_the_batch_written_before_the_kill() -> None:
    """Killed after the checkpoint of batch 1 but before its update event: the resume
    (restarting at batch 2) emits that update, and batch 1's episodes count then."""
    sink = ListSink()
    em = TelemetryEmitter(sink, "r")
    _attempt(em, range(2), commit_last=False)
    em.emit(started(["op"], episodes_total=3, resumed_from_update=1, resumed_from_batch=2))
    emit_update(em, OP_UPDATE, batch=1)  # the pending one
    _attempt(em, range(2, 3), commit_last=True)
    counted = list(committed_events(sink.events))
    assert [e.episode for e in counted if e.event_type == EventType.EPISODE_COMPLETED] == [0, 1, 2]


def test_uncommitted_events_at_the_end_are_not_counted() -> None:
    sink = ListSink()
    _attempt(TelemetryEmitter(sink, "r"), range(2), commit_last=False)
    counted = list(committed_events(sink.events))
    assert [e.batch for e in counted] == [0, 0, 0]  # lifecycle, episode, update of batch 0


def test_a_byte_order_mark_does_not_cost_the_first_event(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    lines = [event_to_json_line(e) for e in sample_events()]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    stats = ReadStats()
    events = list(read_events(path, stats=stats))
    assert events[0].event_type == EventType.TRAINING_STARTED
    assert (len(events), stats.skipped) == (len(lines), 0)


def test_run_json_declares_the_heads_of_the_start_event(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, {"lr": 0.1})
    em = TelemetryEmitter(recorder_sink(recorder), "r")
    em.emit(started(["zeta", "alpha", "mid"]))
    recorder.close()
    heads = json.loads((tmp_path / RUN_FILE).read_text())["heads"]
    assert heads == {"names": ["zeta", "alpha", "mid"], "sizes": dict.fromkeys(heads["names"], 3)}


def test_a_lost_start_line_keeps_the_declared_head_order(tmp_path: Path) -> None:
    from esper.analysis.runs import load_run

    recorder = RunRecorder(tmp_path, {})
    em = TelemetryEmitter(recorder_sink(recorder), "r")
    em.emit(started(["zeta", "alpha"]))
    emit_update(em, update_stats(names=["alpha", "zeta"]), batch=0)
    recorder.close()
    lines = (tmp_path / EVENTS_FILE).read_text().splitlines(keepends=True)
    (tmp_path / EVENTS_FILE).write_text("garbage\n" + "".join(lines[1:]))  # start line lost
    assert load_run(tmp_path).head_names == ("zeta", "alpha")


def recorder_sink(recorder: RunRecorder) -> Any:
    """The recorder as the emitter's sink (what the hub does for a synchronous backend)."""

    class Sink:
        def publish(self, event: TelemetryEvent) -> None:
            recorder.handle(event)

    return Sink()


def test_a_batchs_step_events_reach_the_file_with_its_update_in_order(tmp_path: Path) -> None:
    """Lifecycle/episode lines wait for the next other event and are written before it,
    whole; `flush` (run end, Ctrl-C) writes whatever still waits."""
    recorder = RunRecorder(tmp_path, {})
    em = TelemetryEmitter(recorder_sink(recorder), "r")
    lifecycle = SeedLifecycle(
        env_index=0, slot=0, from_stage="DORMANT", to_stage="GERMINATED", blueprint="MLP", alpha=0.0
    )
    em.emit(started())
    em.emit(lifecycle, batch=0)
    path = tmp_path / EVENTS_FILE
    assert len(path.read_text().splitlines()) == 1  # the lifecycle line waits
    emit_update(em, update_stats(), batch=0)
    assert [e.seq for e in read_events(path)] == [0, 1, 2]
    em.emit(lifecycle, batch=1)
    recorder.flush()
    assert [e.seq for e in read_events(path)] == [0, 1, 2, 3]
    recorder.close()
