"""The report's plots: metrics against the noise rate, curves over training, reliability diagrams side by side.

A line is a summary row, named by :func:`~adaptive_ls.report.jobs.row_name`; its colour depends only on the set of
names in the sweep, so one policy has one colour in every plot, and a policy the report does not know gets one too.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from adaptive_ls.plots import new_figure, reliability_diagram, save_figure
from adaptive_ls.report.jobs import (NOISE_ORDER, POLICY_ORDER, Job, SweepReport, order, row_name, sort_key,
                                     summary_settings, varying_settings)

PLOTS = {
    "accuracy": "accuracy_vs_noise.png",
    "ece": "ece_vs_noise.png",
    "eps": "eps_over_training.png",
    "reliability": "reliability.png",
    "memorization": "memorization.png",
    "eps_auroc": "eps_auroc.png",
}
POLICY_COLORS = {"none": "black", "fixed": "tab:blue", "negative": "tab:purple", "annealed": "tab:orange",
                 "adaptive": "tab:green", "online": "tab:red", "self_distill": "tab:brown", "alasca": "tab:cyan",
                 "self_adaptive": "tab:olive"}
OTHER_COLORS = ["tab:pink", "tab:gray", "gold", "navy", "teal", "maroon", "lime", "slateblue"]


def _named(frame: pd.DataFrame, settings: Sequence[str]) -> pd.DataFrame:
    """``frame`` with each row's line name in a ``label`` column."""
    frame = frame.fillna({s: "" for s in settings})
    return frame.assign(label=[row_name(r, settings) for _, r in frame.iterrows()])


def line_names(named: pd.DataFrame, settings: Sequence[str]) -> list[str]:
    """The distinct line names of a named frame in legend order: policy (known ones first), then its settings."""
    rows = named.assign(policy=pd.Categorical(named["policy"], order(named["policy"], POLICY_ORDER), ordered=True))
    rows = rows.sort_values(["policy", *settings], kind="stable", key=sort_key)
    return list(dict.fromkeys(rows["label"]))


def line_colors(names: Sequence[str]) -> dict[str, str]:
    """A colour per line name: a known policy on its own has its colour, every other name the next one of a cycle."""
    others = itertools.cycle(OTHER_COLORS)
    return {name: POLICY_COLORS[name] if name in POLICY_COLORS else next(others) for name in names}


def _with_lines(frame: pd.DataFrame, settings: Sequence[str]) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """The named frame, its line names in legend order and their colours."""
    named = _named(frame, settings)
    names = line_names(named, settings)
    return named, names, line_colors(names)


