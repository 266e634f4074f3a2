"""The rules for reusing a run's folder, and what a checkpoint carries so that a run continues exactly.

A folder is never reused silently (:func:`plan_resume`): one holding an interrupted run (``checkpoints/last.ckpt``)
continues it when the settings are the same; one holding a completed run is refused unless ``resume=true``. The
checkpoint carries the resolved config, the noisy labels' hash and the RNG states (:class:`RunState`); each is
written atomically (:class:`AtomicCheckpointIO`), and an unreadable ``last.ckpt`` falls back to the newest readable
checkpoint of the run (:func:`newest_readable`).
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO

from adaptive_ls.errors import ConfigError, OutputDirError, RunCompleted, one_line
from adaptive_ls.ownership import accept

log = logging.getLogger(__name__)

# Settings that may differ between an interrupted run and its continuation: they decide where things are written,
# what is recorded and watched, not what is computed. Any other difference refuses the resume (see plan_resume).
RESUME_MAY_CHANGE = (
    "resume",
    "paths",
    "logger",
    "callbacks",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    # where the data lives (resolved from paths.data_dir): a moved dataset is the same dataset, and the noisy
    # labels' hash, checked on resume, catches a different one
    "data.root",
    "data.cache_dir",
    "noise.path",
    "data.noise.path",
)
RESUME_CHOICES = ("auto", True, False)
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
CHECKPOINT_KEY = "adaptive_ls"  # the checkpoint entry holding the run's config, label hash and RNG states


@dataclass(frozen=True)
class ResumePlan:
    """Continue the run in the output folder from ``checkpoint``, whose noisy labels hash to ``labels_hash``."""

    checkpoint: Path
    labels_hash: Optional[str]
    epoch: int


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _relocated(saved: dict, current: dict) -> dict:
    """``saved`` as if its run folder had always been ``current``'s: a moved or copied run folder is the same run
    (``trainer.default_root_dir``, checkpoint folders and the like follow it)."""
    old = str((saved.get("paths") or {}).get("output_dir") or "")
    new = str((current.get("paths") or {}).get("output_dir") or "")
    if not old or not new or old == new:
        return saved

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, str) and (value == old or value.startswith(old.rstrip(os.sep) + os.sep)):
            return new + value[len(old):]
        return value

    return move(saved)


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs, except those in RESUME_MAY_CHANGE."""
    old, new = _flat(_relocated(saved, current)), _flat(current)

    def may_change(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)

    def show(flat: dict, key: str) -> str:
        return repr(flat[key]) if key in flat else "(unset)"

    return [f"{key}: {show(old, key)} -> {show(new, key)}" for key in sorted(old.keys() | new.keys())
            if not may_change(key) and (key not in old or key not in new or old[key] != new[key])]


def read_run_state(checkpoint: Path) -> dict:
    """The run's own entry of a checkpoint (config, label hash, RNG states), and the epoch it was saved at."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # an empty, truncated or foreign file: say which, do not guess
        raise OutputDirError(f"cannot continue from {checkpoint}: {checkpoint_problem(checkpoint, error)}; set "
                             f"hydra.run.dir to a new folder to start afresh") from error
    return {**state.get(CHECKPOINT_KEY, {}), "epoch": int(state.get("epoch", -1))}


def checkpoint_problem(path: Path, error: BaseException) -> str:
    """What is wrong with a checkpoint torch cannot load, in a user's words (torch's own message kept after it)."""
    size = path.stat().st_size if path.is_file() else None
    if size == 0:
        return "the file is empty (0 bytes): it was never written"
    text = one_line(error)
    if any(s in text for s in ("central directory", "failed reading zip archive", "Ran out of input", "EOF")):
        return f"the file is truncated or corrupt ({size} bytes, not a whole torch checkpoint: {text})"
    return f"not a checkpoint torch can read ({type(error).__name__}: {text})"


def newest_readable(last: Path) -> tuple[Path, dict]:
    """``last`` and its run state; when it is unreadable (e.g. truncated), the readable checkpoint of the run beside
    it saved at the latest epoch (a best checkpoint holds the same state as last.ckpt of its epoch). Raises
    ``last``'s OutputDirError when none is readable."""
    try:
        return last, read_run_state(last)
    except OutputDirError as unreadable:
        error = unreadable
    readable = []
    for path in sorted(set(last.parent.glob("*.ckpt")) - {last}):
        try:
            state = read_run_state(path)
        except OutputDirError:
            continue
        if "config" in state:  # a checkpoint of this package's runs
            readable.append((state["epoch"], path.name, path, state))
    if not readable:
        raise error
    epoch, _, path, state = max(readable)
    cause = error.__cause__
    log.warning("%s is unreadable (%s: %s); continuing from %s, the newest readable checkpoint (epoch %d)", last,
                type(cause).__name__, one_line(cause), path.name, epoch)
    return path, state


RUN_STATUSES = ("running", "completed", "failed", "interrupted", "preempted")  # what this package's results.json say


def read_run_results(path: Path) -> dict:
    """The results.json of the run in a folder ({} when there is none). One this package did not write, or cannot
    read, is refused (:class:`OutputDirError` naming it): it is the user's, never replaced."""
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise OutputDirError(f"{path} cannot be read ({type(error).__name__}: {one_line(error)}), so it may be "
                             f"another program's: move it away, or set hydra.run.dir to a new folder") from None
    if not isinstance(results, dict) or results.get("status") not in RUN_STATUSES:
        raise OutputDirError(f"{path} was not written by adaptive_ls (no run status in it): move it away, or set "
                             f"hydra.run.dir to a new folder")
    return results


