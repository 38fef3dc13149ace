"""Performance properties of localsgd.engine that can be checked without timing anything:
what triggers a compilation, how the compiled program's memory depends on tau, and that the
client layouts (``RunConfig.layout``) and the hand-written backward pass give the numbers of the
straightforward formulation. Timings live in ``bench/run.py`` (``make bench``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localsgd import data as dt
from localsgd import engine as al
from localsgd import model

D, M = 8, 16
SPEC = model.NetSpec("deep", D, M, 2, 3)
SGD = al.RunConfig("local_sgd", rounds=3, tau=2, eta=0.1, batch_size=2)


@pytest.fixture(scope="module")
def clients():
    ds = dt.sphere(24, D, 3, seed=0)
    return dt.to_clients(ds.x, ds.y, dt.partition(ds.labels, 3, seed=0))  # 8 samples each


@pytest.fixture(scope="module")
def p0():
    return model.init(jax.random.key(0), SPEC)


def _size(f) -> int:
    return f._cache_size()


def test_no_recompilation_for_new_seed_data_or_eta(clients, p0):
    """A new key, new data values, new initial weights or a new eta reuse the compiled program;
    a new shape or static setting compiles a new one."""
    al.run(SGD, SPEC, p0, clients, jax.random.key(1))
    n = _size(al._train_jit)
    al.run(SGD, SPEC, p0, clients, jax.random.key(2))
    noisy = clients._replace(x=np.asarray(clients.x) * 0.5, y=np.asarray(clients.y) + 1.0)
    al.run(SGD, SPEC, p0, noisy, jax.random.key(3))
    al.run(al.RunConfig("local_sgd", 3, 2, 0.37, 2), SPEC, model.init(jax.random.key(9), SPEC),
           clients, jax.random.key(4))
    assert _size(al._train_jit) == n
    al.run(al.RunConfig("local_sgd", 3, 3, 0.1, 2), SPEC, p0, clients, jax.random.key(1))  # tau
    assert _size(al._train_jit) == n + 1


def test_no_recompilation_in_sweeps(clients, p0):
    params = jax.tree.map(lambda a: jnp.stack([a] * 4), p0)
    keys = jax.random.split(jax.random.key(0), 4)
    al.sweep(SGD, SPEC, params, clients, keys)
    n = _size(al._sweep_jit)
    al.sweep(SGD, SPEC, params, clients, jax.random.split(jax.random.key(1), 4),
             etas=[0.1, 0.2, 0.3, 0.4])
    al.sweep(SGD, SPEC, jax.vmap(lambda k: model.init(k, SPEC))(keys), clients, keys)
    assert _size(al._sweep_jit) == n


def test_compilations_are_logged_once(clients, p0, caplog):
    """The same through JAX's own compile log: a new eta and key compile nothing; a new tau
    compiles exactly one program (which also shows that the log is being captured)."""
    al.run(al.RunConfig("local_gd", rounds=2, tau=2, eta=0.2), SPEC, p0, clients,
           jax.random.key(0))

    def compiles():
        return [r.getMessage() for r in caplog.records
                if "Compiling" in r.getMessage() and "_train" in r.getMessage()]

    with jax.log_compiles(True), caplog.at_level("WARNING", logger="jax"):
        caplog.clear()
        al.run(al.RunConfig("local_gd", rounds=2, tau=2, eta=0.3), SPEC, p0, clients,
               jax.random.key(5))
        assert compiles() == []
        al.run(al.RunConfig("local_gd", rounds=2, tau=4, eta=0.3), SPEC, p0, clients,
               jax.random.key(5))
        assert len(compiles()) == 1, compiles()


def _temp_bytes(cfg, clients, p0) -> int:
    data = dt.ClientData(*(jnp.asarray(a) for a in clients))
    lowered = al._train_jit.lower(cfg, SPEC, jnp.float32(cfg.eta), p0, data,
                                  jax.random.key(0), None, layout=al.layout_for(cfg))
    return lowered.compile().memory_analysis().temp_size_in_bytes


def test_memory_does_not_grow_with_tau(clients, p0):
    """Metrics are recorded once per evaluation, and the local steps run in a loop: the compiled
    program's memory is no larger for 200 local steps than for 2 (Local GD), and for Local SGD grows
    only by the round's minibatch scores, drawn at once for the round's tau steps (at most 32
    bytes a sample and step here; 4 are the scores, the rest the PRNG's workspace)."""
    mem = {tau: _temp_bytes(al.RunConfig("local_gd", rounds=4, tau=tau, eta=0.1), clients, p0)
           for tau in (2, 200)}
    assert mem[200] <= mem[2], mem
    mem = {tau: _temp_bytes(al.RunConfig("local_sgd", rounds=4, tau=tau, eta=0.1, batch_size=2,
                                         metrics=("loss", "client_loss", "dist")), clients, p0)
           for tau in (2, 200)}
    K, n_max = clients.mask.shape
    assert mem[200] - mem[2] <= 32 * 198 * K * n_max, mem


@pytest.mark.parametrize("algorithm", ["local_sgd", "local_gd"])
def test_client_layouts_agree(clients, p0, algorithm):
    """"map" (clients in turn, the CPU default) and "vmap" (clients batched) compute the same
    products: the same numbers, to float32 rounding (bitwise on the CPUs we measured)."""
    cfg = al.RunConfig(algorithm, rounds=3, tau=3, eta=0.2,
                       batch_size=2 if algorithm == "local_sgd" else None,
                       metrics=("loss", "client_loss", "drift"))
    outs = {loop: al.run(dataclasses.replace(cfg, layout=loop), SPEC, p0, clients,
                         jax.random.key(3)) for loop in ("map", "vmap")}
    a, b = outs["map"], outs["vmap"]
    for k in a.metrics:
        np.testing.assert_allclose(a.metrics[k], b.metrics[k], rtol=1e-5, atol=1e-7)
    for x, y in zip(a.params["trainable"], b.params["trainable"]):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("algorithm, tau", [("local_sgd", 1), ("local_sgd", 3), ("local_gd", 2)])
def test_clients_taken_together_change_no_number(clients, p0, algorithm, tau):
    """In the "map" layout the clients step ``clients_together`` at a time (3 clients: groups of
    1, of 2 plus a remainder of 1, and of 3) and the average is summed as they finish: every
    grouping gives the same numbers, with and without the local models kept for the round-end
    metrics. The same up to float32 rounding, not bitwise: XLA may fuse a group's weighted sum
    into multiply-adds, which round once where a multiply and an add round twice."""
    data = dt.ClientData(*(jnp.asarray(a) for a in clients))
    results = []
    for metrics in (("loss",), ("loss", "drift", "gap")):
        cfg = al.RunConfig(algorithm, rounds=2, tau=tau, eta=0.2, metrics=metrics,
                           batch_size=2 if algorithm == "local_sgd" else None)
        outs = []
        for G in (1, 2, 3):
            cg = dataclasses.replace(cfg, layout="map", clients_together=G)
            outs.append(al.run(cg, SPEC, p0, data, jax.random.key(4)))
        for o in outs[1:]:
            for k in outs[0].metrics:
                np.testing.assert_allclose(o.metrics[k], outs[0].metrics[k], rtol=1e-6, atol=1e-7)
            for a, b in zip(o.params["trainable"], outs[0].params["trainable"]):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        results.append(outs[0])
    np.testing.assert_array_equal(results[0].metrics["loss"], results[1].metrics["loss"])


@pytest.mark.parametrize("activation, arch", [("relu", "deep"), ("softplus", "deep"),
                                              ("gelu", "deep"), ("relu", "two_layer")])
def test_handwritten_backward_equals_autodiff(activation, arch):
    """``model.backprop`` against ``jax.grad`` of ``model.weighted_loss``, and its fused update
    against ``W - eta * grad``."""
    L = 1 if arch == "two_layer" else 3
    spec = model.NetSpec(arch, D, M, L, 3, activation)
    p = model.init(jax.random.key(1), spec)
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(k1, (5, D))
    f = model.features(spec, p["fixed"], x)
    y = jax.random.normal(k2, (5, 3))
    w = jax.random.uniform(k3, (5,)).at[2].set(0.0)  # a padded sample
    auto = jax.grad(model.weighted_loss, argnums=1)(spec, p["trainable"], p["fixed"], f, y, w)
    mine = model.backprop(spec, p["fixed"], p["trainable"], f, y, w)
    stepped = model.backprop(spec, p["fixed"], p["trainable"], f, y, w,
                             update=lambda l, a, g: a - 0.5 * g)
    for g0, g1, s, W in zip(auto, mine, stepped, p["trainable"]):
        np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(s, W - 0.5 * g0, rtol=1e-5, atol=1e-7)


def test_pick_equals_stable_argsort():
    """Minibatches come from ``top_k``; they are the ``b`` first of a stable argsort, ties
    included (tested with many exact ties)."""
    s = jnp.floor(jax.random.uniform(jax.random.key(0), (50, 4, 24)) * 6) / 6
    s = s.at[:, 1, 20:].set(2.0)  # padding
    np.testing.assert_array_equal(al._pick(s, 5), jnp.argsort(s, axis=-1)[..., :5])


def test_sweep_runs_equal_single_runs_bitwise_on_cpu(clients, p0):
    """On a CPU the sweep runs its runs in turn inside one program: each run's numbers are those
    of ``run``."""
    if al.layout_for(SGD) != "map":
        pytest.skip("the sweep vmaps its runs on this backend (equal to rounding only)")
    keys = jax.random.split(jax.random.key(8), 3)
    params = jax.vmap(lambda k: model.init(k, SPEC))(keys)
    sw = al.sweep(SGD, SPEC, params, clients, keys, etas=[0.1, 0.05, 0.2])
    for s, eta in enumerate([0.1, 0.05, 0.2]):
        one = al.run(al.RunConfig("local_sgd", 3, 2, eta, 2), SPEC,
                     jax.tree.map(lambda a, s=s: a[s], params), clients, keys[s])
        np.testing.assert_array_equal(sw.metrics["loss"][s], one.metrics["loss"])
        for a, b in zip(sw.params["trainable"], one.params["trainable"]):
            np.testing.assert_array_equal(a[s], b)
