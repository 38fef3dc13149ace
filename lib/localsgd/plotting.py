"""The book's figure style, in one place: figures drawn for the book's text column, legends off
the data, every panel's axes labelled.

The rendered book shows a figure at most :data:`COLUMN_PX` CSS pixels wide (the text column of
the book's theme at a 1280-pixel-wide window; 352 on a 400-pixel phone), so a wider figure is
shrunk and its text with it. :func:`figure` therefore makes figures :data:`COLUMN_INCHES` wide at
:data:`DPI` dots per inch, exactly the column, with fonts of 9 to 10.5 pt (12 to 14 px on the
page); panels beyond two go on further rows. Labels take Matplotlib's mathtext
(``r"$\\lambda_{\\min}$"``).

:func:`figure_report` measures a finished figure as the page will show it: the size of its
smallest text (:func:`smallest_text_px`; the book's tests require :data:`MIN_TEXT_PX`), the
places where a legend covers data or a marker covers a text (:func:`overlaps`), and the axes
that show ticks without a label (:func:`unlabelled_axes`).
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .analysis import band, fit_line

COLUMN_PX = 672  # the text column's width on the page at a 1280-px window, in CSS pixels
DPI = 96  # dots per inch of the figures the notebooks show: COLUMN_INCHES fill the column
COLUMN_INCHES = COLUMN_PX / DPI  # 7 inches
MIN_TEXT_PX = 10.0  # the smallest text a figure may show on the page
TIGHT_PAD_INCHES = 0.1  # the margin that the notebook's inline images add (bbox_inches="tight")

PALETTE = ["#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8d6a9f", "#3d405b"]


def use_style() -> None:
    """Sets the shared matplotlib style (call once at the top of a notebook)."""
    mpl.rcParams.update({
        "figure.figsize": (COLUMN_INCHES, 3.2),
        "figure.dpi": DPI,
        "savefig.dpi": 2 * DPI,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": mpl.cycler(color=PALETTE),
        "legend.frameon": False,
        "font.size": 10,
        "axes.titlesize": 10.5,
        "axes.labelsize": 10,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "legend.title_fontsize": 9.5,
        "mathtext.fontset": "dejavusans",
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


def shown_width_inches(fig) -> float:
    """The width of the image the notebook shows for ``fig``: its tight bounding box plus the
    inline backend's margin (a legend placed outside the axes widens it)."""
    fig.canvas.draw()
    tight = fig.get_tightbbox(fig.canvas.get_renderer())
    return float(tight.width) + 2 * TIGHT_PAD_INCHES


def smallest_text_px(fig, column_px: float = COLUMN_PX) -> tuple[float, str]:
    """How tall the smallest visible text of ``fig`` appears on the page, in CSS pixels, and
    that text. The page shows the figure's image (rendered at ``fig.dpi``, as wide as
    :func:`shown_width_inches`) at its own size, or shrunk to ``column_px`` when wider; a font
    of ``s`` points is then ``s / 72 * min(dpi, column_px / width)`` pixels tall. Returns
    ``(inf, "")`` for a figure without text."""
    from matplotlib.text import Text

    px_per_pt = min(fig.dpi, column_px / shown_width_inches(fig)) / 72.0
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


