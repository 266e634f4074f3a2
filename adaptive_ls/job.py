"""One job's life in its folder: the resume plan, results.json, the loggers' runs, and how the job ends.

A :class:`Job` is opened by :func:`adaptive_ls.train.run` for a single run and by the stacked launcher for each
member of a stack, so what a job writes into its folder (results.json from ``running`` to ``completed``, ``failed``
or ``interrupted``; the noisy labels; its W&B run's outcome) is written by this one piece of code either way.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.config import choice_name, config_errors, group_settings, instantiate_group, noise_kind_name
from adaptive_ls.errors import JobInterrupted, OutputDirError
from adaptive_ls.jsonio import read_json, update_json, write_json
from adaptive_ls.loggers import finishing
from adaptive_ls.noise import label_hash
from adaptive_ls.resume import check_resumed_labels, keep_previous_logs, plan_resume
from adaptive_ls.sweeps import is_global_zero

log = logging.getLogger(__name__)


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Mark the run failed in its results.json (keeping what it had measured) so a sweep report can name it; a run
    a signal stopped is marked ``interrupted`` (``preempted`` under submitit), with the signal and how to continue.

    Not for an OutputDirError: that folder belongs to another run, and its results.json stays as it is."""
    from hydra.core.hydra_config import HydraConfig

    from adaptive_ls.sweeps import continue_command

    if isinstance(error, OutputDirError) or not is_global_zero():
        return
    record = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    if isinstance(error, JobInterrupted):  # resumable: say how
        how = ("submitit requeues it" if error.requeue is not None else
               f"run the same command again ({continue_command()})" if HydraConfig.initialized() else "run it again")
        record = {"status": error.status, "signal": error.signal.name,
                  "error": f"JobInterrupted: stopped by {error.signal.name}; {how} to continue from "
                           f"the last finished epoch's checkpoint (checkpoints/last.ckpt, or a stack's "
                           f"stack-last.ckpt)"}
    update_json(Path(cfg.paths.output_dir) / "results.json",
                {**record, "seed": cfg.get("seed"), "noise_seed": cfg.get("noise_seed")})


class Job:
    """A job in its folder, from its first check to its end.

    Opening it decides what the folder is for (:func:`~adaptive_ls.resume.plan_resume` refuses one that holds
    another run), starts its loggers (a W&B run shows up from here on) and logs its config to them. :meth:`load`
    loads its data and writes results.json with status ``running``; :meth:`complete` and :meth:`fail` end it, once,
    writing its results.json and ending its loggers' runs with the job's outcome.
    """

    def __init__(self, cfg: DictConfig, datamodule):
        self.cfg, self.datamodule = cfg, datamodule
        self.output_dir, self.writes, self.start = Path(cfg.paths.output_dir), is_global_zero(), time.time()
        self.plan = plan_resume(cfg)  # None: a fresh run; refuses a folder that holds another run
        path = self.output_dir / "results.json"
        self.previous = read_json(path) if path.is_file() else {}  # the folder's record before this attempt
        self.results = initial_results(cfg, datamodule)
        self.loggers = list(instantiate_group(cfg, "logger").values())  # a W&B run starts here
        self.ended = False
        if self.plan is not None and self.writes:
            keep_previous_logs(self.loggers, self.plan.epoch)
        with self.ending_on_error():
            for logger in self.loggers:
                logger.log_hyperparams(job_config(cfg))

    @property
    def results_path(self) -> Path:
        return self.output_dir / "results.json"

    def ending_on_error(self):
        """A context in which an error ends the job's logger runs with it (then raised on)."""
        return _EndOnError(self)

    def load(self) -> None:
        """Load the job's data (the checks that need it), refuse other noisy labels than a continued run's, write
        the noisy labels and results.json (status running: a killed job shows up as such)."""
        with self.ending_on_error():
            with config_errors("data", self.cfg):
                self.datamodule.setup("fit")
            self.results.update(noise_summary(self.datamodule))
            if self.plan is not None:
                check_resumed_labels(self.plan, self.results["noise/labels_hash"])
                self.results.update({"resumed_from_epoch": self.plan.epoch,
                                     "checkpoint/resumed_from": str(self.plan.checkpoint)})
            if self.writes:
                write_noise_artifacts(self.output_dir, self.datamodule)
                self.write()

    def write(self) -> None:
        if self.writes:
            write_json(self.results_path, self.results)

    def complete(self) -> dict[str, Any]:
        """The job completed: results.json says so (with this attempt's wall time) and its logger runs end."""
        self.results.update(status="completed", wall_time_s=time.time() - self.start)
        self.write()
        self._end(None)
        log.info("results: test/acc %.4f  test/ece %.4f  test/nll %.4f  (%s)",
                 *(self.results.get(k, float("nan")) for k in ("test/acc", "test/ece", "test/nll")), self.results_path)
        return self.results

    def fail(self, error: BaseException) -> dict[str, Any]:
        """The job failed or was interrupted: what it had measured and why it stopped go into results.json
        (:func:`record_failure`), and its logger runs end with that outcome. Once."""
        if self.ended:
            return self.results
        self.write()
        record_failure(self.cfg, error)
        if self.writes and self.results_path.is_file():
            self.results.update(read_json(self.results_path))
        self._end(error)
        return self.results

    def close(self) -> None:
        """End the loggers' runs without an outcome: the job goes on elsewhere (a stack's member run alone), and its
        loggers continue these runs."""
        self._end(None)
        self.ended = False

    def restore_previous(self) -> dict[str, Any]:
        """Keep the record the folder held before this attempt (a member that had failed in an interrupted stack)."""
        self.results = dict(self.previous)
        self.write()
        self._end(RuntimeError(self.results.get("error", "failed")))
        return self.results

    def _end(self, error: Optional[BaseException]) -> None:
        """End the loggers' runs once (:func:`~adaptive_ls.loggers.finishing`), with ``error`` as the outcome."""
        if self.ended:
            return
        self.ended = True
        try:
            with finishing(self.loggers, self.results, self.results_path):
                if error is not None:
                    raise error
        except BaseException as raised:
            if raised is not error:
                raise


