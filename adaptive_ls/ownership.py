"""A job writes nothing into its folder until the folder is its own, so a refused command leaves a user's folder
byte-identical, ``.hydra/`` and ``train.log`` included.

Hydra saves ``.hydra/`` and opens the job's log file before the task runs, so both are held back:
conf/hydra/default.yaml points ``hydra.output_subdir`` at a staging folder outside the run folder
(``${pending_record:${hydra.runtime.output_dir}}``, this process's own) and the job log's file handler at
:class:`PendingFileHandler`, which keeps the records in memory. :func:`accept` moves the staged ``.hydra`` into place
and writes the held records once the folder is the job's: it was fresh (:func:`is_fresh`), or it holds the run this
job continues (:func:`adaptive_ls.resume.plan_resume` accepts it). A refused job leaves the folder as it was; its
staging folder is removed when the process exits.
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Optional

RECORD = ".hydra"  # where Hydra's record of a job lives once its folder is accepted
LOCK_FILE = "run.lock"  # adaptive_ls.run_lock's: taken before the folder is judged, so it does not count
_accepted: set[str] = set()
_handlers: "weakref.WeakSet[PendingFileHandler]" = weakref.WeakSet()


def _key(folder) -> str:
    return os.path.abspath(str(folder))


def _staging_root() -> Path:
    return Path(tempfile.gettempdir()) / f"adaptive_ls-pending-{os.getuid() if hasattr(os, 'getuid') else 0}"


def pending_record(output_dir: str) -> str:
    """Where Hydra saves this process's ``.hydra`` of the job in ``output_dir`` until the folder is accepted: a
    folder outside it, named by the process and the folder (the same on every call, so Hydra and :func:`accept`
    agree)."""
    digest = hashlib.sha1(_key(output_dir).encode()).hexdigest()[:16]
    return str(_staging_root() / f"{os.getpid()}-{digest}" / RECORD)


@atexit.register
def _remove_staging() -> None:
    """A refused job's staged record goes with its process."""
    root = _staging_root()
    if root.is_dir():
        for folder in root.glob(f"{os.getpid()}-*"):
            shutil.rmtree(folder, ignore_errors=True)


def is_accepted(output_dir) -> bool:
    return _key(output_dir) in _accepted


def is_fresh(output_dir) -> bool:
    """Whether ``output_dir`` holds nothing yet (a missing folder, or one with only the run lock in it): a job may
    record itself there even when it is refused."""
    folder = Path(output_dir)
    return not folder.exists() or all(entry.name == LOCK_FILE for entry in folder.iterdir())


def owns(output_dir) -> bool:
    """Whether the job may write in ``output_dir``: accepted already, or fresh (then accepted now)."""
    if not is_accepted(output_dir) and is_fresh(output_dir):
        accept(output_dir)
    return is_accepted(output_dir)


def accept(output_dir) -> None:
    """The folder is this job's: move Hydra's staged record into place as ``.hydra`` and write the held log records.
    Idempotent."""
    key = _key(output_dir)
    if key in _accepted:
        return
    _accepted.add(key)
    staged = Path(pending_record(key))
    if staged.is_dir():
        _place_record(staged, Path(key) / RECORD)
    for handler in list(_handlers):
        if handler.folder == key:
            handler.write_held()


def _place_record(staged: Path, target: Path) -> None:
    """Copy the staged record beside ``target``, say where it really lives, and swap it in."""
    from omegaconf import OmegaConf

    target.parent.mkdir(parents=True, exist_ok=True)
    incoming = target.with_name(f"{RECORD}.{os.getpid()}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(staged, incoming)
    hydra_yaml = incoming / "hydra.yaml"
    if hydra_yaml.is_file():  # the record names the staging folder as Hydra's output_subdir: name .hydra instead
        saved = OmegaConf.load(hydra_yaml)
        if OmegaConf.select(saved, "hydra.output_subdir", default=None) is not None:
            saved.hydra.output_subdir = RECORD
            OmegaConf.save(saved, hydra_yaml)
    previous = target.with_name(f"{RECORD}.{os.getpid()}.previous")
    if target.exists():
        target.rename(previous)
    incoming.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(staged.parent, ignore_errors=True)


class PendingFileHandler(logging.FileHandler):
    """Hydra's job log file (``<output dir>/<job name>.log``), written only once the folder is accepted: records
    logged before are held in memory and written then; a refused job's are dropped (the console showed them)."""

    def __init__(self, filename, mode: str = "a", encoding: Optional[str] = None, delay: bool = False,
                 errors: Optional[str] = None):
        super().__init__(filename, mode, encoding, delay=True, errors=errors)
        self.folder = _key(Path(self.baseFilename).parent)
        self.held: Optional[list[logging.LogRecord]] = None if self.folder in _accepted else []
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
            return
        record.msg, record.args = record.getMessage(), None  # as it read when logged
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        self.held.append(record)

    def write_held(self) -> None:
        """Write the held records, and every later one as it comes."""
        self.acquire()
        try:
            held, self.held = self.held or [], None
        finally:
            self.release()
        for record in held:
            self.handle(record)
