"""Run directories: their ids, and one writer each (an exclusive `flock` for its lifetime).

Two processes appending to one `events.jsonl` interleave run ids and reuse update
indices, so a run directory is locked by whoever trains into it (a fresh start or a
resume). The lock is advisory and held on an open file, so the kernel drops it when the
holder dies, however it dies: a killed run never leaves a stale lock. Readers (Sanctum,
`esper report`, `esper query`) never take it. The holder's pid is written into the file
so the refused writer can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from esper.telemetry.recorder import EVENTS_FILE, RUN_FILE

LOCK_FILE = ".writer.lock"


class RunDirError(ValueError):
    """A run directory that cannot be recorded into; the message is one line for the user."""


def new_run_id(now: datetime | None = None) -> str:
    """Sortable, collision-resistant run id: UTC time plus four random hex digits."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(2)}"


def holds_run(path: Path) -> bool:
    """Whether `path` already holds a recorded run (an events file, or a link in its place)."""
    events = path / EVENTS_FILE
    return events.exists() or events.is_symlink()


class RunDirBusy(RunDirError):
    """Another process holds the run directory's writer lock; the message names its pid."""


class RunLock:
    """The writer lock of `run_dir`, taken without waiting; release with `release()`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        # O_NOFOLLOW: a symlink planted as the lock file must not make us truncate elsewhere.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise _busy(run_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock; idempotent. The file stays (removing it would race a new writer)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _busy(run_dir: Path, holder: int | None) -> RunDirBusy:
    who = f"process {holder}" if holder else "another process"
    return RunDirBusy(f"{run_dir} is in use by {who} (one writer per run directory)")


def check_not_busy(path: Path) -> None:
    """Raise RunDirBusy naming the holder if another process is writing into `path`.

    A look only, for a start that is refused anyway (the directory holds a run): the
    user should learn it is busy and by whom rather than only that it is taken. Nothing
    is created; the shared lock taken to look is dropped at once, and a directory with
    no lock file has never had a writer.
    """
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(path, _read_pid(fd)) from None
    except OSError:
        return
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_run_dir(path: Path) -> RunLock:
    """Take the writer lock of an existing run directory, or RunDirError naming why not."""
    try:
        return RunLock(path)
    except OSError as exc:
        raise RunDirError(f"cannot lock {path}: {exc.strerror or exc}") from None


@dataclass
class NewRunDir:
    """A run directory this process made (or found empty), locked for writing."""

    path: Path
    created: bool
    lock: RunLock

    def discard(self) -> None:
        """Undo a start that failed before training: leave no trace of this attempt."""
        self.lock.release()
        for name in (LOCK_FILE, RUN_FILE, EVENTS_FILE):
            file = self.path / name
            with contextlib.suppress(OSError):
                if name != EVENTS_FILE or file.stat().st_size == 0:
                    file.unlink()
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if now empty


def prepare_run_dir(path: Path) -> NewRunDir:
    """Create and lock a new run's directory; refuses an existing run and a busy directory."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a directory")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    try:
        lock = lock_run_dir(path)
    except RunDirError:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    if holds_run(path):  # another writer finished a run here while we looked
        lock.release()
        raise RunDirError(f"{path} already holds a recorded run; choose another run directory")
    return NewRunDir(path, created, lock)
