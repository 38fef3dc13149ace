"""Helpers of the two-layer chapter (12): the two-layer network's infinite-width Gram."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from localsgd import data, diagnostics, model, theory


def test_gram_infinity_is_the_mean_of_the_two_layer_ntk_gram():
    x = data.sphere(6, 5, seed=1).x
    H = theory.gram_infinity(x)
    spec = model.NetSpec("two_layer", 5, 20000, 1, 1)
    G = np.asarray(diagnostics.ntk_gram(spec, model.init(jax.random.key(0), spec), x))
    assert H.shape == (6, 6)
    np.testing.assert_allclose(np.diag(H), 0.5 * np.sum(x.astype(float) ** 2, 1), rtol=1e-6)
    # m = 20000 i.i.d. neurons: entries within a few m^{-1/2} of the mean
    assert np.max(np.abs(G - H)) < 0.03
    assert np.linalg.eigvalsh(H)[0] > 0


def test_gram_infinity_closed_form_on_orthogonal_and_parallel_inputs():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    H = theory.gram_infinity(x)
    assert H[0, 1] == pytest.approx(0.0)  # orthogonal: x_i.x_j = 0
    assert H[0, 2] == pytest.approx(0.5)  # parallel: the indicator agrees half of the time
    with pytest.raises(ValueError, match="x must"):
        theory.gram_infinity(np.zeros((2, 3)))
