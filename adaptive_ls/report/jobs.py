"""The jobs of a sweep: finding and reading their folders, one table row per completed job, and the mean over seeds.

A row is named by what the job's results.json says it ran: ``smoothing`` and ``noise`` are the config choices
(``smoothing=negative`` is ``negative``), taken as given. Every other setting that differs between the jobs of a
(policy, noise, rate) cell becomes a key of its own, so only jobs that differ in their seeds alone are averaged.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

# The table's metrics: results.json key -> (title in report.md, scale in report.md); report.csv keeps raw values.
METRICS = {
    "test/acc": ("test acc (%)", 100.0),
    "test/acc_at_best_val": ("test acc, best val (%)", 100.0),
    "val/acc_best": ("best noisy-val acc (%)", 100.0),   # what model selection sees: the noisy validation split
    "test/ece": ("ECE (%)", 100.0),
    "test/ts_ece": ("ECE after TS (%)", 100.0),        # temperature fitted on the noisy validation split
    "test/nts_ece": ("ECE after noise-aware TS (%)", 100.0),
    "test/nll": ("NLL", 1.0),
    "diag/memorized": ("memorised (%)", 100.0),         # of the corrupted training labels, at the last epoch
    "diag/eps_auroc": ("ε AUROC", 1.0),                 # of ε as a detector of the corrupted labels, last epoch
}
KEYS = ["policy", "noise", "rate"]
SETTING = "setting:"  # prefix of the jobs table's setting columns
# Known names first, in this order; any other name follows, alphabetically.
POLICY_ORDER = ["none", "fixed", "negative", "annealed", "adaptive", "alasca", "self_adaptive", "online", "self_distill"]
NOISE_ORDER = ["none", "symmetric", "asymmetric", "pairflip", "instance", "cifar10n", "file"]
STATUS_ORDER = ["completed", "failed", "interrupted", "running", "missing"]
STATUS_TEXT = {  # what a status means when the job left no error message
    "running": "started, not finished: killed, or still running",
    "missing": "no results.json: killed before it started, or still starting",
    "interrupted": "stopped before the end",
}
# results.json keys that describe a job but are not settings: the rate is a key of its own, the rest is measured
# (and differs between seeds by construction)
NOT_SETTINGS = {"noise/rate", "noise/realized_rate", "noise/labels_hash", "noise/num_noisy"}
# settings results.json records besides the policy's and the noise's
RECORDED_SETTINGS = ("data", "model", "precision")
# Settings shown whenever the rows of a table differ in them, not only within a cell: a machine-dependent default
# (precision) can make two otherwise comparable rows differ.
TABLE_SETTINGS = (SETTING + "precision",)
SEED_OVERRIDES = {"seed", "noise_seed"}  # vary on purpose between the jobs averaged together
CHOICE_GROUPS = ("smoothing", "noise")   # their choice names the row; their settings come from results.json


@dataclass
class Job:
    """One job folder of a sweep and what it left behind."""

    dir: Path
    status: str  # completed | failed | interrupted | running (started, not finished) | missing (no results.json)
    results: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def error(self) -> str:
        return str(self.results.get("error", ""))

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.results.get("history") or []

    @property
    def problem(self) -> str:
        """Why the job has no result, in one line ("" for a completed job)."""
        if self.error:
            return " ".join(self.error.split())[:300]  # Hydra's instantiation errors put the cause on the next line
        text = STATUS_TEXT.get(self.status, "")
        if self.status == "interrupted" and (self.dir / "checkpoints" / "last.ckpt").is_file():
            text += "; run again in this folder to continue from checkpoints/last.ckpt"
        return text


# ---------------------------------------------------------------------------------------------------------------------
# Reading the sweep
# ---------------------------------------------------------------------------------------------------------------------


def find_job_dirs(root: Path) -> list[Path]:
    """Folders holding a job: Hydra's ``.hydra`` record or a ``results.json`` (not inside W&B's own folders)."""
    found = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in root.rglob("results.json") if p.is_file()}
    return sorted((d for d in found if "wandb" not in d.relative_to(root).parts),
                  key=lambda d: [int(p) if p.isdigit() else p for p in d.relative_to(root).parts])


def read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def read_job(job_dir: Path) -> Job:
    path = job_dir / "results.json"
    if not path.is_file():
        return Job(job_dir, "missing", {}, read_overrides(job_dir))
    try:
        results = json.loads(path.read_text())
        status = str(results.get("status", "running"))
    except ValueError as error:
        status, results = "failed", {"error": f"unreadable results.json: {error}"}
    return Job(job_dir, status, results, read_overrides(job_dir))


def read_jobs(sweep_dirs: Sequence[Path]) -> list[Job]:
    """Every job under the sweep folders, with its status and results."""
    jobs = []
    for root in sweep_dirs:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such sweep folder")
        jobs += [read_job(d) for d in find_job_dirs(root)]
    return jobs


def job_name(job: Job, roots: Sequence[Path]) -> str:
    """The job's folder relative to the folder above its sweep (``2026-01-01_00-00-00/3``)."""
    for root in roots:
        try:
            return str(job.dir.relative_to(root.parent))
        except ValueError:
            continue
    return str(job.dir)


