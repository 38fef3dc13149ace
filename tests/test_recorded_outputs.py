"""The metrics 'outputs' and 'test_outputs': the averaged model's predictions on the training
points and at probe points, recorded inside the scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localsgd import data as dt
from localsgd import engine, model
from localsgd.config import RunConfig

SPEC = model.NetSpec("deep", 8, 32, 2, 3)


def _setup():
    ds = dt.sphere(12, 8, 3, seed=0)
    clients = dt.to_clients(ds.x, ds.y, dt.partition(ds.labels, 3, "iid", seed=0))
    probe = jnp.asarray(dt.sphere(5, 8, 3, seed=1).x)
    return clients, probe, model.init(jax.random.key(0), SPEC)


@pytest.mark.parametrize("algorithm", ["local_sgd", "gd"])
def test_recorded_outputs_are_the_models_predictions(algorithm):
    clients, probe, p0 = _setup()
    tau = 1 if algorithm == "gd" else 2
    cfg = RunConfig(algorithm=algorithm, rounds=4, tau=tau, eta=0.3, eval_every=2,
                    batch_size=2 if algorithm == "local_sgd" else None,
                    metrics=("loss", "outputs", "test_outputs"))
    out = engine.run(cfg, SPEC, p0, clients, jax.random.key(1), probe=probe)
    outs, test = np.asarray(out.metrics["outputs"]), np.asarray(out.metrics["test_outputs"])
    assert outs.shape == (3,) + clients.mask.shape + (3,) and test.shape == (3, 5, 3)
    mask = np.asarray(clients.mask) > 0
    want = np.asarray(model.apply(SPEC, out.params, jnp.asarray(clients.x[mask])))
    np.testing.assert_allclose(outs[-1][mask], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(test[-1], model.apply(SPEC, out.params, probe), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(test[0], model.apply(SPEC, p0, probe), rtol=1e-5, atol=1e-6)
    # the loss is the mean squared loss of the recorded outputs
    loss = 0.5 * np.mean(np.sum((outs[-1][mask] - np.asarray(clients.y)[mask]) ** 2, -1))
    assert float(out.metrics["loss"][-1]) == pytest.approx(loss, rel=1e-5)


def test_test_outputs_need_probe_points():
    clients, probe, p0 = _setup()
    cfg = RunConfig(algorithm="local_gd", rounds=2, metrics=("loss", "test_outputs"))
    with pytest.raises(ValueError, match="probe"):
        engine.run(cfg, SPEC, p0, clients, jax.random.key(1))
    with pytest.raises(ValueError, match="probe"):
        engine.run(cfg, SPEC, p0, clients, jax.random.key(1), probe=probe[:, :4])
