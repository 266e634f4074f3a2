"""Weights & Biases for every job: Lightning's ``WandbLogger``, one run per job, in the job's folder.

:class:`JobWandbLogger` is built from ``conf/logger/wandb.yaml`` like any Lightning logger. It starts its run when it
is built, before the data loads, so a job that fails early still shows up with its config; it names and groups the
run after the job and its sweep; it keeps the run id in ``<job>/wandb/run_id`` so that a resumed job continues its
run; and :func:`finishing` finishes it once, with the job's exit code, whether the job succeeded or not (a multirun
runs several jobs in one process, and Lightning's logger never finishes its run by itself). Runs of jobs trained
together (``hydra/launcher=stacked``) are open side by side, each its own.

Mode (``logger.wandb.mode``): ``auto`` is online when W&B credentials are available (``WANDB_API_KEY``,
``WANDB_IDENTITY_TOKEN_FILE`` or a ``.netrc`` entry for the W&B host, as ``wandb login`` writes), offline otherwise;
``online``, ``offline`` and ``disabled`` force it.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence, runtime_checkable

from pytorch_lightning.loggers import WandbLogger

from adaptive_ls.errors import SettingError
from adaptive_ls.jsonio import update_json
from adaptive_ls.sweeps import is_global_zero, is_multirun

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"
RUN_ID_FILE = Path("wandb") / "run_id"  # in the job's folder: a resumed job continues the same W&B run


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
        raise SettingError(f"mode={mode!r}: allowed are {', '.join(MODES)}")
    if mode != "auto":
        if mode == "online" and not has_credentials():
            raise SettingError("mode=online but no W&B credentials were found (WANDB_API_KEY or a .netrc entry from "
                               "`wandb login`). Log in, or use logger.wandb.mode=offline (sync later) or auto")
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


@runtime_checkable
class JobLogger(Protocol):
    """A logger whose run lives as long as the job: :func:`finishing` ends it with the job's outcome."""

    def finish_job(self, results: dict[str, Any], error: Optional[BaseException]) -> dict[str, Any]:
        """End the run; return what results.json should record about it."""


class JobWandbLogger(WandbLogger):
    """Lightning's WandbLogger on this job's own W&B run.

    Args:
        save_dir: the job's folder; run files go to ``<save_dir>/wandb``.
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled`` (see the module docstring).
        group: null: the sweep's folder, so all jobs of a multirun share it (a single run: its own folder).
        name: null: ``<job number>-<policy>-<noise><rate>-seed<seed>``.
        tags: extra tags after the policy, the noise and ``rate=<rate>``.
        policy, noise, rate, seed: what the job is, for the default name and tags.
        Any other argument goes to ``wandb.init`` through WandbLogger.
    """

    def __init__(self, save_dir: str, mode: str = "auto", project: str = "adaptive-ls", entity: Optional[str] = None,
                 group: Optional[str] = None, job_type: str = "train", name: Optional[str] = None,
                 tags: Sequence[str] = (), notes: Optional[str] = None, log_model: bool = False,
                 policy: str = "none", noise: str = "none", rate: Optional[float] = None, seed: int = 0, **kwargs):
        import wandb

        self.mode, self.job_dir = resolve_mode(mode), Path(save_dir)
        hydra_cfg = _hydra_config()
        multirun = hydra_cfg is not None and is_multirun()
        rate_text = "" if rate is None else f"{float(rate):g}"
        if not name:
            name = f"{policy}-{noise}{rate_text}-seed{seed}"
            if multirun:
                name = f"{hydra_cfg.job.num}-{name}"
        group = str(group) if group else sweep_group(hydra_cfg.sweep.dir if multirun else self.job_dir)
        all_tags = [policy, noise, *([f"rate={rate_text}"] if rate_text else []), *map(str, tags)]
        id_file = self.job_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() or None if id_file.is_file() else None
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in inspect.signature(WandbLogger).parameters}
        init = dict(name=name, project=project, dir=str(self.job_dir), id=run_id, resume="allow", entity=entity,
                    group=group, job_type=job_type, notes=notes, mode=self.mode,
                    tags=list(dict.fromkeys(t[:64] for t in all_tags)),  # W&B tags: unique, <= 64 characters
                    reinit="create_new", settings=wandb.Settings(silent=True), **kwargs)
        # The run starts now, so a job that fails from here on shows up, marked failed. It is started here and handed
        # to Lightning (its public ``experiment`` argument): while another job's run is open (a stack's members log
        # side by side) Lightning's logger would take that run over instead of starting its own.
        run = start_run(init) if self.mode != "disabled" and is_global_zero() else None
        super().__init__(experiment=run, save_dir=str(self.job_dir), log_model=log_model, **own,
                         **{k: v for k, v in init.items() if k not in ("dir", "resume")})
        self.info: dict[str, Any] = {}
        if run is not None:
            self._record(run, entity)

    def _record(self, run, entity: Optional[str]) -> None:
        """Keep the run id for a resumed job, and what results.json says about the run."""
        id_file = self.job_dir / RUN_ID_FILE
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run.id)
        self.info = {"wandb/mode": self.mode, "wandb/project": run.project, "wandb/entity": entity,
                     "wandb/group": run.group, "wandb/id": run.id, "wandb/name": run.name,
                     "wandb/dir": str(Path(run.settings.sync_dir))}
        if self.mode == "online":
            self.info["wandb/url"] = run.url
            log.info("W&B run %s: %s", run.name, run.url)

    def finish_job(self, results: dict[str, Any], error: Optional[BaseException]) -> dict[str, Any]:
        """The job's results into the run's summary, then finish the run with the job's exit code."""
        if not self.info:  # disabled, or not the process that logs
            return {}
        summary = {k: v for k, v in results.items() if v is None or isinstance(v, (bool, int, float, str))}
        exit_code = 0
        if error is not None:  # a job stopped by a signal says so: status interrupted, exit code 128 + signal
            summary.update(status=getattr(error, "status", "failed"), error=f"{type(error).__name__}: {error}")
            exit_code = getattr(error, "exit_code", 255 if isinstance(error, KeyboardInterrupt) else 1)
        run = self.experiment
        run.summary.update(summary)
        run.finish(exit_code=exit_code)
        if self.mode == "offline":
            log.info("W&B offline run saved in %s; upload it with: wandb sync %s", self.info["wandb/dir"],
                     self.info["wandb/dir"])
        return self.info


def start_run(init: dict[str, Any]):
    """``wandb.init(**init)`` with Lightning's x-axis for every metric, as Lightning's WandbLogger sets it up."""
    import wandb

    run = wandb.init(**init)
    if not init.get("sync_tensorboard"):
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    return run


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


@contextlib.contextmanager
def finishing(loggers: Sequence[Any], results: dict[str, Any], results_path: Path) -> Iterator[None]:
    """The one place a job's logger runs end: with the job's exit code, after the job, failed or not. What each run
    records about itself (``wandb/*``) goes into ``results`` and the job's results.json."""
    error: Optional[BaseException] = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        for logger in loggers:
            if not isinstance(logger, JobLogger):
                continue
            try:
                info = logger.finish_job(results, error)
            except Exception:
                if error is None:
                    raise
                log.exception("could not finish the logger's run")  # never hide the job's own error behind it
                continue
            results.update(info)
            if info and is_global_zero() and (results_path.is_file() or error is not None):
                update_json(results_path, info if results_path.is_file() else {"status": "failed", **info})