def plan_resume(cfg: DictConfig) -> Optional[ResumePlan]:
    """Decide what this run does with its output folder: start fresh (None) or continue the run found there.

    ``resume=auto`` (default): an interrupted run (``checkpoints/last.ckpt``, results.json not completed) continues
    when its settings are the same (else refused, naming the keys that differ); a completed run is refused.
    ``resume=true``: a checkpoint must be there; a completed run is reloaded from it and tested again.
    ``resume=false``: start fresh, and refuse a folder that holds a previous run's checkpoint.
    A results.json this package did not write, or cannot read, is refused (:func:`read_run_results`).
    An unreadable ``last.ckpt`` continues from the newest readable checkpoint of the run (:func:`newest_readable`).
    A folder with neither a checkpoint nor a completed results.json (a run that failed before its first epoch
    ended) starts fresh. Raises :class:`OutputDirError` for a refusal; it writes nothing. Once the folder is
    accepted, Hydra's record of the job and its log reach it (:func:`adaptive_ls.ownership.accept`).
    """
    output_dir = Path(cfg.paths.output_dir)
    resume = cfg.get("resume", "auto")
    results_path, last = output_dir / "results.json", output_dir / LAST_CHECKPOINT
    results = read_run_results(results_path)
    if results.get("status") == "completed" and resume is not True:
        raise RunCompleted(
            f"paths.output_dir={output_dir} already holds a completed run (results.json): set hydra.run.dir to a new "
            f"folder (leave it out for a fresh timestamped one), or resume=true to reload and re-test its last "
            f"checkpoint", results)
    if not last.is_file():
        if resume is True:
            raise ConfigError(f"resume=true but there is no checkpoint to continue from ({last} does not exist); "
                              f"leave resume=auto to start fresh")
        accept(output_dir)
        return None
    if resume is False:
        raise OutputDirError(
            f"resume=false but paths.output_dir={output_dir} holds an interrupted run ({last}): leave resume=auto to "
            f"continue it, or set hydra.run.dir to a new folder")
    checkpoint, state = newest_readable(last)
    if "config" not in state:
        raise OutputDirError(f"{checkpoint} was not written by adaptive_ls (no '{CHECKPOINT_KEY}' entry), so its "
                             f"settings cannot be checked; set hydra.run.dir to a new folder")
    differences = config_differences(state["config"], OmegaConf.to_container(cfg, resolve=True))
    if differences:
        raise OutputDirError(
            f"paths.output_dir={output_dir} holds an interrupted run with other settings ({'; '.join(differences)}): "
            f"re-run with its settings to continue it, or set hydra.run.dir to a new folder")
    accept(output_dir)
    return ResumePlan(checkpoint, state.get("labels_hash"), state["epoch"])


def check_resumed_labels(plan: ResumePlan, labels_hash: str) -> None:
    """Refuse to continue a run on other noisy labels than it was trained on (e.g. a changed label file)."""
    if plan.labels_hash is not None and plan.labels_hash != labels_hash:
        raise OutputDirError(
            f"the noisy labels (hash {labels_hash}) differ from those the interrupted run in "
            f"{plan.checkpoint.parent.parent} was trained on (hash {plan.labels_hash}, see its noisy_labels.npy): "
            f"check noise.* and noise_seed, or set hydra.run.dir to a new folder")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, fsyncs it and renames it over the old one: a job killed
    mid-write leaves the previous checkpoint whole, never a truncated one. Remote paths (``s3://``...) are left to
    Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        from fsspec.implementations.local import LocalFileSystem
        from lightning_fabric.utilities.cloud_io import get_filesystem

        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer (one live run per folder)
            stale.unlink(missing_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut after it keeps the new file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def keep_previous_logs(loggers: list, epoch: int) -> None:
    """Lightning's CSVLogger deletes the metrics.csv it finds; a resumed run keeps the interrupted attempt's as
    ``metrics.until-epoch<E>.csv`` beside the continuation's (results.json's history holds every epoch)."""
    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        metrics = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if metrics is not None and metrics.is_file():
            metrics.replace(metrics.with_name(f"metrics.until-epoch{epoch:03d}.csv"))


class RunState(pl.Callback):
    """What a checkpoint needs beyond Lightning's own to continue a run exactly, and to refuse a wrong one.

    Saves the resolved config and the noisy labels' hash (checked by :func:`plan_resume` before anything is loaded)
    and the RNG states (so layers that draw from the global generator, e.g. dropout, continue the same stream; data
    order and augmentation are seeded per epoch by the data module).
    """

    per_member = True

    def __init__(self, config: dict, labels_hash: Optional[str]):
        self.config, self.labels_hash = config, labels_hash
        self.labels_hash_per_rank = [labels_hash]

    def on_fit_start(self, trainer, pl_module):
        """Under DDP, check that every process made the same noisy labels (they are drawn from noise_seed alone)."""
        if trainer.world_size > 1:
            import torch.distributed as dist

            self.labels_hash_per_rank = [None] * trainer.world_size
            dist.all_gather_object(self.labels_hash_per_rank, self.labels_hash)
            if len(set(self.labels_hash_per_rank)) > 1:
                raise RuntimeError(f"the processes made different noisy labels (hashes by rank: "
                                   f"{self.labels_hash_per_rank}); they must all use the same noise settings and data")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        name, keys, pos, has_gauss, gauss = np.random.get_state()  # as plain values: weights_only loading accepts them
        rng = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
               "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[CHECKPOINT_KEY] = {"config": self.config, "labels_hash": self.labels_hash, "rng": rng}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        rng = checkpoint.get(CHECKPOINT_KEY, {}).get("rng")
        if rng is None or trainer.state.fn != "fit":
            return
        torch.set_rng_state(rng["torch"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