def _grid(n_panels: int, width: float = 4.2, height: float = 3.4, max_cols: int = 4):
    cols = min(n_panels, max_cols)
    rows = -(-n_panels // cols)
    fig = new_figure((width * cols, height * rows + 0.4))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def noise_settings(table: pd.DataFrame) -> list[tuple[str, float]]:
    """The (noise, rate) pairs of the sweep, in report order."""
    settings = table[["noise", "rate"]].drop_duplicates()
    kinds = order(settings["noise"], NOISE_ORDER)
    return [(k, r) for k in kinds for r in sorted(settings[settings["noise"] == k]["rate"])]


def _clean_in_every_panel(summary: pd.DataFrame) -> pd.DataFrame:
    """Clean-label rows (noise ``none``) as the rate-0 point of every noise kind's panel: a grid of named settings
    (``noise=none,sym40,asym40``) then plots as a sweep of rates per kind."""
    clean, noisy = summary[summary["noise"] == "none"], summary[summary["noise"] != "none"]
    if clean.empty or noisy.empty:
        return summary
    copies = [clean.assign(noise=kind, rate=0.0) for kind in dict.fromkeys(noisy["noise"])]
    return pd.concat([*copies, noisy], ignore_index=True)


def plot_vs_noise(summary: pd.DataFrame, metric: str, ylabel: str, scale: float, path: Path,
                  dashed: Optional[str] = None) -> Optional[Path]:
    """``metric`` (mean ± std over seeds) against the noise rate: a panel per noise kind, a line per row name.

    ``dashed``: a second metric drawn dashed in the same colour (the test accuracy at the best validation epoch).
    """
    if summary.empty or summary[f"{metric}_mean"].isna().all():
        return None
    summary, names, colors = _with_lines(summary, summary_settings(summary))
    summary = _clean_in_every_panel(summary)
    kinds = list(dict.fromkeys(summary["noise"]))
    fig, axes = _grid(len(kinds))
    for ax, kind in zip(axes, kinds):
        part = summary[summary["noise"] == kind]
        rates = sorted(part["rate"].unique())
        for offset, label in enumerate(n for n in names if n in set(part["label"])):
            line = part[part["label"] == label].sort_values("rate")
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


def _mean_curve(job_dirs: Sequence[str], jobs_by_dir: dict[str, Job], key: str) -> Optional[pd.DataFrame]:
    """Mean over seeds of ``key`` per epoch, from the jobs' histories."""
    frames = []
    for job_dir in job_dirs:
        history = pd.DataFrame(jobs_by_dir[job_dir].history)
        if key in history and "epoch" in history:
            frames.append(history[["epoch", key]].dropna())
    if not frames:
        return None
    return pd.concat(frames).groupby("epoch")[key].mean().reset_index()


def plot_curves(table: pd.DataFrame, jobs: Sequence[Job], keys: dict[str, str], ylabel: str, path: Path,
                skip_clean: bool = False, band: Optional[tuple[str, str]] = None,
                reference: Optional[float] = None) -> Optional[Path]:
    """History curves (mean over seeds) per row name, a panel per noise setting. ``keys``: history key -> style.

    ``reference``: a value drawn as a dotted grey line in every panel (the chance level of a score).
    """
    if table.empty:
        return None
    by_dir = {str(j.dir): j for j in jobs}
    have = {k for j in jobs for row in j.history for k in row}
    if not set(keys) & have:
        return None
    table, names, colors = _with_lines(table, varying_settings(table))
    panels = [s for s in noise_settings(table) if not (skip_clean and s[1] == 0.0)]
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (kind, rate) in zip(axes, panels):
        cell = table[(table["noise"] == kind) & (table["rate"] == rate)]
        for label in (n for n in names if n in set(cell["label"])):
            job_dirs = list(cell[cell["label"] == label]["job"])
            for key, style in keys.items():
                curve = _mean_curve(job_dirs, by_dir, key)
                if curve is not None:
                    ax.plot(curve["epoch"], curve[key], style, color=colors[label],
                            label=f"{label}: {key.split('/')[-1]}" if len(keys) > 1 else label)
            if band:
                low, high = (_mean_curve(job_dirs, by_dir, k) for k in band)
                if low is not None and high is not None:
                    ax.fill_between(low["epoch"], low[band[0]], high[band[1]], color=colors[label], alpha=0.15,
                                    label=f"{label}: min–max over samples")
        if reference is not None:
            ax.axhline(reference, color="gray", linestyle=":", linewidth=1)
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
    settings = noise_settings(table)
    kind = settings[0][0]
    return kind, max(r for k, r in settings if k == kind)


def plot_reliability(table: pd.DataFrame, setting: Optional[tuple[str, float]], path: Path) -> Optional[Path]:
    """Reliability diagrams side by side, one per row name, at one noise setting (bins pooled over seeds)."""
    if table.empty:
        return None
    kind, rate = setting or default_reliability_setting(table)
    if not ((table["noise"] == kind) & np.isclose(table["rate"], rate)).any():
        raise ValueError(f"--reliability-noise {kind}:{rate:g}: no completed job has that noise setting; the sweep "
                         f"has {', '.join(f'{k}:{r:g}' for k, r in noise_settings(table))}")
    table, names, _ = _with_lines(table, varying_settings(table))
    cell = table[(table["noise"] == kind) & np.isclose(table["rate"], rate)]
    panels = [(label, pooled_reliability([Path(d) for d in cell[cell["label"] == label]["job"]]))
              for label in names if label in set(cell["label"])]
    panels = [(label, bins) for label, bins in panels if bins is not None]
    if not panels:
        return None
    fig, axes = _grid(len(panels), width=3.6, height=3.8, max_cols=6)
    for ax, (label, bins) in zip(axes, panels):
        reliability_diagram(bins, ax=ax, title=f"{label} (n={int((cell['label'] == label).sum())})")
    fig.suptitle(f"Test reliability, {kind} noise rate {float(rate)}")
    fig.tight_layout()
    return save_figure(fig, path)


def make_plots(rep: SweepReport, reliability_setting: Optional[tuple[str, float]] = None) -> None:
    """Draw the plots the sweep has data for into ``rep.out``; ``rep.plots``: title -> file."""
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
        "ε as a detector of the noisy labels": plot_curves(
            table, jobs, {"diag/eps_auroc": "-", "diag/signal_auroc": ":"},
            "AUROC for the corrupted samples (ε; policy's signal dotted)", out / PLOTS["eps_auroc"],
            skip_clean=True, reference=0.5),
    }
    rep.plots.update({name: path for name, path in made.items() if path is not None})
