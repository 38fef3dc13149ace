"""The engine: what every algorithm shares, as one compiled program per run configuration.

``run(config, spec, params0, data, key) -> TrainOutput`` runs the entry of
:data:`localsgd.algorithms.REGISTRY` that ``config.algorithm`` names (the algorithms themselves,
their client steps and server updates, are described there).

The program: clients are a leading array axis; ``lax.scan`` runs the ``tau`` local steps, the
rounds between evaluations and the evaluations. The clients' local steps are laid out as
``config.layout`` says (:class:`localsgd.config.RunConfig`): batched with ``vmap``, or in turn,
a few at a time, with the average summed as they finish. The gradient is written out
(:func:`localsgd.model.backprop`, the operations of ``jax.grad``) so that each layer is updated in
place, by the algorithm's ``client_update``, as soon as its gradient is known. Metrics are
recorded inside the scan, at round 0 and after every ``eval_every`` rounds. Only the learning
rate and arrays are traced, so a new seed, new data values or a new ``eta`` reuse the compiled
program; :func:`sweep` runs many seeds and learning rates in one program.

Divergence: after every round the averaged weights must be finite, and at every evaluation the
training loss (computed whatever metrics are recorded, so that the trajectory and the verdict do
not depend on them) must be finite, at most ``GROWTH`` times the loss at the start of the run, and
some hidden unit of the last layer must be active on some sample. A run that fails stops updating
(it keeps the last good weights) and reports the round in ``TrainOutput.diverged_at`` and why in
``TrainOutput.diverged_why`` (:data:`WHY`); :func:`divergence_message` says what to lower.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import algorithms as algs
from . import diagnostics as dg
from . import model
from .algorithms import _average
from .config import METRICS, ROUND_END, RunConfig  # noqa: F401  (part of the engine's API)
from .data import ClientData

# A loss this many times the loss at the start of the run counts as a blow-up.
GROWTH = 1e4
# diverged_why codes: 0 none, then why the run was stopped.
WHY = ("", "non-finite", "loss grew", "all units dead")


class TrainState(NamedTuple):
    """Where a run stands after some rounds, enough to continue it exactly: the averaged trained
    weights, the divergence round (or -1), the ever-flipped activation masks (or None), the number
    of rounds done, the clients' state (leaves ``(K, ...)``, or None for a stateless algorithm),
    the reason code of a divergence (:data:`WHY`) and the loss at the start of the run."""

    trainable: tuple
    diverged_at: jax.Array
    ever: list | None
    round: jax.Array
    client_state: Any = None
    diverged_why: Any = None
    loss0: Any = None


class TrainOutput(NamedTuple):
    """A run's result (a pytree: ``sweep`` adds a leading axis to every leaf).

    ``params``: final parameters; ``metrics``: dict of arrays with a leading axis of
    ``config.evaluations`` points; ``rounds``: the round of each point, ``(evaluations,)``;
    ``diverged_at``: the first round at which the run was stopped, or -1; ``state``: a
    :class:`TrainState` from which ``run(..., start=state)`` continues the run;
    ``diverged_why``: why it was stopped, an index into :data:`WHY`.
    """

    params: dict
    metrics: dict
    rounds: jax.Array
    diverged_at: jax.Array
    state: TrainState
    diverged_why: Any = None


def check_inputs(config: RunConfig, spec: model.NetSpec, params0: dict, data: ClientData,
                 probe=None) -> None:
    """Checks the data, the probe points and the parameters against the config and the network;
    raises ValueError naming the offending input before any work is done."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a RunConfig, got {type(config).__name__}")
    x, y, mask = np.asarray(data.x), np.asarray(data.y), np.asarray(data.mask)
    if x.ndim != 3 or x.shape[-1] != spec.d:
        raise ValueError(f"data.x must have shape (K, n_max, d={spec.d}), got {x.shape}")
    if y.ndim != 3 or y.shape[:2] != x.shape[:2] or y.shape[-1] != spec.d_out:
        raise ValueError(
            f"data.y must have shape (K, n_max, d_out={spec.d_out}) matching data.x "
            f"{x.shape[:2]}, got {y.shape}"
        )
    for name, a in (("data.x", x), ("data.y", y)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite, got NaN or infinite entries")
    sizes = mask.sum(axis=1)
    if np.any(sizes < 1):
        raise ValueError("data.mask must give every client at least one sample")
    if algs.get(config.algorithm).stochastic and config.batch_size > sizes.min():
        raise ValueError(
            f"batch_size must be at most the smallest client's sample count {int(sizes.min())}, "
            f"got {config.batch_size}"
        )
    if config.layout == "lowrank":
        why = lowrank_refusal(config, spec)
        if why is not None:
            raise ValueError(f"layout='lowrank' cannot run this config: {why}")
    if "test_outputs" in config.metrics:
        p = None if probe is None else np.asarray(probe)
        if p is None or p.ndim != 2 or p.shape[-1] != spec.d or not np.all(np.isfinite(p)):
            raise ValueError(
                f"probe must be finite inputs of shape (P, d={spec.d}) for the metric "
                f"'test_outputs', got {None if p is None else p.shape}")
    shapes = tuple(tuple(w.shape) for w in params0["trainable"])
    if shapes != spec.layer_shapes:
        raise ValueError(
            f"params0 trainable shapes {shapes} do not match the spec {spec.layer_shapes}"
        )


# -- minibatches -------------------------------------------------------------------------------


def _broadcast(tree, K):
    return jax.tree.map(lambda w: jnp.broadcast_to(w, (K,) + w.shape), tree)


def round_key(key, r):
    """The PRNG key of round ``r`` (0-based, counted from the start of the run) of a run with key
    ``key``: what :func:`minibatch_indices` draws that round's minibatches from."""
    return jax.random.fold_in(key, r)


@partial(jax.jit, static_argnums=(2, 3, 4))
def minibatch_indices(key, mask, tau, b, rounds):
    """Every minibatch a run draws: ``(rounds, tau, K, b)`` row indices into each client's data
    (``mask: (K, n_max)``), round ``r`` drawn from :func:`round_key` ``(key, r)`` as the engine
    draws it (``tau = 1`` for ``minibatch_sgd``). The kernel model
    (:mod:`localsgd.kernel`) replays a run's own minibatches through this function."""
    return jax.vmap(lambda r: _minibatch_indices(round_key(key, r), mask, tau, b))(
        jnp.arange(rounds))


def _minibatch_indices(key, mask, tau, b):
    """``(tau, K, b)`` indices, each row drawn uniformly without replacement from the client's real
    samples (padding gets a score above every real one and is never chosen)."""
    # A sort, not _pick's top_k: XLA's SPMD partitioner keeps a sort along the sample axis local to
    # each device's clients, where it gathers top_k's operands (localsgd.distributed).
    return jnp.argsort(_minibatch_scores(key, mask, tau), axis=-1)[..., :b]


def _minibatch_scores(key, mask, tau):
    """``(tau, K, n_max)`` uniform scores, 2.0 on padding; a row's ``b`` smallest are its
    minibatch (:func:`_pick`). With clients in turn (``layout="map"``) each step picks its rows
    inside the step loop, so that a round holds only these scores, not a sort's workspace."""
    # Drawn flat and reshaped: the same numbers as drawing the shape directly (the threefry PRNG
    # is partitionable, JAX's default: element i depends only on the key and i), but XLA compiles
    # the flat draw in about a third of the time.
    # float32 whatever the run's dtype, so that a float64 run draws the same minibatches.
    u = jax.random.uniform(key, (tau * math.prod(mask.shape),), jnp.float32)
    u = u.reshape((tau,) + mask.shape)
    return jnp.where(mask > 0, u, 2.0)


def _pick(scores, b):
    """Indices of the ``b`` smallest scores along the last axis, smallest first, ties to the lower
    index: ``argsort(scores)[..., :b]`` (a stable sort), computed as ``top_k(-scores, b)``, which
    gives the same indices (top_k also breaks ties by index) in a quarter of the time on CPU."""
    return jax.lax.top_k(-scores, b)[1]


def _gather(a, idx):
    """``a: (K, n, f)``, ``idx: (K, b)`` -> ``(K, b, f)``."""
    return jnp.take_along_axis(a, idx[..., None], axis=1)


def _split_clients(per_client, lo, hi, G):
    """Clients ``lo:hi`` of every array in ``per_client`` (None entries stay None), grouped
    ``G`` at a time: leading axes ``(K, ...)`` -> ``((hi - lo) // G, G, ...)``."""
    return jax.tree.map(lambda a: a[lo:hi].reshape(((hi - lo) // G, G) + a.shape[1:]),
                        per_client)


# -- one run's context -------------------------------------------------------------------------


class _Run(NamedTuple):
    """What every part of a run reads: the static config and algorithm, the network, the fixed
    features of the training data (``(K, n_max, f)``, computed once), the per-client mean weights
    ``mask / n_k``, the training data (``data`` pooled for a pooled algorithm), the data as given
    (for metrics), the traced step size and the features of the probe points (``(P, f)``, or
    None)."""

    cfg: RunConfig
    alg: algs.Algorithm
    spec: model.NetSpec
    fixed: dict
    feats: jax.Array
    client_w: jax.Array
    train: ClientData
    data: ClientData
    eta: jax.Array
    probe_feats: Any = None

    @property
    def need_locals(self) -> bool:
        return any(m in ROUND_END for m in self.cfg.metrics)


def _context(cfg, spec, eta, fixed, data, probe=None) -> _Run:
    alg = algs.get(cfg.algorithm)
    train = data
    if alg.pooled:
        K, n_max = data.mask.shape
        train = ClientData(
            data.x.reshape(1, K * n_max, -1),
            data.y.reshape(1, K * n_max, -1),
            data.mask.reshape(1, K * n_max),
            jnp.ones((1,), data.weight.dtype),
        )
    feats = model.features(spec, fixed, train.x)  # fixed input map: once per run
    client_w = train.mask / jnp.sum(train.mask, axis=1, keepdims=True)
    probe_feats = None if probe is None else model.features(spec, fixed, probe)
    return _Run(cfg, alg, spec, fixed, feats, client_w, train, data, eta, probe_feats)


def _start_client(run: _Run, Wbar):
    """What a client carries through its local steps: its model, and with an Optax optimiser
    also the optimiser's state, started afresh every round."""
    if run.alg.optimizer is None:
        return Wbar
    return Wbar, run.alg.optimizer(run.eta, run.cfg).init(Wbar)


def _model_of(run: _Run, carry):
    return carry if run.alg.optimizer is None else carry[0]


def _client_step(run: _Run, W, f, y, w, ctx):
    """One local step of one client: ``W`` what the client carries (:func:`_start_client`),
    ``(f, y, w)`` its batch, ``ctx`` what the algorithm's ``client_context`` gave it for this
    round (per layer, or None). Plain SGD-like updates are fused into the backward pass, each
    layer updated in place as soon as its gradient is known; an Optax optimiser takes the whole
    gradient."""
    if run.alg.optimizer is not None:
        W, opt_state = W
        g = model.backprop(run.spec, run.fixed, W, f, y, w)
        updates, opt_state = run.alg.optimizer(run.eta, run.cfg).update(g, opt_state, W)
        return optax.apply_updates(W, updates), opt_state

    def update(l, Wl, gl):
        return run.alg.client_update(run.eta, run.cfg, Wl, gl, None if ctx is None else ctx[l])

    return model.backprop(run.spec, run.fixed, W, f, y, w, update=update)


def _client_grad(run: _Run, W, f, y, w):
    return model.backprop(run.spec, run.fixed, W, f, y, w)


def _batch(run: _Run, idx):
    """Every client's minibatch (``idx: (K, b)``) or full batch (``idx is None``)."""
    if idx is None:
        return run.feats, run.train.y, run.client_w
    b = idx.shape[-1]
    return (_gather(run.feats, idx), _gather(run.train.y, idx),
            jnp.full(idx.shape, 1.0 / b, run.feats.dtype))


def _server_view(run: _Run, states):
    """The server's view of the clients' states (``server_state``), or None."""
    if run.alg.server_state is None:
        return None
    return run.alg.server_state(run.train.weight, states)


def _finish_all(run: _Run, Wbar, Ws, states):
    """Every client's state at the round's end (``finish``), leaves ``(K, ...)``, or None."""
    if not run.alg.stateful:
        return None
    server = _server_view(run, states)
    return jax.vmap(lambda Wk, sk: run.alg.finish(run.eta, run.cfg, Wbar, Wk, sk, server))(
        Ws, states)


# -- the local phase: a round's client work ----------------------------------------------------


def _local_phase(run: _Run, Wbar, states, rkey, layout):
    """A round's local work: ``(average, Ws, states)``, the clients' models averaged with
    ``train.weight``; the models themselves, leaves ``(K, ...)``, when a metric needs them (the
    batched layout has them anyway), else None; and the clients' new states (or None)."""
    cfg, alg, K = run.cfg, run.alg, run.train.mask.shape[0]
    b = cfg.batch_size
    if alg.server_gradient:
        idx = _minibatch_indices(rkey, run.train.mask, 1, b)[0]
        g = jax.vmap(partial(_client_grad, run), in_axes=(None, 0, 0, 0))(Wbar, *_batch(run, idx))
        g = _average(run.train.weight, g)
        new = jax.tree.map(lambda w, gw: w - run.eta * gw, Wbar, g)
        return new, _broadcast(new, K), None
    if layout in ("map", "lowrank"):
        scores = _minibatch_scores(rkey, run.train.mask, cfg.tau) if alg.stochastic else None
        if layout == "lowrank":
            return _lowrank_local_phase(run, Wbar, scores)
        return _clients_in_turn(run, Wbar, states, scores)
    idx = _minibatch_indices(rkey, run.train.mask, cfg.tau, b) if alg.stochastic else None
    ctx, per_client = _contexts(run, Wbar, states)
    axes = (0, 0, 0, 0, 0 if per_client else None)

    step_all = jax.vmap(partial(_client_step, run), in_axes=axes)

    def step(Ws, idx_t):
        return step_all(Ws, *_batch(run, idx_t), ctx), None

    Ws, _ = jax.lax.scan(step, _broadcast(_start_client(run, Wbar), K), idx, length=cfg.tau)
    Ws = _model_of(run, Ws)
    return _average(run.train.weight, Ws), Ws, _finish_all(run, Wbar, Ws, states)


def _clients_in_turn(run: _Run, Wbar, states, scores):
    """``layout="map"``: the local phase with the loops swapped, the clients taken in turn,
    ``clients_together`` at a time, each taking its ``tau`` steps (a loop over the clients axis,
    so the program does not grow with ``K``). The same products on the same numbers as the
    batched layout; on a CPU it is faster because a client's weights stay in cache across its
    steps and no step streams all ``K`` models through memory. The clients taken together step in
    one loop body as independent, unbatched operations, which XLA:CPU runs side by side on its
    threads. The average is summed as the clients finish, so the models are kept only when a
    metric needs them (the sum's order differs from the batched layout's, which changes the
    average by float32 rounding)."""
    K = run.train.mask.shape[0]
    sk = None if scores is None else jnp.swapaxes(scores, 0, 1)  # (K, tau, n_max)
    ctx, own = _contexts(run, Wbar, states)
    shared = None if own else ctx  # a context common to all clients is not split over them
    server = _server_view(run, states)
    per_client = (run.feats, run.train.y, run.client_w, sk, run.train.weight,
                  ctx if own else None, states)
    G = min(run.cfg.clients_together, K)
    full = K - K % G
    acc = jax.tree.map(jnp.zeros_like, Wbar)
    together = partial(_clients_together, run, Wbar, server, shared)
    acc, out = together(acc, _split_clients(per_client, 0, full, G))
    if full < K:
        acc, rest = together(acc, _split_clients(per_client, full, K, K - full))
        out = jax.tree.map(lambda a, r: jnp.concatenate([a, r]), out, rest)
    return acc, out[0], out[1]


def _clients_together(run: _Run, Wbar, server, shared, acc, groups):
    """``groups``: per-client arrays with leading axes ``(n_groups, G)``; the clients of a group
    take their ``tau`` steps together and their models, weighted, are added to ``acc``. Returns
    ``acc`` and ``(models, states)``: the models, leaves ``(n_groups * G, ...)``, if a metric
    needs them, and the clients' new states (each None where there are none)."""
    b, tau = run.cfg.batch_size, run.cfg.tau

    def group(acc, args):
        f, y, w, sk, weight, ctx, states = args  # (G, ...)
        G = f.shape[0]
        ctxs = [shared if ctx is None else jax.tree.map(lambda a, g=g: a[g], ctx)
                for g in range(G)]

        def step(Ws, s):  # s: (G, n_max) scores of this step, or None
            new = []
            for g in range(G):
                if s is None:
                    new.append(_client_step(run, Ws[g], f[g], y[g], w[g], ctxs[g]))
                else:
                    i = _pick(s[g], b)  # this step's minibatch
                    wb = jnp.full(i.shape, 1.0 / b, f.dtype)
                    new.append(_client_step(run, Ws[g], f[g][i], y[g][i], wb, ctxs[g]))
            return tuple(new), None

        xs = None if sk is None else jnp.swapaxes(sk, 0, 1)  # (tau, G, n_max)
        # The first step apart: it reads Wbar and writes the clients' own models, where a
        # loop starting from Wbar would first copy it once per client.
        Ws = step((_start_client(run, Wbar),) * G, None if xs is None else xs[0])[0]
        rest = None if xs is None else xs[1:]
        Ws = jax.lax.scan(step, Ws, rest, length=tau - 1)[0]
        Ws = tuple(_model_of(run, c) for c in Ws)
        for g in range(G):
            acc = jax.tree.map(lambda a, Wg, g=g: a + weight[g] * Wg, acc, Ws[g])
        new_states = None
        if run.alg.stateful:
            new_states = jax.tree.map(lambda *a: jnp.stack(a), *[
                run.alg.finish(run.eta, run.cfg, Wbar, Ws[g],
                               jax.tree.map(lambda a, g=g: a[g], states), server)
                for g in range(G)])
        models = jax.tree.map(lambda *a: jnp.stack(a), *Ws) if run.need_locals else None
        return acc, (models, new_states)

    acc, out = jax.lax.scan(group, acc, groups)  # out: leaves (n_groups, G, ...) or None
    return acc, jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)


def lowrank_refusal(config: RunConfig, spec: model.NetSpec) -> str | None:
    """Why ``layout="lowrank"`` cannot run ``config`` on ``spec``, or None where it can: it needs
    one trained layer (whose input, the fixed features, does not move during training), plain
    SGD steps with no client context, state or optimiser (``local_sgd``, ``local_gd``), and no
    metric of the clients' own models."""
    alg = algs.get(config.algorithm)
    if spec.L != 1:
        return f"it needs one trained layer (L=1), got L={spec.L}"
    plain = (alg.client_update is algs.sgd_update and alg.optimizer is None
             and alg.client_context is None and not alg.stateful and not alg.server_gradient
             and not alg.pooled)
    if not plain:
        return f"it runs plain local SGD steps only, not algorithm={config.algorithm!r}"
    locals_ = [m for m in config.metrics if m in ROUND_END]
    if locals_:
        return f"it forms no client model, which the metrics {locals_} read"
    return None


def _lowrank_local_phase(run: _Run, Wbar, scores):
    """``layout="lowrank"``: the local phase of plain SGD steps on one trained layer ``W: (m, f)``
    whose input, the fixed features, never moves. A client's step on rows ``F_t: (B, f)`` changes
    ``W`` by ``-eta Delta_t^T F_t``, with ``Delta_t: (B, m)`` the loss's gradient at the layer's
    pre-activations, so after ``t`` steps the client's pre-activations on new rows are
    ``F_t Wbar^T - eta sum_{s<t} (F_t F_s^T) Delta_s``: the server's model is read once a round,
    for every client's rows at once, and no client model is formed; the new average is
    ``Wbar - eta sum_k (n_k/n) sum_t Delta_{k,t}^T F_{k,t}`` (``Wbar`` times the weights' sum),
    one more product. The same steps as the other layouts, summed in another order (equal to
    float32 rounding). It pays where a
    client model outgrows the cache: every step of the other layouts streams a whole ``m x f``
    model through memory, ``K tau`` times a round (chapter 11's width axis, ``m = 2048``, one
    core: see ``bench/run.py``)."""
    cfg, K = run.cfg, run.train.mask.shape[0]
    (W,) = Wbar
    phi = model.ACTIVATIONS[run.spec.activation]
    B_out = run.fixed["B"]
    if scores is None:  # every step on the client's full data, weighted mask / n_k
        n_max = run.feats.shape[1]
        idx = jnp.broadcast_to(jnp.arange(n_max), (K, cfg.tau, n_max))
        w = jnp.broadcast_to(run.client_w[:, None, :], idx.shape)
    else:  # the rows _clients_in_turn picks, step by step: (K, tau, b)
        idx = jnp.swapaxes(_pick(scores, cfg.batch_size), 0, 1)
        w = jnp.full(idx.shape, 1.0 / cfg.batch_size, run.feats.dtype)
    tau, Bn = idx.shape[1], idx.shape[2]
    F, Y = (_gather(a, idx.reshape(K, -1)).reshape(idx.shape + a.shape[-1:])
            for a in (run.feats, run.train.y))  # (K, tau, B, f), (K, tau, B, d_out)
    P = F @ W.T  # (K, tau, B, m): every client's rows through the server's model, at once

    def client(Fk, Yk, wk, Pk):
        flat = Fk.reshape(tau * Bn, -1)
        grams = (Fk @ flat.T).reshape(tau, Bn, tau, Bn)  # (F_t F_s^T) for every t, s

        def step(deltas, t):
            before = (jnp.arange(tau) < t)[None, :, None]
            corr = jnp.einsum("bsc,scm->bm", grams[t] * before, deltas)
            h, vjp = jax.vjp(phi, Pk[t] - run.eta * corr)
            r = h @ B_out.T - Yk[t]
            delta = vjp((wk[t][:, None] * r) @ B_out)[0]  # (B, m)
            return deltas.at[t].set(delta), None

        deltas, _ = jax.lax.scan(step, jnp.zeros(Pk.shape, Pk.dtype), jnp.arange(tau))
        return deltas

    deltas = jax.vmap(client)(F, Y, w, P)  # (K, tau, B, m)
    weight = run.train.weight
    weighted = deltas * weight[:, None, None, None]
    # sum_k w_k W_k with W_k = Wbar + (client k's move): Wbar times sum_k w_k, as the other
    # layouts average (weights rounded to float32 need not sum to 1)
    new = jnp.sum(weight) * W - run.eta * (weighted.reshape(-1, W.shape[0]).T
                                           @ F.reshape(-1, W.shape[1]))
    return (new,), None, None


def _contexts(run: _Run, Wbar, states):
    """The clients' ``client_context`` for this round and whether it is per client: leaves
    ``(K, ...)`` for a stateful algorithm, one shared context otherwise, or None."""
    if run.alg.client_context is None:
        return None, False
    server = _server_view(run, states)
    if states is None:
        return run.alg.client_context(Wbar, None, server), False
    return jax.vmap(run.alg.client_context, in_axes=(None, 0, None))(Wbar, states, server), True


# -- metrics and the divergence guard ----------------------------------------------------------


def _guard_losses(run: _Run, W):
    """``(F_i(W) for every sample, flat (K n_max,), whether every unit of the last hidden layer
    is inactive on every real sample, the outputs (K n_max, d_out))``, from the features computed
    once. The sum over outputs
    is a product with a ones vector: as a reduction, XLA:CPU fuses it with the layers' products
    into one library call that runs ~10x slower than the products alone (measured: 512 samples,
    m = 512)."""
    phi = model.ACTIVATIONS[run.spec.activation]
    h = run.feats.reshape(-1, run.feats.shape[-1])
    for Wl in W:
        h = phi(h @ Wl.T)
    out = h @ run.fixed["B"].T
    r = out - run.train.y.reshape(-1, run.train.y.shape[-1])
    # Active units per sample, also as a product with a ones vector (not a reduction over the
    # layer's output, which XLA:CPU would fuse into the product's slow path).
    active = (h != 0).astype(h.dtype) @ jnp.ones((h.shape[-1],), h.dtype)
    dead = jnp.all(jnp.where(run.train.mask.reshape(-1) > 0, active == 0, True))
    return 0.5 * ((r * r) @ jnp.ones((r.shape[-1],), r.dtype)), dead, out


def _round_end_metrics(run: _Run, Ws, metrics):
    """The metrics of the clients' models before averaging (``ROUND_END``)."""
    spec, fixed, out = run.spec, run.fixed, {}
    local_data = run.train if run.alg.pooled else run.data
    Wavg = _average(local_data.weight, Ws)
    if "gap" in metrics:
        out["gap"], out["gap_rel"] = dg.gradient_gap(spec, Ws, Wavg, fixed, local_data)
    if "local_flips" in metrics:
        out["local_flips"] = jax.vmap(
            lambda Wk, xk, mk: dg.flip_fraction(
                dg.activation_patterns(spec, {"trainable": Wk, "fixed": fixed}, xk),
                dg.activation_patterns(spec, {"trainable": Wavg, "fixed": fixed}, xk),
                mk,
            )
        )(Ws, run.train.x, run.train.mask)
    if "drift" in metrics:
        out["drift"] = jax.vmap(lambda Wk: dg.tree_norm(jax.tree.map(jnp.subtract, Wk, Wavg)))(Ws)
    return out


def _evaluate(run: _Run, W0, init_patterns, Wbar, Ws, ever):
    """``(recorded metrics, ever-flipped masks, loss, dead)`` at the averaged model ``Wbar``; the
    loss and whether every last-layer unit is dead are computed whatever is recorded (the
    divergence guard reads them)."""
    metrics, spec, fixed, data = run.cfg.metrics, run.spec, run.fixed, run.data
    p = {"trainable": Wbar, "fixed": fixed}
    out = {}
    if {"grad_norm", "pl_ratio"} & set(metrics):
        F, g = dg.loss_and_grad(spec, p, data)
        gn = dg.tree_norm(g)
        out.update(loss=F, grad_norm=gn, pl_ratio=dg.pl_ratio(F, gn))
    per, dead, outputs = _guard_losses(run, Wbar)  # flat, (K n_max,)
    if "outputs" in metrics:
        out["outputs"] = outputs.reshape(data.mask.shape + outputs.shape[-1:])
    if "test_outputs" in metrics:
        out["test_outputs"] = model.forward(spec, Wbar, fixed, run.probe_feats)
    if "grad_norm" not in out:
        m = data.mask.ravel()
        out["loss"] = jnp.sum(per * (m / jnp.sum(m)))
    if "client_loss" in metrics:
        client_mean_w = data.mask / jnp.sum(data.mask, axis=1, keepdims=True)
        out["client_loss"] = jnp.sum(per.reshape(data.mask.shape) * client_mean_w, axis=1)
    if "dist" in metrics:
        out["dist"] = dg.layer_distances(Wbar, W0)
        out["dist_rel"] = dg.relative_distance(Wbar, W0)
    if init_patterns is not None:
        pats = dg.activation_patterns(spec, p, data.x)
        out["flips"] = dg.flip_fraction(pats, init_patterns, data.mask)
        ever = [e | (a != b0) for e, a, b0 in zip(ever, pats, init_patterns)]
        out["ever_flipped"] = dg.flip_fraction(ever, [jnp.zeros_like(e) for e in ever], data.mask)
    if "forward_norms" in metrics:
        norms = dg.forward_norms(spec, p, data.x.reshape(-1, data.x.shape[-1]))
        m = data.mask.ravel()
        out["forward_norms"] = (norms * m).sum(axis=1) / m.sum()
    if run.need_locals:
        out.update(_round_end_metrics(run, Ws, metrics))
    keep = {k for name in metrics for k in METRICS[name]}
    return {k: v for k, v in out.items() if k in keep}, ever, out["loss"], dead


def _all_finite(tree):
    """Whether every entry of every leaf is finite (True for an empty tree)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(w)) for w in leaves]))


def _select(ok, new, old):
    return jax.tree.map(lambda a, b0: jnp.where(ok, a, b0), new, old)


class _Carry(NamedTuple):
    """The scan's carry: the averaged weights, the clients' states, the divergence round and
    reason, and the ever-flipped masks."""

    W: tuple
    states: Any
    diverged_at: jax.Array
    why: jax.Array
    ever: Any


def _one_round(run: _Run, key, layout, c: _Carry, r) -> tuple[_Carry, Any]:
    """Round ``r`` (0-based): the local phase, then the guard on the new average's finiteness."""
    new, Ws, states = _local_phase(run, c.W, c.states, round_key(key, r), layout)
    finite = _all_finite(new) & _all_finite(states)
    going = c.diverged_at < 0
    ok = going & finite
    stop = going & ~finite
    diverged_at = jnp.where(stop, (r + 1).astype(c.diverged_at.dtype), c.diverged_at)
    why = jnp.where(stop, jnp.int32(1), c.why)
    W = _select(ok, new, c.W)
    states = None if states is None else _select(ok, states, c.states)
    return c._replace(W=W, states=states, diverged_at=diverged_at, why=why), Ws


def _block(run: _Run, key, layout, W0, init_patterns, loss0, c: _Carry, first_round):
    """``eval_every`` rounds and the evaluation after them. The evaluation's guard stops a run
    whose loss is non-finite, grew ``GROWTH``-fold from the start, or whose last hidden layer is
    dead on every sample, at the weights it had at the previous evaluation."""
    every = run.cfg.eval_every
    start = c
    if every > 1:
        c, _ = jax.lax.scan(lambda cc, r: (_one_round(run, key, layout, cc, r)[0], None),
                            c, first_round + jnp.arange(every - 1))
    c, Ws = _one_round(run, key, layout, c, first_round + every - 1)
    rec, ever, F, dead = _evaluate(run, W0, init_patterns, c.W, Ws, c.ever)
    rec_finite = _all_finite(rec)
    why = jnp.where(~(jnp.isfinite(F) & rec_finite), 1,
                    jnp.where(F > GROWTH * loss0, 2, jnp.where(dead, 3, 0))).astype(jnp.int32)
    bad = (c.diverged_at < 0) & (why > 0)
    c = c._replace(
        W=_select(bad, start.W, c.W),
        states=None if c.states is None else _select(bad, start.states, c.states),
        diverged_at=jnp.where(bad, (first_round + every).astype(c.diverged_at.dtype),
                              c.diverged_at),
        why=jnp.where(bad, why, c.why),
        ever=ever,
    )
    return c, rec


# -- the program -------------------------------------------------------------------------------


def _train(cfg: RunConfig, spec, eta, params0, data, key, start=None, layout="vmap",
           probe=None):
    """One run as a traceable function (``layout`` resolved: ``"map"``, ``"vmap"`` or
    ``"lowrank"``); see
    :func:`run`. ``cfg.eta`` is never read here: ``eta`` is the traced step size."""
    fixed, W0 = params0["fixed"], params0["trainable"]
    run = _context(cfg, spec, eta, fixed, data, probe)
    K = run.train.mask.shape[0]
    patterns = bool({"flips", "ever_flipped"} & set(cfg.metrics))
    init_patterns = dg.activation_patterns(spec, params0, data.x) if patterns else None
    ever0 = [jnp.zeros_like(p) for p in init_patterns] if patterns else None
    if start is None:
        # Round 0 is recorded only at the true start; a resumed run records its later rounds.
        states0 = None
        if run.alg.stateful:
            states0 = _broadcast(run.alg.init_state(W0), K)
        rec0, _, loss0, _ = _evaluate(run, W0, init_patterns, W0, _broadcast(W0, K), ever0)
        c0 = _Carry(W0, states0, jnp.array(-1, jnp.int32), jnp.array(0, jnp.int32), ever0)
        first = jnp.array(0, jnp.int32)
    else:
        c0 = _Carry(start.trainable, start.client_state, start.diverged_at, start.diverged_why,
                    start.ever)
        loss0, first = start.loss0, start.round
    starts = first + jnp.arange(0, cfg.rounds, cfg.eval_every, dtype=jnp.int32)
    block = partial(_block, run, key, layout, W0, init_patterns, loss0)
    c, recs = jax.lax.scan(block, c0, starts)
    round_ids = starts + cfg.eval_every
    if start is None:
        recs = {k: jnp.concatenate([rec0[k][None], recs[k]]) for k in rec0}
        round_ids = jnp.concatenate([jnp.zeros((1,), round_ids.dtype), round_ids])
    state = TrainState(c.W, c.diverged_at, c.ever, first + cfg.rounds, c.states, c.why, loss0)
    return TrainOutput({"trainable": c.W, "fixed": fixed}, recs, round_ids, c.diverged_at, state,
                       c.why)


_train_jit = jax.jit(_train, static_argnums=(0, 1), static_argnames=("layout",))


@partial(jax.jit, static_argnums=(0, 1), static_argnames=("layout",))
def _sweep_jit(cfg, spec, etas, params0, data, keys, start, probe=None, layout="vmap"):
    def one(args):
        eta, p0, key, st = args
        return _train(cfg, spec, eta, p0, data, key, st, layout=layout, probe=probe)

    if layout in ("map", "lowrank"):
        # CPU: the runs one after another inside the one program. Vmapped, every product gains a
        # batch axis of S runs and on two cores the sweep took 1.3x as long as the runs one by
        # one; in turn it takes as long as they do and each run's numbers are those of ``run``.
        return jax.lax.map(one, (etas, params0, keys, start))
    return jax.vmap(one)((etas, params0, keys, start))


def layout_for(config: RunConfig) -> str:
    """The layout a run of ``config`` uses: ``config.layout``, with ``"auto"`` resolved to
    ``"map"`` when JAX's default backend is a CPU and ``"vmap"`` otherwise (see
    :class:`localsgd.config.RunConfig`)."""
    if config.layout != "auto":
        return config.layout
    return "map" if jax.default_backend() == "cpu" else "vmap"


def precision(config: RunConfig):
    """A context in which ``config.dtype`` is available: float64 needs JAX's 64-bit mode, which
    this turns on for the duration of the run only."""
    if config.dtype == "float64":
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _cast(config: RunConfig, tree):
    """Floating leaves of ``tree`` in ``config.dtype`` (no copy when they already are)."""
    dt = jnp.dtype(config.dtype)
    return jax.tree.map(
        lambda a: jnp.asarray(a, dt) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
        else jnp.asarray(a), tree)


def _prepare(config, params0, data, start, probe=None):
    data = ClientData(*_cast(config, tuple(data)))
    return (_cast(config, params0), data, (None if start is None else _cast(config, start)),
            None if probe is None else _cast(config, probe))


def run(
    config: RunConfig,
    spec: model.NetSpec,
    params0: dict,
    data: ClientData,
    key,
    start: TrainState | None = None,
    probe=None,
) -> TrainOutput:
    """Runs ``config.algorithm`` from ``params0`` on ``data`` with PRNG ``key``: one compiled
    program. See the module docstring and :class:`TrainOutput` for the result; weights, data and
    step size are in ``config.dtype``.

    ``start``: a previous output's ``state``; the run then continues for ``config.rounds`` more
    rounds and, with the same ``params0`` and ``key``, ends exactly where one longer run would.
    ``probe: (P, d)``: inputs (a test set) at which the metric ``"test_outputs"`` records the
    averaged model's outputs, ``(P, d_out)`` per evaluation; they take no part in training.
    """
    check_inputs(config, spec, params0, data, probe)
    with precision(config):
        params0, data, start, probe = _prepare(config, params0, data, start, probe)
        eta = jnp.asarray(config.eta, config.dtype)
        return _train_jit(config, spec, eta, params0, data, key, start,
                          layout=layout_for(config), probe=probe)


def run_module(config: RunConfig, module, data: ClientData, key, start=None):
    """:func:`run` for a network given as a Flax NNX module (:class:`localsgd.model.DeepReLUNet`,
    :class:`localsgd.model.TwoLayerNet`): its state is split into trained and fixed parts
    (:func:`localsgd.model.split`), trained, and merged back. Returns ``(TrainOutput, trained
    module)``; the module passed in is not changed."""
    out = run(config, module.spec, model.split(module), data, key, start)
    return out, model.merge(module, out.params)


def sweep_etas(config: RunConfig, S: int, etas=None) -> np.ndarray:
    """The ``(S,)`` step sizes of a sweep in ``config.dtype``: ``config.eta`` for every run when
    ``etas`` is None, else ``etas`` checked to be ``S`` positive finite numbers."""
    if etas is None:
        return np.full((S,), config.eta, config.dtype)
    etas = np.asarray(etas, config.dtype)
    if etas.shape != (S,) or not np.all(np.isfinite(etas) & (etas > 0)):
        raise ValueError(f"etas must be {S} positive finite numbers, got {etas!r}")
    return etas


def sweep(
    config: RunConfig,
    spec,
    params0,
    data: ClientData,
    keys,
    etas=None,
    start: TrainState | None = None,
    probe=None,
) -> TrainOutput:
    """Many runs in one compiled program, over a leading axis ``S``.

    ``params0`` leaves and ``keys`` carry the axis ``S`` (one initialisation and one key per run);
    ``etas`` is ``(S,)`` or None for ``config.eta`` everywhere; ``start`` a previous sweep's
    ``state`` (leaves with the axis ``S``) to continue from. Every leaf of the result gains the
    axis ``S``; run ``s`` equals ``run`` with ``params0[s]``, ``keys[s]`` and ``etas[s]``;
    ``probe`` (shared by the runs) as in :func:`run`.
    """
    S = jnp.shape(keys)[0]
    check_inputs(config, spec, jax.tree.map(lambda a: a[0], params0), data, probe)
    etas = sweep_etas(config, S, etas)
    with precision(config):
        params0, data, start, probe = _prepare(config, params0, data, start, probe)
        return _sweep_jit(config, spec, jnp.asarray(etas), params0, data, keys, start, probe,
                          layout=layout_for(config))


def divergence_message(config: RunConfig, diverged_at: int, why: int = 1) -> str | None:
    """A sentence saying at which round a run was stopped, why (``why``: an index into
    :data:`WHY`) and which parameter to lower, or None when ``diverged_at < 0``."""
    if diverged_at < 0:
        return None
    lower = "eta" if config.tau == 1 else "eta or tau"
    what = {
        1: "the weights or a recorded metric became non-finite",
        2: f"the loss grew more than {GROWTH:.0e}-fold from its value at the start (a blow-up)",
        3: "every unit of the last hidden layer became inactive on every sample (the network "
           "died)",
    }.get(int(why), "the weights or a recorded metric became non-finite")
    return (
        f"The run diverged at round {int(diverged_at)}: {what}. "
        f"Lower {lower} (eta={config.eta}, tau={config.tau}); training stopped at the last "
        "good weights."
    )
