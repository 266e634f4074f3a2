"""Sweep report: ``adaptive-ls-report SWEEP_DIR [SWEEP_DIR ...]`` (or ``python -m adaptive_ls.report``).

Reads every job's ``results.json`` under the sweep folder(s) and writes, into the first one (or ``--out``):

- ``report.csv`` and ``report.md``: mean ± sample standard deviation over seeds for each (policy, noise kind, rate)
  of the test accuracy (final and at the best noisy-validation epoch), ECE and NLL, with the number of seeds; failed
  and missing jobs listed by name.
- PNG plots: test accuracy and ECE vs noise rate (a line per policy, a panel per noise kind), ε over training per
  policy, reliability diagrams side by side at one noise setting, and memorisation of the noisy labels over training
  when the jobs logged it (``diag/memorized``, ``diag/corrected``).

Settings other than the seed that vary within a (policy, noise kind, rate) cell (a tuned ε, a swept learning rate)
become extra key columns, so different settings are never averaged together. ``--wandb`` logs the table and plots to
a W&B run in the sweep's group (``job_type=report``) and, online, publishes a W&B Report built from them.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("adaptive_ls.report")

# The table's metrics: results.json key -> (title in report.md, scale in report.md); report.csv keeps raw values.
METRICS = {
    "test/acc": ("test acc (%)", 100.0),
    "test/acc_at_best_val": ("test acc, best val (%)", 100.0),
    "test/ece": ("ECE (%)", 100.0),
    "test/nll": ("NLL", 1.0),
}
KEYS = ["policy", "noise", "rate"]
POLICY_ORDER = ["none", "fixed", "annealed", "adaptive"]  # then any other policy, alphabetically
NOISE_ORDER = ["none", "symmetric", "asymmetric", "pairflip"]
POLICY_COLORS = {"none": "black", "fixed": "tab:blue", "annealed": "tab:orange", "adaptive": "tab:green"}
OTHER_COLORS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
# results.json keys that describe a job but are not settings (derived, or identical for every seed by construction)
NOT_SETTINGS = {"noise/kind", "noise/rate", "noise/realized_rate", "noise/labels_hash", "noise/num_noisy"}
# overrides that are not settings of a cell: the seeds, and keys results.json already reports
SEED_OVERRIDES = {"seed", "noise_seed"}
PLOTS = {
    "accuracy": "accuracy_vs_noise.png",
    "ece": "ece_vs_noise.png",
    "eps": "eps_over_training.png",
    "reliability": "reliability.png",
    "memorization": "memorization.png",
}


# ---------------------------------------------------------------------------------------------------------------------
# Reading the sweep
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One job folder of a sweep and what it left behind."""

    dir: Path
    status: str                     # completed | failed | running (started, never finished) | missing (no results.json)
    results: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    @property
    def error(self) -> str:
        return str(self.results.get("error", ""))

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.results.get("history") or []


def _job_dirs(root: Path) -> list[Path]:
    """Folders holding a job: Hydra's ``.hydra`` record or a ``results.json`` (not inside W&B's own folders)."""
    found = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in root.rglob("results.json") if p.is_file()}
    return sorted((d for d in found if "wandb" not in d.relative_to(root).parts),
                  key=lambda d: [int(p) if p.isdigit() else p for p in d.relative_to(root).parts])


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def read_jobs(sweep_dirs: Sequence[Path]) -> list[Job]:
    """Every job under the sweep folders, with its status and results."""
    jobs = []
    for root in sweep_dirs:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such sweep folder")
        for job_dir in _job_dirs(root):
            path = job_dir / "results.json"
            results: dict[str, Any] = {}
            if path.is_file():
                try:
                    results = json.loads(path.read_text())
                    status = str(results.get("status", "running"))
                except ValueError as error:
                    status, results = "failed", {"error": f"unreadable results.json: {error}"}
            else:
                status = "missing"
            jobs.append(Job(job_dir, status, results, _read_overrides(job_dir)))
    return jobs


