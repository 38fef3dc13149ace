"""The kernel model of a run: what the network would do if it stayed its own linearisation.

In the lazy regime a wide network follows its linearisation at initialisation,
``f(W) ~ f(W_0) + J_0 (W - W_0)`` (Jacot et al. 2018; Lee et al. 2019). For the linearised
network a gradient step on the samples ``S`` with weights ``w`` moves the outputs at every point
``x`` by ``-eta sum_{j in S} w_j G_0(x, x_j) r_j``, with ``G_0 = J_0 J_0^T`` the empirical neural
tangent kernel and ``r_j`` the residual at ``x_j``: the weights never need to be formed, and the
whole run becomes a recursion in function space on the training points (and on any other points
whose predictions are wanted, such as a test set, through the cross kernel).

Every entry of :data:`localsgd.algorithms.REGISTRY` is affine in the weights, the gradients and
the clients' state (plain steps, FedProx's pull towards ``W_bar``, SCAFFOLD's control variates,
heavy-ball momentum, averaging with ``n_k / n``). So the registry's own client and server parts,
applied to the *images* ``u = f(W_0) + J_0 (W - W_0)`` of the weights and ``J_0 g`` of the
gradients, give the linearised network's outputs exactly. :func:`trajectory` does that, with the
outputs as the only "layer", in the engine's order: every round each client starts from the
average, takes ``tau`` steps on its full data or on the very minibatches the engine draws
(:func:`localsgd.engine.minibatch_indices`, the same function from the same keys), and the server
averages. Everything here is float64.

:func:`predict` builds the model of an :class:`localsgd.experiments.Experiment`: the
configuration a run *reports* (its data, split, initialisations, step sizes, ``tau``, ``b`` and
keys), rebuilt from the config and never read from the run. A run that silently did something
else is then measured against the prediction for what it reports. ``kind="infinite"`` replaces
``G_0`` by its infinite-width limit (:func:`localsgd.theory.gram_infinity_deep`, or Du et al.'s
:func:`localsgd.theory.gram_infinity` for the two-layer net), which has no cross-output terms:
the ``m -> oo`` reference.

What follows from the model, and what does not (PAPER.md): the distance between the network's
outputs and the model's (:func:`distance`) shrinks as the width grows in the lazy regime; the
comparison means something only below every local update's critical step (:func:`sharpness`:
``eta * sharpness < 2``), above which the model diverges while a network may still converge.
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import algorithms as algs
from . import analysis, diagnostics, engine, experiments, model, theory
from .config import RunConfig

KINDS = ("empirical", "infinite")


class Problem(NamedTuple):
    """What the recursion needs, float64.

    ``cols``: the kernel between every training point ``j`` and every prediction point ``x``,
    ``(N, d_out, M, d_out)`` with every output pair (``cols[j, p, i, o] = G(x_i, x_j)_{op}``), or
    ``(N, M)`` for a kernel shared by every output and zero across outputs (``G (x) I``). The
    ``M`` prediction points are the ``N`` training points first, then any others.
    ``u0: (M, d_out)`` the outputs at initialisation; ``y: (N, d_out)`` the targets;
    ``pos: (K, n_max)`` int32, the index among the ``N`` training points of every client row (0
    on padding); ``mask: (K, n_max)`` 1 on real rows; ``weight: (K,)`` the averaging weights
    ``n_k / n``.
    """

    cols: jax.Array
    u0: jax.Array
    y: jax.Array
    pos: jax.Array
    mask: jax.Array
    weight: jax.Array


def problem(gram, u0, y, mask, order=None) -> Problem:
    """A :class:`Problem` from a kernel between prediction points (rows) and training points
    (columns): ``gram: (M, d_out, N, d_out)`` or ``(M, N)`` (one kernel for every output),
    ``u0: (M, d_out)``, ``y: (N, d_out)`` and the clients' ``mask: (K, n_max)``, whose real rows,
    client by client, are the ``N`` training points in order (as
    ``ClientData.x[ClientData.mask > 0]``), or with ``order: (N,)`` the training points
    ``order[0], order[1], ...`` (another split of the same points, with no copy of the kernel).
    The averaging weights are ``n_k / n``."""
    mask = np.asarray(mask, np.float64)
    gram, u0, y = (np.asarray(a, np.float64) for a in (gram, u0, y))
    N = int(mask.sum())
    if y.ndim != 2 or y.shape[0] != N:
        raise ValueError(f"y must have shape (N={N}, d_out), got {y.shape}")
    d_out = y.shape[1]
    M = u0.shape[0]
    if u0.shape != (M, d_out) or M < N:
        raise ValueError(f"u0 must have shape (M >= {N}, d_out={d_out}), got {u0.shape}")
    if gram.shape == (M, N):
        cols = gram.T
    elif gram.shape == (M, d_out, N, d_out):
        cols = gram.transpose(2, 3, 0, 1)
    else:
        raise ValueError(
            f"gram must have shape (M={M}, N={N}) or (M, d_out={d_out}, N, d_out), "
            f"got {gram.shape}")
    return Problem(cols, u0, y, *_split(mask, order))


def _split(mask, order):
    """``(pos, mask, weight)`` of :class:`Problem` for the clients' ``mask: (K, n_max)`` whose real
    rows are the training points in order, or ``order[0], order[1], ...``."""
    N = int(mask.sum())
    pos = np.where(mask > 0, np.cumsum(mask.ravel()).reshape(mask.shape) - 1, 0).astype(np.int32)
    if order is not None:
        order = np.asarray(order)
        if order.shape != (N,) or not np.array_equal(np.sort(order), np.arange(N)):
            raise ValueError(f"order must be a permutation of the N={N} training points, got "
                             f"shape {order.shape}")
        pos = np.where(mask > 0, order[pos], 0).astype(np.int32)
    return pos, mask, mask.sum(axis=1) / N


def linearised(params, x, u0, y, mask, spec: model.NetSpec, order=None) -> Linearised:
    """A :class:`Linearised` network: the initialisation ``params`` (``{"trainable", "fixed"}``
    of ``spec``), the prediction points ``x: (M, d)`` (the ``N`` training points first, in the
    order :func:`problem` describes) with the network's outputs there ``u0: (M, d_out)``, the
    targets ``y: (N, d_out)`` and the clients' ``mask: (K, n_max)`` (and ``order``) as in
    :func:`problem`. Everything float64."""
    mask = np.asarray(mask, np.float64)
    x, u0, y = (np.asarray(a, np.float64) for a in (x, u0, y))
    N = int(mask.sum())
    if y.ndim != 2 or y.shape != (N, spec.d_out):
        raise ValueError(f"y must have shape (N={N}, d_out={spec.d_out}), got {y.shape}")
    if x.ndim != 2 or x.shape[0] < N or x.shape[1] != spec.d:
        raise ValueError(f"x must have shape (M >= {N}, d={spec.d}), got {x.shape}")
    if u0.shape != (x.shape[0], spec.d_out):
        raise ValueError(f"u0 must have shape (M={x.shape[0]}, d_out={spec.d_out}), "
                         f"got {u0.shape}")
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    return Linearised(p64, x, u0, y, *_split(mask, order))


def _pooled(prob: Problem) -> Problem:
    """Every training point on one client (centralised algorithms)."""
    N = prob.y.shape[0]
    return prob._replace(pos=jnp.arange(N, dtype=jnp.int32)[None], mask=jnp.ones((1, N)),
                         weight=jnp.ones((1,)))


def _image(C, u, rows, w, y):
    """``J_0 g`` for the gradient of ``sum_b w_b F_{rows_b}`` at outputs ``u: (M, d_out)``: the
    move of one plain step is ``-eta`` times it. ``rows: (B,)`` training points, ``w: (B,)``,
    ``C`` their kernel columns (:class:`Problem`'s ``cols`` at ``rows``). Returns
    ``(M, d_out)``."""
    r = (u[rows] - y[rows]) * w[:, None]
    if C.ndim == 4:
        return jnp.einsum("bp,bpmo->mo", r, C)
    return jnp.einsum("bo,bm->mo", r, C)


def _client_rows(prob, stochastic: bool, k, idx):
    """Client ``k``'s step samples ``(rows (B,), weights (B,))``: its full data (``idx`` None)
    or its minibatch rows ``idx: (b,)``."""
    pos, mask = prob.pos[k], prob.mask[k]
    if not stochastic:
        return pos, mask / mask.sum()
    return pos[idx], jnp.full(idx.shape, 1.0 / idx.shape[0])


class Linearised(NamedTuple):
    """The linearised network itself, for the recursion in weight space (:func:`trajectory`
    with ``spec``), float64: the same fields as :class:`Problem` with ``params: {"trainable",
    "fixed"}`` the initialisation and ``x: (M, d)`` the prediction points (the ``N`` training
    points first) in place of the kernel ``cols``. A step moves the trained weights by
    ``-eta J_0^T r`` and the outputs are ``u_0 + J_0 (W - W_0)``: the same outputs as the
    recursion in function space, at the cost of a few passes of the network over each batch
    instead of a kernel of ``M N d_out^2`` entries."""

    params: dict
    x: jax.Array
    u0: jax.Array
    y: jax.Array
    pos: jax.Array
    mask: jax.Array
    weight: jax.Array


def _function_space(prob: Problem):
    """The recursion on the outputs: ``(W0, grad_on(W, rows, w), readout(W))`` with ``W = (u,)``,
    ``u: (M, d_out)``; ``grad_on`` returns the image ``J_0 g`` of the gradient of
    ``sum_b w_b F_{rows_b}`` (:func:`_image`)."""

    def grad_on(W, rows, w):
        return (_image(prob.cols[rows], W[0], rows, w, prob.y),)

    return (prob.u0,), grad_on, lambda W: W[0]


def _weight_space(prob: Linearised, spec):
    """The recursion on the trained weights' move ``W - W_0`` of the linearised network (see
    :func:`_function_space`): ``grad_on`` returns ``J_0^T (w r)`` on the rows and ``readout``
    the outputs ``u_0 + J_0 (W - W_0)`` at the ``M`` prediction points. The network's pass at
    ``W_0`` is made once, at every point (:func:`_tangent_point`); a step then costs the
    tangent's pass and its transpose on its rows only."""
    theta0 = tuple(prob.params["trainable"])
    B = prob.params["fixed"]["B"]
    point = _tangent_point(spec, theta0, model.features(spec, prob.params["fixed"], prob.x))

    def jvp_at(rows):  # W -> J_0 W on the rows (every prediction point for None)
        at = point if rows is None else [(h[rows], s[rows]) for h, s in point]
        return lambda W: _tangent(theta0, B, at, W)

    def grad(W, rows, w):
        jvp = jvp_at(rows)
        r = (prob.u0[rows] + jvp(W) - prob.y[rows]) * w[:, None]
        return jax.linear_transpose(jvp, theta0)(r)[0]

    def readout(W):
        return prob.u0 + jvp_at(None)(W)

    return jax.tree.map(jnp.zeros_like, theta0), grad, readout


