"""The book's figures are sized for its text column: their smallest text must be legible."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from localsgd import plotting  # noqa: E402


def _with_text(fig, axes):
    for ax in axes:
        ax.plot([1, 2, 3], [3, 1, 2], label="a curve")
        ax.set_xlabel("iteration t")
        ax.set_title("a panel")
        ax.legend()
    return plotting.smallest_text_px(fig)[0]


@pytest.mark.parametrize("ncols, nrows", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_book_figures_are_legible_at_the_column_width(ncols, nrows):
    fig, axes = plotting.figure(ncols=ncols, nrows=nrows, squeeze=False)
    px = _with_text(fig, axes.ravel())
    plt.close(fig)
    assert fig.get_figwidth() == pytest.approx(plotting.COLUMN_INCHES)
    assert px >= plotting.MIN_TEXT_PX


def test_a_wide_figure_with_default_fonts_is_caught():
    # 14 inches wide with text of at most 10 pt: the page shrinks it to the column, and 10 pt
    # becomes ~6.8 px
    sizes = ("font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize",
             "ytick.labelsize", "legend.fontsize")
    with plt.rc_context(dict.fromkeys(sizes, 10)):
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        px = _with_text(fig, axes)
    plt.close(fig)
    assert px < plotting.MIN_TEXT_PX
    assert px == pytest.approx(10 / 72 * plotting.COLUMN_PX / 14, rel=0.05)


def test_a_request_wider_than_the_column_is_cut_to_it_keeping_its_height():
    fig, _ = plotting.figure(ncols=2, width=14, height=4)
    plt.close(fig)
    assert fig.get_size_inches() == pytest.approx((plotting.COLUMN_INCHES, 4.0))


def test_log_axes_label_a_y_axis_that_spans_less_than_a_decade():
    fig, ax = plotting.figure()
    x = [64, 256, 1024]
    ax.plot(x, [0.05, 0.035, 0.02])
    plotting.log_axes(ax, x)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()
             if t.get_text() and ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]
    assert len(shown) >= 2, shown
    assert "0.03" in shown and not any("times" in t for t in shown), shown
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "256", "1024"]
    assert not ax.xaxis.get_minorticklocs().size
