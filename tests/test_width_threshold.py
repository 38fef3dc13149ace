"""The logistic threshold fit of chapter 08 (localsgd.claims.width_threshold)."""

from __future__ import annotations

import numpy as np
from scipy import optimize

from localsgd.claims import width_threshold as wt

WIDTHS = np.array([8, 16, 32, 64, 128])


def _by_nelder_mead(successes, trials):
    """The same likelihood (half a success and half a failure added) minimised by scipy."""
    logm = np.log(WIDTHS)
    k, t = successes + 0.5, trials + 1.0

    def nll(theta):
        z = theta[1] * (logm - theta[0])
        return np.sum(t * np.logaddexp(0.0, -z) + (t - k) * z)

    res = optimize.minimize(nll, [np.mean(logm), 1.0], method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
    return np.exp(res.x[0]), res.x[1]


def test_the_fit_is_the_maximum_likelihood_of_every_row_at_once():
    rng = np.random.default_rng(3)
    trials = np.full((40, WIDTHS.size), 12)
    p = 1 / (1 + np.exp(-rng.uniform(0.5, 4, (40, 1)) * (np.log(WIDTHS) - np.log(
        rng.uniform(10, 100, (40, 1))))))
    successes = rng.binomial(trials, p)
    successes[0] = [0, 0, 12, 12, 12]  # perfectly separated: the prior keeps it finite
    m_star, slope = wt.fit_thresholds(WIDTHS, successes, trials)
    for i in range(40):
        frac = (successes[i] + 0.5) / 13
        if not (frac.min() < 0.5 < frac.max()):
            assert np.isnan(m_star[i]) and np.isnan(slope[i])
            continue
        want = _by_nelder_mead(successes[i], trials[i])
        np.testing.assert_allclose([m_star[i], slope[i]], want, rtol=1e-6)
        np.testing.assert_allclose(wt.fit_threshold(WIDTHS, successes[i], trials[i]),
                                   [m_star[i], slope[i]], rtol=1e-9)
    assert np.isfinite(m_star).sum() >= 30


def test_a_row_that_never_crosses_one_half_has_no_threshold():
    m_star, slope = wt.fit_threshold(WIDTHS, [9, 10, 11, 12, 12], np.full(5, 12))
    assert np.isnan(m_star) and np.isnan(slope)
