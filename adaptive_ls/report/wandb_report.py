"""The report on W&B: a run in the sweep's group (``job_type=report``) with the table and the plots, and, online, a
W&B Report that puts them next to the sweep's training curves."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from adaptive_ls.report.jobs import Job, SweepReport, counts_text
from adaptive_ls.report.tables import markdown_table

log = logging.getLogger(__name__)


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


def _publish_report(info: dict[str, Any], group: str, entity: Optional[str], project: str, description: str,
                    table_md: str, media_keys: list[str]) -> None:
    """Save the W&B Report; a missing package or an API error only costs the Report, never the logged run."""
    try:
        import wandb
        import wandb_workspaces.reports.v2 as wr

        entity = entity or wandb.Api().default_entity
        report = wr.Report(project=project, entity=entity, title=f"adaptive-ls sweep {group}"[:128],
                           description=description,
                           blocks=wandb_report_blocks(group, entity, project, table_md, media_keys))
        report.save()
        info["report_url"] = report.url
        log.info("W&B Report: %s", report.url)
    except ImportError:
        log.warning("W&B Report not built: pip install wandb-workspaces (the report run is logged: %s)",
                    info.get("run_url"))
    except Exception as error:
        log.warning("W&B Report not built (%s); the report run is logged: %s", error, info.get("run_url"))


def log_to_wandb(rep: SweepReport, mode: str = "auto", project: Optional[str] = None, entity: Optional[str] = None,
                 group: Optional[str] = None) -> dict[str, Any]:
    """Log the table and the plots to a W&B run of the sweep's group (job_type=report); online, publish a Report."""
    import wandb

    from adaptive_ls.loggers import resolve_mode, sweep_group

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
    if mode == "online":
        info["run_url"] = run.url
        entity = entity or run.entity
    run.finish()
    if mode == "online":
        _publish_report(info, group, entity, project, f"{len(jobs)} jobs: {counts_text(counts)}",
                        markdown_table(rep.summary), list(media))
    else:
        log.info("W&B offline: report run saved in %s (upload: wandb sync %s). Online, this would also publish a "
                 "W&B Report 'adaptive-ls sweep %s' in %s%s with the table, the training curves of the %d train runs "
                 "grouped by policy, and the plots %s", info["run_dir"], info["run_dir"], group,
                 f"{entity}/" if entity else "", project, counts.get("completed", 0), ", ".join(media))
    return info
