"""Sweep report: ``adaptive-ls-report SWEEP_DIR [SWEEP_DIR ...]`` (or ``python -m adaptive_ls.report``).

Reads every job's ``results.json`` under the sweep folder(s) and writes, into the first one (or ``--out``):

- ``report.csv`` and ``report.md``: mean ± sample standard deviation over seeds for each (policy, noise, rate) of
  the test accuracy (final and at the best noisy-validation epoch), the best noisy-validation accuracy, ECE (also
  after plain and noise-aware temperature scaling), NLL, and at the last epoch the memorised fraction of the
  corrupted labels and the AUROC of ε as their detector, with the number of seeds; the jobs without a result
  (failed, interrupted, unfinished, missing) listed by name.
- with ``--baseline POLICY`` (e.g. ``fixed`` over an ε grid), a section comparing every other row with that policy's
  best variant per noise setting, chosen on the noisy validation split, in paired differences over seeds.
- PNG plots: test accuracy and ECE vs noise rate (a line per policy, a panel per noise kind), ε over training per
  policy, reliability diagrams side by side at one noise setting, and, when the jobs logged them, memorisation of the
  noisy labels over training (``diag/memorized``, ``diag/corrected``) and the AUROC of ε as a detector of the
  corrupted labels (``diag/eps_auroc``; 0.5 is blind).

Policy and noise are the config choices the jobs recorded (``smoothing=negative`` is ``negative``). Settings other
than the seed that vary within a (policy, noise, rate) cell (a tuned ε, a swept learning rate) become extra key
columns, so different settings are never averaged together. ``--wandb`` logs the table and plots to a W&B run in the
sweep's group (``job_type=report``) and, online, publishes a W&B Report built from them.

Modules: ``jobs`` (reading the sweep, the jobs table, the mean over seeds), ``tables`` (report.md, report.csv),
``plots`` (the PNGs), ``versus`` (the comparison with a baseline), ``wandb_report`` (W&B).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from adaptive_ls.report.jobs import (KEYS, METRICS, Job, SweepReport, counts_text, duplicate_seeds, job_name,
                                     jobs_table, read_jobs, status_counts, summarize, varying_settings)
from adaptive_ls.report.plots import (PLOTS, line_colors, make_plots, plot_curves, plot_reliability, plot_vs_noise,
                                      pooled_reliability)
from adaptive_ls.report.tables import markdown_table, problems_markdown, unfinished_jobs, write_report
from adaptive_ls.report.wandb_report import log_to_wandb, wandb_report_blocks
from adaptive_ls.report.versus import best_variants, paired_differences, versus_markdown

__all__ = ["KEYS", "METRICS", "PLOTS", "Job", "SweepReport", "build_parser", "duplicate_seeds", "jobs_table",
           "line_colors", "log_to_wandb", "main", "make_plots", "markdown_table", "plot_curves", "plot_reliability",
           "plot_vs_noise", "pooled_reliability", "problems_markdown", "read_jobs", "report", "status_counts",
           "summarize", "varying_settings", "wandb_report_blocks", "write_report", "best_variants",
           "paired_differences", "versus_markdown"]

log = logging.getLogger(__name__)


def report(sweep_dirs: Sequence[Path], out: Optional[Path] = None,
           reliability_setting: Optional[tuple[str, float]] = None, baseline: Optional[str] = None) -> SweepReport:
    """Read the sweep(s) and write report.csv, report.md and the plots into ``out`` (default: the first folder).

    ``baseline``: a policy whose best variant per noise setting, chosen on the noisy validation split, every other
    row is compared with (:mod:`adaptive_ls.report.versus`)."""
    roots = [Path(d) for d in sweep_dirs]
    out = Path(out) if out is not None else roots[0]
    jobs = read_jobs(roots)
    if not jobs:  # nothing to report: write nothing, so an empty table is never mistaken for a finished sweep
        raise FileNotFoundError(f"no job folders under {', '.join(map(str, roots))} (a job folder holds .hydra/ or "
                                f"results.json): check the sweep folder")
    out.mkdir(parents=True, exist_ok=True)
    table = jobs_table(jobs)
    rep = SweepReport(roots, out, jobs, table, summarize(table))
    if baseline is not None:
        rep.versus = versus_markdown(table, baseline)
    make_plots(rep, reliability_setting)
    write_report(rep)
    return rep


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
                                               "kind, rate), jobs without a result, plots; optionally to W&B.")
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR",
                        help="multirun folder(s); every job below is read (several: their jobs are pooled)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first SWEEP_DIR)")
    parser.add_argument("--reliability-noise", type=_parse_setting, default=None, metavar="KIND:RATE",
                        help="noise setting of the reliability diagrams (default: the first kind's highest rate)")
    parser.add_argument("--baseline", default=None, metavar="POLICY",
                        help="compare every row with POLICY's best variant per noise setting, chosen by mean "
                             "val/acc_best (the noisy validation split), paired on seeds; e.g. fixed over an ε grid")
    parser.add_argument("--wandb", action="store_true", help="log the table and plots to a W&B run (job_type=report)"
                                                             " in the sweep's group; online, publish a W&B Report")
    parser.add_argument("--wandb-mode", default="auto", choices=["auto", "online", "offline", "disabled"],
                        help="auto: online with W&B credentials, else offline")
    parser.add_argument("--wandb-project", default=None, help="default: the project the jobs logged to")
    parser.add_argument("--wandb-entity", default=None, help="default: the jobs' entity, or yours")
    parser.add_argument("--wandb-group", default=None, help="default: the group the jobs logged to")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        rep = report(args.sweep_dirs, args.out, args.reliability_noise, args.baseline)
    except (FileNotFoundError, ValueError) as error:
        print(f"adaptive-ls-report: {error}", file=sys.stderr)
        return 2
    log.info("read %d jobs under %s: %s", len(rep.jobs), ", ".join(map(str, rep.roots)), counts_text(rep.counts))
    for job in unfinished_jobs(rep.jobs):
        log.info("  %s %s: %s", job.status, job_name(job, rep.roots), job.problem or " ".join(job.overrides))
    log.info("wrote %s, %s and %d plots (%s)", rep.files["md"], rep.files["csv"], len(rep.plots),
             ", ".join(p.name for p in rep.plots.values()) or "none")
    if args.wandb:
        log_to_wandb(rep, mode=args.wandb_mode, project=args.wandb_project, entity=args.wandb_entity,
                     group=args.wandb_group)
    return 0