def _tangent_point(spec, trainable, feats):
    """Where :func:`localsgd.model.forward` is linearised, at features ``feats: (M, f)``: per
    trained layer its input ``h_{l-1}`` and the activation's slope ``phi'(g_l)`` at its
    pre-activation, ``[((M, fan_in), (M, m)), ...]``."""
    phi = model.ACTIVATIONS[spec.activation]
    pre = model.preactivations(spec, trainable, feats)
    inputs = [feats] + [phi(g) for g in pre[:-1]]
    slopes = [jax.jvp(phi, (g,), (jnp.ones_like(g),))[1] for g in pre]  # phi acts entry by entry
    return list(zip(inputs, slopes))


def _tangent(trainable, B, point, dW):
    """``J_0 dW``: the move of :func:`localsgd.model.forward`'s outputs for a move ``dW`` of the
    trained layers ``trainable`` at the linearisation ``point`` (:func:`_tangent_point`) of its
    rows, with the output layer ``B: (d_out, m)``. ``(rows, d_out)``."""
    dh = None
    for W, dWl, (h, slope) in zip(trainable, dW, point):
        dg = h @ dWl.T if dh is None else h @ dWl.T + dh @ W.T
        dh = slope * dg
    return dh @ B.T


@partial(jax.jit, static_argnums=(0, 4, 5))
def _trajectory(cfg: RunConfig, prob, eta, batches, local: bool, spec=None):
    alg = algs.get(cfg.algorithm)
    if alg.pooled:
        prob = _pooled(prob)
    K = prob.mask.shape[0]
    W0, grad_on, readout = (_function_space(prob) if spec is None
                            else _weight_space(prob, spec))

    def client_grad(W, k, idx):  # client k's gradient on its data, or on its minibatch idx
        return grad_on(W, *_client_rows(prob, alg.stochastic, k, idx))

    per_k = jax.vmap(readout)

    def start(Wbar):
        return Wbar if alg.optimizer is None else (Wbar, alg.optimizer(eta, cfg).init(Wbar))

    def model_of(carry):
        return carry if alg.optimizer is None else carry[0]

    def client_step(carry, g, ctx):
        if alg.optimizer is not None:
            W, st = carry
            upd, st = alg.optimizer(eta, cfg).update(g, st, W)
            return optax.apply_updates(W, upd), st
        return tuple(alg.client_update(eta, cfg, W_l, g_l, None if ctx is None else ctx[l])
                     for l, (W_l, g_l) in enumerate(zip(carry, g)))

    def broadcast(tree):
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (K,) + a.shape), tree)

    def average(Ws):
        return jax.tree.map(lambda a: jnp.tensordot(prob.weight, a, axes=1), Ws)

    def one_round(c, batch):  # batch: (tau, K, b) minibatch rows, or None
        Wbar, states = c
        if alg.server_gradient:  # the clients' gradients averaged: one on all their rows
            rows, w = jax.vmap(partial(_client_rows, prob, alg.stochastic))(jnp.arange(K),
                                                                             batch[0])
            g = grad_on(Wbar, rows.reshape(-1), (w * prob.weight[:, None]).reshape(-1))
            new = jax.tree.map(lambda w, gl: w - eta * gl, Wbar, g)
            return (new, states), (broadcast(new) if local else None)
        server = None if alg.server_state is None else alg.server_state(prob.weight, states)
        per_client = alg.client_context is not None and states is not None
        if alg.client_context is None:
            ctx = None
        elif per_client:
            ctx = jax.vmap(alg.client_context, in_axes=(None, 0, None))(Wbar, states, server)
        else:
            ctx = alg.client_context(Wbar, None, server)

        def client(args):  # client k's tau steps from the server's model
            k, own_ctx, idx_k = args
            ctx_k = own_ctx if per_client else ctx

            def step(carry, idx):
                return client_step(carry, client_grad(model_of(carry), k, idx), ctx_k), None

            carry, _ = jax.lax.scan(step, start(Wbar), idx_k, length=cfg.tau)
            return model_of(carry)

        # the clients in turn, as the engine's layout="map": a client's weights stay in cache
        # across its tau steps, where batched steps stream all K models through memory at each
        # (chapter 11's Local SGD, m = 256, 1,000 points: 1.4 s a seed batched, 1.0 s in turn)
        Ws = jax.lax.map(client, (jnp.arange(K), ctx if per_client else None,
                                  None if batch is None else jnp.swapaxes(batch, 0, 1)))
        new = average(Ws)
        if alg.stateful:
            states = jax.vmap(lambda Wk, sk: alg.finish(eta, cfg, Wbar, Wk, sk, server))(Ws, states)
        return (new, states), (Ws if local else None)

    def block(c, batch):  # eval_every rounds, then a record of the average (and the clients')
        c, ws = jax.lax.scan(one_round, c, batch, length=cfg.eval_every)
        rec = None if ws is None else per_k(jax.tree.map(lambda a: a[-1], ws))
        return c, (readout(c[0]), rec)

    states0 = broadcast(alg.init_state(W0)) if alg.stateful else None
    E = cfg.rounds // cfg.eval_every
    if batches is not None:
        batches = batches.reshape((E, cfg.eval_every) + batches.shape[1:])
    _, (recs, ws) = jax.lax.scan(block, (W0, states0), batches, length=E)
    out = jnp.concatenate([prob.u0[None], recs])
    if not local:
        return out
    return out, jnp.concatenate([jnp.broadcast_to(prob.u0, (1, K) + prob.u0.shape), ws])


