"""Weights & Biases for every job: one W&B run per job, finished when the job ends, even when it fails.

Lightning's ``WandbLogger`` starts a run lazily and never finishes it, so in a multirun (several jobs in one process)
every job would log into the first job's run. Here :func:`wandb_job` owns the run's life: it starts the run before
anything heavy is built (a job that fails early still shows up, marked failed, with its config), hands it to
Lightning through :func:`lightning_logger`, publishes the job's results at the end (test metrics into the summary, the
noisy-label transition matrix, the test reliability diagram) and finishes it with the job's exit code.

Mode (``logger.wandb.mode``): ``auto`` is online when W&B credentials are available (``WANDB_API_KEY``,
``WANDB_IDENTITY_TOKEN_FILE`` or a ``.netrc`` entry for the W&B host, as ``wandb login`` writes), offline otherwise;
``online``, ``offline`` and ``disabled`` force it. Run files go inside the job's output folder (``<output_dir>/wandb``).

:func:`read_offline_run` reads a run's ``.wandb`` record log back (history, summary, config, group, tags, exit code):
wandb >= 0.18 no longer ships a Python reader for its own files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from adaptive_ls.sweeps import is_global_zero, is_multirun

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"
RUN_ID_FILE = Path("wandb") / "run_id"  # in the job's folder: a resumed job continues the same W&B run

_active: Optional["WandbJob"] = None  # the run of the job in progress in this process


# ---------------------------------------------------------------------------------------------------------------------
# Mode and identity
# ---------------------------------------------------------------------------------------------------------------------


def has_credentials() -> bool:
    """True when wandb would find credentials without prompting: the environment or a .netrc entry for the host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth  # wandb's own lookup (NETRC, ~/.netrc, ~/_netrc)

        return read_netrc_auth(host=host) is not None
    except ImportError:  # an older or newer wandb layout: read ~/.netrc ourselves
        import netrc
        from urllib.parse import urlsplit

        try:
            return netrc.netrc(os.environ.get("NETRC")).authenticators(urlsplit(host).netloc) is not None
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            return False
    except Exception as error:  # a malformed key in .netrc: wandb would fail too, say so and stay offline
        log.warning("W&B credentials found but unusable (%s); logging offline", error)
        return False


def resolve_mode(mode: Optional[str]) -> str:
    """``auto`` → ``online`` with credentials, else ``offline`` (``WANDB_MODE`` in the environment wins over auto)."""
    mode = "auto" if mode is None else str(mode)
    if mode not in MODES:
        raise ValueError(f"logger.wandb.mode={mode!r}: allowed are {', '.join(MODES)}")
    if mode != "auto":
        if mode == "online" and not has_credentials():
            raise ValueError("logger.wandb.mode=online but no W&B credentials were found (WANDB_API_KEY or a .netrc "
                             "entry from `wandb login`). Log in, or use logger.wandb.mode=offline (sync later) or auto")
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_credentials() else "offline"


def sweep_group(folder: os.PathLike | str) -> str:
    """The W&B group of a sweep (or of a single run): its folder's parent and name (``quickstart-2026-01-31_...``)."""
    folder = Path(folder)
    return f"{folder.parent.name}-{folder.name}" if folder.parent.name else folder.name


def _hydra_job() -> tuple[Optional[Any], bool]:
    from hydra.core.hydra_config import HydraConfig

    return (HydraConfig.get(), is_multirun()) if HydraConfig.initialized() else (None, False)


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    """group, job_type, name and tags of this job's W&B run, from ``logger.wandb`` and the job's settings."""
    settings = cfg.logger.wandb
    hydra_cfg, multirun = _hydra_job()
    policy = _policy_name(cfg)
    kind, rate = str(cfg.noise.kind), float(cfg.noise.get("rate", 0.0))
    if settings.get("group"):
        group = str(settings.group)
    elif multirun:
        group = sweep_group(hydra_cfg.sweep.dir)
    else:
        group = sweep_group(cfg.paths.output_dir)
    name = settings.get("name") or f"{policy}-{kind}{rate:g}-seed{cfg.seed}"
    if multirun and not settings.get("name"):
        name = f"{hydra_cfg.job.num}-{name}"
    tags = [policy, kind, f"rate={rate:g}", *[str(t) for t in (settings.get("tags") or [])]]
    return {"group": group, "job_type": str(settings.get("job_type") or "train"), "name": name,
            "tags": list(dict.fromkeys(t[:64] for t in tags))}  # W&B tags: unique, at most 64 characters


