"""Does a policy beat the best-tuned baseline? Paired differences against the baseline chosen on noisy validation.

For each noise setting (kind, rate) the baseline is the variant of one policy (e.g. ``fixed`` over its ε grid) with
the highest mean ``val/acc_best`` on the seeds all its variants ran: the noisy validation split, never the test set,
picks it. Every other variant is
then compared with it job by job, paired on (seed, noise_seed) so that both saw the same noisy labels and the same
initial weights, and a difference is given as the mean ± sample standard deviation over the pairs. A variant "wins"
when it ran at every noise setting the baseline ran at and its mean test-accuracy difference is positive at each: one
setting for all rates, as a user who cannot tune on the test set would have to choose it.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from adaptive_ls.report.jobs import KEYS, row_name, sort_rows, varying_settings

SELECT_BY = "val/acc_best"
# results.json key -> (column title, scale): differences candidate − baseline, in points where the scale is 100
DIFFERENCES = {
    "test/acc": ("Δ test acc (pp)", 100.0),
    "test/acc_at_best_val": ("Δ test acc, best val (pp)", 100.0),
    "test/ece": ("Δ ECE (pp)", 100.0),
    "test/ts_ece": ("Δ ECE after TS (pp)", 100.0),
    "test/nts_ece": ("Δ ECE after noise-aware TS (pp)", 100.0),
    "diag/memorized": ("Δ memorised (pp)", 100.0),
}
PAIR = ["seed", "noise_seed"]
SETTING_KEYS = ["noise", "rate"]


def best_variants(table: pd.DataFrame, policy: str, settings: Sequence[str], by: str = SELECT_BY) -> pd.DataFrame:
    """Per noise setting, the ``policy`` variant with the highest mean ``by``: one row each, with ``by`` and n."""
    rows = table[table["policy"] == policy].fillna({s: "" for s in settings})
    if rows.empty:
        raise ValueError(f"--baseline {policy}: no completed job of that policy; the sweep has "
                         f"{', '.join(sorted(set(table['policy']))) or 'none'}")
    rows = pd.concat([_common_seeds(cell, settings) for _, cell in rows.groupby(SETTING_KEYS, sort=False)])
    means = rows.groupby(KEYS + list(settings), sort=False)[by].agg(["mean", "size"]).reset_index()
    best = means.loc[means.groupby(SETTING_KEYS, sort=False)["mean"].idxmax()]
    return best.rename(columns={"mean": by, "size": "n"}).reset_index(drop=True)


def _common_seeds(cell: pd.DataFrame, settings: Sequence[str]) -> pd.DataFrame:
    """The jobs of a noise setting on the (seed, noise_seed) pairs every variant ran, so that a variant run with an
    extra seed is not ranked on different noisy labels than the others (all jobs when no pair is common)."""
    seeds = [set(zip(v["seed"], v["noise_seed"])) for _, v in cell.groupby(["policy", *settings], sort=False)]
    common = set.intersection(*seeds) if seeds else set()
    if not common:
        return cell
    return cell[[pair in common for pair in zip(cell["seed"], cell["noise_seed"])]]


def paired_differences(table: pd.DataFrame, baseline: str, by: str = SELECT_BY) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the chosen baselines, one row per other variant and noise setting with the paired differences)."""
    settings = varying_settings(table)
    table = table.fillna({s: "" for s in settings})
    chosen = best_variants(table, baseline, settings, by)
    base_jobs = table.merge(chosen[KEYS + list(settings)], on=KEYS + list(settings))
    rows = []
    for key, jobs in table[table["policy"] != baseline].groupby(KEYS + list(settings), sort=False):
        variant = dict(zip(KEYS + list(settings), key))
        base = base_jobs[(base_jobs["noise"] == variant["noise"]) & (base_jobs["rate"] == variant["rate"])]
        pairs = jobs.merge(base, on=PAIR, suffixes=("", "_base"))
        if pairs.empty:
            continue
        row = {**variant, "pairs": len(pairs)}
        for metric in DIFFERENCES:
            diff = pairs[metric] - pairs[f"{metric}_base"]
            row[f"{metric}_mean"], row[f"{metric}_std"] = diff.mean(), diff.std()
        rows.append(row)
    diffs = pd.DataFrame(rows)
    if diffs.empty:
        return chosen, diffs
    variant = diffs.groupby(["policy", *settings], sort=False)["test/acc_mean"]
    diffs["wins"] = variant.transform(lambda d: bool(len(d) == len(chosen) and (d > 0).all()))
    return chosen, sort_rows(diffs, settings)


def _signed(mean: float, std: float, scale: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean * scale:+.2f}" + (f" ± {std * scale:.2f}" if pd.notna(std) else "")


def versus_markdown(table: pd.DataFrame, baseline: str, by: str = SELECT_BY) -> str:
    """The comparison as a report section: the chosen baselines, then the paired differences."""
    chosen, diffs = paired_differences(table, baseline, by)
    settings = varying_settings(table)
    lines = [f"## Against the best `{baseline}`, chosen on the noisy validation split", "",
             f"Per noise setting, the `{baseline}` variant with the best mean `{by}`:", ""]
    for _, row in chosen.iterrows():
        lines.append(f"- {row['noise']} {float(row['rate'])}: {row_name(row, settings)}, "
                     f"{by} {100 * row[by]:.2f}% (n = {row['n']})")
    lines += ["", "Differences candidate − baseline, paired on (seed, noise_seed): mean ± sample std over the pairs. "
              "*wins*: this one setting ran at every noise setting above and its mean test-accuracy difference is positive at "
              "each.", ""]
    if diffs.empty:
        return "\n".join(lines + ["No other policy has jobs paired with the baseline's.", ""])
    head = ["policy", "noise", "rate", "pairs", *[title for title, _ in DIFFERENCES.values()], "wins"]
    lines += ["| " + " | ".join(head) + " |", "|---|---|---|" + "--:|" * (len(head) - 4) + "---|"]
    for _, row in diffs.iterrows():
        cells = [row_name(row, [s for s in settings if s in row]), row["noise"], str(float(row["rate"])),
                 str(row["pairs"])]
        cells += [_signed(row[f"{m}_mean"], row[f"{m}_std"], scale) for m, (_, scale) in DIFFERENCES.items()]
        cells.append("yes" if row["wins"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


__all__ = ["DIFFERENCES", "SELECT_BY", "best_variants", "paired_differences", "versus_markdown"]
