"""localsgd.kernel: the kernel model of a run, against closed forms, against an independent
weight-space simulation of the linearised network, and against the network itself."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from localsgd import algorithms, diagnostics, engine, experiments, kernel, model
from localsgd.claims import all_hold
from localsgd.claims import kernel_model as km
from localsgd.config import RunConfig

K, NK, DOUT, P = 3, 4, 2, 40  # clients, samples per client, outputs, linear-model parameters


def linear_model(seed=0, d_out=DOUT, extra=0):
    """A linear model ``u = u0 + J w``: ``J: (M d_out, P)`` (training rows first), its Gram, the
    initial outputs and targets on ``N = K * NK`` training points and ``extra`` more points."""
    rng = np.random.default_rng(seed)
    N = K * NK
    M = N + extra
    J = rng.normal(size=(M * d_out, P)) / np.sqrt(P)
    u0 = rng.normal(size=(M, d_out))
    y = rng.normal(size=(N, d_out))
    gram = (J @ J[: N * d_out].T).reshape(M, d_out, N, d_out)
    return J, gram, u0, y


def balanced_mask(k=K, nk=NK):
    return np.ones((k, nk))


def weight_space(alg, J, u0, y, eta, tau, rounds, batches=None, mu=0.0, k=K, nk=NK):
    """The linearised network trained in weight space, written out independently for each
    algorithm (momentum 0.9 for ``local_sgd_momentum``): the outputs after every round,
    ``(rounds + 1, M, d_out)``."""
    d_out = u0.shape[1]
    N = k * nk
    Jt = J.reshape(-1, d_out, J.shape[1])  # (M, d_out, P)

    def grad(w, rows, wts):
        r = (u0[rows] + Jt[rows] @ w - y[rows]) * wts[:, None]
        return np.einsum("bo,bop->p", r, Jt[rows])

    w = np.zeros(J.shape[1])
    c_k = np.zeros((k, J.shape[1]))
    out = [u0.copy()]
    for r in range(rounds):
        if alg in ("gd",):
            w = w - eta * grad(w, np.arange(N), np.full(N, 1.0 / N))
        elif alg == "minibatch_sgd":
            b = batches.shape[-1]
            g = sum(grad(w, c * nk + batches[r, 0, c], np.full(b, 1.0 / b)) / k for c in range(k))
            w = w - eta * g
        else:
            c = c_k.mean(axis=0)
            locals_, new_c = [], []
            for cl in range(k):
                wk, mom = w.copy(), np.zeros_like(w)
                for t in range(tau):
                    if batches is None:
                        rows, wts = cl * nk + np.arange(nk), np.full(nk, 1.0 / nk)
                    else:
                        b = batches.shape[-1]
                        rows, wts = cl * nk + batches[r, t, cl], np.full(b, 1.0 / b)
                    g = grad(wk, rows, wts)
                    if alg == "fedprox":
                        g = g + mu * (wk - w)
                    if alg == "scaffold":
                        g = g - c_k[cl] + c
                    if alg == "local_sgd_momentum":
                        mom = g + 0.9 * mom
                        g = mom
                    wk = wk - eta * g
                locals_.append(wk)
                new_c.append(c_k[cl] - c + (w - wk) / (tau * eta))
            if alg == "scaffold":
                c_k = np.array(new_c)
            w = np.mean(locals_, axis=0)
        out.append(u0 + (Jt @ w))
    return np.array(out)


def draw(rounds, tau, b, k=K, nk=NK, seed=1):
    return np.asarray(engine.minibatch_indices(jax.random.key(seed), np.ones((k, nk)), tau, b,
                                               rounds))


def test_gd_is_the_closed_form():
    # (I - eta G / n)^t applied to the initial residual
    _, gram, u0, y = linear_model(d_out=1)
    G = gram[:, 0, :, 0]
    N, eta, T = y.shape[0], 0.3, 12
    prob = kernel.problem(gram, u0, y, balanced_mask())
    cfg = RunConfig(algorithm="gd", rounds=T, eta=eta)
    out = kernel.trajectory(cfg, prob, eta)
    step = np.eye(N) - eta * G / N
    want = [np.linalg.matrix_power(step, t) @ (u0 - y) + y for t in range(T + 1)]
    np.testing.assert_allclose(out, np.array(want), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alg", ["local_gd", "local_sgd", "fedprox", "scaffold",
                                 "local_sgd_momentum", "minibatch_sgd", "gd"])
def test_every_algorithm_is_the_linearised_network_in_weight_space(alg):
    J, gram, u0, y = linear_model(extra=2)
    tau = 1 if algorithms.get(alg).one_step else 3
    b = 2 if algorithms.get(alg).stochastic else None
    rounds, eta, mu = 5, 0.4, 0.7
    batches = draw(rounds, tau, b) if b else None
    cfg = RunConfig(algorithm=alg, rounds=rounds, tau=tau, eta=eta, batch_size=b,
                    prox_mu=mu if alg == "fedprox" else 0.0)
    out = kernel.trajectory(cfg, kernel.problem(gram, u0, y, balanced_mask()), eta, batches)
    want = weight_space(alg, J, u0, y, eta, tau, rounds, batches, mu)
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-11)


def test_local_outputs_are_the_clients_before_averaging():
    _, gram, u0, y = linear_model()
    prob = kernel.problem(gram, u0, y, balanced_mask())
    cfg = RunConfig(algorithm="local_gd", rounds=4, tau=3, eta=0.3, eval_every=2)
    avg, loc = kernel.trajectory(cfg, prob, 0.3, local=True)
    assert loc.shape == (3, K) + u0.shape
    np.testing.assert_allclose(loc[0], np.broadcast_to(u0, loc[0].shape))
    np.testing.assert_allclose(np.tensordot(prob.weight, loc, axes=(0, 1)), avg, rtol=1e-12)
    # a client alone, from the average at round 3, for tau steps: its round-4 model
    one = kernel.problem(gram, u0, y, balanced_mask())
    start = kernel.trajectory(RunConfig(algorithm="local_gd", rounds=3, tau=3, eta=0.3), one,
                              0.3)[-1]
    rows = np.arange(NK)
    u = start.copy()
    G = gram.transpose(2, 3, 0, 1)  # (N, d_out, M, d_out)
    for _ in range(3):
        r = (u[rows] - y[rows]) / NK
        u = u - 0.3 * np.einsum("bp,bpmo->mo", r, G[rows])
    np.testing.assert_allclose(loc[-1, 0], u, rtol=1e-10)


def test_local_gd_with_one_client_is_gd():
    _, gram, u0, y = linear_model()
    one = kernel.problem(gram, u0, y, np.ones((1, K * NK)))
    a = kernel.trajectory(RunConfig(algorithm="local_gd", rounds=7, eta=0.2), one, 0.2)
    b = kernel.trajectory(RunConfig(algorithm="gd", rounds=7, eta=0.2),
                          kernel.problem(gram, u0, y, balanced_mask()), 0.2)
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_local_sgd_with_whole_clients_as_batches_is_local_gd():
    _, gram, u0, y = linear_model()
    prob = kernel.problem(gram, u0, y, balanced_mask())
    batches = draw(4, 3, NK)  # every batch is a permutation of the client's rows
    a = kernel.trajectory(RunConfig(algorithm="local_sgd", rounds=4, tau=3, eta=0.3,
                                    batch_size=NK), prob, 0.3, batches)
    b = kernel.trajectory(RunConfig(algorithm="local_gd", rounds=4, tau=3, eta=0.3), prob, 0.3)
    np.testing.assert_allclose(a, b, rtol=1e-10)


def test_probe_points_move_with_the_cross_kernel():
    # GD: u_probe(t + 1) = u_probe(t) - (eta / N) G(probe, train) (u_train(t) - y)
    _, gram, u0, y = linear_model(d_out=1, extra=3)
    N, eta = y.shape[0], 0.5
    out = kernel.trajectory(RunConfig(algorithm="gd", rounds=6, eta=eta),
                            kernel.problem(gram, u0, y, balanced_mask()), eta)
    cross = gram[N:, 0, :, 0]
    for t in range(6):
        want = out[t, N:] - eta / N * cross @ (out[t, :N] - y)
        np.testing.assert_allclose(out[t + 1, N:], want, rtol=1e-10)


def test_unequal_clients_average_with_their_sizes():
    J, gram, u0, y = linear_model(d_out=1)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], float)
    prob = kernel.problem(gram, u0, y, mask)
    np.testing.assert_allclose(prob.weight, [0.5, 1 / 3, 1 / 6])
    # one local step of each client, averaged n_k / n, is one GD step on all samples
    a = kernel.trajectory(RunConfig(algorithm="local_gd", rounds=3, eta=0.2), prob, 0.2)
    b = kernel.trajectory(RunConfig(algorithm="gd", rounds=3, eta=0.2), prob, 0.2)
    np.testing.assert_allclose(a, b, rtol=1e-10)


def test_sharpness_is_the_critical_step():
    _, gram, u0, y = linear_model(d_out=1)
    N = y.shape[0]
    prob = kernel.problem(gram, u0, y, balanced_mask())
    cfg = RunConfig(algorithm="gd", rounds=60, eta=0.1)
    lam = kernel.sharpness(cfg, prob)
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(gram[:, 0, :, 0])[-1] / N, rtol=1e-10)
    below = kernel.trajectory(cfg, prob, 1.9 / lam)
    above = kernel.trajectory(cfg, prob, 2.1 / lam)
    assert kernel.loss(below[-1], y) < kernel.loss(below[0], y)
    assert kernel.loss(above[-1], y) > 10 * kernel.loss(above[0], y)


def test_sharpness_of_minibatches_covers_every_drawn_batch():
    _, gram, u0, y = linear_model(d_out=2)
    prob = kernel.problem(gram, u0, y, balanced_mask())
    batches = draw(3, 2, 2)
    cfg = RunConfig(algorithm="local_sgd", rounds=3, tau=2, eta=0.1, batch_size=2)
    G = gram.reshape(K * NK * 2, K * NK * 2)
    want = 0.0
    for r, t, c in np.ndindex(3, 2, K):
        rows = c * NK + batches[r, t, c]
        idx = np.ravel([[2 * i, 2 * i + 1] for i in rows])
        want = max(want, np.linalg.eigvalsh(G[np.ix_(idx, idx)])[-1] / 2)
    np.testing.assert_allclose(kernel.sharpness(cfg, prob, batches), want, rtol=1e-10)


def test_trajectory_refuses_bad_batches_and_nonlinear_algorithms(monkeypatch):
    _, gram, u0, y = linear_model()
    prob = kernel.problem(gram, u0, y, balanced_mask())
    cfg = RunConfig(algorithm="local_sgd", rounds=2, tau=2, eta=0.1, batch_size=2)
    with pytest.raises(ValueError, match="batches must have shape"):
        kernel.trajectory(cfg, prob, 0.1, None)
    with pytest.raises(ValueError, match="batches must be None"):
        kernel.trajectory(RunConfig(algorithm="local_gd", rounds=2), prob, 0.1, draw(2, 1, 2))
    adam = algorithms.Algorithm("adam_test", stochastic=True, linear=False)
    monkeypatch.setitem(algorithms.REGISTRY, "adam_test", adam)
    with pytest.raises(ValueError, match="not affine"):
        kernel.trajectory(RunConfig(algorithm="adam_test", rounds=2, tau=2, batch_size=2), prob,
                          0.1, draw(2, 2, 2))
    with pytest.raises(ValueError, match="gram must have shape"):
        kernel.problem(gram[:, 0], u0, y, balanced_mask())


def test_cross_gram_is_the_gram_on_the_union():
    spec = model.NetSpec("deep", 5, 16, 2, 3)
    p = model.init(jax.random.key(0), spec)
    x = np.asarray(jax.random.normal(jax.random.key(1), (6, 5)))
    full = np.asarray(diagnostics.ntk_gram(spec, p, x, outputs="full")).reshape(6, 3, 6, 3)
    cross = np.asarray(diagnostics.ntk_cross_gram(spec, p, x[:4], x[2:]))
    np.testing.assert_allclose(cross, full[:4, :, 2:, :], rtol=1e-5, atol=1e-6)


# -- the kernel model of an experiment, against the network -------------------------------------


def tiny(**kw):
    base = dict(n=8, d=8, d_out=1, num_clients=2, m=1024, L=1, algorithm="local_sgd", tau=2,
                batch_size=2, eta=0.25, rounds=12, eval_every=2, seeds=1,
                metrics=("loss", "outputs"))
    base.update(kw)
    return experiments.Experiment(**base)


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    import os

    old = os.environ.get("LOCALSGD_RESULTS")
    os.environ["LOCALSGD_RESULTS"] = str(tmp_path_factory.mktemp("results"))
    try:
        exp = tiny()
        yield experiments.run(exp, cache=False), kernel.predict(exp)
    finally:
        if old is None:
            os.environ.pop("LOCALSGD_RESULTS")
        else:
            os.environ["LOCALSGD_RESULTS"] = old


def test_a_wide_network_follows_its_kernel_model(wide_run):
    res, pred = wide_run
    assert pred.critical.max() < 2
    D = kernel.distance(res, pred)
    assert D[0] < 0.03, D
    np.testing.assert_allclose(res.metrics["loss"], pred.loss, rtol=0.1)


@pytest.mark.parametrize("wrong", [dict(eta=0.125), dict(tau=1, rounds=24, eval_every=4),
                                   dict(batch_size=4), dict(seed=5), dict(data_seed=1)])
def test_a_kernel_model_of_another_run_is_far(wide_run, wrong):
    res, pred = wide_run
    other = kernel.predict(tiny(**wrong))
    D_right, D_wrong = kernel.distance(res, pred)[0], kernel.distance(res, other)[0]
    assert D_wrong > 3 * D_right, (D_right, D_wrong)


def test_distance_between_two_kernel_models(wide_run):
    _, pred = wide_run
    other = kernel.predict(tiny(batch_size=1))
    assert kernel.distance(pred, pred)[0] == 0
    # one initialisation, so one scale: the distance is symmetric
    np.testing.assert_allclose(kernel.distance(other, pred), kernel.distance(pred, other))
    assert kernel.distance(other, pred)[0] > 0.05


def test_predict_with_the_infinite_kernel_is_close_at_large_width(wide_run):
    res, pred = wide_run
    inf = kernel.predict(res.config, kind="infinite")
    assert kernel.distance(res, inf)[0] < 0.15
    assert inf.outputs.shape == pred.outputs.shape


def test_distance_needs_recorded_outputs(wide_run):
    res, pred = wide_run
    res2 = experiments.Result(res.config, {"loss": res.metrics["loss"]}, res.rounds, res.eta,
                              res.diverged_at, res.test, res.provenance)
    with pytest.raises(ValueError, match="outputs"):
        kernel.distance(res2, pred)
    with pytest.raises(ValueError, match="kind"):
        kernel.predict(res.config, kind="finite")


def test_shared_checks_hold_on_a_width_axis_and_fail_on_a_wrong_one(silently_wrong):
    exps = {m: tiny(m=m, seeds=2, rounds=16) for m in (32, 128, 512)}
    runs = {m: experiments.run(e) for m, e in exps.items()}
    preds = km.predictions(runs)
    bound = km.Tolerance(2.5, "prior", "test")
    checks = km.checks(km.width_axis(runs, preds, bootstrap=200), bound)
    assert all_hold(checks), checks
    # runs that took half the step while reporting the requested one
    applied = silently_wrong("half_step")
    lying = {m: experiments.run(e) for m, e in exps.items()}
    assert all(applied) and np.array_equal(lying[32].eta, runs[32].eta)
    wrong = km.checks(km.width_axis(lying, preds, bootstrap=200), bound)
    assert not all_hold(wrong), wrong


def test_test_points_of_a_digits_run_move_with_the_full_cross_kernel():
    # Local GD with one client and one local step is GD; every test point moves by
    # -(eta / N) sum_j G_0(x_test, x_j) r_j, the cross kernel with every output pair
    exp = experiments.Experiment(dataset="digits", n=12, num_clients=1, m=32, L=1,
                                 algorithm="local_gd", tau=1, eta=0.3, eta_rule="fixed",
                                 rounds=4, metrics=("loss", "outputs"))
    clients, test, _ = experiments.load_data(exp)
    x = np.asarray(clients.x)[np.asarray(clients.mask) > 0]
    probe = np.asarray(test.x[:5], np.float64)
    pred = kernel.predict(exp, probe=probe)
    spec = exp.net_spec(x.shape[1], 10)
    params0, _ = experiments.init_params(exp, spec)
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: jax.numpy.asarray(a[0], jax.numpy.float64), params0)
        cross = np.asarray(diagnostics.ntk_cross_gram(spec, p, probe, np.asarray(x, np.float64)))
        start = np.asarray(model.apply(spec, p, probe))
    N = x.shape[0]
    assert np.abs(cross[:, 0, :, 1]).max() > 0  # the cross-output terms are there
    np.testing.assert_allclose(pred.outputs[0, 0, N:], start, rtol=1e-5, atol=1e-7)
    for t in range(4):
        r = pred.outputs[0, t, :N] - pred.y
        want = pred.outputs[0, t, N:] - 0.3 / N * np.einsum("iojp,jp->io", cross, r)
        np.testing.assert_allclose(pred.outputs[0, t + 1, N:], want, rtol=1e-5, atol=1e-8)


def test_predictions_of_several_splits_share_one_kernel():
    base = experiments.Experiment(dataset="digits", n=30, num_clients=3, m=32, L=1,
                                  algorithm="local_sgd", tau=2, batch_size=3, eta=0.2,
                                  eta_rule="fixed", rounds=3, seeds=2)
    exps = [base, base.replace(partition="shards"), base.replace(partition="dirichlet", alpha=0.5,
                                                                 algorithm="scaffold")]
    _, test, _ = experiments.load_data(base)
    probe = np.asarray(test.x[:4], np.float64)
    together = kernel.predict_many(exps, probe=probe)
    for e, got in zip(exps, together):  # against the kernel formed in the run's client order
        clients, _, _ = experiments.load_data(e)
        mask = np.asarray(clients.mask)
        x = np.asarray(clients.x, np.float64)[mask > 0]
        y = np.asarray(clients.y, np.float64)[mask > 0]
        spec = e.net_spec(x.shape[1], 10)
        params0, keys = experiments.init_params(e, spec)
        rows = np.concatenate([x, probe])
        for s in range(2):
            with jax.enable_x64(True):
                p = jax.tree.map(lambda a, s=s: jax.numpy.asarray(a[s], jax.numpy.float64),
                                 params0)
                gram = np.asarray(diagnostics.ntk_cross_gram(spec, p, rows, x))
                u0 = np.asarray(model.apply(spec, p, rows))
            cfg = e.run_config()
            batches = np.asarray(engine.minibatch_indices(keys[s], jax.numpy.asarray(mask),
                                                          cfg.tau, cfg.batch_size, cfg.rounds))
            want = kernel.trajectory(cfg, kernel.problem(gram, u0, y, mask), e.eta, batches)
            np.testing.assert_allclose(got.outputs[s], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="m"):
        kernel.predict_many([base, base.replace(m=64)])


@pytest.mark.parametrize("space", ["function", "weight"])
def test_runs_on_the_same_sample_sets_share_a_sharpness_and_no_other_does(space):
    base = experiments.Experiment(dataset="digits", n=30, num_clients=3, m=32, L=1,
                                  algorithm="local_sgd", tau=2, batch_size=3, eta=0.2,
                                  eta_rule="fixed", rounds=3, seeds=2)
    exps = [base, base.replace(algorithm="fedprox", prox_mu=0.1), base.replace(batch_size=2),
            base.replace(partition="shards"), base.replace(algorithm="local_gd", batch_size=None)]
    many = kernel.predict_many(exps, space=space)
    alone = [kernel.predict(e, space=space).sharpness for e in exps]
    for got, want in zip(many, alone):
        np.testing.assert_allclose(got.sharpness, want, rtol=1e-9)
    assert np.array_equal(many[0].sharpness, many[1].sharpness)  # the same minibatches
    assert len({tuple(np.round(a, 9)) for a in alone}) == 4  # every other run its own


@pytest.mark.parametrize("alg", ["local_gd", "local_sgd", "gd", "minibatch_sgd", "fedprox",
                                 "scaffold", "local_sgd_momentum"])
def test_weight_space_gives_the_function_space_outputs(alg):
    a = algorithms.get(alg)
    exp = experiments.Experiment(dataset="digits", n=24, num_clients=3, m=16, L=2, algorithm=alg,
                                 partition="dirichlet", alpha=0.5, tau=1 if a.one_step else 3,
                                 batch_size=2 if a.stochastic else None, eta=0.3,
                                 eta_rule="fixed", rounds=4, eval_every=2, seeds=2)
    _, test, _ = experiments.load_data(exp)
    probe = np.asarray(test.x[:5], np.float64)
    fun = kernel.predict(exp, probe=probe, space="function")
    wts = kernel.predict(exp, probe=probe, space="weight")
    assert np.abs(fun.outputs[:, -1] - fun.outputs[:, 0]).max() > 1e-3  # the outputs move
    np.testing.assert_allclose(wts.outputs, fun.outputs, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(wts.sharpness, fun.sharpness, rtol=1e-8)
    [many] = kernel.predict_many([exp], probe=probe, space="weight")
    np.testing.assert_allclose(many.outputs, fun.outputs, rtol=1e-9, atol=1e-11)
    seed = kernel.problems(exp, probe=probe, space="weight")[0]
    cfg = exp.run_config()
    _, ws = kernel.trajectory(cfg, seed.problem, seed.eta, seed.batches, local=True,
                              spec=seed.spec)
    _, fs = kernel.trajectory(cfg, kernel.problems(exp, probe=probe)[0].problem, seed.eta,
                              seed.batches, local=True)
    np.testing.assert_allclose(ws, fs, rtol=1e-9, atol=1e-11)


def test_space_is_checked_and_chosen_by_the_kernel_size():
    assert kernel.space_for("auto", "empirical", 300, 200, 10) == "function"
    assert kernel.space_for("auto", "empirical", 1200, 1000, 10) == "weight"
    assert kernel.space_for("auto", "infinite", 1200, 1000, 10) == "function"
    with pytest.raises(ValueError, match="space"):
        kernel.space_for("params", "empirical", 1, 1, 1)
    with pytest.raises(ValueError, match="kind='empirical'"):
        kernel.space_for("weight", "infinite", 1, 1, 1)
    exp = tiny()
    with pytest.raises(ValueError, match="spec"):
        seed = kernel.problems(exp, space="weight")[0]
        kernel.trajectory(exp.run_config(), seed.problem, seed.eta, seed.batches)


def test_top_eigenvalues_of_many_operators_at_once():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(5, 60, 30))
    G = A @ np.swapaxes(A, 1, 2)  # PSD, rank 30 of 60
    G[1] = np.diag(np.r_[np.full(3, 7.0), np.ones(57)])  # a repeated top eigenvalue
    got = kernel.top_eigenvalues(lambda V: np.einsum("qij,qj->qi", G, V), 5, 60)
    np.testing.assert_allclose(got, np.linalg.eigvalsh(G)[:, -1], rtol=1e-8)


def test_the_largest_top_eigenvalue_lets_operators_leave_early():
    rng = np.random.default_rng(4)
    A = rng.normal(size=(12, 80, 40))
    G = A @ np.swapaxes(A, 1, 2) * np.linspace(1.0, 1.5, 12)[:, None, None]
    want = np.linalg.eigvalsh(G)[:, -1]
    seen = []

    def matvec(V, which):
        seen.append(len(which))
        return np.einsum("qij,qj->qi", G[which], V)

    got = kernel.largest_top_eigenvalue(matvec, 12, 80, tol=1e-9)
    np.testing.assert_allclose(got, want.max(), rtol=1e-8)
    assert min(seen) < 12 and sum(seen) < 12 * len(seen)  # the smaller operators left
    # a floor above every operator: it is the answer, and every operator leaves at once
    seen.clear()
    assert kernel.largest_top_eigenvalue(matvec, 12, 80, floor=2 * want.max()) == 2 * want.max()
    assert len(seen) <= 3


@pytest.mark.parametrize("space", ["function", "weight"])
def test_sharpness_by_lanczos_is_the_dense_one(monkeypatch, space):
    exp = experiments.Experiment(dataset="digits", n=40, num_clients=4, m=16, L=1,
                                 algorithm="minibatch_sgd", partition="shards", tau=1,
                                 batch_size=5, eta=0.3, eta_rule="fixed", rounds=6, seeds=1)
    seed = kernel.problems(exp, space=space)[0]
    cfg = exp.run_config()
    dense = kernel.sharpness(cfg, seed.problem, seed.batches, spec=seed.spec)
    monkeypatch.setattr(kernel, "_DENSE_EIG", 0)
    lanczos = kernel.sharpness(cfg, seed.problem, seed.batches, spec=seed.spec)
    assert dense > 0
    # Lanczos stops at a relative residual of kernel._LANCZOS_TOL, the eigenvalue's error bound
    np.testing.assert_allclose(lanczos, dense, rtol=kernel._LANCZOS_TOL)
    assert lanczos <= dense * (1 + 1e-6)  # a Ritz value, from below (to float32 products)
