"""The helpers the chapters share instead of defining their own: plotting of seed bands with a
fitted line, log width axes, median points; Gram spectra and statistics at initialisation; the
linearised loss curves; the environment tables."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from localsgd import analysis, experiments, plotting, theory
from localsgd.claims import setting, two_layer
from localsgd_book import environment


def test_band_with_fit_returns_the_slope_of_the_medians():
    x = np.array([64.0, 128.0, 256.0, 512.0])
    values = np.stack([3.0 * x**-0.5, 5.0 * x**-0.5, 4.0 * x**-0.5])  # medians 4 x^-1/2
    fig, ax = plt.subplots()
    slope, se = plotting.band_with_fit(ax, x, values, label="v")
    plt.close(fig)
    assert slope == pytest.approx(-0.5, abs=1e-9) and se == pytest.approx(0.0, abs=1e-9)
    assert (slope, se) == pytest.approx(analysis.loglog_slope(x, np.median(values, axis=0)))


def test_log_axes_and_median_points():
    fig, ax = plt.subplots()
    bars = plotting.median_points(ax, [1, 2, 4], np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]))
    plotting.log_axes(ax, [1, 2, 4], base=2)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    np.testing.assert_allclose(bars.lines[0].get_ydata(), [2.0, 3.0, 4.0])
    plt.close(fig)


def test_gram_spectra_and_statistics_match_a_direct_eigendecomposition():
    exp = experiments.Experiment(n=6, d=4, m=32, L=1, seeds=2)
    spec = exp.net_spec()
    params0, _ = experiments.init_params(exp, spec)
    x = np.random.default_rng(0).normal(size=(6, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    grams = np.asarray(theory.grams_at_init(spec, params0, x), np.float64)
    lo, hi = theory.gram_spectra(spec, params0, [x, x[:4]])
    assert lo.shape == hi.shape == (2, 2)
    eig = np.linalg.eigvalsh(0.5 * (grams + grams.transpose(0, 2, 1)))
    np.testing.assert_allclose(lo[:, 0], eig[:, 0], rtol=1e-4)
    np.testing.assert_allclose(hi[:, 0], eig[:, -1], rtol=1e-4)
    lam, err = two_layer.gram_statistics(grams, grams[0])
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(grams)[:, 0])
    assert err[0] == 0.0 and err[1] > 0.0


def test_linearised_curves_pass_through_the_anchor_at_the_linear_rate():
    it = np.arange(0.0, 50.0, 10.0)
    loss = np.array([[1.0, 0.5, 0.3, 0.2, 0.1]])
    curves = theory.linearised_curves(it, loss, [0.5], [2.0], 8, anchor=2)
    assert curves[0, 2] == pytest.approx(0.3)
    assert curves[0, 3] / curves[0, 2] == pytest.approx(theory.linear_rate(0.5, 2.0, 8) ** 10)


def test_forward_deviations_per_draw():
    norms = np.ones((2, 3, 2, 5))  # (widths, seeds, layers, n)
    norms[1, 2, 1, 4] = 1.3
    norms[0, 0, :, :] = 0.9
    worst, layer_mean = setting.deviations(norms)
    assert worst.shape == layer_mean.shape == (3, 2)
    assert worst[2, 1] == pytest.approx(0.3) and layer_mean[2, 1] == pytest.approx(0.06)
    assert worst[0, 0] == pytest.approx(0.1) and worst[1, 0] == 0.0


def test_pins_read_only_exact_pins(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\njax[cuda12]==0.4.1 ; sys_platform == 'linux'\nflax>=0.8\n"
                   "numpy == 2.0.0\n")
    assert environment.pins(req) == {"jax": "0.4.1", "numpy": "2.0.0"}


@pytest.mark.parametrize(
    "value, fmt, text",
    [
        (4096.0, None, "4096"),
        (np.float64(17600.0), None, "17600"),
        (np.int64(7), None, "7"),
        (float("inf"), None, "not reached"),
        ("inf", None, "not reached"),  # as a JSON record holds it
        (float("nan"), None, "n/a"),
        (0.000123, ".1f", "0.00012"),  # significant digits, never "0.0"
        (0.0, ".1f", "0.0"),
        (0.123456, None, "0.1235"),
        (1.23e-7, None, "1.23 × 10⁻⁷"),
        (12345.678, None, "12346"),
        (2.0, ".2f", "2.00"),
        (3, ".3g", "3"),
        (True, None, "True"),
        ("text", None, "text"),
    ],
)
def test_numbers_are_written_one_way(value, fmt, text):
    assert analysis.format_number(value, fmt) == text


def test_tables_glue_and_verdict_boxes_write_numbers_with_the_one_helper(monkeypatch):
    from localsgd.claims import Check
    from localsgd_book import report

    table = analysis.markdown_table(["m", "rounds", "stderr"], [[4096.0, float("inf"), 1e-5]])
    assert table.splitlines()[-1] == "| 4096 | not reached | 1 × 10⁻⁵ |"
    glued = {}
    monkeypatch.setattr(report, "_myst_glue", lambda name, value: glued.update({name: repr(value)}))
    report.glue("m", np.float64(4096.0))
    report.glue("rounds", float("inf"))
    report.glue("se", 0.00004, fmt=".1f")
    assert glued == {"m": "4096", "rounds": "not reached", "se": "4 × 10⁻⁵"}
    record = {"chapter": "x", "claim": "c", "holds": False, "profile": "ci", "book": True}
    check = Check.at_most("rounds to \\(\\varepsilon\\)", float("inf"), 100)
    box = report._verdict_html(record, [check], "verdicts/x.json")
    assert ">not reached<" in box and "mathjax_process" in box


def _bootstrap_one_at_a_time(x, values, bootstrap, level=0.95, seed=0):
    """The bootstrap of analysis.bootstrap_loglog written out one resample at a time."""
    X = np.repeat(np.asarray(x, float)[:, None], values.shape[1], axis=1)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(bootstrap):
        sample = np.take_along_axis(values, rng.integers(0, values.shape[1], values.shape), 1)
        ok = np.isfinite(sample) & (sample > 0)
        if ok.sum() >= 3 and np.unique(X[ok]).size > 1:
            boot.append(analysis.fit(X[ok], sample[ok], log="xy").slope)
    return tuple(np.percentile(boot, [50 * (1 - level), 50 * (1 + level)]))


@pytest.mark.parametrize("bad", [None, np.nan, 0.0])
def test_bootstrap_loglog_equals_refitting_one_resample_at_a_time(bad):
    rng = np.random.default_rng(1)
    x = np.array([32.0, 64.0, 128.0, 256.0, 512.0])
    values = x[:, None] ** -0.5 * np.exp(rng.normal(0.0, 0.3, (5, 3)))
    if bad is not None:
        values[1, 0] = values[3, 2] = bad  # left out of every fit
    p, lo, hi = analysis.bootstrap_loglog(x, values, bootstrap=300, seed=4)
    assert p == pytest.approx(analysis.fit(np.repeat(x, 3), values.ravel(), log="xy").slope)
    assert (lo, hi) == pytest.approx(_bootstrap_one_at_a_time(x, values, 300, seed=4), rel=1e-9)
    assert lo < p < hi
