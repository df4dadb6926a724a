"""One run per `--output_dir`: an exclusive lock held for the whole run.

Two runs writing one output folder delete each other's checkpoints in progress and interleave their
logs. The lock is `fcntl.flock` on `OUTPUT_DIR/.ltxv2-run.lock`; the kernel drops it when the holding
process dies however it dies, so a lock left by a killed run is simply taken over. The file holds the
holder's PID and host so the refusal can name them.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".ltxv2-run.lock"


class OutputDirBusy(RuntimeError):
    """Another live process holds the output folder's lock."""


class OutputDirLock:
    """`acquire()` or raise `OutputDirBusy` naming the holder; `release()` (also on garbage collection)."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None
        self.taken_over: str | None = None  # the holder a killed run left in the file, if any
        self.unprotected: str | None = None  # why the folder could not be locked (a file system without locks)

    def acquire(self) -> "OutputDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputDirBusy(f"--output_dir {self.path.parent} is in use by another run ({holder}); wait for it "
                                "to end or choose another --output_dir") from None
        except OSError as exc:  # a file system without locks: run, but not silently unprotected
            os.close(fd)
            self.unprotected = f"cannot lock {self.path} ({exc.strerror or exc}): a second run there would not be stopped"
            return self
        # A clean release empties the file: text left in it is a run that died holding the lock.
        self.taken_over = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing drops the flock

    def __del__(self):
        self.release()

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
