"""The book's figure style, in one place."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .analysis import band

PALETTE = ["#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8d6a9f", "#3d405b"]


def use_style() -> None:
    """Sets the shared matplotlib style (call once at the top of a notebook)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.8),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=PALETTE),
        "legend.frameon": False,
        "font.size": 10,
        "axes.titlesize": 11,
        "lines.linewidth": 1.8,
    })


def figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 3.8, **kw):
    """A figure and its axes in the book's style."""
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width, height), constrained_layout=True, **kw)


def seed_band(ax, x, values, label=None, color=None, log: bool = False, **kw):
    """Median over seeds as a line and the 10-90 percentile band as a shade.

    ``values: (S, len(x))``. Returns the line.
    """
    mid, lo, hi = band(values, axis=0)
    (line,) = ax.plot(x, mid, label=label, color=color, **kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")
    return line


def fit_overlay(ax, x, slope, intercept, label=None, loglog: bool = True, **kw):
    """Draws a fitted line ``y = exp(intercept) x^slope`` (log-log) or ``a + s x``."""
    x = np.asarray(x, float)
    y = np.exp(intercept) * x**slope if loglog else intercept + slope * x
    kw.setdefault("linestyle", "--")
    kw.setdefault("color", "0.3")
    return ax.plot(x, y, label=label, **kw)[0]


def label(ax, xlabel: str, ylabel: str, title: str | None = None, legend: bool = True):
    """Axis labels, optional title and legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend()
