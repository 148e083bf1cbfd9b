"""Django's SQLite backend with a write queue that hands the write lock straight to the next writer.

Every transaction begins with ``BEGIN IMMEDIATE`` (settings: ``transaction_mode``), so SQLite lets one
writer at a time in. A connection that finds the database locked waits in SQLite's busy handler, which
*polls*: it sleeps 1, 2, 5, 10 … and then 100 ms between tries, and nothing wakes it when the lock frees.
Under 16 concurrent labelers on the 2-core machine those sleeps, not the work, set the tail (p99 about a
second for a request of about 20 ms of CPU, with the CPUs not fully busy: docs/benchmarks.md, issue 13).

Here a transaction first queues for the write lock, and the queue hands it on as soon as the holder
commits, rolls back or closes:
- within a process, on a ``threading.Lock`` (gunicorn's threads), for at most the connection's
  ``timeout``; past that the transaction goes on to SQLite's own busy handler, as before, so that a
  thread waiting on another thread that holds the lock gets SQLite's "database is locked" and never hangs;
- between processes (gunicorn's workers, the Celery worker, management commands), on an exclusive
  ``flock`` of a file beside the database (``NAME`` + ``-writelock``), which the kernel also releases when
  a process dies. Only one thread per process waits for it, for at most the same ``timeout``.
The queue only orders writers; SQLite's lock still guarantees correctness (statements outside a
transaction, and other programs, still go through the busy handler). In-memory databases skip it.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time

from django.db.backends.sqlite3 import base

_process_queues: dict[str, threading.Lock] = {}
_process_queues_guard = threading.Lock()


def _flock_before(fd: int, deadline: float) -> bool:
    """An exclusive flock of ``fd``'s file, or False once ``deadline`` passes. ``flock`` itself cannot time
    out (and a process waiting forever on one that waits on it would hang instead of failing), and polling
    it costs CPU, so a helper thread waits in the kernel, which wakes it as soon as the lock is free, while
    the caller waits for the helper with a timeout. A helper that gets the lock after its caller gave up
    unlocks it at once."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    own = os.dup(fd)  # the same open file (and lock), closed by the helper whatever happens to ``fd``
    got, guard, gave_up = threading.Event(), threading.Lock(), []

    def wait() -> None:
        try:
            fcntl.flock(own, fcntl.LOCK_EX)
            with guard:
                if gave_up:
                    fcntl.flock(own, fcntl.LOCK_UN)
                else:
                    got.set()
        finally:
            os.close(own)

    threading.Thread(target=wait, name="sqlite-write-queue", daemon=True).start()
    if got.wait(max(deadline - time.monotonic(), 0)):
        return True
    with guard:
        if got.is_set():
            return True
        gave_up.append(True)
    return False


def _process_queue(path: str) -> threading.Lock:
    with _process_queues_guard:
        return _process_queues.setdefault(path, threading.Lock())


def _fresh_queues_in_child() -> None:
    """A forked child (a gunicorn or Celery worker) starts with queues of its own: a lock some thread of the
    parent held at the fork would otherwise stay held forever in the child."""
    global _process_queues_guard
    _process_queues.clear()
    _process_queues_guard = threading.Lock()


os.register_at_fork(after_in_child=_fresh_queues_in_child)


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock_file = None   # this connection's open lock file, and the process that opened it
        self._lock_pid = None    # (after a fork the file is shared with the parent: reopen it)
        self._held = None        # the process queue's lock while this connection holds the write lock

    def _write_lock_path(self) -> str | None:
        return None if self.is_in_memory_db() else f"{self.settings_dict['NAME']}-writelock"

    def _take_write_lock(self) -> None:
        path = self._write_lock_path()
        if self._lock_pid != os.getpid():  # a connection object inherited through fork(): nothing of it is ours
            self._lock_file, self._lock_pid, self._held = None, None, None
        if path is None or self._held is not None:
            return
        deadline = time.monotonic() + float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5))
        queue = _process_queue(path)
        if not queue.acquire(timeout=max(deadline - time.monotonic(), 0)):
            return  # held too long by another thread of this process: leave it to SQLite's busy handler
        try:
            if self._lock_file is None or self._lock_pid != os.getpid():
                self._lock_file = open(path, "a+b")  # noqa: SIM115 (kept open as long as the connection)
                self._lock_pid = os.getpid()
            if not _flock_before(self._lock_file.fileno(), deadline):
                queue.release()
                return  # the same: SQLite's busy handler decides
        except BaseException:
            queue.release()
            raise
        self._held = queue

    def _release_write_lock(self) -> None:
        queue, self._held = self._held, None
        if queue is not None and self._lock_pid == os.getpid():  # never unlock a parent's lock from a child
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            finally:
                queue.release()

    def _start_transaction_under_autocommit(self):
        self._take_write_lock()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_write_lock()
            if self._lock_file is not None and self._lock_pid == os.getpid():
                self._lock_file.close()
            self._lock_file = None
