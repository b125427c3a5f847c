"""The run directory on disk: `run.json` + `events.jsonl`, written durably and read leniently.

`RunRecorder` is a synchronous hub backend: one JSON line per event, flushed per event and
fsynced at every PPO update and at the end, so a run killed at any moment keeps every
update whose emit returned. A write that fails (disk full, file-size limit) is not retried:
the recorder stops and says why through `failure()`, which the trainer checks per update.

`read_events` reads (and optionally follows) that file; a bad line is reported by number
and skipped, never stopping the read, and a torn last line (a write cut short) is held
back in follow mode and counted as skipped otherwise. `committed_events` keeps from those
what a reader counts: a batch's events once its update is in the log, so a batch that a
killed attempt left half-written and a resume redid counts once.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy

from esper import __version__
from esper.telemetry.contracts import (
    TERMINAL_EVENTS,
    ContractError,
    EventType,
    TelemetryEvent,
    TrainingStarted,
    event_from_json_line,
    event_to_json_line,
    json_value,
)

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
#: Events after which the recorder fsyncs: losing one of these loses a PPO update or
#: the run's ending.
DURABLE_EVENTS: frozenset[EventType] = frozenset(
    {EventType.PPO_UPDATE_COMPLETED, EventType.PPO_UPDATE_SKIPPED} | TERMINAL_EVENTS
)
#: The many events of a batch's steps (one per seed change, episode, worker) wait in
#: memory for the next other event and reach the file with it, whole lines in one write.
#: Readers count them only once their batch's update is in the log (`committed_events`),
#: which is flushed and fsynced, so holding them back loses nothing a reader would count.
BATCHED_EVENTS: frozenset[EventType] = frozenset(
    {EventType.SEED_LIFECYCLE, EventType.EPISODE_COMPLETED, EventType.WORKER_STATUS}
)
#: At most this many malformed lines are kept with their reason (all are counted).
MAX_MALFORMED_KEPT = 1000
_CHUNK = 1 << 20


def library_versions() -> dict[str, str]:
    """Versions worth recording; torch only if already imported (the recorder never loads it)."""
    versions = {
        "esper": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        versions["torch"] = str(getattr(torch, "__version__", "unknown"))
    return versions


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX only; elsewhere the rename must do)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` to `path` via a temp file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class RunRecorder:
    """Hub backend writing `run_dir/run.json` and appending to `run_dir/events.jsonl`.

    Synchronous on purpose: a write is a few microseconds and must not sit in a queue a
    SIGKILL would empty. Appending to an existing file (a resumed run) first closes a torn
    last line so the new events start on a line of their own.
    """

    synchronous = True
    name = "recorder"

    def __init__(
        self,
        run_dir: Path | str,
        config: Mapping[str, Any],
        *,
        run_id: str | None = None,
        started_at: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id if run_id is not None else self.run_dir.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        #: What was wrong with the directory on opening (e.g. a damaged run.json), if anything.
        self.note: str | None = None
        self._info = self._write_run_info(config, clock(), started_at)
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._held: list[str] = []  # BATCHED_EVENTS lines not yet written
        # O_NOFOLLOW: a symlink planted as events.jsonl must not make us append elsewhere.
        self._file = open(  # noqa: SIM115 (owned until close)
            self.events_path, "a", encoding="utf-8", opener=_open_append_no_follow
        )
        if self._file.tell() > 0 and not _ends_with_newline(self.events_path):
            self._file.write("\n")
            self._file.flush()

    def _write_run_info(
        self, config: Mapping[str, Any], now: float, started_at: float | None
    ) -> dict[str, Any]:
        """Write run.json; a resumed run keeps the original and records when it resumed.

        A resume may change some settings (episodes, device, backend, workers, threads):
        `config` then replaces the recorded one, so run.json says what the run goes on
        with (each attempt's TRAINING_STARTED event keeps what that attempt applied).
        `started_at` is the run's original start, for a run.json rebuilt on resume.
        """
        path = self.run_dir / RUN_FILE
        recorded = json_value(config, "config")
        info: dict[str, Any] = {
            "run_id": self.run_id,
            "started_at": now if started_at is None else started_at,
            "versions": library_versions(),
            "config": recorded,
        }
        appending = self.events_path.is_file() and self.events_path.stat().st_size > 0
        if path.is_file() and not path.is_symlink():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                previous, why = None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            else:
                why = "not a JSON object"
            if isinstance(previous, dict):
                resumed = previous.get("resumed_at")
                history = resumed if isinstance(resumed, list) else []
                info = {**previous, "config": recorded, "resumed_at": [*history, now]}
            else:  # keep the damaged file for whoever wants to look, and say so
                aside = path.with_name(f"{RUN_FILE}.damaged")
                os.replace(path, aside)
                self.note = f"{path} was damaged ({why}); kept as {aside.name} and rewritten"
                info["resumed_at"] = [now]
        elif appending:
            self.note = f"{path} was missing; rewritten from this run's configuration"
            info["resumed_at"] = [now]
        write_json_atomic(path, info)
        return info

    def _declare_heads(self, started: TrainingStarted) -> None:
        """Copy the run's declared heads (names in display order, sizes) into run.json.

        The start event is where a run declares its heads; run.json mirrors them so a
        reader holding only the directory's metadata knows them too.
        """
        heads = {"names": list(started.head_names), "sizes": dict(started.head_sizes)}
        if self._info.get("heads") != heads:
            self._info = {**self._info, "heads": heads}
            write_json_atomic(self.run_dir / RUN_FILE, self._info)

    @property
    def events_path(self) -> Path:
        return self.run_dir / EVENTS_FILE

    def failure(self) -> str | None:
        """Why the event log could not be written (one line), or None while all is well."""
        return self._failure

    def _failed(self, exc: OSError) -> None:
        self._failure = f"cannot write {self.events_path}: {exc.strerror or exc}"

    def handle(self, event: TelemetryEvent) -> None:
        line = event_to_json_line(event) + "\n"
        with self._lock:
            if self._failure is not None:
                return
            if event.event_type in BATCHED_EVENTS:
                self._held.append(line)
                return
            try:
                self._write_held(line)
                if event.event_type in DURABLE_EVENTS:
                    os.fsync(self._file.fileno())
                if isinstance(event.payload, TrainingStarted):
                    self._declare_heads(event.payload)
            except OSError as exc:
                self._failed(exc)

    def _write_held(self, line: str = "") -> None:
        """Write the held lines (and `line`) in one go, and flush them to the OS."""
        held, self._held = self._held, []
        self._file.write("".join(held) + line)
        self._file.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed and self._failure is None:
                try:
                    self._write_held()
                    os.fsync(self._file.fileno())
                except OSError as exc:
                    self._failed(exc)

    def close(self) -> None:
        self.flush()
        with self._lock:
            try:
                self._file.close()
            except OSError as exc:  # buffered bytes that never reached the disk
                if self._failure is None:
                    self._failed(exc)


def _open_append_no_follow(path: str, flags: int) -> int:
    """`open()` opener that refuses to follow a symlink at the final path component."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o644)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


@dataclass
class ReadStats:
    """What `read_events` saw: complete lines, good events, and lines it passed over."""

    lines_read: int = 0  # complete (newline-terminated) lines
    events: int = 0
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    skipped: int = 0  # malformed lines + an unfinished last line
    torn_tail: bool = False  # the file ended in the middle of a line


_BOM = b"\xef\xbb\xbf"


def parse_line(raw: bytes) -> TelemetryEvent:
    """One line of `events.jsonl` (without newline) as an event, or a ContractError why not."""
    if raw.startswith(_BOM):  # an editor's byte-order mark must not cost the first event
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"not UTF-8: {exc}") from None
    if not text.strip():
        raise ContractError("empty line")
    return event_from_json_line(text)