def _policy_name(cfg: DictConfig) -> str:
    """The policy's ``name`` (as in results.json), read from its class without building it."""
    from hydra.utils import get_class

    target = str(cfg.smoothing.get("_target_", ""))
    try:
        return str(get_class(target).name)
    except Exception:  # not importable: the error comes soon enough from the job itself
        return target.rsplit(".", 1)[-1] or "none"


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved job config, plus Hydra's choices, overrides and job number (what a W&B filter wants)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    hydra_cfg, _ = _hydra_job()
    if hydra_cfg is not None:
        config["hydra"] = {"choices": OmegaConf.to_container(hydra_cfg.runtime.choices),
                           "overrides": list(hydra_cfg.overrides.task), "job_num": hydra_cfg.job.get("num"),
                           "output_dir": hydra_cfg.runtime.output_dir}
    return config


# ---------------------------------------------------------------------------------------------------------------------
# One run per job
# ---------------------------------------------------------------------------------------------------------------------


def wandb_enabled(cfg: DictConfig) -> bool:
    return bool(cfg.get("logger")) and cfg.logger.get("wandb") is not None


@dataclass
class WandbJob:
    """The W&B run of one job and where its files are."""

    run: Any
    mode: str
    output_dir: Path
    info: dict[str, Any] = field(default_factory=dict)

    def publish(self, cfg: DictConfig) -> None:
        """Test metrics into the summary (the values of results.json), transition matrix and reliability diagram."""
        results_path = self.output_dir / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        self.run.summary.update({k: v for k, v in results.items() if _is_scalar(v)})
        media = {}
        transition = self.output_dir / "noise_transition.csv"
        if transition.is_file():
            media.update(_transition_media(transition, _class_names(cfg), self.output_dir))
        reliability = self.output_dir / "reliability.json"
        if reliability.is_file():
            media.update(_reliability_media(reliability, self.output_dir))
        if media:
            self.run.log(media)

    def finish(self, error: Optional[BaseException]) -> None:
        import wandb

        exit_code, status = 0, None
        if error is not None:
            self.run.summary.update({"status": "failed", "error": f"{type(error).__name__}: {error}"})
            exit_code, status = (255, "interrupted") if isinstance(error, KeyboardInterrupt) else (1, "failed")
        self.run.finish(exit_code=exit_code)
        if wandb.run is self.run:  # finish() clears it; guard against a wandb that does not
            wandb.finish()
        _add_to_results(self.output_dir / "results.json", self.info, status)
        if self.mode == "offline":
            log.info("W&B offline run saved in %s; upload it with: wandb sync %s", self.info["wandb/dir"],
                     self.info["wandb/dir"])


def _resumed_run_id(cfg: DictConfig) -> tuple[bool, Optional[str]]:
    """(may this job write to its folder, the W&B run id to continue). A folder the job will refuse (it holds a
    completed run, or another run's checkpoint) gets no W&B files; a continued run logs into its first W&B run."""
    from adaptive_ls.config import ConfigError, plan_resume

    try:
        plan = plan_resume(cfg)
    except ConfigError:  # the job itself reports this, without touching the folder
        return False, None
    id_file = Path(cfg.paths.output_dir) / RUN_ID_FILE
    return True, (id_file.read_text().strip() or None) if plan is not None and id_file.is_file() else None


def start_run(cfg: DictConfig) -> Optional[WandbJob]:
    """Start this job's W&B run as ``logger.wandb`` says (None when W&B is disabled, on a non-zero rank, or when the
    job's folder belongs to another run)."""
    global _active
    from adaptive_ls.config import config_errors

    settings = cfg.logger.wandb
    with config_errors("logger.wandb"):  # the job's first check: a bad mode fails in one line, before anything runs
        mode = resolve_mode(settings.get("mode", "auto"))
    if mode == "disabled" or not is_global_zero():
        return None
    may_write, previous_id = _resumed_run_id(cfg)
    if not may_write:
        return None
    import wandb

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    identity = job_identity(cfg)
    run = wandb.init(project=settings.get("project") or "adaptive-ls", entity=settings.get("entity"),
                     dir=str(output_dir), mode=mode, config=run_config(cfg), reinit="finish_previous",
                     notes=settings.get("notes"), settings=wandb.Settings(silent=True), id=previous_id,
                     resume="allow" if previous_id else None, **identity)
    (output_dir / RUN_ID_FILE).parent.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_ID_FILE).write_text(run.id)
    run.define_metric("trainer/global_step")  # what Lightning's WandbLogger sets up when it starts a run itself
    run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    info = {"wandb/mode": mode, "wandb/project": run.project, "wandb/entity": settings.get("entity"),
            "wandb/group": identity["group"], "wandb/id": run.id, "wandb/name": identity["name"],
            "wandb/dir": str(Path(run.settings.sync_dir))}
    if mode == "online":
        info["wandb/url"] = run.url
        log.info("W&B run %s: %s", identity["name"], run.url)
    _active = WandbJob(run, mode, output_dir, info)
    return _active


