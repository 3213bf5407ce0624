"""The store's readers-writer lock: one lock per store *file*, whatever its name."""

from __future__ import annotations

import datetime as _dt
import fcntl
import logging
import os
import time
from typing import Any

from featx.errors import StoreError

log = logging.getLogger("featx")

#: A lock wait longer than this (seconds) is announced once on stderr.
_SAY_WAITING_AFTER_S = 1.0


# --------------------------------------------------------------------------------------
# locking
# --------------------------------------------------------------------------------------


class _FileLock:
    """A writer-preferring readers-writer lock on one store *file*, whatever its name.

    ``<real path>.lock`` is the lock proper: shared for readers, exclusive for writers.
    ``<real path>.lock.gate`` is a turnstile: a writer holds it exclusively while it waits
    for the lock, a reader holds it shared while it waits for its shared lock; both let go
    of it once they hold the lock. So a waiting writer stops new readers and gets in as
    soon as the current ones finish (readers that keep overlapping cannot starve it), and
    a waiting reader gets in before a writer that keeps re-taking the lock for batch
    after batch (which starved readers: tests/test_distributed.py's kill-mid-shard).

    One file, one lock: the sidecars sit beside the *resolved* path, so a symlink and its
    target share them, and once the store file exists it is ``flock``-ed too, which covers
    hard links (``flock`` belongs to the inode). A lock keyed on the name given let three
    names of one file write at once and damage it (tests/robustness/test_failure_paths.py).

    Locks are polled (non-blocking ``flock``) until ``timeout`` seconds have passed; the OS
    drops the locks of a process that dies. A writer records its PID and start time in the
    lock file, so a process kept waiting can say, once, whom it waits for.
    """

    def __init__(self, lock_path: str, data_path: str, exclusive: bool, timeout: float):
        self.lock_path = lock_path
        self.gate_path = lock_path + ".gate"
        self.data_path = data_path
        self.exclusive = exclusive
        self.timeout = timeout
        self.fd: int | None = None
        self.data_fd: int | None = None
        self._said_waiting = False
        self._started = 0.0
        self._recorded = False

    def _open(self, path: str) -> int | None:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if self.exclusive:
                raise StoreError(
                    f"cannot create the lock file {path!r} for writing to "
                    f"{self.data_path!r}: {exc.strerror or exc}"
                ) from exc
        try:  # a reader on read-only media: use an existing lock file if there is one
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # nobody can write there either: read without a lock

    def _holder(self) -> str:
        """``"PID 123 since 12:00:01 UTC"`` from the lock file, or a vaguer phrase."""
        try:
            with open(self.lock_path, "rb") as fh:
                pid, since = fh.read(200).decode("ascii", "replace").split()[:2]
            os.kill(int(pid), 0)  # a writer killed with -9 leaves its record behind
            when = _dt.datetime.fromtimestamp(float(since), _dt.timezone.utc)
            return f"PID {int(pid)} since {when:%Y-%m-%d %H:%M:%S} UTC"
        except (OSError, ValueError, OverflowError):
            return "another process"

    def _say_waiting(self) -> None:
        if self._said_waiting:
            return
        self._said_waiting = True
        kind = "exclusive" if self.exclusive else "shared"
        log.warning("featx: waiting for the %s lock on %s, held by %s (up to %g s; a "
                    "stopped or hung process holds it until it ends)", kind, self.data_path,
                    self._holder(), self.timeout)

    def _acquire(self, fd: int, op: int, deadline: float, what: str) -> None:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot lock {what!r}: {exc.strerror or exc}") from exc
            now = time.monotonic()
            if now - self._started >= _SAY_WAITING_AFTER_S:
                self._say_waiting()
            left = deadline - now
            if left <= 0:
                kind = "exclusive" if self.exclusive else "shared"
                who = "is reading or writing" if self.exclusive else "is writing to"
                raise StoreError(
                    f"timed out after {self.timeout:g} s waiting for the {kind} lock on "
                    f"{what!r}: {self._holder()} {who} {self.data_path!r}. Wait for it "
                    "to finish, or pass a larger lock_timeout to EmbeddingStore (a lock held by "
                    "a dead process is released by the OS)."
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.005)  # short: a reader must catch the gap between puts

    def __enter__(self) -> "_FileLock":
        self._started = time.monotonic()
        deadline = self._started + self.timeout
        op = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        self.fd = self._open(self.lock_path)
        gate = None if self.fd is None else self._open(self.gate_path)
        try:
            if gate is not None:
                # Readers too hold the turnstile (shared) until they have the lock: a writer
                # that just released cannot take the turnstile back and starve them.
                self._acquire(gate, op, deadline, self.gate_path)
            if self.fd is not None:
                self._acquire(self.fd, op, deadline, self.lock_path)
            # The store file itself, for other names of it (hard links) with other sidecars.
            try:
                self.data_fd = os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.data_fd = None  # not created yet: only a holder of our sidecar creates it
            if self.data_fd is not None:
                self._acquire(self.data_fd, op, deadline, self.data_path)
            if self.exclusive and self.fd is not None:
                record = f"{os.getpid()} {time.time():.3f}\n".encode()
                try:
                    os.ftruncate(self.fd, 0)
                    os.pwrite(self.fd, record, 0)
                    self._recorded = True
                except OSError:
                    pass  # only the waiting message loses its PID
        except BaseException:
            self._close()
            raise
        finally:
            if gate is not None:
                os.close(gate)  # holding the lock, let the next ones queue at the turnstile
        return self

    def _close(self) -> None:
        if self.data_fd is not None:
            os.close(self.data_fd)
            self.data_fd = None
        if self.fd is not None:
            if self.exclusive and self._recorded:
                try:
                    os.ftruncate(self.fd, 0)  # the record names the holder only while it holds
                except OSError:
                    pass
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
            self._recorded = False

    def __exit__(self, *exc: Any) -> None:
        self._close()