def status_counts(jobs: Sequence[Job]) -> dict[str, int]:
    """Jobs per status: completed and failed always, any other status when some job has it."""
    counts = {"completed": 0, "failed": 0}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return {s: counts[s] for s in order(counts, STATUS_ORDER)}


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n or status in ("completed", "failed"))


# ---------------------------------------------------------------------------------------------------------------------
# The jobs table
# ---------------------------------------------------------------------------------------------------------------------


def setting_text(value) -> str:
    """A setting as a key: full precision (two tuned ε never merge), "" for None."""
    return "" if value is None else str(value)


def override_value(text: str) -> str:
    """A command-line value as a key: ``false``, ``False`` (how a multirun records it) and ``0.10`` read as the values
    they mean, so one setting typed two ways is one setting."""
    try:
        return setting_text(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def short_value(value) -> str:
    """A setting for display: numbers to 4 significant digits."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def override_settings(overrides: list[str], results: dict[str, Any]) -> dict[str, str]:
    """Settings given on the command line that results.json does not record, as key -> value.

    ``optimizer.lr=0.05`` is ``optimizer.lr``; a policy or noise setting (``smoothing.eps=0.1``) is ``smoothing/eps``
    when results.json lacks it, so a job that did not record its settings is still kept apart from the others.
    """
    settings = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        group, _, param = key.partition(".")
        if key in SEED_OVERRIDES or key.startswith(("hydra.", "hydra/")):
            continue
        if group in CHOICE_GROUPS:
            name = f"{group}/{param.split('.')[0]}"
            if param and not param.startswith("_") and name not in results and name not in NOT_SETTINGS:
                settings[f"{group}/{param}"] = override_value(value)
            continue  # the choice names the row; settings results.json records are read from there
        settings[key] = override_value(value)
    return settings


def _noise_rate(results: dict[str, Any]) -> float:
    """The nominal rate; NaN for label-file noise, which has none (see :func:`_fill_measured_rates`)."""
    rate = results.get("noise/rate")
    return float(rate) if rate is not None else math.nan


def _fill_measured_rates(table: pd.DataFrame) -> None:
    """Noise without a nominal rate (a label file) is placed at its realised rate, averaged over the jobs of the
    same noise settings (so every policy and seed of it shares one rate) and rounded to 4 digits."""
    missing = table["rate"].isna()
    if not missing.any():
        return
    noise_settings = [c for c in table.columns if c.startswith(f"{SETTING}noise/")]
    part = table.loc[missing, ["noise", *noise_settings, "realized_rate"]].fillna({c: "" for c in noise_settings})
    means = part.groupby(["noise", *noise_settings])["realized_rate"].transform("mean")
    table.loc[missing, "rate"] = means.fillna(0.0).round(4)


def jobs_table(jobs: Sequence[Job]) -> pd.DataFrame:
    """One row per completed job: its cell (policy, noise, rate), seeds, settings (``setting:<key>``) and metrics."""
    rows = []
    for job in jobs:
        if job.status != "completed":
            continue
        r = job.results
        row = {"policy": str(r.get("smoothing", "?")), "noise": str(r.get("noise", "?")), "rate": _noise_rate(r),
               "seed": r.get("seed"), "noise_seed": r.get("noise_seed"), "job": str(job.dir),
               "realized_rate": float(r.get("noise/realized_rate", math.nan))}
        for key, value in r.items():
            if (key.startswith(tuple(f"{g}/" for g in CHOICE_GROUPS)) and key not in NOT_SETTINGS) or \
                    key in RECORDED_SETTINGS:
                row[SETTING + key] = setting_text(value)
        for key, value in override_settings(job.overrides, r).items():
            row[SETTING + key] = value
        for metric in METRICS:
            value = r.get(metric)
            row[metric] = float(value) if value is not None else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        _fill_measured_rates(table)
    return table


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation over seeds
# ---------------------------------------------------------------------------------------------------------------------


def varying_settings(table: pd.DataFrame) -> list[str]:
    """Setting columns that take more than one value inside some (policy, noise, rate) cell: keys of the summary."""
    columns = [c for c in table.columns if c.startswith(SETTING)]
    if table.empty or not columns:
        return []
    filled = table[KEYS + columns].fillna({c: "" for c in columns})
    return [c for c in columns if (filled.groupby(KEYS)[c].nunique() > 1).any()
            or (c in TABLE_SETTINGS and filled[c].nunique() > 1)]


def summary_settings(summary: pd.DataFrame) -> list[str]:
    """The setting columns of a summary (the varying settings, without their ``setting:`` prefix)."""
    return [c for c in summary.columns if c not in KEYS and c != "n" and not c.endswith(("_mean", "_std"))]


def order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """The distinct values: the preferred ones in their order, then the others alphabetically."""
    unique = list(dict.fromkeys(values))
    return [v for v in preferred if v in unique] + sorted(v for v in unique if v not in preferred)


def sort_key(column: pd.Series) -> pd.Series:
    """Setting strings that are all numbers (or blank) sort as numbers: ε = 0.05 before 0.5 before 10."""
    if column.dtype != object:
        return column
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if (numbers.notna() | (column == "")).all() else column


def sort_rows(frame: pd.DataFrame, settings: Sequence[str]) -> pd.DataFrame:
    """Rows in report order: noise kind, rate, policy (known ones first), then the settings."""
    frame = frame.assign(policy=pd.Categorical(frame["policy"], order(frame["policy"], POLICY_ORDER), ordered=True),
                         noise=pd.Categorical(frame["noise"], order(frame["noise"], NOISE_ORDER), ordered=True))
    frame = frame.sort_values(["noise", "rate", "policy", *settings], kind="stable", key=sort_key)
    return frame.assign(policy=frame["policy"].astype(str), noise=frame["noise"].astype(str)).reset_index(drop=True)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1; empty for one seed) of every metric per setting, with n seeds."""
    if table.empty:
        return pd.DataFrame(columns=[*KEYS, "n", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")]])
    settings = varying_settings(table)
    table = table.fillna({c: "" for c in settings})
    grouped = table.groupby(KEYS + settings, sort=False)
    summary = grouped.size().rename("n").reset_index()
    for metric in METRICS:
        stats = grouped[metric].agg(["mean", "std"]).reset_index()
        summary[f"{metric}_mean"] = stats["mean"].to_numpy()
        summary[f"{metric}_std"] = stats["std"].to_numpy()
    summary = sort_rows(summary, settings)
    return summary.rename(columns={c: c.removeprefix(SETTING) for c in settings})


def duplicate_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Settings where one (seed, noise_seed) appears more than once: two sweeps of the same thing read together."""
    if table.empty:
        return table
    keys = KEYS + varying_settings(table) + ["seed", "noise_seed"]
    filled = table.copy()
    filled[keys] = filled[keys].fillna("")
    counts = filled.groupby(keys).size()
    return counts[counts > 1].reset_index(name="jobs")


def row_name(row, settings: Sequence[str]) -> str:
    """A summary row's name in plots: the policy, with the settings that tell it apart (``fixed (eps=0.1)``)."""
    extra = ", ".join(f"{s.removeprefix(SETTING).split('/')[-1]}={short_value(row[s])}" for s in settings
                      if str(row[s]) != "")
    return f"{row['policy']} ({extra})" if extra else str(row["policy"])


@dataclass
class SweepReport:
    """What one report read, and the files it wrote."""

    roots: list[Path]
    out: Path
    jobs: list[Job]
    table: pd.DataFrame     # one row per completed job
    summary: pd.DataFrame   # one row per setting: n, mean and std of each metric
    files: dict[str, Path] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    versus: str = ""        # the comparison with a baseline policy's best variant (report.versus), if asked for

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.jobs)