def _override_settings(overrides: list[str]) -> dict[str, str]:
    """Overrides that set something results.json does not already report (e.g. optimizer.lr), as key -> value."""
    settings = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in SEED_OVERRIDES or key.startswith(("hydra.", "hydra/")) or key.split(".")[0] in ("smoothing", "noise"):
            continue  # seeds vary on purpose; smoothing/noise settings are read from results.json
        settings[key] = value
    return settings


def _format_value(value) -> str:
    """A setting as a string: full precision (two tuned ε never merge), "" for None."""
    return "" if value is None else str(value)


def _short(value) -> str:
    """A setting for display: numbers to 4 significant digits."""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def jobs_table(jobs: Sequence[Job]) -> pd.DataFrame:
    """One row per completed job: its cell (policy, noise, rate), seed, candidate settings and metrics."""
    rows = []
    for job in jobs:
        if job.status != "completed":
            continue
        r = job.results
        row = {"policy": str(r.get("smoothing", "?")), "noise": str(r.get("noise", "?")),
               "rate": float(r.get("noise/rate", 0.0)), "seed": r.get("seed"), "noise_seed": r.get("noise_seed"),
               "job": str(job.dir)}
        for key, value in r.items():  # the policy's and the noise's parameters, the data and the model
            if (key.startswith(("smoothing/", "noise/")) and key not in NOT_SETTINGS) or key in ("data", "model"):
                row[f"setting:{key}"] = _format_value(value)
        for key, value in _override_settings(job.overrides).items():
            row[f"setting:{key}"] = value
        for metric in METRICS:
            value = r.get(metric)
            row[metric] = float(value) if value is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def varying_settings(table: pd.DataFrame) -> list[str]:
    """Setting columns that take more than one value inside some (policy, noise, rate) cell."""
    columns = [c for c in table.columns if c.startswith("setting:")]
    if table.empty or not columns:
        return []
    filled = table[KEYS + columns].fillna("")
    return [c for c in columns if (filled.groupby(KEYS)[c].nunique() > 1).any()]


def _order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(values))
    return [v for v in preferred if v in unique] + sorted(v for v in unique if v not in preferred)


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    """Sort key: setting strings that are all numbers sort as numbers (ε = 0.05 before 0.5 before 10)."""
    if column.dtype != object:
        return column
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1; empty for one seed) of every metric per cell, with n seeds."""
    if table.empty:
        return pd.DataFrame(columns=[*KEYS, "n", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")]])
    variants = varying_settings(table)
    keys = KEYS + variants
    table = table.copy()
    table[variants] = table[variants].fillna("")
    grouped = table.groupby(keys, sort=False)
    summary = grouped.size().rename("n").reset_index()
    for metric in METRICS:
        stats = grouped[metric].agg(["mean", "std"]).reset_index()
        summary[f"{metric}_mean"] = stats["mean"].to_numpy()
        summary[f"{metric}_std"] = stats["std"].to_numpy()
    summary["policy"] = pd.Categorical(summary["policy"], _order(summary["policy"], POLICY_ORDER), ordered=True)
    summary["noise"] = pd.Categorical(summary["noise"], _order(summary["noise"], NOISE_ORDER), ordered=True)
    summary = summary.sort_values(["noise", "rate", "policy", *variants], kind="stable",
                                  key=_numeric_if_possible).reset_index(drop=True)
    summary["policy"] = summary["policy"].astype(str)
    summary["noise"] = summary["noise"].astype(str)
    return summary.rename(columns={c: c.removeprefix("setting:") for c in variants})


def duplicate_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Cells where one (seed, noise_seed) appears more than once: two sweeps of the same thing read together."""
    if table.empty:
        return table
    keys = KEYS + varying_settings(table) + ["seed", "noise_seed"]
    filled = table.copy()
    filled[keys] = filled[keys].fillna("")
    counts = filled.groupby(keys).size()
    return counts[counts > 1].reset_index(name="jobs")


# ---------------------------------------------------------------------------------------------------------------------
# Writing the table
# ---------------------------------------------------------------------------------------------------------------------


def _mean_std(mean: float, std: float, scale: float, digits: int) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None and np.isfinite(std) else "")