def _panels(fig) -> list:
    """The visible axes that show data (colour bars left out)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison
            and not hasattr(ax, "_colorbar")]


def unlabelled_axes(fig) -> list[str]:
    """Every axis of a panel that shows tick labels but has no label, in words
    (``"panel 2: the y axis has no label"``); panels are numbered in the order they were
    made."""
    fig.canvas.draw()
    out = []
    for i, ax in enumerate(_panels(fig), start=1):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if (_drawn_tick_labels(axis) and axis.get_visible()
                    and not axis.get_label_text().strip()):
                out.append(f"panel {i}: the {name} axis has no label")
    return out


def _drawn_tick_labels(axis) -> list:
    """The tick labels that ``axis`` draws, major and minor, with text. ``Axis.get_ticklabels``
    also returns the labels of ticks that the locator placed outside the view limits (a log
    axis's next decade): those are never drawn, but sit where a legend below the panels is."""
    return [t.label1 for t in axis._update_ticks()
            if t.label1.get_visible() and t.label1.get_text().strip()]


def _shrunk(bbox, by: float):
    from matplotlib.transforms import Bbox

    if bbox.width <= 2 * by or bbox.height <= 2 * by:
        return bbox
    return Bbox.from_extents(bbox.x0 + by, bbox.y0 + by, bbox.x1 - by, bbox.y1 - by)


def _segments_hit(xy, region, filled: bool = False) -> bool:
    """Whether the polyline (or polygon) of display points ``xy: (p, 2)`` meets ``region``;
    non-finite points break the line."""
    from matplotlib.path import Path

    xy = np.asarray(xy, float).reshape(-1, 2)
    ok = np.all(np.isfinite(xy), axis=1)
    runs = np.split(xy, np.flatnonzero(~ok))
    for run in runs:
        run = run[np.all(np.isfinite(run), axis=1)]
        if len(run) == 1 and region.contains(*run[0]):
            return True
        if len(run) >= 2 and Path(run).intersects_bbox(region, filled=filled):
            return True
    return False


def _points_hit(xy, region, radius_px: float) -> bool:
    xy = np.asarray(xy, float).reshape(-1, 2)
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    return bool(np.any((xy[:, 0] >= region.x0 - radius_px) & (xy[:, 0] <= region.x1 + radius_px)
                       & (xy[:, 1] >= region.y0 - radius_px) & (xy[:, 1] <= region.y1 + radius_px)))


def _artist_hits(artist, region, fig) -> bool:
    """Whether a data artist of a panel (line, markers, band, bars, image) is drawn inside
    ``region`` (display coordinates, already cut to the panel)."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection
    from matplotlib.lines import Line2D

    if isinstance(artist, Line2D):
        xy = artist.get_transform().transform(artist.get_xydata())
        drawn = artist.get_linestyle() not in ("None", "none", "", " ")
        marker = artist.get_marker() not in (None, "None", "none", "", " ")
        radius = artist.get_markersize() / 2 * fig.dpi / 72
        return (drawn and _segments_hit(xy, region)) or (marker and _points_hit(xy, region,
                                                                                radius))
    if isinstance(artist, PathCollection):
        xy = artist.get_offset_transform().transform(artist.get_offsets())
        sizes = artist.get_sizes()
        radius = float(np.sqrt(np.max(sizes)) / 2 * fig.dpi / 72) if len(sizes) else 0.0
        return _points_hit(xy, region, radius)
    if isinstance(artist, PolyCollection | LineCollection):
        transform = artist.get_transform()
        filled = isinstance(artist, PolyCollection)
        return any(_segments_hit(transform.transform(p.vertices), region, filled=filled)
                   for p in artist.get_paths() if len(p.vertices))
    extent = artist.get_window_extent(fig.canvas.get_renderer())
    return bool(extent.overlaps(region))


def _name(artist) -> str:
    """An artist as a reader would name it: its legend label, else its kind."""
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D

    label = artist.get_label() if hasattr(artist, "get_label") else ""
    if label and not label.startswith("_"):
        return repr(label)
    kinds = [(PathCollection, "points"), (PolyCollection, "a band"), (LineCollection, "lines"),
             (AxesImage, "an image")]
    if isinstance(artist, Line2D):
        return "markers" if _marks(artist) and artist.get_linestyle() in ("None", "") else "a line"
    return next((name for kind, name in kinds if isinstance(artist, kind)),
                type(artist).__name__)


def overlaps(fig) -> list[str]:
    """Where a legend covers data or text, or a marker covers a text, in words
    (``"panel 2: the legend covers 'm = 64'"``).

    A legend (its box less its padding) covers: any line, marker, band, bar or image of a panel
    that it meets inside the panel's axes, any text written in a panel, and any axis label, tick
    label or title of the figure. A marker covers a text written in a panel (an annotation, a
    heat map's cell value) when it is drawn within the text's box. Returns ``[]`` for a clean
    figure.
    """
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = _panels(fig)
    legends = [leg for leg in [ax.get_legend() for ax in fig.axes] + list(fig.legends)
               if leg is not None and leg.get_visible()]
    out = []
    for leg in legends:
        pad = leg.borderpad * leg.prop.get_size_in_points() * fig.dpi / 72
        box = _shrunk(leg.get_window_extent(renderer), pad)
        for i, ax in enumerate(panels, start=1):
            inside = Bbox.intersection(box, ax.bbox)
            if inside is not None and inside.width > 0 and inside.height > 0:
                data = [*ax.lines, *ax.collections, *ax.patches, *ax.images]
                out += [f"panel {i}: the legend covers {_name(a)}" for a in data
                        if a.get_visible() and _artist_hits(a, inside, fig)]
            texts = [*ax.texts, ax.xaxis.label, ax.yaxis.label, ax.title,
                     *_drawn_tick_labels(ax.xaxis), *_drawn_tick_labels(ax.yaxis)]
            out += [f"panel {i}: the legend covers the text {t.get_text()!r}" for t in texts
                    if t.get_visible() and t.get_text().strip()
                    and _area(box, t.get_window_extent(renderer)) > 1.0]
    for i, ax in enumerate(panels, start=1):
        markers = [a for a in [*ax.lines, *ax.collections] if a.get_visible()]
        for t in ax.texts:
            if not (t.get_visible() and t.get_text().strip()):
                continue
            box = t.get_window_extent(renderer)
            out += [f"panel {i}: {_name(a)} covers the text {t.get_text()!r}" for a in markers
                    if _marks(a) and _artist_hits(a, box, fig)]
    return list(dict.fromkeys(out))


def _marks(artist) -> bool:
    """Whether an artist draws markers (points), which may cover a text written in a panel."""
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D

    if isinstance(artist, Line2D):
        return artist.get_marker() not in (None, "None", "none", "", " ")
    return isinstance(artist, PathCollection)


def _area(a, b) -> float:
    from matplotlib.transforms import Bbox

    both = Bbox.intersection(a, b)
    return 0.0 if both is None else max(0.0, both.width) * max(0.0, both.height)


def figure_report(fig, column_px: float = COLUMN_PX) -> dict:
    """What the page will show of ``fig``: its size (inches, and the width of the image shown),
    the smallest text in CSS pixels at ``column_px`` and that text, where a legend or a marker
    covers something (:func:`overlaps`) and the unlabelled axes (:func:`unlabelled_axes`)."""
    px, text = smallest_text_px(fig, column_px)
    return {
        "width_in": float(fig.get_figwidth()),
        "height_in": float(fig.get_figheight()),
        "shown_width_in": shown_width_inches(fig),
        "column_px": column_px,
        "smallest_text_px": px,
        "smallest_text": text,
        "overlaps": overlaps(fig),
        "unlabelled": unlabelled_axes(fig),
    }


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
