"""Figures for calibration analysis, drawn on bare Agg figures so no pyplot global state leaks."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["class_labels", "new_figure", "reliability_diagram", "save_figure", "transition_figure"]

_REQUIRED_BIN_KEYS = ("bin_lower", "bin_upper", "confidence", "accuracy")


def _to_numpy(x) -> np.ndarray:
    """Turn a tensor (any device) or array-like into a float64 numpy array for plotting."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def new_figure(figsize: tuple[float, float] = (4.0, 4.0)) -> Figure:
    """Create a Figure bound to an Agg canvas, independent of pyplot and the global backend."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _ece_from_bins(accuracy: np.ndarray, confidence: np.ndarray, count: np.ndarray | None) -> float | None:
    """Return sum(count * |acc - conf|) / sum(count), or None when counts are missing or all zero."""
    if count is None or count.sum() <= 0:
        return None
    return float((count * np.abs(accuracy - confidence)).sum() / count.sum())


def reliability_diagram(bins: Mapping, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Plot per-bin accuracy vs. confidence (output of ``metrics.reliability_bins``) to show over/under-confidence.

    Draws one accuracy bar per bin (container 0, label "Accuracy"), one gap bar per bin from accuracy
    to mean confidence (container 1, label "Gap"), the identity line, and ECE in the legend when
    ``bins`` has a non-zero ``count``. Returns the Figure holding ``ax``.
    """
    missing = [k for k in _REQUIRED_BIN_KEYS if k not in bins]
    if missing:
        raise ValueError(f"bins is missing keys {missing}; "
                         "pass the dict returned by adaptive_ls.metrics.reliability_bins.")
    lower, upper = _to_numpy(bins["bin_lower"]), _to_numpy(bins["bin_upper"])
    conf, acc = _to_numpy(bins["confidence"]), _to_numpy(bins["accuracy"])
    if not (lower.ndim == 1 and lower.shape == upper.shape == conf.shape == acc.shape):
        raise ValueError("bin_lower, bin_upper, confidence and accuracy must be 1-D with equal length, got shapes "
                         f"{lower.shape}, {upper.shape}, {conf.shape}, {acc.shape}.")
    count = _to_numpy(bins["count"]) if "count" in bins else None
    if count is not None and count.shape != lower.shape:
        raise ValueError(f"count must have shape {lower.shape} like the bin edges, got {count.shape}.")

    if ax is None:
        fig = new_figure()
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    width = upper - lower
    nonempty = count > 0 if count is not None else np.ones_like(acc, dtype=bool)
    gap_bottom = np.where(nonempty, np.minimum(acc, conf), 0.0)
    gap_height = np.where(nonempty, np.abs(conf - acc), 0.0)

    ax.bar(lower, acc, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
           label="Accuracy")
    ax.bar(lower, gap_height, bottom=gap_bottom, width=width, align="edge", color="tab:red", alpha=0.3,
           edgecolor="tab:red", hatch="//", linewidth=0.5, label="Gap")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="Perfect calibration")
    ece = _ece_from_bins(acc, conf, count)
    if ece is not None:
        ax.plot([], [], linestyle="none", label=f"ECE = {ece:.4f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    ax.set_title(title if title is not None else "Reliability diagram")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def class_labels(class_names: Optional[Sequence[str]], k: int) -> list[str]:
    """The K class names for axes and tables, or the class ids when the names are missing or do not fit."""
    return [str(n) for n in class_names] if class_names and len(class_names) == k else [str(i) for i in range(k)]


def transition_figure(matrix, class_names: Optional[Sequence[str]] = None) -> Figure:
    """Heatmap of P(noisy label = column | true label = row), each cell annotated: the noise a run trained on."""
    matrix = _to_numpy(matrix)
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


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a 120-dpi PNG (creating parent dirs) and close it so long runs do not leak figures."""
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib.figure.Figure, got {type(fig)}.")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; give a path ending in .png, got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # only pyplot-managed figures hold global references; a bare Figure needs none
        pyplot.close(fig)
    return path
