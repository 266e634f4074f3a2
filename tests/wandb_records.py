"""Reading an offline W&B run back without uploading it: history, summary, config, group, tags, exit code.

An offline run's ``run-*.wandb`` file is a LevelDB-format log of ``wandb_internal_pb2.Record`` messages; wandb >= 0.18
no longer ships a Python reader for its own files, so the tests check what a job logged with this one.
"""
from __future__ import annotations

import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

# The .wandb file: a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB-log records in 32 KiB blocks:
# each record is checksum (u32, CRC-32 of the type byte then the data), length (u16), type (u8), data; a record that
# does not fit in a block is split FIRST/MIDDLE.../LAST; a block tail shorter than a header is zero padding.
_FILE_HEADER = struct.Struct("<4sHB")
_RECORD_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: os.PathLike | str) -> Iterator[bytes]:
    """The serialised ``wandb_internal_pb2.Record`` messages of a ``run-*.wandb`` file, checksums verified."""
    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER.size:
        return  # created, nothing written yet
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    pos, pending = _FILE_HEADER.size, b""
    while pos < len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _RECORD_HEADER.size:  # padding at the end of a block
            pos += left_in_block
            continue
        if pos + _RECORD_HEADER.size > len(data):
            break
        checksum, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero-filled tail of a file still being written
            break
        payload = data[pos + _RECORD_HEADER.size: pos + _RECORD_HEADER.size + length]
        if len(payload) < length:
            break  # truncated last record (a run still writing or killed mid-write)
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos += _RECORD_HEADER.size + length
        if kind == _FULL:
            yield payload
        elif kind == _FIRST:
            pending = payload
        elif kind == _MIDDLE:
            pending += payload
        elif kind == _LAST:
            yield pending + payload
            pending = b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")


@dataclass
class OfflineRun:
    """What an offline W&B run recorded."""

    path: Path
    id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: Optional[int] = None
    files: list[str] = field(default_factory=list)


def _put(target: dict, item, value) -> None:
    """Store ``value`` under the item's key; a nested key (a logged dict, e.g. an image's metadata) nests."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _pop(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.get(key, {})
    target.pop(keys[-1], None)


def _apply_changes(target: dict, record) -> None:
    """A config or summary record: its updates (JSON values) and removals, applied to ``target``."""
    for item in record.update:
        _put(target, item, json.loads(item.value_json))
    for item in record.remove:
        _pop(target, item)


def _history_value(item):
    if item.value_json:
        return json.loads(item.value_json)
    which = item.WhichOneof("value")
    return None if which in (None, "none") else getattr(item, which)


def read_offline_run(path: os.PathLike | str, wait_s: float = 0.0) -> OfflineRun:
    """Read an offline run folder (``.../wandb/offline-run-*``) or its ``run-*.wandb`` file.

    wandb's service writes the file shortly after ``run.finish()`` returns: ``wait_s`` > 0 re-reads until the run's
    exit record is there (or the time is up), for reading a run this process has just finished.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"{path}: no run-*.wandb file (is this a W&B run folder?)")
        path = files[0]
    deadline = time.monotonic() + wait_s
    while True:
        run = _read_records(path)
        if run.exit_code is not None or time.monotonic() >= deadline:
            return run
        time.sleep(0.05)


def _read_records(path: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun(path=path)
    for payload in iter_records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.project, run.name = r.run_id, r.project, r.display_name
            run.group, run.job_type, run.tags = r.run_group, r.job_type, list(r.tags)
            _apply_changes(run.config, r.config)  # a run record's config: updates only
        elif kind == "config":
            _apply_changes(run.config, record.config)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item, _history_value(item))
            run.history.append(row)
        elif kind == "summary":
            _apply_changes(run.summary, record.summary)
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def offline_runs(folder: os.PathLike | str) -> list[Path]:
    """Every offline run folder under ``folder`` (a job's output folder or a whole sweep)."""
    return sorted(p for p in Path(folder).rglob("offline-run-*") if p.is_dir())
