"""One live process per run folder: an exclusive lock on ``<output dir>/run.lock``, held for the whole job.

Two processes in one folder would overwrite each other's checkpoints and results, so the second is refused. The
lock is a ``flock(2)`` on the open file: the OS releases it when its holder dies, SIGKILL included, so a killed
job's rerun takes the folder over. The file names the holder (pid and host) for the refusal message.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from adaptive_ls.errors import OutputDirError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_held: dict[str, int] = {}  # folder -> descriptor of each lock this process holds


def _close_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) shares the lock's open file: closing its copy keeps a worker that
    outlives a killed parent from holding the folder."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def holder(path: Path, wait_s: float = 1.0) -> str:
    """``pid N on host H`` as the holder wrote it (it writes just after locking: wait a moment for it)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = json.loads(path.read_text())
            return f"pid {info['pid']} on {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "pid unknown"
            time.sleep(0.05)


@contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir``'s lock while the body runs; raise :class:`OutputDirError` at once (before anything is
    written there) when another live process holds it."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputDirError(f"{output_dir} is in use by another live run ({holder(path)}): wait for it to end or "
                             f"stop it, or set hydra.run.dir to a new folder") from None
    except OSError as error:  # a file system without locks (e.g. Lustre mounted without flock): run unguarded
        os.close(fd)
        log.warning("cannot lock %s (%s): nothing stops a second process from using this folder", path, error)
        fd = None
    if fd is None:
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
        _held[str(output_dir)] = fd
        yield
    finally:
        _held.pop(str(output_dir), None)
        os.ftruncate(fd, 0)  # an empty file: held by no one
        os.close(fd)  # releases the lock
