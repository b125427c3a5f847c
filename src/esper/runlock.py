"""One writer per run directory: an exclusive `flock` held for the writer's lifetime.

Two processes appending to one `events.jsonl` interleave run ids and reuse update
indices, so a run directory is locked by whoever trains into it (a fresh start or a
resume). The lock is advisory and held on an open file, so the kernel drops it when the
holder dies, however it dies: a killed run never leaves a stale lock. Readers (Sanctum,
`esper report`, `esper query`) never take it. The holder's pid is written into the file
so the refused writer can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".writer.lock"


class RunDirBusy(RuntimeError):
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
            who = f"process {holder}" if holder else "another process"
            raise RunDirBusy(
                f"{run_dir} is in use by {who} (one writer per run directory)"
            ) from None
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


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
