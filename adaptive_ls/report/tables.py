"""The report's text: report.csv (raw values), report.md (the table, duplicate seeds, the jobs without a result)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from adaptive_ls.report.jobs import (METRICS, STATUS_ORDER, Job, SweepReport, counts_text, duplicate_seeds, job_name,
                                     order, short_value, summary_settings)


def _mean_std(mean: float, std: float, scale: float, digits: int) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None and np.isfinite(std) else "")


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a markdown table: metrics in the units of METRICS, settings to 4 significant digits."""
    settings = summary_settings(summary)
    head = ["policy", "noise", "rate", *settings, "n", *[title for title, _ in METRICS.values()]]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * (3 + len(settings)) + ["--:"] * (1 + len(METRICS))) + "|"]
    for _, row in summary.iterrows():
        cells = [row["policy"], row["noise"], str(float(row["rate"])), *[short_value(row[s]) for s in settings],
                 str(row["n"])]
        cells += [_mean_std(row[f"{m}_mean"], row[f"{m}_std"], scale, 2 if scale > 1 else 3)
                  for m, (_, scale) in METRICS.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unfinished_jobs(jobs: Sequence[Job]) -> list[Job]:
    """The jobs without a result, by status (failed, interrupted, running, missing, any other), each in sweep order."""
    statuses = order([j.status for j in jobs if j.status != "completed"], STATUS_ORDER)
    return [j for status in statuses for j in jobs if j.status == status]


def problems_markdown(jobs: Sequence[Job], roots: Sequence[Path]) -> str:
    """A table of the jobs without a result: name, status, overrides and why ("" when every job completed)."""
    unfinished = unfinished_jobs(jobs)
    if not unfinished:
        return ""
    lines = ["## Jobs without a result", "", "| job | status | overrides | error |", "|---|---|---|---|"]
    for job in unfinished:
        cells = [job_name(job, roots), job.status, " ".join(job.overrides) or "–", job.problem]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_report(rep: SweepReport) -> None:
    """report.csv (raw values) and report.md (the table, the jobs without a result, the plots) in ``rep.out``."""
    csv_path, md_path = rep.out / "report.csv", rep.out / "report.md"
    rep.summary.to_csv(csv_path, index=False)
    lines = [f"# Sweep report: {', '.join(str(r) for r in rep.roots)}", "",
             f"Read {len(rep.jobs)} jobs: {counts_text(rep.counts)}. Each row: mean ± sample standard deviation over "
             "the n seeds of one setting. Accuracy and ECE in %, on the clean test set; *best val* is the checkpoint "
             "with the best accuracy on the noisy validation split.", "", markdown_table(rep.summary), ""]
    duplicates = duplicate_seeds(rep.table)
    if not duplicates.empty:
        lines += ["**Warning**: some seeds appear more than once in a setting (were two sweeps of the same grid "
                  "read together?); all of them are averaged:", "", "```", duplicates.to_string(index=False), "```",
                  ""]
    if rep.versus:
        lines += [rep.versus, ""]
    problems = problems_markdown(rep.jobs, rep.roots)
    if problems:
        lines += [problems, ""]
    if rep.plots:
        lines += ["## Plots", ""] + [f"![{name}]({path.name})" for name, path in rep.plots.items()] + [""]
    md_path.write_text("\n".join(lines))
    rep.files.update(csv=csv_path, md=md_path)
