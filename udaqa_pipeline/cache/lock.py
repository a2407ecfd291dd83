"""One writer per cache (or per shard of a cache): an advisory lock file with the holder's pid/host.

Policy:

- The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a file inside the cache directory, held for the
  whole run. The kernel drops it when the holder exits in any way, kill -9 included, so a lock
  left by a dead process is *stale by construction*: the next writer gets the flock, reads the old
  pid/host from the file, says it is taking over, and rewrites it. No timeout guessing.
- A live holder makes the second writer fail at once with :class:`CacheLockedError` naming the
  file, the holder's pid, host and start time, and what to do.
- The file is never unlinked (unlinking a flocked file lets two processes lock two different
  inodes); an unlocked, leftover lock file is harmless.
- A directory the process cannot write (a read-only mount, another user's cache): the lock file
  cannot be created, and the writer stops with one line naming the directory and the fix. A run
  that writes nothing (a cache reused as it is) takes no lock.
- Network filesystems: Linux NFSv4 maps flock to byte-range locks, which work across hosts. Where
  the filesystem has no locks at all (``ENOLCK``/``EOPNOTSUPP``), the writer refuses to run and says
  so, rather than risk two writers; shards on separate hosts should each write to a local cache
  and be merged with ``udaqa-pipeline cache merge``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from .manifest import CacheError, storage_error


class CacheLockedError(CacheError):
    """Another live process holds the lock."""


class CacheLock:
    """Context manager holding ``path`` locked; ``previous`` is the stale holder's record, if any."""

    def __init__(self, path: str | Path, what: str = "cache") -> None:
        self.path = Path(path)
        self.what = what
        self.fd: int | None = None
        self.previous: dict | None = None

    def acquire(self) -> "CacheLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            err = storage_error(e, self.path, what=self.what)
            if err is None:
                raise
            raise err from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = (
                    f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"
                    if holder else "another process"
                )
                raise CacheLockedError(
                    f"{self.what} {self.path.parent} is being written by {who} (lock {self.path}); wait for it to "
                    f"finish or stop that process. A lock whose holder has died is released by the kernel, so "
                    f"if this message persists the process is alive."
                ) from None
            raise CacheLockedError(
                f"cannot lock {self.path} ({os.strerror(e.errno or 0)}): this filesystem has no file locks; "
                f"write the cache on a local disk (--cache-root) and copy it, or run shards on local disks and "
                f"`udaqa-pipeline cache merge`"
            ) from e
        old = _read(fd)
        self.previous = old or None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # empty file = nobody holds it
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "CacheLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(data) if data else {}
    except (OSError, json.JSONDecodeError):
        return {}


def read_lock(path: str | Path) -> dict | None:
    """The holder record of a lock file if a live process holds it, else ``None``."""
    p = Path(path)
    if not p.exists():
        return None
    fd = os.open(p, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