def trajectory(cfg: RunConfig, prob: Problem | Linearised, eta: float, batches=None,
               local: bool = False, spec: model.NetSpec | None = None):
    """The kernel model's outputs at every recorded round of a run of ``cfg``: ``(E, M, d_out)``
    with ``E = cfg.evaluations`` (round 0, then every ``cfg.eval_every`` rounds), float64.

    ``prob``: the kernel, initial outputs, targets and split (:func:`problem`), or the
    linearised network itself (:func:`linearised`, with its ``spec``): the same outputs, to
    rounding, computed in weight space (far cheaper for many points and outputs); ``eta``: the step
    size (``cfg.eta`` is not read, as in the engine); ``batches``: for a stochastic algorithm the
    run's minibatch rows ``(rounds, tau, K, b)`` (:func:`localsgd.engine.minibatch_indices`),
    else None. With ``local``, also the clients' own outputs at the end of every recorded round,
    before the server combines them, ``(E, K, M, d_out)`` (all equal to the start at round 0;
    the server's new model for ``minibatch_sgd``, whose clients return gradients), as the
    engine's round-end metrics see them. Refuses (ValueError) an algorithm whose parts are not
    affine, for which the function-space recursion would not be exact."""
    alg = algs.get(cfg.algorithm)
    if not alg.linear:
        raise ValueError(
            f"algorithm={cfg.algorithm!r} is not affine in the weights and gradients; the kernel "
            "model replays only affine algorithms exactly")
    K = prob.mask.shape[0]
    if alg.stochastic:
        want = (cfg.rounds, cfg.tau, K, cfg.batch_size)
        if batches is None or tuple(np.shape(batches)) != want:
            raise ValueError(f"batches must have shape {want} for algorithm={cfg.algorithm!r}, "
                             f"got {None if batches is None else np.shape(batches)}")
        batches = jnp.asarray(batches, jnp.int32)
    elif batches is not None:
        raise ValueError(f"batches must be None for full-batch algorithm={cfg.algorithm!r}")
    if isinstance(prob, Linearised) != (spec is not None):
        raise ValueError("spec must be given with a Linearised prob, and only with one")
    with jax.enable_x64(True):
        prob = _as_float64(prob)
        out = _trajectory(cfg, prob, jnp.float64(eta), batches, bool(local), spec)
        return tuple(np.asarray(a) for a in out) if local else np.asarray(out)


def _as_float64(prob):
    """``prob`` on the device in float64 (its ``pos`` in int32); call under ``enable_x64``."""
    return type(prob)(*(jnp.asarray(a, jnp.int32) if f == "pos" else
                        jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), a)
                        for f, a in zip(prob._fields, prob)))


def loss(outputs, y) -> np.ndarray:
    """The training loss ``(1/N) sum_i 1/2 ||u_i - y_i||^2`` of outputs ``(..., M, d_out)`` whose
    first ``N`` rows are the training points with targets ``y: (N, d_out)``: ``(...)``."""
    y = np.asarray(y, np.float64)
    r = np.asarray(outputs, np.float64)[..., : y.shape[0], :] - y
    return 0.5 * np.mean(np.sum(r * r, axis=-1), axis=-1)


