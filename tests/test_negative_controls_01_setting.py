"""Negative controls for chapter 01: the forward-stability checks of `localsgd.claims.setting`
hold at ALS19's initialisation and fail when the initialisation variance is wrong; the separation
check fails when the data are not separated as constructed."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from localsgd import data, diagnostics, experiments, model
from localsgd.claims import all_hold, setting

N, D, L = 16, 16, 4
WIDTHS = [64, 128, 256, 512]


def _norms():
    x = jnp.asarray(data.sphere(N, D, seed=0).x)
    out = []
    for m in WIDTHS:
        exp = experiments.Experiment(n=N, d=D, m=m, L=L, seeds=4)
        spec = exp.net_spec()
        params0, _ = experiments.init_params(exp, spec)
        norms = jax.jit(jax.vmap(lambda p, s=spec: diagnostics.forward_norms(s, p, x)))(params0)
        out.append(np.asarray(norms))
    return np.stack(out)


def test_forward_stability_holds_at_als19_initialisation():
    checks = setting.forward_stability(WIDTHS, _norms())
    assert all_hold(checks), [c for c in checks if not c.holds]


def test_negative_control_01_setting_wrong_init_variance(monkeypatch):
    init = model.init

    def wrong(key, spec, dtype=np.float32):  # N(0, 3/m) instead of He's N(0, 2/m)
        p = init(key, spec, dtype)
        c = math.sqrt(1.5)
        return {"trainable": tuple(c * w for w in p["trainable"]),
                "fixed": {**p["fixed"], "A": c * p["fixed"]["A"]}}

    monkeypatch.setattr(model, "init", wrong)
    checks = setting.forward_stability(WIDTHS, _norms())
    assert not all_hold(checks)
    assert not checks[0].holds  # the worst deviation exceeds the computed eps(m)


def test_negative_control_01_setting_separation_not_as_constructed(monkeypatch):
    sphere = data.sphere

    def halved(n, d, d_out=1, *, delta=None, **kw):  # pairs placed at delta / 2
        return sphere(n, d, d_out, delta=None if delta is None else delta / 2, **kw)

    monkeypatch.setattr(data, "sphere", halved)
    deltas = [0.05, 0.1, 0.2]
    measured = [data.separation(data.sphere(N, D, delta=dl).x) for dl in deltas]
    assert not all_hold(setting.separation(deltas, measured))
