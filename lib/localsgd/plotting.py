"""The book's figure style, in one place: figures sized for the book's text column.

The rendered book shows a figure at most :data:`COLUMN_PX` pixels wide (the text column of the
book's theme on a desktop screen), so a figure wider than :data:`COLUMN_INCHES` is shrunk and its
text with it. :func:`figure` therefore always makes figures of the column's width, with fonts of
11 pt (legends 9.5 pt); panels beyond two go on further rows. :func:`smallest_text_px` says how
large the smallest text of a figure will appear on the page; the book's tests require 9 px.
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .analysis import band, fit_line

COLUMN_INCHES = 7.0  # figure width that fills the text column
COLUMN_PX = 690  # the text column's width on the page, in CSS pixels
MIN_TEXT_PX = 9.0  # the smallest text a figure may show on the page

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
        "font.size": 11,
        "axes.titlesize": 11.5,
        "axes.labelsize": 11,
        "xtick.labelsize": 10,
        "ytick.labelsize": 10,
        "legend.fontsize": 9.5,
        "legend.title_fontsize": 10,
        "lines.linewidth": 1.8,
    })


def figure(ncols: int = 1, nrows: int = 1, width: float | None = None,
           height: float | None = None, **kw):
    """A figure of the column's width and its axes (``plt.subplots``), in the book's style.

    ``width`` defaults to :data:`COLUMN_INCHES`; a wider request is cut to the column, since the
    page would shrink it (and its text) anyway; the height stays as asked, so the panels keep
    room for their legends. ``height`` defaults to 3.2 inches a row. Put three or more panels
    on two rows: three side by side leave each panel about 2.2 inches wide. Extra keywords go
    to ``plt.subplots``.
    """
    use_style()
    height = 3.2 * nrows if height is None else float(height)
    width = COLUMN_INCHES if width is None else float(width)
    width = min(width, COLUMN_INCHES)
    return plt.subplots(nrows, ncols, figsize=(width, height), constrained_layout=True, **kw)


def smallest_text_px(fig, column_px: float = COLUMN_PX) -> tuple[float, str]:
    """How tall the smallest visible text of ``fig`` appears on the page, in CSS pixels, and
    that text. The page shows the figure's PNG (rendered at ``fig.dpi``) at its own size, or
    shrunk to ``column_px`` when wider; a font of ``s`` points is then
    ``s / 72 * min(dpi, column_px / width_in)`` pixels tall. Returns ``(inf, "")`` for a figure
    without text."""
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels get their text at draw time
    px_per_pt = min(fig.dpi, column_px / fig.get_figwidth()) / 72.0
    best, which = float("inf"), ""
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        size = t.get_fontsize() * px_per_pt
        if size < best:
            best, which = float(size), t.get_text()
    return best, which


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


class _PlainMinorLabels(mpl.ticker.LogFormatterSciNotation):
    """Labels a log axis's minor ticks where Matplotlib would (an axis spanning less than a
    decade), as plain numbers (0.02, 15) rather than ``2 x 10^-2``."""

    def __call__(self, x, pos=None):
        return format(x, ".3g") if super().__call__(x, pos) else ""


def log_axes(ax, x=None, base: float = 10, logy: bool = True, ticks=None):
    """Log x axis (``base``) with a tick at every ``x`` labelled by its value (``ticks``: a
    format such as ``".3g"``; integers by default), and a log y axis unless ``logy`` is False.
    The y axis keeps its minor ticks, labelled as plain numbers when the data span less than a
    decade (else such an axis would show one label or none)."""
    ax.set_xscale("log", base=base)
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(_PlainMinorLabels(labelOnlyBase=False))
    if x is not None:
        x = np.asarray(x, float)
        ax.set_xticks(x, [format(v, ticks) if ticks else str(int(v)) for v in x])
        ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())


def band_with_fit(ax, x, values, label=None, fit_label: str = "fit", **kw):
    """:func:`seed_band` of ``values: (S, len(x))`` and the least-squares line through its
    medians on log-log axes, labelled ``"<fit_label>: slope <s>"``. Returns ``(slope, stderr)``
    of that fit (:func:`localsgd.analysis.loglog_slope`)."""
    x = np.asarray(x, float)
    med = np.median(np.asarray(values, float), axis=0)
    seed_band(ax, x, values, label=label, **kw)
    slope, icpt, se = fit_line(np.log(x), np.log(med))
    fit_overlay(ax, x, slope, icpt, label=f"{fit_label}: slope {slope:.2f}")
    return slope, se


def median_points(ax, x, values, axis: int = 0, **kw):
    """The median over seeds as points with the 10-90 percentile range as error bars;
    ``values`` holds the seeds on ``axis`` (``(S, len(x))`` by default). Returns the artist."""
    mid, lo, hi = band(values, axis=axis)
    return ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", capsize=3, **kw)


def network_and_kernel(ax, iterations, loss, kernel_loss, label=None, color=None):
    """The network's training loss (median over seeds and 10-90 % band, solid) and its kernel
    model's (median, dotted, same colour) on a log axis;
    ``loss, kernel_loss: (S, len(iterations))``. Returns the network's line."""
    line = seed_band(ax, iterations, loss, label=label, color=color, log=True)
    ax.plot(iterations, np.median(np.asarray(kernel_loss, float), axis=0), ls=":", lw=2.2,
            color=line.get_color())
    return line


def distance_against_width(ax, axis, label=None, color=None):
    """``D`` against the width on log-log axes for a
    :class:`localsgd.claims.kernel_model.WidthAxis`: every seed as a small point, the median
    as a line, the fitted exponent with its interval in the legend, and the lazy-training
    ``m^(-1/2)`` through the median at the narrowest width (grey, dashed). Returns the median's
    line."""
    widths, dist = np.asarray(axis.widths, float), np.asarray(axis.distance, float)
    S = dist.shape[1]
    pts = ax.plot(np.repeat(widths, S), dist.ravel(), "o", ms=3.5, alpha=0.45, color=color)[0]
    fit = f"exponent {axis.exponent:.2f} [{axis.low:.2f}, {axis.high:.2f}]"
    med = np.median(dist, axis=1)
    (line,) = ax.plot(widths, med, "-", color=pts.get_color(),
                      label=f"{label}: {fit}" if label else fit)
    ax.plot(widths, med[0] * (widths / widths[0]) ** -0.5, "--", color="0.45", lw=1.2,
            label=r"$m^{-1/2}$" if not any(t.get_label() == r"$m^{-1/2}$" for t in ax.lines)
            else None)
    log_axes(ax, widths)
    return line