def _step_sets(cfg: RunConfig, prob: Problem, batches):
    """The sample sets of every distinct local update with their weights: ``(rows (Q, B),
    weights (Q, B))`` with zero weight on padding, numpy (the weights float64)."""
    alg = algs.get(cfg.algorithm)
    with jax.enable_x64(True):  # the pooled split's weights 1/N in float64
        if alg.pooled:
            prob = _pooled(prob)
        K, b = prob.mask.shape[0], cfg.batch_size
        if not alg.stochastic:
            rows, w = prob.pos, prob.mask / prob.mask.sum(axis=1, keepdims=True)
        else:
            rows = np.take_along_axis(
                np.broadcast_to(prob.pos, batches.shape[:2] + prob.pos.shape),
                np.asarray(batches), axis=-1)  # (R, tau, K, b)
            if alg.server_gradient:  # one step on every client's minibatch, weighted n_k / n
                w = np.broadcast_to((np.asarray(prob.weight) / b)[:, None], (K, b)).ravel()
                rows, w = rows.reshape(-1, K * b), np.broadcast_to(w, (rows.shape[0], K * b))
            else:
                rows, w = rows.reshape(-1, b), np.full((rows.size // b, b), 1.0 / b)
        return np.asarray(rows), np.asarray(w, np.float64)


def sharpness(cfg: RunConfig, prob: Problem | Linearised, batches=None,
              spec: model.NetSpec | None = None) -> float:
    """The largest curvature of any one local update of a run, ``max_B lambda_max(D_B^(1/2)
    G_BB D_B^(1/2))`` over the sample sets ``B`` that its steps use (each client's data, or every
    minibatch the run draws) with their weights ``D_B`` (``1/|B|``; ``n_k / (n b)`` for the
    server step of ``minibatch_sgd``). A step of the linearised model on ``B`` multiplies the
    residual on ``B`` by ``I - eta D_B^(1/2) G_BB D_B^(1/2)``; it is stable only while
    ``eta * sharpness < 2``: the critical step of the local updates. ``G_BB`` is read from the
    kernel of a :class:`Problem`, or computed block by block for a :class:`Linearised` network
    (with its ``spec``). A float."""
    return _largest_eigenvalue(prob, *_step_sets(cfg, prob, batches), spec)


def _largest_eigenvalue(prob, rows, w, spec):
    """:func:`sharpness` of the sample sets ``rows: (Q, B)`` with weights ``w: (Q, B)``."""
    gram_of, products_of, d = _block_kernels(prob, spec)
    sw = np.sqrt(np.repeat(w, d, axis=1))
    size = rows.shape[1] * d
    if size > _DENSE_EIG:  # large pooled minibatches: the largest top eigenvalue, by Lanczos
        worst = 0.0
        chunk = max(1, _LANCZOS_ENTRIES // (size * _LANCZOS_STEPS))
        for lo in range(0, rows.shape[0], chunk):
            prod, s = products_of(rows[lo:lo + chunk]), sw[lo:lo + chunk]
            worst = largest_top_eigenvalue(
                lambda V, which, p=prod, s=s: s[which] * p(s[which] * V, which), len(s), size,
                tol=_LANCZOS_TOL, floor=worst)
        return worst
    worst = 0.0
    chunk = max(1, min(256, 2 ** 24 // size ** 2))
    for lo in range(0, rows.shape[0], chunk):  # (chunk, B d, B d) at a time
        s = sw[lo:lo + chunk]
        G = gram_of(rows[lo:lo + chunk]) * (s[:, :, None] * s[:, None, :])
        lam = np.linalg.eigvalsh(0.5 * (G + np.swapaxes(G, -1, -2)))[..., -1]
        worst = max(worst, float(lam.max()))
    return worst


def _block_kernels(prob, spec):
    """``(gram_of, products_of, d)``: ``gram_of(rows: (C, B)) -> (C, B d, B d)`` the kernel of
    every set of training points, rows and columns ordered (sample, output), and
    ``products_of(rows: (C, B))`` the products ``V: (C, B d) -> (C, B d)`` of every set's kernel
    with a vector of its own, float64, with ``d = d_out``, or ``d = 1`` for a kernel shared by
    every output (``G (x) I`` has the spectrum of ``G``). For a :class:`Linearised` network the
    blocks and products come from the kernel's factors at the training points, the
    backpropagated output gradients and the layer inputs
    (:func:`localsgd.diagnostics.backprop_vectors`); for a kernel, a product is ``G_NN`` times
    ``v`` scattered onto the ``N`` training points and gathered back (the same, rows repeated or
    not), never a block."""
    d = prob.y.shape[1]
    if isinstance(prob, Linearised):
        # the kernel's factors at every training point, once: G((x, o), (x', p)) = sum_l
        # <delta_l(x, o), delta_l(x', p)> <h_l(x), h_l(x')> (diagnostics.ntk_cross_gram), so a
        # block costs B^2 (d_out^2 + 1) m and a product B (2 d_out + B) m, not B d_out m^2
        N = prob.y.shape[0]
        with jax.enable_x64(True):
            deltas, inputs = _factors(spec, prob.params, jnp.asarray(prob.x[:N], jnp.float64))
        deltas, inputs = [np.asarray(a) for a in deltas], [np.asarray(a) for a in inputs]

        def gram_of(rows):
            C, B = rows.shape
            G = np.zeros((C, B, d, B, d))
            for D, H in zip(deltas, inputs):
                Dr, Hr = D[rows].reshape(C, B * d, -1), H[rows]  # (C, B d, m), (C, B, f)
                G += ((Dr @ np.swapaxes(Dr, 1, 2)).reshape(C, B, d, B, d)
                      * (Hr @ np.swapaxes(Hr, 1, 2))[:, :, None, :, None])
            return G.reshape(C, B * d, B * d)

        @cache
        def product_factors():  # made on the first product only: dense blocks need none
            # in float32: a product streams the (B, d, m) deltas of every set through memory, at
            # half the bytes (2.6 times as fast for chapter 11's pooled minibatches), 2e-7
            # relative error, below Lanczos's tolerance (_LANCZOS_TOL)
            deltas32 = tuple(jnp.asarray(D, jnp.float32) for D in deltas)
            with jax.enable_x64(True):
                inputs64 = tuple(jnp.asarray(H, jnp.float64) for H in inputs)
                # the inputs' Gram at every pair of training points, once, where it is small: a
                # set's block is then a gather, not a product of its own (chapter 11's 240 pooled
                # minibatches of 160 of 1,000 points: 6 times fewer operations)
                pairs = (tuple(_input_grams(H, None) for H in inputs64)
                         if N * N <= _KERNEL_ENTRIES else None)
            return deltas32, inputs64, pairs

        def products_of(rows):
            deltas32, inputs64, pairs = product_factors()
            with jax.enable_x64(True):
                rows_dev = jnp.asarray(rows, jnp.int32)
                grams = (tuple(_input_grams(H, rows_dev) for H in inputs64) if pairs is None
                         else tuple(HH[rows_dev[:, :, None], rows_dev[:, None, :]] for HH in pairs))
                blocks = tuple(zip((D[rows_dev] for D in deltas32), grams))  # (C,B,d,m), (C,B,B)
            C, held = len(rows), {}

            def prod(V, which):
                # the sets Lanczos still works on, padded to a power of two (or all C): a few
                # programs serve every count, and a set's blocks are gathered once per count
                A = len(which)
                P = min(C, 1 << (A - 1).bit_length())
                idx = np.concatenate([which, np.full(P - A, which[0])]).astype(np.int32)
                if held.get("idx") is None or not np.array_equal(held["idx"], idx):
                    held.update(idx=idx, blocks=blocks if P == C and np.array_equal(
                        idx, np.arange(C)) else _take(blocks, jnp.asarray(idx)))
                Vp = np.zeros((P,) + rows.shape[1:] + (d,), np.float32)
                Vp[:A] = np.asarray(V).reshape((A,) + rows.shape[1:] + (d,))
                out = _block_products(jnp.asarray(Vp), held["blocks"])
                return np.asarray(out, np.float64)[:A].reshape(A, -1)

            return prod

        return gram_of, products_of, d
    cols = np.asarray(prob.cols, np.float64)
    if cols.ndim == 2:  # one kernel for every output, G (x) I: the spectrum of G
        d = 1
    flat = cols.reshape(cols.shape[0] * d, -1)
    train = flat[:, : flat.shape[0]]  # G_NN, (N d, N d)

    def gram_of(rows):
        idx = (rows[..., None] * d + np.arange(d)).reshape(rows.shape[0], -1)
        return flat[idx[:, :, None], idx[:, None, :]]

    def products_of(rows):
        idx = (rows[..., None] * d + np.arange(d)).reshape(rows.shape[0], -1)

        def prod(V, which):
            at = (np.arange(len(which))[:, None], idx[which])
            X = np.zeros((len(which), train.shape[0]))
            np.add.at(X, at, V)
            return (X @ train)[at]

        return prod

    return gram_of, products_of, d


@jax.jit
def _block_products(V, blocks):
    """Every set's kernel times its own vector, from the kernel's factors (float32):
    ``V: (C, B, d)``, ``blocks``: per trained layer ``(deltas (C, B, d, m), input Gram (C, B,
    B))``. Compiled rather than NumPy's einsum and batched product: twice as fast for chapter
    11's pooled minibatches (C = 40, B = 160, d = 10, m = 256) on one core."""
    out = jnp.zeros(V.shape, V.dtype)
    for Dr, HH in blocks:
        z = jnp.einsum("cbo,cbom->cbm", V, Dr)  # sum_o v_o delta(x, o)
        out = out + jnp.einsum("cbom,cbm->cbo", Dr, HH @ z)
    return out


@jax.jit
def _take(blocks, idx):
    """``blocks`` (as :func:`_block_products` takes them) of the sets ``idx: (P,)``."""
    return jax.tree.map(lambda a: a[idx], blocks)


@jax.jit
def _input_grams(H, rows):
    """The Gram of every set's layer inputs, ``H: (N, f)`` at the sets ``rows: (C, B)``: ``(C,
    B, B)``; at every pair of the ``N`` points for ``rows`` None, ``(N, N)``. In float32,
    computed in ``H``'s precision."""
    if rows is None:
        return (H @ H.T).astype(jnp.float32)
    Hr = H[rows]
    return (Hr @ jnp.swapaxes(Hr, 1, 2)).astype(jnp.float32)


def top_eigenvalues(matvec, Q: int, n: int, tol: float = 1e-9) -> np.ndarray:
    """The largest eigenvalues of ``Q`` symmetric ``n x n`` operators at once, by Lanczos with
    full reorthogonalisation from a fixed start: ``matvec(V: (Q, n)) -> (Q, n)`` applies each
    operator to its own row (a zero row for an operator already done). Stops when every Ritz
    value's residual is at most ``tol`` times it (or at ``n`` steps, where it is exact).
    ``(Q,)``."""

    def some(V, which):
        full = np.zeros((Q, n))
        full[which] = V
        return np.asarray(matvec(full))[which]

    return _lanczos(some, Q, n, tol)


def largest_top_eigenvalue(matvec, Q: int, n: int, tol: float = 1e-9,
                           floor: float = 0.0) -> float:
    """The largest of the top eigenvalues of ``Q`` symmetric ``n x n`` operators, and ``floor``
    if that is larger: :func:`top_eigenvalues` with ``matvec(V: (A, n), which: (A,)) -> (A,
    n)`` applying the operators ``which`` to the rows of ``V``, where an operator leaves as soon
    as its Ritz value plus its residual falls below the best Ritz value so far (or ``floor``).
    A Ritz value never exceeds its operator's top eigenvalue, so the best one is a lower bound
    of the answer, and an operator whose residual bound lies below it cannot hold the answer
    (taking, as the stopping rule does, the top Ritz value for the approximation of the top
    eigenvalue, which Lanczos finds first); the operator that does runs to the same
    convergence as in :func:`top_eigenvalues`. Most operators leave after a few steps
    (chapter 11's pooled minibatches of 160 digits, 40 at a time: 4 of the first 40 are left
    after 5 steps, where each needs 12 to converge; the next 40, which start from the best
    value so far, keep at most 16 after their first step). A float."""
    return float(max(floor, _lanczos(matvec, Q, n, tol, floor).max()))


def _lanczos(matvec, Q, n, tol, floor=None):
    """Lanczos on ``Q`` operators at once, for :func:`top_eigenvalues` (``floor`` None) and
    :func:`largest_top_eigenvalue`: the top Ritz value of every operator when it left, ``(Q,)``;
    ``matvec(V, which)`` is called with the operators still running only."""
    # the start leans towards the all-ones vector, near the top eigenvector of a kernel whose
    # points are positively correlated (chapter 11's minibatches: 64 steps instead of 72), with
    # a random part that keeps every other direction in reach
    V = 1.0 + 0.3 * np.random.default_rng(0).standard_normal((Q, n))
    basis = [V / np.linalg.norm(V, axis=1, keepdims=True)]  # rows: the running operators
    alphas, betas = [], []
    found, active = np.zeros(Q), np.arange(Q)
    for k in range(n):
        W = np.asarray(matvec(basis[-1], active), np.float64)
        alphas.append(np.einsum("qn,qn->q", W, basis[-1]))
        B = np.stack(basis, axis=1)  # (A, k + 1, n)
        for _ in range(2):  # twice is enough (Giraud et al. 2005)
            W = W - np.einsum("qk,qkn->qn", np.einsum("qkn,qn->qk", B, W), B)
        beta = np.linalg.norm(W, axis=1)
        T = np.zeros((len(active), k + 1, k + 1))
        i = np.arange(k + 1)
        T[:, i, i] = np.stack(alphas, axis=1)
        if k:
            T[:, i[1:], i[:-1]] = T[:, i[:-1], i[1:]] = np.stack(betas, axis=1)
        theta, vecs = np.linalg.eigh(T)
        top, resid = theta[:, -1], beta * np.abs(vecs[:, -1, -1])
        found[active] = top
        keep = resid > tol * np.abs(top)
        if floor is not None:
            keep &= top + resid >= max(floor, found.max())
        if not keep.any():
            break
        active = active[keep]
        basis, alphas, betas = ([a[keep] for a in x] for x in (basis, alphas, betas))
        betas.append(beta[keep])
        basis.append(W[keep] / beta[keep][:, None])
    return found


# the kernel's factors at a set of points: (deltas, inputs), compiled once per network shape
_factors = jax.jit(diagnostics.backprop_vectors, static_argnums=0)


_DENSE_EIG = 400  # rows of a local update's kernel above which sharpness uses Lanczos
_LANCZOS_STEPS = 64  # the Lanczos steps a chunk of sets is sized for (its basis in memory)
_LANCZOS_ENTRIES = 2 ** 22  # a chunk's basis at _LANCZOS_STEPS steps: 32 MB
# Lanczos stops at a Ritz residual of this fraction of the eigenvalue, which then has at most that
# relative error: the critical step's check reads it to two digits
_LANCZOS_TOL = 1e-5


# -- the kernel model of an experiment ---------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    """The kernel model of every seed of an experiment.

    ``rounds: (E,)`` the recorded rounds (as the run's); ``outputs: (S, E, M, d_out)`` the
    predicted outputs at the ``N`` training points and then at the ``probe`` points;
    ``loss: (S, E)`` the predicted training loss; ``eta: (S,)`` the step sizes (the run's rule,
    from its initialisations); ``sharpness: (S,)`` (:func:`sharpness`); ``u0: (S, M, d_out)``;
    ``y: (N, d_out)`` the training targets; ``kind``: ``"empirical"`` or ``"infinite"``."""

    config: experiments.Experiment
    kind: str
    rounds: np.ndarray
    outputs: np.ndarray
    loss: np.ndarray
    eta: np.ndarray
    sharpness: np.ndarray
    u0: np.ndarray
    y: np.ndarray

    @property
    def iterations(self) -> np.ndarray:
        """Local steps per client at every record, ``(E,)``."""
        return self.rounds * self.config.tau

    @property
    def n_train(self) -> int:
        return self.y.shape[0]

    @property
    def critical(self) -> np.ndarray:
        """``eta * sharpness`` per seed, ``(S,)``: below 2, every local update of the run is
        below the linearised model's critical step."""
        return self.eta * self.sharpness

    def iterations_to(self, eps: float) -> np.ndarray:
        """The model's iterations to a training loss ``<= eps`` per seed (interpolated; inf if
        never), ``(S,)``."""
        return analysis.iterations_to(self.iterations, self.loss, eps)


# compiled once per network shape, not once per prediction
_cross_gram = jax.jit(diagnostics.ntk_cross_gram, static_argnums=0)


def _initial_outputs(spec, params0, x_rows):
    """Every seed's outputs at ``x_rows: (M, d)`` at initialisation, float64: ``(S, M, d_out)``."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params0)
        xr = jnp.asarray(x_rows, jnp.float64)
        return np.asarray(model.apply_seeds(spec, p64, xr))


def _grams(spec, params0, x_rows, x_train, kind):
    """Seed after seed, the kernel between ``x_rows: (M, d)`` and ``x_train: (N, d)``, float64
    (one seed's at a time: for ten outputs and a thousand samples one is a gigabyte)."""
    if kind == "infinite":
        x = np.asarray(x_rows, np.float64)
        lim = (spec.m * theory.gram_infinity_deep(x, spec.L, spec.d_out) if spec.arch == "deep"
               else theory.gram_infinity(x))[:, : x_train.shape[0]]
        while True:
            yield lim
    with jax.enable_x64(True):
        xr, xt = jnp.asarray(x_rows, jnp.float64), jnp.asarray(x_train, jnp.float64)
    for p in _seed_params(params0):
        with jax.enable_x64(True):
            gram = np.asarray(_cross_gram(spec, p, xr, xt))
        yield gram


def _prediction_rows(x_train, probe):
    """The prediction points: the ``N`` training points, then the ``probe: (P, d)`` points if
    any; ValueError naming ``probe`` for another shape."""
    if probe is None:
        return x_train
    probe = np.asarray(probe, np.float64)
    if probe.ndim != 2 or probe.shape[1] != x_train.shape[1]:
        raise ValueError(f"probe must have shape (P, d={x_train.shape[1]}), got {probe.shape}")
    return np.concatenate([x_train, probe])


def _initial_params(exp, spec):
    """Every seed's initialisation as the run holds it (in ``exp.dtype``) and its training key."""
    params0, keys = experiments.init_params(exp, spec)
    with engine.precision(exp.run_config()):
        params0 = jax.tree.map(lambda a: np.asarray(a.astype(exp.dtype)), params0)
    return params0, keys


class SeedProblem(NamedTuple):
    """One seed of an experiment as the recursion sees it: ``problem`` (:class:`Problem`), the
    step size ``eta`` (a float) and, for a stochastic algorithm, the minibatch rows the engine
    draws, ``batches: (rounds, tau, K, b)`` (else None); ``spec``: the network's, when
    ``problem`` is the :class:`Linearised` network rather than its kernel (else None)."""

    problem: Problem | Linearised
    eta: float
    batches: np.ndarray | None
    spec: model.NetSpec | None = None


def problems(exp: experiments.Experiment, kind: str = "empirical",
             probe=None, space: str = "function") -> list[SeedProblem]:
    """Every seed of ``exp`` as a :class:`SeedProblem`, rebuilt from the configuration alone:
    the data and split (:func:`localsgd.experiments.load_data`), each seed's initialisation and
    step size (:func:`localsgd.experiments.init_params`,
    :func:`localsgd.experiments.step_sizes`), and for a stochastic algorithm the minibatches
    drawn from each seed's key (:func:`localsgd.engine.minibatch_indices`). ``kind``:
    ``"empirical"`` (the NTK of each seed's initialisation, every output pair: ``cols`` of shape
    ``(N, d_out, M, d_out)``) or ``"infinite"`` (its infinite-width limit, times ``m`` for the
    deep net). ``probe: (P, d)``: more prediction points after the ``N`` training points.
    ``space``: ``"function"`` (the kernel, :class:`Problem`), ``"weight"`` (the linearised
    network, :class:`Linearised`: no kernel is formed) or ``"auto"`` (:func:`space_for`). A list
    of ``exp.seeds`` entries, every seed's kernel held at once (:func:`predict` holds one at a
    time)."""
    return list(_seed_problems(exp, kind, probe, space))


SPACES = ("function", "weight", "auto")
_KERNEL_ENTRIES = 2 ** 24  # above this many kernel entries (128 MB), "auto" works in weight space


def space_for(space: str, kind: str, M: int, N: int, d_out: int) -> str:
    """The space the recursion runs in: ``space`` unless it is ``"auto"``, which chooses
    ``"weight"`` for an empirical kernel of more than ``_KERNEL_ENTRIES`` entries
    (``M N d_out^2`` for ``M`` prediction and ``N`` training points): forming it costs
    ``M N d_out^2 m`` and every step reads ``b d_out M d_out`` of it, while a step of the
    linearised network costs a few passes over its ``b`` points. The two give the same outputs
    to rounding; the infinite-width kernel has no weights and is always ``"function"``."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    if kind == "infinite":
        if space == "weight":
            raise ValueError("space='weight' needs kind='empirical': the infinite-width kernel "
                             "has no weights")
        return "function"
    if space == "auto":
        return "weight" if M * N * d_out ** 2 > _KERNEL_ENTRIES else "function"
    return space


def _seed_params(params0):
    """Seed after seed, the initialisation in float64 (yielded outside ``enable_x64``, which
    would otherwise stay on in the caller while the generator waits)."""
    S = jax.tree.leaves(params0)[0].shape[0]
    for s in range(S):
        with jax.enable_x64(True):
            p = jax.tree.map(lambda a, s=s: jnp.asarray(a[s], jnp.float64), params0)
        yield p


def _seed_problems(exp, kind, probe, space="function"):
    """:func:`problems` seed after seed."""
    if not isinstance(exp, experiments.Experiment):
        raise ValueError(f"exp must be an Experiment, got {type(exp).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    clients, _, _ = experiments.load_data(exp)
    mask = np.asarray(clients.mask)
    x_train = np.asarray(clients.x)[mask > 0]
    y = np.asarray(clients.y, np.float64)[mask > 0]
    spec = exp.net_spec(x_train.shape[1], y.shape[1])
    x_rows = _prediction_rows(x_train, probe)
    cfg = exp.run_config()
    params0, keys = _initial_params(exp, spec)
    etas = experiments.step_sizes(exp, spec, params0, clients)
    weights = space_for(space, kind, x_rows.shape[0], len(y), y.shape[1]) == "weight"
    u0 = _initial_outputs(spec, params0, x_rows)
    stochastic = algs.get(exp.algorithm).stochastic
    source = (_seed_params(params0) if weights
              else _grams(spec, params0, x_rows, x_train, kind))
    for s, src in zip(range(exp.seeds), source):
        batches = None
        if stochastic:
            batches = np.asarray(engine.minibatch_indices(keys[s], jnp.asarray(mask), cfg.tau,
                                                          cfg.batch_size, cfg.rounds))
        if weights:
            yield SeedProblem(linearised(src, x_rows, u0[s], y, mask, spec), float(etas[s]),
                              batches, spec)
        else:
            yield SeedProblem(problem(src, u0[s], y, mask), float(etas[s]), batches)


def predict(exp: experiments.Experiment, kind: str = "empirical", probe=None,
            seeds: list[SeedProblem] | None = None, space: str = "auto") -> Prediction:
    """The kernel model of every seed of ``exp``, rebuilt from the configuration alone
    (:func:`problems`, whose ``kind`` and ``probe`` it takes; one seed's kernel at a time):
    ``Prediction.outputs`` holds the predicted outputs at the training points, then at the
    ``probe`` points. ``seeds``: the result of ``problems(exp, kind, probe)`` when the caller
    already has it (to use the same kernels for more than the prediction); ``space``: as
    :func:`problems` takes it (``"auto"``: :func:`space_for`). See :class:`Prediction`."""
    seeds = _seed_problems(exp, kind, probe, space) if seeds is None else seeds
    cfg = exp.run_config()
    outputs, sharp, etas, u0 = [], [], [], []
    for p in seeds:
        outputs.append(trajectory(cfg, p.problem, p.eta, p.batches, spec=p.spec))
        sharp.append(sharpness(cfg, p.problem, p.batches, spec=p.spec))
        etas.append(p.eta)
        u0.append(np.asarray(p.problem.u0))
        y = np.asarray(p.problem.y)
    outputs = np.stack(outputs)
    return Prediction(exp, kind, np.arange(0, exp.rounds + 1, exp.eval_every), outputs,
                      loss(outputs, y), np.array(etas, np.float64), np.array(sharp),
                      np.stack(u0), y)


_SHARED = ("dataset", "n", "d", "d_out", "delta", "targets", "data_seed", "idx_images",
           "idx_labels", "arch", "m", "L", "activation", "seeds", "seed", "dtype")


def predict_many(exps, kind: str = "empirical", probe=None,
                 space: str = "auto") -> list[Prediction]:
    """:func:`predict` for several experiments on the same data and network (the fields in
    ``_SHARED``: data, width, depth, seeds, dtype) that differ in their split or their run
    (partition, clients, algorithm, step, ``tau``, ``b``, rounds): each seed's kernel, the
    costly part (``M N d_out^2 m`` for ``M`` prediction and ``N`` training points), is computed
    once, on the training points in the data's own order, and serves every experiment through
    its order (:func:`localsgd.experiments.training_order`); in weight space (``space``, as
    :func:`predict` takes it) each seed's initialisation serves them all. A list of
    :class:`Prediction`, one per experiment, each as :func:`predict` gives it."""
    exps = list(exps)
    if not exps or not all(isinstance(e, experiments.Experiment) for e in exps):
        raise ValueError(f"exps must be a non-empty list of Experiment objects, got {exps!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    space_for(space, kind, 1, 1, 1)  # refuses a bad space before any work
    ref = exps[0]
    for e in exps[1:]:
        other = [f for f in _SHARED if getattr(e, f) != getattr(ref, f)]
        if other:
            raise ValueError(f"exps must share their data and network; {other} differ")
    data = [experiments.load_data(e)[0] for e in exps]
    orders = [experiments.training_order(e) for e in exps]
    masks = [np.asarray(c.mask) for c in data]
    x_train = np.empty_like(np.asarray(data[0].x)[masks[0] > 0])
    x_train[orders[0]] = np.asarray(data[0].x)[masks[0] > 0]
    y = np.empty(x_train.shape[:1] + data[0].y.shape[-1:])
    y[orders[0]] = np.asarray(data[0].y, np.float64)[masks[0] > 0]
    N = x_train.shape[0]
    spec = ref.net_spec(x_train.shape[1], y.shape[1])
    x_rows = _prediction_rows(x_train, probe)
    # every experiment's rows: its training points in its client order, then the probe points
    rows = [np.concatenate([o, np.arange(N, x_rows.shape[0])]) for o in orders]
    params0, keys = _initial_params(ref, spec)
    etas = [experiments.step_sizes(e, spec, params0, c) for e, c in zip(exps, data)]
    u0 = _initial_outputs(spec, params0, x_rows)
    weights = space_for(space, kind, x_rows.shape[0], N, y.shape[1]) == "weight"
    net = spec if weights else None
    source = (_seed_params(params0) if weights
              else _grams(spec, params0, x_rows, x_train, kind))
    outs, sharp = [[] for _ in exps], [[] for _ in exps]
    for s, src in zip(range(ref.seeds), source):
        seen = {}
        for i, e in enumerate(exps):
            cfg = e.run_config()
            prob = (linearised(src, x_rows, u0[s], y, masks[i], spec, orders[i]) if weights
                    else problem(src, u0[s], y, masks[i], orders[i]))
            batches = None
            if algs.get(e.algorithm).stochastic:
                batches = np.asarray(engine.minibatch_indices(
                    keys[s], jnp.asarray(masks[i]), cfg.tau, cfg.batch_size, cfg.rounds))
            outs[i].append(trajectory(cfg, prob, float(etas[i][s]), batches,
                                      spec=net)[:, rows[i]])
            # runs that step on the same sample sets (Local SGD, FedProx and SCAFFOLD from the
            # same keys) share one sharpness
            sets = _step_sets(cfg, prob, batches)
            key = hashlib.sha1(b"".join(np.ascontiguousarray(a).tobytes() for a in sets)).digest()
            if key not in seen:
                seen[key] = _largest_eigenvalue(prob, *sets, net)
            sharp[i].append(seen[key])
        del src, prob
    preds = []
    for i, e in enumerate(exps):
        outputs = np.stack(outs[i])
        y_e = y[orders[i]]
        preds.append(Prediction(e, kind, np.arange(0, e.rounds + 1, e.eval_every), outputs,
                                loss(outputs, y_e), np.asarray(etas[i], np.float64),
                                np.array(sharp[i]), u0[:, rows[i]], y_e))
    return preds


# -- the network against its kernel model ------------------------------------------------------


def network_outputs(result) -> np.ndarray:
    """The network's recorded outputs on the training points, in the order of
    ``ClientData.x[ClientData.mask > 0]``: ``(S, E, N, d_out)``, from a run that recorded the
    ``"outputs"`` metric (ValueError naming ``metrics`` otherwise)."""
    if "outputs" not in result.metrics:
        raise ValueError("result must record metrics=(..., 'outputs', ...) to be compared with "
                         "its kernel model")
    clients, _, _ = experiments.load_data(result.config)
    return np.asarray(result.metrics["outputs"], np.float64)[:, :, np.asarray(clients.mask) > 0]


def distance(result, pred: Prediction, eps: float | None = None) -> np.ndarray:
    """``D`` per seed: ``max_t ||u_t - u_t^kernel|| / ||u_0^kernel - y||`` over the recorded
    rounds ``t`` (round 0 included) up to the kernel model's first record at or below a training
    loss ``eps`` (every recorded round when ``eps`` is None or never reached), on the training
    points. ``(S,)``; it is 0 for a network that is exactly its kernel model. ``result``: a run
    (:func:`network_outputs`) or another :class:`Prediction` with the same seeds and records
    (how far apart two kernel models are, on the scale of ``pred``'s)."""
    if isinstance(result, Prediction):
        u = np.asarray(result.outputs, np.float64)[:, :, : result.n_train]
    else:
        u = network_outputs(result)
    N = pred.n_train
    if u.shape[:2] != pred.outputs.shape[:2]:
        raise ValueError(f"result records {u.shape[:2]} (seeds, rounds), the prediction "
                         f"{pred.outputs.shape[:2]}")
    diff = np.linalg.norm((u - pred.outputs[:, :, :N]).reshape(u.shape[:2] + (-1,)), axis=-1)
    scale = np.linalg.norm((pred.u0[:, :N] - pred.y).reshape(len(u), -1), axis=-1)
    rel = diff / scale[:, None]
    out = np.empty(len(u))
    for s in range(len(u)):
        last = len(pred.rounds) - 1
        if eps is not None:
            hit = np.flatnonzero(pred.loss[s] <= eps)
            last = int(hit[0]) if hit.size else last
        row = rel[s, : last + 1]
        out[s] = np.max(row) if np.all(np.isfinite(row)) else np.inf
    return out


def iteration_ratio(result, pred: Prediction, eps: float) -> np.ndarray:
    """The network's iterations to a training loss ``<= eps`` over its kernel model's, per seed
    (both interpolated between records; inf or NaN where one never gets there). ``(S,)``."""
    net = analysis.iterations_to(result.iterations, np.asarray(result.metrics["loss"]), eps)
    return net / pred.iterations_to(eps)
