"""The book's figures are drawn for its text column: their smallest text is legible there, and
the measurements the figure tests rely on (legends or markers over data, unlabelled axes) find
what they should."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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
    shown = plotting.shown_width_inches(fig)
    plt.close(fig)
    assert px < plotting.MIN_TEXT_PX
    assert 11 < shown < 14.5  # the image the notebook shows: the tight box, plus its margin
    assert px == pytest.approx(10 / 72 * plotting.COLUMN_PX / shown, rel=0.01)


def test_a_request_wider_than_the_column_is_cut_to_it_keeping_its_height():
    fig, _ = plotting.figure(ncols=2, width=14, height=4)
    plt.close(fig)
    assert fig.get_size_inches() == pytest.approx((plotting.COLUMN_INCHES, 4.0))


def test_the_column_is_the_figure_width_at_the_figure_dpi():
    # the figures the notebooks show are exactly the column wide: the page does not shrink them
    fig, _ = plotting.figure()
    plt.close(fig)
    assert fig.get_figwidth() * fig.dpi == pytest.approx(plotting.COLUMN_PX)
    assert plotting.MIN_TEXT_PX >= 10


def _two_panels():
    fig, axes = plotting.figure(ncols=2)
    x = np.linspace(0.0, 1.0, 40)
    for ax in axes:
        ax.plot(x, x, label="the diagonal")
        ax.fill_between(x, x - 0.1, x + 0.1, alpha=0.2)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    return fig, axes


def test_a_legend_on_a_line_or_a_band_is_an_overlap_and_one_off_them_is_not():
    fig, axes = _two_panels()
    axes[0].legend(loc="center")  # on the diagonal
    axes[1].legend(loc="upper left")  # in the empty corner
    found = plotting.overlaps(fig)
    plt.close(fig)
    assert "panel 1: the legend covers 'the diagonal'" in found
    assert "panel 1: the legend covers a band" in found
    assert not [f for f in found if f.startswith("panel 2")]


def test_markers_on_a_legend_or_on_a_written_value_are_overlaps():
    fig, ax = plotting.figure()
    ax.scatter([0.5], [0.5], label="a point")
    ax.plot([0.2], [0.8], "x")
    ax.text(0.2, 0.8, "0.93", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="x", ylabel="y")
    ax.legend(loc="center")
    found = plotting.overlaps(fig)
    plt.close(fig)
    assert found == ["panel 1: the legend covers 'a point'",
                     "panel 1: markers covers the text '0.93'"]


def test_a_legend_below_the_panels_clear_of_their_labels_is_clean():
    fig, axes = _two_panels()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center")
    assert plotting.overlaps(fig) == []
    plt.close(fig)


def test_a_tick_label_outside_the_view_is_not_covered_by_a_legend_below_the_panels():
    fig, axes = plotting.figure(ncols=2, height=4.0)
    x = np.array([64.0, 128.0, 256.0, 512.0, 1024.0])
    for ax in axes:
        ax.plot(x, 0.9 * x**-0.5, "o-", label="a curve whose label is long enough to span")
        ax.plot(x, 0.5 * x**-0.5, "s-", label="a second curve with a long legend entry")
        plotting.log_axes(ax, x, base=2)
        plotting.label(ax, "width $m$", "deviation", legend=False)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
    fig.canvas.draw()
    low, _ = axes[1].get_ylim()
    hidden = [t for t in axes[1].get_yticklabels() if t.get_position()[1] < low]
    assert hidden, "the log axis should place a tick below its view, as Matplotlib does"
    assert plotting.overlaps(fig) == []
    axes[1].legend(loc="center")  # on the curves: still found
    assert any(f.startswith("panel 2: the legend covers") for f in plotting.overlaps(fig))
    plt.close(fig)


def test_every_panel_with_ticks_needs_its_axis_labels():
    fig, axes = plotting.figure(ncols=2, sharey=True)
    for ax in axes:
        ax.plot([1, 2], [1, 2])
        ax.set_xlabel("width m")
    axes[0].set_ylabel("loss")
    assert plotting.unlabelled_axes(fig) == []  # the shared y axis shows no ticks on panel 2
    axes[1].yaxis.set_tick_params(labelleft=True)
    assert plotting.unlabelled_axes(fig) == ["panel 2: the y axis has no label"]
    plt.close(fig)


def test_the_figure_report_holds_what_the_tests_check():
    fig, axes = _two_panels()
    report = plotting.figure_report(fig)
    plt.close(fig)
    assert report["overlaps"] == [] and report["unlabelled"] == []
    assert report["smallest_text_px"] >= plotting.MIN_TEXT_PX
    assert report["column_px"] == plotting.COLUMN_PX


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
