"""localsgd.analysis.time_to_eps: the communication cost model of chapter 09."""

from __future__ import annotations

import math

import numpy as np
import pytest

from localsgd.analysis import time_to_eps


def test_time_to_eps_is_the_sum_of_latency_transfer_and_compute():
    # 10 rounds, 40 steps, 5 ms latency, 1 MB model over 100 MB/s, 2 ms per step
    t = time_to_eps(10, 40, 5e-3, 1e8, 1e6, 2e-3)
    assert t == pytest.approx(10 * 5e-3 + 10 * 1e6 / 1e8 + 40 * 2e-3)


def test_time_to_eps_broadcasts_over_tau_and_latency():
    rounds = np.array([100.0, 30.0, 10.0])
    steps = rounds * np.array([1, 4, 16])
    lat = np.array([0.0, 1e-3, 1.0])[:, None]
    t = time_to_eps(rounds, steps, lat, 1e9, 4e4, 1e-3)
    assert t.shape == (3, 3)
    np.testing.assert_allclose(t[:, 1], 30 * lat[:, 0] + 30 * 4e-5 + 120 * 1e-3)
    # with no latency the fewest steps win here; with a large latency the fewest rounds win
    assert np.argmin(t[0]) == 0 and np.argmin(t[-1]) == 2


def test_time_to_eps_keeps_inf_for_runs_that_never_got_there():
    assert math.isinf(time_to_eps(np.inf, np.inf, 1e-3, 1e9, 1e3, 1e-3))


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(rounds=-1), "rounds"),
        (dict(steps=np.nan), "steps"),
        (dict(latency=[0.1, -0.1]), "latency"),
        (dict(model_bytes=-5), "model_bytes"),
        (dict(step_time=-1e-3), "step_time"),
        (dict(bandwidth=0.0), "bandwidth"),
    ],
)
def test_time_to_eps_rejects_bad_input_naming_it(kw, name):
    args = dict(rounds=10, steps=10, latency=1e-3, bandwidth=1e9, model_bytes=1e3, step_time=1e-3)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        time_to_eps(**args)