class _EndOnError:
    def __init__(self, job: Job):
        self.job = job

    def __enter__(self):
        return self.job

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None:
            self.job._end(error)
        return False


def initial_results(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """What results.json says of a job before it trains: its status (running), seeds, folder and settings."""
    return {
        "status": "running", "seed": cfg.seed, "noise_seed": cfg.noise_seed,
        "output_dir": str(Path(cfg.paths.output_dir)),
        "smoothing": choice_name(cfg, "smoothing"), **group_settings(cfg, "smoothing"),
        "noise": noise_kind_name(cfg), "noise_setting": choice_name(cfg, "noise"), **group_settings(cfg, "noise"),
        "data": type(datamodule).__name__, "model": cfg.model._target_.rsplit(".", 1)[-1]}


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved job config, plus Hydra's choices, overrides and job number (what a W&B filter wants)."""
    from hydra.core.hydra_config import HydraConfig

    config = OmegaConf.to_container(cfg, resolve=True)
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        config["hydra"] = {"choices": OmegaConf.to_container(hydra_cfg.runtime.choices),
                           "overrides": list(hydra_cfg.overrides.task), "job_num": hydra_cfg.job.get("num"),
                           "output_dir": hydra_cfg.runtime.output_dir}
    return config


def noise_summary(datamodule) -> dict[str, Any]:
    """What the noise did: the realised rate, how many labels, and a fingerprint of the noisy labels."""
    noisy = datamodule.noisy_labels.numpy()
    summary = {"noise/realized_rate": datamodule.realized_noise_rate, "noise/labels_hash": label_hash(noisy),
               "noise/num_noisy": int(datamodule.is_noisy.sum())}
    log.info("noise: realised rate %.4f (%d of %d labels), hash %s", summary["noise/realized_rate"],
             summary["noise/num_noisy"], len(noisy), summary["noise/labels_hash"])
    return summary


def write_noise_artifacts(output_dir: Path, datamodule) -> None:
    """The noisy labels the run trains on, and their empirical transition matrix, beside its results."""
    output_dir.mkdir(parents=True, exist_ok=True)
    np.save(output_dir / "noisy_labels.npy", datamodule.noisy_labels.numpy())
    np.savetxt(output_dir / "noise_transition.csv", datamodule.transition_matrix(), delimiter=",", fmt="%.6f")
