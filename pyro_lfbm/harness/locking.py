"""Runners started side by side (several table or grid commands sharing one ``--out``): one
locking design for all of them, ``flock`` on a lock file that is removed on release.

* :func:`locked`: wait for an exclusive lock (e.g. while one runner rewrites a shared table or
  report), so that runners do not overwrite each other's rows.
* :func:`run_claim`: claim one run without waiting; a runner that does not get the claim skips the
  run instead of training it a second time into the same checkpoint (and a single run started twice,
  :func:`pyro_lfbm.harness.cli.claim`, refuses to start). :func:`claim_holder` says who holds it.

The system releases a ``flock`` when its process dies, so a killed runner never leaves a stale lock
or claim behind; the files are removed on release (while still locked), and a runner that locked a
file the previous holder had just removed opens the new one instead.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["claim_holder", "locked", "run_claim"]


def _open_locked(path: Path, blocking: bool):
    """Open ``path`` (created if missing) and take an exclusive ``flock`` on it.

    :returns: the open file, or ``None`` when ``blocking`` is false and another process holds it.
    """
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()  # the holder removed it while we waited: lock the new one


def _release(handle, path: Path) -> None:
    try:
        os.unlink(path)  # while still holding the lock: no one can take the old file after this
    except FileNotFoundError:
        pass
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def locked(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created, and removed on release) for the block;
    waits while another process holds it. The folder must exist."""
    lock_path = Path(lock_path)
    handle = _open_locked(lock_path, blocking=True)
    try:
        yield
    finally:
        _release(handle, lock_path)


@contextmanager
def run_claim(claim_path: str | os.PathLike) -> Iterator[bool]:
    """Claim one run for this process while the block runs; yields False if another process holds it.

    The claim is a non-blocking ``flock`` on ``claim_path`` (its folder is created when missing):
    released, and the file removed, when the block ends, and released by the system when the process
    dies. While held, the file names its holder (:func:`claim_holder`).
    """
    claim_path = Path(claim_path)
    claim_path.parent.mkdir(parents=True, exist_ok=True)
    handle: Optional[object] = _open_locked(claim_path, blocking=False)
    if handle is None:
        yield False
        return
    try:
        handle.truncate(0)  # a dead holder's line goes
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        handle.flush()
        yield True
    finally:
        _release(handle, claim_path)


def claim_holder(claim_path: str | os.PathLike) -> Optional[str]:
    """Who holds the claim ``claim_path``, as its holder wrote it (e.g. ``"process 4242 on node7,
    since 2026-01-02 10:00:00 UTC"``), or None when the file is gone or not yet written."""
    try:
        text = Path(claim_path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text.splitlines()[0] if text else None