@contextlib.contextmanager
def wandb_job(cfg: DictConfig) -> Iterator[Optional[WandbJob]]:
    """One W&B run around one job (no-op unless ``logger=wandb``): started first, finished last, failed or not."""
    global _active
    if not wandb_enabled(cfg):
        yield None
        return
    job = start_run(cfg)
    try:
        yield job
    except BaseException as error:
        if job is not None:
            with contextlib.suppress(Exception):  # never hide the job's own error behind a logging error
                job.publish(cfg)
            job.finish(error)
        raise
    else:
        if job is not None:
            job.publish(cfg)
            job.finish(None)
    finally:
        _active = None


def lightning_logger(cfg: DictConfig):
    """Lightning's WandbLogger on this job's run (started here if no :func:`wandb_job` is active); None if disabled."""
    from pytorch_lightning.loggers import WandbLogger

    settings = cfg.logger.wandb
    if not is_global_zero():  # other ranks get a logger that never starts a run (its experiment is rank-zero only)
        return WandbLogger(save_dir=str(cfg.paths.output_dir), log_model=False)
    job = _active if _active is not None else start_run(cfg)
    if job is None:
        return None
    return WandbLogger(experiment=job.run, save_dir=str(job.output_dir), log_model=settings.get("log_model", False))


# ---------------------------------------------------------------------------------------------------------------------
# Media
# ---------------------------------------------------------------------------------------------------------------------


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _class_names(cfg: DictConfig) -> Optional[list[str]]:
    try:
        from hydra.utils import get_class

        names = getattr(get_class(cfg.data._target_), "class_names", None)
        return [str(n) for n in names] if names else None
    except Exception:
        return None


def transition_figure(matrix, class_names: Optional[list[str]] = None):
    """Heatmap of P(noisy label = column | true label = row), each cell annotated."""
    import numpy as np

    from adaptive_ls.plots import new_figure

    matrix = np.asarray(matrix, dtype=float)
    k = matrix.shape[0]
    names = class_labels(class_names, k)
    fig = new_figure((0.55 * k + 2.5, 0.55 * k + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if matrix[i, j] >= 0.005:
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > 0.5 else "black")
    long_names = max(len(n) for n in names) > 2
    ax.set_xticks(range(k), names, rotation=45 if long_names else 0, ha="right" if long_names else "center", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("noisy label")
    ax.set_ylabel("true label")
    ax.set_title("Label-noise transition matrix")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def class_labels(class_names: Optional[list[str]], k: int) -> list[str]:
    """The K class names for axes and tables, or the class ids when the names are missing or do not fit."""
    return list(class_names) if class_names and len(class_names) == k else [str(i) for i in range(k)]


def _transition_media(path: Path, class_names: Optional[list[str]], output_dir: Path) -> dict[str, Any]:
    import numpy as np
    import wandb

    from adaptive_ls.plots import save_figure

    matrix = np.atleast_2d(np.loadtxt(path, delimiter=","))
    names = class_labels(class_names, matrix.shape[0])
    table = wandb.Table(columns=["true label", *names],
                        data=[[names[i], *map(float, row)] for i, row in enumerate(matrix)])
    png = save_figure(transition_figure(matrix, names), output_dir / "noise_transition.png")
    return {"noise/transition_matrix": table, "noise/transition_heatmap": wandb.Image(str(png))}


def _reliability_media(path: Path, output_dir: Path) -> dict[str, Any]:
    import wandb

    from adaptive_ls.plots import reliability_diagram, save_figure

    bins = json.loads(path.read_text())
    png = save_figure(reliability_diagram(bins, title="Test reliability"), output_dir / "reliability.png")
    return {"test/reliability_diagram": wandb.Image(str(png))}


def _add_to_results(path: Path, info: dict[str, Any], failed_status: Optional[str]) -> None:
    """Record where the W&B run is in results.json (the report finds the sweep's group there). A job that failed
    before writing results.json gets one with its status, which train.record_failure then completes."""
    from adaptive_ls.train import update_json

    if path.is_file():
        update_json(path, info)
    elif failed_status is not None:
        update_json(path, {"status": failed_status, **info})


# ---------------------------------------------------------------------------------------------------------------------
# Reading an offline run back
# ---------------------------------------------------------------------------------------------------------------------

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