def markdown_table(summary: pd.DataFrame) -> str:
    variants = [c for c in summary.columns if c not in KEYS and c != "n" and not c.endswith(("_mean", "_std"))]
    head = ["policy", "noise", "rate", *variants, "n", *[title for title, _ in METRICS.values()]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---"] * len(variants) + ["--:"] *
                                                          (1 + len(METRICS))) + "|"]
    for _, row in summary.iterrows():
        cells = [row["policy"], row["noise"], str(float(row["rate"])), *[_short(row[v]) for v in variants],
                 str(row["n"])]
        cells += [_mean_std(row[f"{m}_mean"], row[f"{m}_std"], scale, 2 if scale > 1 else 3)
                  for m, (_, scale) in METRICS.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _job_name(job: Job, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            return str(job.dir.relative_to(root.parent))
        except ValueError:
            continue
    return str(job.dir)


def _problem_text(job: Job) -> str:
    if job.error:
        return " ".join(job.error.split())[:300]  # Hydra's instantiation errors put the cause on the next line
    return {"missing": "no results.json: killed, or still running", "running": "started, never finished"}.get(
        job.status, "")


def problems_markdown(jobs: Sequence[Job], roots: Sequence[Path]) -> str:
    bad = [j for j in jobs if j.status != "completed"]
    if not bad:
        return ""
    lines = ["## Failed or missing jobs", "", "| job | status | overrides | error |", "|---|---|---|---|"]
    for job in bad:
        cells = [_job_name(job, roots), job.status, " ".join(job.overrides) or "–", _problem_text(job)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


@dataclass
class SweepReport:
    """What one report read and wrote."""

    roots: list[Path]
    out: Path
    jobs: list[Job]
    table: pd.DataFrame     # one row per completed job
    summary: pd.DataFrame   # one row per setting: n, mean and std of each metric
    files: dict[str, Path] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return status_counts(self.jobs)


def write_report(rep: SweepReport) -> None:
    """report.csv (raw values) and report.md (the table, the failed jobs, the plots) in ``rep.out``."""
    csv_path, md_path = rep.out / "report.csv", rep.out / "report.md"
    rep.summary.to_csv(csv_path, index=False)
    lines = [f"# Sweep report: {', '.join(str(r) for r in rep.roots)}", "",
             f"Read {len(rep.jobs)} jobs: {_counts_text(rep.counts)}. Each row: mean ± sample standard deviation over "
             "the n seeds of one setting. Accuracy and ECE in %, on the clean test set; *best val* is the checkpoint "
             "with the best accuracy on the noisy validation split.", "", markdown_table(rep.summary), ""]
    duplicates = duplicate_seeds(rep.table)
    if not duplicates.empty:
        lines += ["**Warning**: some seeds appear more than once in a setting (were two sweeps of the same grid "
                  "read together?); all of them are averaged:", "", "```", duplicates.to_string(index=False), "```",
                  ""]
    problems = problems_markdown(rep.jobs, rep.roots)
    if problems:
        lines += [problems, ""]
    if rep.plots:
        lines += ["## Plots", ""] + [f"![{name}]({path.name})" for name, path in rep.plots.items()] + [""]
    md_path.write_text("\n".join(lines))
    rep.files.update(csv=csv_path, md=md_path)


def status_counts(jobs: Sequence[Job]) -> dict[str, int]:
    counts = {"completed": 0, "failed": 0}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    return counts


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n or status in ("completed", "failed"))


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def _line_label(row, variants: Sequence[str]) -> str:
    extra = ", ".join(f"{v.split('/')[-1].removeprefix('setting:')}={_short(row[v])}" for v in variants
                      if str(row[v]) != "")
    return f"{row['policy']} ({extra})" if extra else str(row["policy"])


def _colors(labels: Sequence[str], policies: Sequence[str]) -> dict[str, str]:
    colors, others = {}, iter(OTHER_COLORS * 10)
    for label, policy in zip(labels, policies):
        if label not in colors:
            colors[label] = POLICY_COLORS.get(policy) if label == policy and policy in POLICY_COLORS else next(others)
    return colors


def _grid(n_panels: int, width: float = 4.2, height: float = 3.4, max_cols: int = 4):
    from adaptive_ls.plots import new_figure

    cols = min(n_panels, max_cols)
    rows = -(-n_panels // cols)
    fig = new_figure((width * cols, height * rows + 0.4))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def plot_vs_noise(summary: pd.DataFrame, metric: str, ylabel: str, scale: float, path: Path,
                  dashed: Optional[str] = None) -> Optional[Path]:
    """``metric`` (mean ± std over seeds) against the noise rate: a panel per noise kind, a line per policy.

    ``dashed``: a second metric drawn dashed in the same colour (the test accuracy at the best validation epoch).
    """
    from adaptive_ls.plots import save_figure

    if summary.empty or summary[f"{metric}_mean"].isna().all():
        return None
    variants = [c for c in summary.columns if c not in KEYS and c != "n" and not c.endswith(("_mean", "_std"))]
    summary = summary.assign(label=[_line_label(r, variants) for _, r in summary.iterrows()])
    colors = _colors(summary["label"], summary["policy"])
    kinds = list(dict.fromkeys(summary["noise"]))
    fig, axes = _grid(len(kinds))
    for ax, kind in zip(axes, kinds):
        part = summary[summary["noise"] == kind]
        rates = sorted(part["rate"].unique())
        for offset, (label, line) in enumerate(part.groupby("label", sort=False)):
            line = line.sort_values("rate")
            mean, std = line[f"{metric}_mean"] * scale, line[f"{metric}_std"].fillna(0.0) * scale
            if len(rates) > 1:
                ax.errorbar(line["rate"], mean, yerr=std, marker="o", capsize=3, label=label, color=colors[label])
                if dashed:
                    ax.errorbar(line["rate"], line[f"{dashed}_mean"] * scale,
                                yerr=line[f"{dashed}_std"].fillna(0.0) * scale, marker="s", markersize=4, capsize=2,
                                linestyle="--", color=colors[label], alpha=0.6)
            else:  # one rate: bars side by side
                ax.bar(offset, mean, yerr=std, capsize=3, label=label, color=colors[label])
        if len(rates) > 1:
            ax.set_xlabel(f"{kind} noise rate")
            ax.set_xticks(rates)
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"{kind} noise, rate {rates[0]:g}")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{kind} noise" + (": final (solid), at best val (dashed)" if dashed and len(rates) > 1 else ""),
                     fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def _noise_settings(table: pd.DataFrame) -> list[tuple[str, float]]:
    settings = table[["noise", "rate"]].drop_duplicates()
    kinds = _order(settings["noise"], NOISE_ORDER)
    return [(k, r) for k in kinds for r in sorted(settings[settings["noise"] == k]["rate"])]


def _mean_curves(jobs_rows: pd.DataFrame, jobs_by_dir: dict[str, Job], key: str) -> Optional[pd.DataFrame]:
    """Mean over seeds of ``key`` per epoch, from the jobs' histories."""
    frames = []
    for job_dir in jobs_rows["job"]:
        history = pd.DataFrame(jobs_by_dir[job_dir].history)
        if key in history and "epoch" in history:
            frames.append(history[["epoch", key]].dropna())
    if not frames:
        return None
    return pd.concat(frames).groupby("epoch")[key].mean().reset_index()


def plot_curves(table: pd.DataFrame, jobs: Sequence[Job], keys: dict[str, str], ylabel: str, path: Path,
                skip_clean: bool = False, band: Optional[tuple[str, str]] = None) -> Optional[Path]:
    """History curves (mean over seeds) per policy, a panel per noise setting. ``keys``: history key -> line style."""
    from adaptive_ls.plots import save_figure

    if table.empty:
        return None
    by_dir = {str(j.dir): j for j in jobs}
    have = {k for j in jobs for row in j.history for k in row}
    if not set(keys) & have:
        return None
    variants = varying_settings(table)
    table = table.copy()
    table[variants] = table[variants].fillna("")
    table["label"] = [_line_label(r, variants) for _, r in table.iterrows()]
    colors = _colors(table["label"], table["policy"])
    settings = [s for s in _noise_settings(table) if not (skip_clean and s[1] == 0.0)]
    if not settings:
        return None
    fig, axes = _grid(len(settings))
    for ax, (kind, rate) in zip(axes, settings):
        cell = table[(table["noise"] == kind) & (table["rate"] == rate)]
        for label in _order(cell["label"], POLICY_ORDER):
            rows = cell[cell["label"] == label]
            for key, style in keys.items():
                curve = _mean_curves(rows, by_dir, key)
                if curve is None:
                    continue
                ax.plot(curve["epoch"], curve[key], style, color=colors[label],
                        label=f"{label}: {key.split('/')[-1]}" if len(keys) > 1 else label)
            if band:
                low, high = (_mean_curves(rows, by_dir, k) for k in band)
                if low is not None and high is not None:
                    ax.fill_between(low["epoch"], low[band[0]], high[band[1]], color=colors[label], alpha=0.15,
                                    label=f"{label}: min–max over samples")
        ax.set_title(f"{kind} noise, rate {float(rate)}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def pooled_reliability(job_dirs: Sequence[Path]) -> Optional[dict[str, np.ndarray]]:
    """Reliability bins pooled over seeds (count-weighted), from each job's reliability.json."""
    bins = [json.loads((d / "reliability.json").read_text()) for d in job_dirs if (d / "reliability.json").is_file()]
    if not bins:
        return None
    count = sum(np.asarray(b["count"], dtype=float) for b in bins)
    weight = np.where(count > 0, count, 1.0)
    pooled = {"bin_lower": np.asarray(bins[0]["bin_lower"]), "bin_upper": np.asarray(bins[0]["bin_upper"]),
              "count": count}
    for key in ("confidence", "accuracy"):
        pooled[key] = sum(np.asarray(b[key], dtype=float) * np.asarray(b["count"], dtype=float) for b in bins) / weight
    return pooled


def default_reliability_setting(table: pd.DataFrame) -> tuple[str, float]:
    """The noisiest setting of the first noise kind: where calibration differs most between policies."""
    settings = _noise_settings(table)
    kind = settings[0][0]
    return kind, max(r for k, r in settings if k == kind)


def plot_reliability(table: pd.DataFrame, setting: Optional[tuple[str, float]], path: Path) -> Optional[Path]:
    """Reliability diagrams side by side, one per policy, at one noise setting (bins pooled over seeds)."""
    from adaptive_ls.plots import reliability_diagram, save_figure

    if table.empty:
        return None
    kind, rate = setting or default_reliability_setting(table)
    cell = table[(table["noise"] == kind) & np.isclose(table["rate"], rate)].copy()
    if cell.empty:
        raise ValueError(f"--reliability-noise {kind}:{rate:g}: no completed job has that noise setting; the sweep "
                         f"has {', '.join(f'{k}:{r:g}' for k, r in _noise_settings(table))}")
    variants = varying_settings(table)
    cell[variants] = cell[variants].fillna("")
    cell["label"] = [_line_label(r, variants) for _, r in cell.iterrows()]
    panels = [(label, pooled_reliability([Path(d) for d in cell[cell["label"] == label]["job"]]))
              for label in _order(cell["label"], POLICY_ORDER)]
    panels = [(label, bins) for label, bins in panels if bins is not None]
    if not panels:
        return None
    fig, axes = _grid(len(panels), width=3.6, height=3.8, max_cols=6)
    for ax, (label, bins) in zip(axes, panels):
        seeds = len(cell[cell["label"] == label])
        reliability_diagram(bins, ax=ax, title=f"{label} (n={seeds})")
    fig.suptitle(f"Test reliability, {kind} noise rate {float(rate)}")
    fig.tight_layout()
    return save_figure(fig, path)


def make_plots(rep: SweepReport, reliability_setting: Optional[tuple[str, float]] = None) -> None:
    out, table, summary, jobs = rep.out, rep.table, rep.summary, rep.jobs
    made = {
        "Test accuracy vs noise rate": plot_vs_noise(summary, "test/acc", "test accuracy (%)", 100.0,
                                                     out / PLOTS["accuracy"], dashed="test/acc_at_best_val"),
        "ECE vs noise rate": plot_vs_noise(summary, "test/ece", "test ECE (%)", 100.0, out / PLOTS["ece"]),
        "ε over training": plot_curves(table, jobs, {"smoothing/eps_mean": "-"}, "mean ε", out / PLOTS["eps"],
                                       band=("smoothing/eps_min", "smoothing/eps_max")),
        "Reliability diagrams": plot_reliability(table, reliability_setting, out / PLOTS["reliability"]),
        "Memorisation of the noisy labels": plot_curves(
            table, jobs, {"diag/memorized": "-", "diag/corrected": "--"},
            "fraction of the corrupted training samples", out / PLOTS["memorization"], skip_clean=True),
    }
    rep.plots.update({name: path for name, path in made.items() if path is not None})


# ---------------------------------------------------------------------------------------------------------------------
# W&B
# ---------------------------------------------------------------------------------------------------------------------


def _most_common(jobs: Sequence[Job], key: str) -> Optional[str]:
    values = [j.results.get(key) for j in jobs if j.results.get(key)]
    return max(set(values), key=values.count) if values else None


def wandb_report_blocks(group: str, entity: str, project: str, summary_md: str, media_keys: list[str]):
    """The blocks of the W&B Report: the table, the sweep's runs grouped by policy, and the report run's plots."""
    import wandb_workspaces.reports.v2 as wr

    train_runs = wr.Runset(entity=entity, project=project, name="jobs",
                           filters=f"Group = '{group}' and JobType = 'train'",
                           groupby=["config.hydra.choices.smoothing"])
    report_run = wr.Runset(entity=entity, project=project, name="report",
                           filters=f"Group = '{group}' and JobType = 'report'")
    return [
        wr.H1(f"Sweep {group}"),
        wr.MarkdownBlock(text=summary_md),
        wr.H2("Training curves, grouped by policy"),
        wr.PanelGrid(runsets=[train_runs], panels=[
            wr.LinePlot(title="validation accuracy (noisy labels)", x="epoch", y=["val/acc"]),
            wr.LinePlot(title="mean ε", x="epoch", y=["smoothing/eps_mean"]),
            wr.LinePlot(title="training accuracy (noisy labels)", x="epoch", y=["train/acc"]),
            wr.ScatterPlot(title="test accuracy vs noise rate", x="noise/rate", y="test/acc"),
        ]),
        wr.H2("Plots"),
        wr.PanelGrid(runsets=[report_run], panels=[wr.MediaBrowser(media_keys=media_keys, num_columns=2)]),
    ]


def log_to_wandb(rep: SweepReport, mode: str = "auto", project: Optional[str] = None, entity: Optional[str] = None,
                 group: Optional[str] = None) -> dict[str, Any]:
    """Log the table and the plots to a W&B run of the sweep's group (job_type=report); online, publish a Report."""
    import wandb

    from adaptive_ls.wandb_logging import resolve_mode, sweep_group

    mode = resolve_mode(mode)
    if mode == "disabled":
        log.info("W&B disabled: nothing logged")
        return {"mode": mode}
    jobs, counts = rep.jobs, rep.counts
    group = group or _most_common(jobs, "wandb/group") or sweep_group(rep.roots[0])
    project = project or _most_common(jobs, "wandb/project") or "adaptive-ls"
    entity = entity or _most_common(jobs, "wandb/entity")
    run = wandb.init(project=project, entity=entity, group=group, job_type="report", name=f"report-{group}",
                     dir=str(rep.out), mode=mode, reinit="finish_previous", settings=wandb.Settings(silent=True),
                     config={"sweep_dirs": [str(r) for r in rep.roots], "jobs": len(jobs), **counts})
    media = {f"report/{Path(p).stem}": wandb.Image(str(p), caption=name) for name, p in rep.plots.items()}
    run.log({"report/table": wandb.Table(dataframe=rep.summary), "report/jobs": wandb.Table(dataframe=rep.table),
             **media})
    run.summary.update({f"jobs/{status}": n for status, n in counts.items()})
    info = {"mode": mode, "group": group, "project": project, "run_dir": str(run.settings.sync_dir)}
    run_entity = run.entity if mode == "online" else None
    if mode == "online":
        info["run_url"] = run.url
    run.finish()
    table_md = markdown_table(rep.summary)
    if mode == "online":
        try:
            import wandb_workspaces.reports.v2 as wr

            entity = entity or run_entity or wandb.Api().default_entity
            report = wr.Report(project=project, entity=entity, title=f"adaptive-ls sweep {group}"[:128],
                               description=f"{len(jobs)} jobs: {_counts_text(counts)}",
                               blocks=wandb_report_blocks(group, entity, project, table_md, list(media)))
            report.save()
            info["report_url"] = report.url
            log.info("W&B Report: %s", report.url)
        except ImportError:
            log.warning("W&B Report not built: pip install wandb-workspaces (the report run is logged: %s)",
                        info.get("run_url"))
        except Exception as error:  # the run is logged; a Report API hiccup must not lose the local report
            log.warning("W&B Report not built (%s); the report run is logged: %s", error, info.get("run_url"))
    else:
        log.info("W&B offline: report run saved in %s (upload: wandb sync %s). Online, this would also publish a "
                 "W&B Report 'adaptive-ls sweep %s' in %s%s with the table, the training curves of the %d train runs "
                 "grouped by policy, and the plots %s", info["run_dir"], info["run_dir"], group,
                 f"{entity}/" if entity else "", project, counts.get("completed", 0), ", ".join(media))
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def _parse_setting(text: str) -> tuple[str, float]:
    kind, sep, rate = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return kind, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--reliability-noise {text!r}: expected KIND:RATE, e.g. symmetric:0.4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptive-ls-report", description="Tabulate and plot a sweep: mean ± std over seeds per (policy, noise "
                                               "kind, rate), failed jobs, plots; optionally to W&B.")
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR",
                        help="multirun folder(s); every job below is read (several: their jobs are pooled)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first SWEEP_DIR)")
    parser.add_argument("--reliability-noise", type=_parse_setting, default=None, metavar="KIND:RATE",
                        help="noise setting of the reliability diagrams (default: the first kind's highest rate)")
    parser.add_argument("--wandb", action="store_true", help="log the table and plots to a W&B run (job_type=report)"
                                                             " in the sweep's group; online, publish a W&B Report")
    parser.add_argument("--wandb-mode", default="auto", choices=["auto", "online", "offline", "disabled"],
                        help="auto: online with W&B credentials, else offline")
    parser.add_argument("--wandb-project", default=None, help="default: the project the jobs logged to")
    parser.add_argument("--wandb-entity", default=None, help="default: the jobs' entity, or yours")
    parser.add_argument("--wandb-group", default=None, help="default: the group the jobs logged to")
    return parser


def report(sweep_dirs: Sequence[Path], out: Optional[Path] = None,
           reliability_setting: Optional[tuple[str, float]] = None) -> SweepReport:
    """Read the sweep(s) and write report.csv, report.md and the plots into ``out`` (default: the first folder)."""
    roots = [Path(d) for d in sweep_dirs]
    out = Path(out) if out is not None else roots[0]
    jobs = read_jobs(roots)
    out.mkdir(parents=True, exist_ok=True)
    table = jobs_table(jobs)
    rep = SweepReport(roots, out, jobs, table, summarize(table))
    make_plots(rep, reliability_setting)
    write_report(rep)
    return rep


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        rep = report(args.sweep_dirs, args.out, args.reliability_noise)
    except (FileNotFoundError, ValueError) as error:
        print(f"adaptive-ls-report: {error}", file=sys.stderr)
        return 2
    log.info("read %d jobs under %s: %s", len(rep.jobs), ", ".join(map(str, rep.roots)), _counts_text(rep.counts))
    for job in rep.jobs:
        if job.status != "completed":
            log.info("  %s %s: %s", job.status, _job_name(job, rep.roots),
                     _problem_text(job) or " ".join(job.overrides))
    if not rep.jobs:
        log.warning("no job folders found (a job folder holds .hydra/ or results.json)")
    log.info("wrote %s, %s and %d plots (%s)", rep.files["md"], rep.files["csv"], len(rep.plots),
             ", ".join(p.name for p in rep.plots.values()) or "none")
    if args.wandb:
        log_to_wandb(rep, mode=args.wandb_mode, project=args.wandb_project, entity=args.wandb_entity,
                     group=args.wandb_group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