def _open_when_present(
    path: Path, follow: bool, poll_interval: float, stop: threading.Event | None
) -> BinaryIO | None:
    """Open `path`; when following, wait for it to appear (None if stopped first)."""
    while True:
        try:
            return open(path, "rb")  # closed by read_events
        except FileNotFoundError:
            if not follow:
                raise
        if _stopped(stop) or _wait(poll_interval, stop):
            return None


def _stopped(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


def _wait(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


def read_events(
    path: Path | str,
    follow: bool = False,
    poll_interval: float = 0.2,
    stop: threading.Event | None = None,
    *,
    until_finished: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[TelemetryEvent]:
    """Yield the events of an `events.jsonl`, skipping (and counting in `stats`) bad lines.

    With `follow`, keep yielding as the file grows (waiting for it to exist) until `stop` is
    set or, with `until_finished`, a TRAINING_FINISHED/FAILED event has been yielded.
    Without `follow` a missing file raises FileNotFoundError; an empty file yields nothing.
    """
    stats = stats if stats is not None else ReadStats()
    f = _open_when_present(Path(path), follow, poll_interval, stop)
    if f is None:
        return
    pending = b""
    with f:
        while not _stopped(stop):
            chunk = f.read(_CHUNK)
            if not chunk:
                if not follow or _wait(poll_interval, stop):
                    break
                continue
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                stats.lines_read += 1
                try:
                    event = parse_line(raw)
                except ContractError as exc:
                    stats.skipped += 1
                    if len(stats.malformed) < MAX_MALFORMED_KEPT:
                        stats.malformed.append((stats.lines_read, str(exc)))
                    continue
                stats.events += 1
                yield event
                if until_finished and event.event_type in TERMINAL_EVENTS:
                    return
    if pending:
        stats.torn_tail = True
        stats.skipped += 1


#: Events that commit their batch: once one is read, the batch's other events count.
_COMMITS: frozenset[EventType] = frozenset(
    {EventType.PPO_UPDATE_COMPLETED, EventType.PPO_UPDATE_SKIPPED}
)


def committed_events(events: Iterable[TelemetryEvent]) -> Iterator[TelemetryEvent]:
    """The events a reader should count: a batch's events only once its update commits.

    A batch's episodes, lifecycle changes and worker reports are held back until the
    PPO update (completed or skipped) of that batch is read, then yielded, in their
    order, just before it. A TRAINING_STARTED that resumes a run names the batch it
    restarts at (`resumed_from_batch`): held events of that batch or later were left by
    an attempt that died before committing them, and are dropped, since the resumed run
    records that batch again. A TRAINING_FINISHED that is not an interruption commits
    what is held (a run that ended records nothing more: a hand-written loop's episodes
    after its last update are real). Held events still uncommitted at the end are
    dropped: the batch never trained. Events without a batch, and everything after an
    update of its batch (a ratio explosion), pass straight through.
    """
    held: list[TelemetryEvent] = []
    for event in events:
        batch = event.batch
        if event.event_type == EventType.TRAINING_FINISHED:
            if not getattr(event.payload, "interrupted", True):
                yield from held
                held = []
            yield event
            continue
        if event.event_type in _COMMITS:
            ready = [e for e in held if e.batch == batch]
            held = [e for e in held if e.batch != batch]
            yield from ready
            yield event
            continue
        if event.event_type == EventType.TRAINING_STARTED:
            restart = getattr(event.payload, "resumed_from_batch", None)
            if restart is not None:
                held = [e for e in held if e.batch is not None and e.batch < restart]
            yield event
            continue
        if batch is None or event.event_type == EventType.RATIO_EXPLOSION:
            yield event
            continue
        held.append(event)
