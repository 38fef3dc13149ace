"""Local GD, Local SGD and their baselines as one compiled program each.

Every algorithm has the signature ``run(config, spec, params0, data, key) -> TrainOutput``:

* ``local_sgd``: every round, each client starts from the averaged model ``W_bar``, takes ``tau``
  steps ``W_k <- W_k - eta * grad F_k^B(W_k)`` on minibatches ``B`` of ``batch_size`` samples
  drawn uniformly *without replacement* from its own data, independently at every step; then the
  server averages ``W_bar <- sum_k (n_k / n) W_k``.
* ``local_gd``: the same with full local gradients ``grad F_k``.
* ``gd``: centralised gradient descent on the pooled data, one step per round (``tau = 1``).
* ``minibatch_sgd``: synchronous minibatch SGD, one step per round (``tau = 1``): every client
  computes a minibatch gradient at ``W_bar`` and the server steps along their weighted mean. With
  the same key it draws the same minibatches as ``local_sgd`` with ``tau = 1``.

The program: clients are a leading array axis; ``vmap`` runs a local step on all clients at once
(on a CPU the clients run in turn instead, two at a time, each its ``tau`` steps, and the average
is summed as they finish: the same numbers to float32 rounding, faster there, see
``_client_loop``), ``lax.scan`` runs the ``tau`` local steps, the rounds between
evaluations and the evaluations. The gradient is written out (``_backprop``, the operations of
``jax.grad``) so that each layer is updated in place as soon as its gradient is known.
Metrics are recorded inside the scan, at round 0 and after every ``eval_every`` rounds. Only the
learning rate and arrays are traced, so a new seed, new data values or a new ``eta`` reuse the
compiled program; :func:`sweep` vmaps whole runs over seeds and learning rates.

A run whose weights become non-finite stops updating (it keeps the last finite weights) and
reports the round in ``TrainOutput.diverged_at``; :func:`divergence_message` says what to lower.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import diagnostics as dg
from . import model
from .data import ClientData

ALGORITHMS = ("local_sgd", "local_gd", "gd", "minibatch_sgd")
STOCHASTIC = ("local_sgd", "minibatch_sgd")
# Metric name -> the arrays it records (each with a leading evaluation axis).
METRICS = {
    "loss": ("loss",),  # F(W_bar), scalar
    "client_loss": ("client_loss",),  # F_k(W_bar), (K,)
    "grad_norm": ("grad_norm",),  # ||grad F(W_bar)||, scalar
    "pl_ratio": ("pl_ratio",),  # ||grad F||^2 / F, scalar
    "dist": ("dist", "dist_rel"),  # ||W_l - W_l(0)|| (L,), ||W - W(0)|| / ||W(0)||
    "flips": ("flips",),  # fraction of signs differing from initialisation, scalar
    "ever_flipped": ("ever_flipped",),  # fraction of signs that differed at any evaluation so far
    "forward_norms": ("forward_norms",),  # mean ||h_l|| per hidden layer, (layers,)
    "gap": ("gap", "gap_rel"),  # ||grad F_k(W_k) - grad F_k(W_bar)|| at round end, (K,) each
    "local_flips": ("local_flips",),  # signs differing between W_k and W_bar on client k, (K,)
    "drift": ("drift",),  # ||W_k - W_bar||, (K,)
}
ROUND_END = ("gap", "local_flips", "drift")  # need the local models before averaging


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What to run; validated on construction (a bad field raises ValueError naming it).

    Attributes:
      algorithm: one of ``ALGORITHMS``.
      rounds: communication rounds ``R``; the run takes ``R * tau`` local steps per client.
      tau: local steps per round (1 for ``gd`` and ``minibatch_sgd``).
      eta: step size, positive and finite.
      batch_size: ``b`` for the stochastic algorithms (at most the smallest client's size);
        ``None`` for the full-batch ones.
      eval_every: rounds between recorded metrics; must divide ``rounds``.
      metrics: names from ``METRICS``.
    """

    algorithm: str = "local_sgd"
    rounds: int = 10
    tau: int = 1
    eta: float = 0.1
    batch_size: int | None = None
    eval_every: int = 1
    metrics: tuple = ("loss",)

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        for name in ("rounds", "tau", "eval_every"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.algorithm in ("gd", "minibatch_sgd") and self.tau != 1:
            raise ValueError(
                f"tau must be 1 for algorithm={self.algorithm!r} (one step per round), "
                f"got {self.tau!r}"
            )
        if (
            isinstance(self.eta, bool)
            or not isinstance(self.eta, (int, float, np.floating))
            or not (math.isfinite(self.eta) and self.eta > 0)
        ):
            raise ValueError(f"eta must be a positive finite number, got {self.eta!r}")
        if self.algorithm in STOCHASTIC:
            if not _is_int(self.batch_size) or self.batch_size < 1:
                raise ValueError(
                    f"batch_size must be an integer >= 1 for algorithm={self.algorithm!r}, "
                    f"got {self.batch_size!r}"
                )
        elif self.batch_size is not None:
            raise ValueError(
                f"batch_size must be None for full-batch algorithm={self.algorithm!r}, "
                f"got {self.batch_size!r}"
            )
        if self.rounds % self.eval_every:
            raise ValueError(
                f"eval_every must divide rounds={self.rounds}, got {self.eval_every!r}"
            )
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(
                f"metrics must be a non-empty subset of {tuple(METRICS)}, got {self.metrics!r}"
            )

    @property
    def steps(self) -> int:
        """Local steps (gradient evaluations) per client over the whole run."""
        return self.rounds * self.tau

    @property
    def evaluations(self) -> int:
        """Recorded points, including round 0."""
        return self.rounds // self.eval_every + 1

    def _static(self) -> tuple:
        # Everything but eta: eta is traced, so changing it does not recompile.
        return (
            self.algorithm,
            self.rounds,
            self.tau,
            self.batch_size,
            self.eval_every,
            self.metrics,
        )


class TrainState(NamedTuple):
    """Where a run stands after some rounds, enough to continue it exactly: the averaged trained
    weights, the divergence round (or -1), the ever-flipped activation masks (or None) and the
    number of rounds done."""

    trainable: tuple
    diverged_at: jax.Array
    ever: list | None
    round: jax.Array


class TrainOutput(NamedTuple):
    """A run's result (a pytree: ``sweep`` adds a leading axis to every leaf).

    ``params``: final parameters; ``metrics``: dict of arrays with a leading axis of
    ``config.evaluations`` points; ``rounds``: the round of each point, ``(evaluations,)``;
    ``diverged_at``: the first round whose weights were non-finite, or -1; ``state``: a
    :class:`TrainState` from which ``run(..., start=state)`` continues the run.
    """

    params: dict
    metrics: dict
    rounds: jax.Array
    diverged_at: jax.Array
    state: TrainState


def check_inputs(config: RunConfig, spec: model.NetSpec, params0: dict, data: ClientData) -> None:
    """Checks the data and parameters against the config and the network; raises ValueError
    naming the offending input before any work is done."""
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
    if config.algorithm in STOCHASTIC and config.batch_size > sizes.min():
        raise ValueError(
            f"batch_size must be at most the smallest client's sample count {int(sizes.min())}, "
            f"got {config.batch_size}"
        )
    shapes = tuple(tuple(w.shape) for w in params0["trainable"])
    if shapes != spec.layer_shapes:
        raise ValueError(
            f"params0 trainable shapes {shapes} do not match the spec {spec.layer_shapes}"
        )


def _average(weight, trees):
    """``sum_k weight_k W_k`` over the leading client axis."""
    return jax.tree.map(lambda w: jnp.tensordot(weight, w, axes=1), trees)


def _broadcast(tree, K):
    return jax.tree.map(lambda w: jnp.broadcast_to(w, (K,) + w.shape), tree)


def _minibatch_indices(key, mask, tau, b):
    """``(tau, K, b)`` indices, each row drawn uniformly without replacement from the client's real
    samples (padding gets a score above every real one and is never chosen)."""
    # A sort, not _pick's top_k: XLA's SPMD partitioner keeps a sort along the sample axis local to
    # each device's clients, where it gathers top_k's operands (localsgd.distributed).
    return jnp.argsort(_minibatch_scores(key, mask, tau), axis=-1)[..., :b]


def _minibatch_scores(key, mask, tau):
    """``(tau, K, n_max)`` uniform scores, 2.0 on padding; a row's ``b`` smallest are its
    minibatch (:func:`_pick`). With clients in turn (``loop="map"``) each step picks its rows
    inside the step loop, so that a round holds only these scores, not a sort's workspace."""
    # Drawn flat and reshaped: the same numbers as drawing the shape directly (the threefry PRNG
    # is partitionable, JAX's default: element i depends only on the key and i), but XLA compiles
    # the flat draw in about a third of the time (~1 s less per program on two cores).
    u = jax.random.uniform(key, (tau * math.prod(mask.shape),)).reshape((tau,) + mask.shape)
    return jnp.where(mask > 0, u, 2.0)


def _pick(scores, b):
    """Indices of the ``b`` smallest scores along the last axis, smallest first, ties to the lower
    index: ``argsort(scores)[..., :b]`` (a stable sort), computed as ``top_k(-scores, b)``, which
    gives the same indices (top_k also breaks ties by index) in a quarter of the time on CPU."""
    return jax.lax.top_k(-scores, b)[1]


def _backprop(spec, fixed, W, f, y, w, update=None):
    """Gradient of ``sum_i w_i F_i`` (``model.weighted_loss``) with respect to the trained layers,
    written out: ``f: (n, fan_in)`` features, ``y: (n, d_out)``, ``w: (n,)``.

    The operations of ``jax.grad`` of that loss, in its order (bitwise equal results on CPU), the
    first layer's input gradient never formed. With ``update`` (``(W_l, grad_l) -> new W_l``) each
    layer is updated as soon as its gradient is known, and the update is made to depend on the
    product that carries the gradient through ``W_l`` (by adding ``0 * isnan(one entry of it)``,
    always exactly 0): XLA then orders that product before the update and overwrites ``W_l`` in
    place, where it otherwise copies every layer but the first on every step (1.2x on R2).
    Returns the gradients, or the updated layers with ``update``.
    """
    phi = model.ACTIVATIONS[spec.activation]
    hs, vjps = [f], []
    for Wl in W:
        h, vjp = jax.vjp(phi, hs[-1] @ Wl.T)
        hs.append(h)
        vjps.append(vjp)
    r = hs[-1] @ fixed["B"].T - y
    delta = (w[:, None] * r) @ fixed["B"]  # d loss / d h_L
    out = [None] * len(W)
    for l in reversed(range(len(W))):
        delta = vjps[l](delta)[0]  # d loss / d g_l, g_l = W_l h_{l-1}
        g = delta.T @ hs[l]
        Wl = W[l]
        if l > 0:
            delta_in = delta @ Wl
            if update is not None:
                Wl = Wl + 0.0 * jnp.isnan(delta_in[0, 0])
        out[l] = g if update is None else update(Wl, g)
        if l > 0:
            delta = delta_in
    return tuple(out)


def _split_clients(per_client, lo, hi, G):
    """Clients ``lo:hi`` of every array in ``per_client`` (None entries stay None), grouped
    ``G`` at a time: leading axes ``(K, ...)`` -> ``((hi - lo) // G, G, ...)``."""
    return jax.tree.map(lambda a: a[lo:hi].reshape(((hi - lo) // G, G) + a.shape[1:]),
                        per_client)


def _gather(a, idx):
    """``a: (K, n, f)``, ``idx: (K, b)`` -> ``(K, b, f)``."""
    return jnp.take_along_axis(a, idx[..., None], axis=1)


def _train(static, spec, eta, params0, data, key, start=None, loop="vmap"):
    algorithm, rounds, tau, b, eval_every, metrics = static
    fixed, W0 = params0["fixed"], params0["trainable"]
    train = data
    if algorithm == "gd":
        K, n_max = data.mask.shape
        train = ClientData(
            data.x.reshape(1, K * n_max, -1),
            data.y.reshape(1, K * n_max, -1),
            data.mask.reshape(1, K * n_max),
            jnp.ones((1,), data.weight.dtype),
        )
    K = train.mask.shape[0]
    feats = model.features(spec, fixed, train.x)  # fixed input map: once per run
    client_w = train.mask / jnp.sum(train.mask, axis=1, keepdims=True)

    def client_grad(W, f, y, w):
        return _backprop(spec, fixed, W, f, y, w)

    def client_step(W, f, y, w):
        return _backprop(spec, fixed, W, f, y, w, update=lambda a, ga: a - eta * ga)

    def batch(idx):
        """Every client's minibatch (``idx: (K, b)``) or full batch (``idx is None``)."""
        if idx is None:
            return feats, train.y, client_w
        return _gather(feats, idx), _gather(train.y, idx), jnp.full(idx.shape, 1.0 / b, feats.dtype)

    def local_phase(Wbar, rkey):
        """A round's local work: ``(average, Ws)``, the clients' models averaged with
        ``train.weight`` and, when a metric needs them (or in the batched layouts, which have
        them anyway), the models themselves, leaves ``(K, ...)``; else None."""
        if algorithm == "minibatch_sgd":
            idx = _minibatch_indices(rkey, train.mask, 1, b)[0]
            g = jax.vmap(client_grad, in_axes=(None, 0, 0, 0))(Wbar, *batch(idx))
            g = _average(train.weight, g)
            new = jax.tree.map(lambda w, gw: w - eta * gw, Wbar, g)
            return new, _broadcast(new, K)
        stochastic = algorithm in STOCHASTIC
        if loop == "map":
            scores = _minibatch_scores(rkey, train.mask, tau) if stochastic else None
            return clients_in_turn(Wbar, scores)
        idx = _minibatch_indices(rkey, train.mask, tau, b) if stochastic else None

        def step(Ws, idx_t):
            return jax.vmap(client_step)(Ws, *batch(idx_t)), None

        Ws, _ = jax.lax.scan(step, _broadcast(Wbar, K), idx, length=tau)
        return _average(train.weight, Ws), Ws

    def clients_in_turn(Wbar, scores):
        """``loop="map"``: the same local phase with the loops swapped, the clients taken in turn,
        ``CLIENTS_TOGETHER`` at a time, each taking its ``tau`` steps (a loop over the clients
        axis, so the program does not grow with ``K``). The same products on the same numbers as
        the batched ``vmap`` layout; on a CPU it is faster because a client's weights stay in
        cache across its steps and no step streams all ``K`` models through memory. The clients
        taken together step in one loop body as independent, unbatched operations, which XLA:CPU
        runs side by side on its threads. The average is summed as the clients finish, so the
        models are kept only when a metric needs them (the sum's order differs from the batched
        layout's, which changes the average by float32 rounding)."""
        sk = None if scores is None else jnp.swapaxes(scores, 0, 1)  # (K, tau, n_max)
        per_client = (feats, train.y, client_w, sk, train.weight)
        G = min(CLIENTS_TOGETHER, K)
        full = K - K % G
        acc = jax.tree.map(jnp.zeros_like, Wbar)
        acc, Ws = clients_together(Wbar, acc, _split_clients(per_client, 0, full, G))
        if full < K:
            acc, rest = clients_together(Wbar, acc, _split_clients(per_client, full, K, K - full))
            if Ws is not None:
                Ws = jax.tree.map(lambda a, r: jnp.concatenate([a, r]), Ws, rest)
        return acc, Ws

    def clients_together(Wbar, acc, groups):
        """``groups``: per-client arrays with leading axes ``(n_groups, G)``; the clients of a
        group take their ``tau`` steps together and their models, weighted, are added to
        ``acc``. Returns ``acc`` and, if a metric needs them, the models, leaves
        ``(n_groups * G, ...)``."""

        def group(acc, args):
            f, y, w, sk, weight = args  # (G, ...)
            G = f.shape[0]

            def step(Ws, s):  # s: (G, n_max) scores of this step, or None
                new = []
                for g in range(G):
                    if s is None:
                        new.append(client_step(Ws[g], f[g], y[g], w[g]))
                    else:
                        i = _pick(s[g], b)  # this step's minibatch
                        wb = jnp.full(i.shape, 1.0 / b, f.dtype)
                        new.append(client_step(Ws[g], f[g][i], y[g][i], wb))
                return tuple(new), None

            xs = None if sk is None else jnp.swapaxes(sk, 0, 1)  # (tau, G, n_max)
            # The first step apart: it reads Wbar and writes the clients' own models, where a
            # loop starting from Wbar would first copy it once per client.
            Ws = step((Wbar,) * G, None if xs is None else xs[0])[0]
            rest = None if xs is None else xs[1:]
            Ws = jax.lax.scan(step, Ws, rest, length=tau - 1)[0]
            for g in range(G):
                acc = jax.tree.map(lambda a, Wg, g=g: a + weight[g] * Wg, acc, Ws[g])
            return acc, (jax.tree.map(lambda *a: jnp.stack(a), *Ws) if need_locals else None)

        acc, out = jax.lax.scan(group, acc, groups)  # out: leaves (n_groups, G, ...) or None
        if out is None:
            return acc, None
        return acc, jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out)

    need_locals = any(m in ROUND_END for m in metrics)
    init_patterns = (
        dg.activation_patterns(spec, params0, data.x)
        if ("flips" in metrics or "ever_flipped" in metrics)
        else None
    )

    client_mean_w = data.mask / jnp.sum(data.mask, axis=1, keepdims=True)

    def sample_losses(W):
        """``F_i(W)`` for every sample, flat ``(K n_max,)``, from the features computed once.
        The sum over outputs is a product with a ones vector: as a reduction, XLA:CPU fuses it
        with the layers' products into one library call that runs ~10x slower than the products
        alone (measured: 512 samples, m = 512)."""
        f = feats.reshape(-1, feats.shape[-1])
        r = model.forward(spec, W, fixed, f) - train.y.reshape(-1, train.y.shape[-1])
        return 0.5 * ((r * r) @ jnp.ones((r.shape[-1],), r.dtype))

    def evaluate(Wbar, Ws, ever):
        p = {"trainable": Wbar, "fixed": fixed}
        out = {}
        if {"grad_norm", "pl_ratio"} & set(metrics):
            F, g = dg.loss_and_grad(spec, p, data)
            gn = dg.tree_norm(g)
            out.update(loss=F, grad_norm=gn, pl_ratio=dg.pl_ratio(F, gn))
        if {"loss", "client_loss"} & set(metrics):
            per = sample_losses(Wbar)  # flat, (K n_max,)
            if "grad_norm" not in out:
                m = data.mask.ravel()
                out["loss"] = jnp.sum(per * (m / jnp.sum(m)))
            out["client_loss"] = jnp.sum(per.reshape(data.mask.shape) * client_mean_w, axis=1)
        if "dist" in metrics:
            out["dist"] = dg.layer_distances(Wbar, W0)
            out["dist_rel"] = dg.relative_distance(Wbar, W0)
        if init_patterns is not None:
            pats = dg.activation_patterns(spec, p, data.x)
            out["flips"] = dg.flip_fraction(pats, init_patterns, data.mask)
            ever = [e | (a != b0) for e, a, b0 in zip(ever, pats, init_patterns)]
            out["ever_flipped"] = dg.flip_fraction(
                ever, [jnp.zeros_like(e) for e in ever], data.mask
            )
        if "forward_norms" in metrics:
            norms = dg.forward_norms(spec, p, data.x.reshape(-1, data.x.shape[-1]))
            m = data.mask.ravel()
            out["forward_norms"] = (norms * m).sum(axis=1) / m.sum()
        if need_locals:
            Wavg = _average(data.weight if algorithm != "gd" else train.weight, Ws)
            if "gap" in metrics:
                local_data = data if algorithm != "gd" else train
                out["gap"], out["gap_rel"] = dg.gradient_gap(spec, Ws, Wavg, fixed, local_data)
            if "local_flips" in metrics:
                out["local_flips"] = jax.vmap(
                    lambda Wk, xk, mk: dg.flip_fraction(
                        dg.activation_patterns(spec, {"trainable": Wk, "fixed": fixed}, xk),
                        dg.activation_patterns(spec, {"trainable": Wavg, "fixed": fixed}, xk),
                        mk,
                    )
                )(Ws, train.x, train.mask)
            if "drift" in metrics:
                out["drift"] = jax.vmap(
                    lambda Wk: dg.tree_norm(jax.tree.map(jnp.subtract, Wk, Wavg))
                )(Ws)
        keep = {k for name in metrics for k in METRICS[name]}
        return {k: v for k, v in out.items() if k in keep}, ever

    def one_round(carry, r):
        Wbar, diverged_at = carry
        new, Ws = local_phase(Wbar, jax.random.fold_in(key, r))
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(w)) for w in jax.tree.leaves(new)]))
        ok = (diverged_at < 0) & finite
        diverged_at = jnp.where(
            (diverged_at < 0) & ~finite, (r + 1).astype(diverged_at.dtype), diverged_at
        )
        Wbar = jax.tree.map(lambda a, b0: jnp.where(ok, a, b0), new, Wbar)
        return (Wbar, diverged_at), Ws

    def block(carry, first_round):
        (Wbar, diverged_at), ever = carry[:2], carry[2]
        state = (Wbar, diverged_at)
        if eval_every > 1:
            state, _ = jax.lax.scan(
                lambda c, r: (one_round(c, r)[0], None),
                state,
                first_round + jnp.arange(eval_every - 1),
            )
        state, Ws = one_round(state, first_round + eval_every - 1)
        rec, ever = evaluate(state[0], Ws, ever)
        Wnew, diverged_at = state
        if "loss" in rec:
            # The loss can overflow while the weights are still finite: such a run is stopped too,
            # at the weights it had at the previous evaluation, whose loss was finite.
            bad = (diverged_at < 0) & ~jnp.isfinite(rec["loss"])
            diverged_at = jnp.where(
                bad, (first_round + eval_every).astype(diverged_at.dtype), diverged_at
            )
            Wnew = jax.tree.map(lambda a, b0: jnp.where(bad, b0, a), Wnew, Wbar)
        return (Wnew, diverged_at, ever), rec

    ever0 = [jnp.zeros_like(p) for p in init_patterns] if init_patterns is not None else None
    if start is None:
        # Round 0 is recorded only at the true start; a resumed run records its later rounds.
        rec0, _ = evaluate(W0, _broadcast(W0, K), ever0)
        carry0 = (W0, jnp.array(-1, jnp.int32), ever0)
        first = jnp.array(0, jnp.int32)
    else:
        carry0 = (start.trainable, start.diverged_at, start.ever)
        first = start.round
    starts = first + jnp.arange(0, rounds, eval_every, dtype=jnp.int32)
    (Wfin, diverged_at, ever), recs = jax.lax.scan(block, carry0, starts)
    round_ids = starts + eval_every
    if start is None:
        recs = {k: jnp.concatenate([rec0[k][None], recs[k]]) for k in rec0}
        round_ids = jnp.concatenate([jnp.zeros((1,), round_ids.dtype), round_ids])
    state = TrainState(Wfin, diverged_at, ever, first + rounds)
    return TrainOutput({"trainable": Wfin, "fixed": fixed}, recs, round_ids, diverged_at, state)


_train_jit = jax.jit(_train, static_argnums=(0, 1), static_argnames=("loop",))


@partial(jax.jit, static_argnums=(0, 1), static_argnames=("loop",))
def _sweep_jit(static, spec, etas, params0, data, keys, start, loop="vmap"):
    def one(args):
        eta, p0, key, st = args
        return _train(static, spec, eta, p0, data, key, st, loop=loop)

    if loop == "map":
        # CPU: the runs one after another inside the one program. Vmapped, every product gains a
        # batch axis of S runs, and on two cores the sweep of 8 R1 runs took 1.3x as long as the
        # 8 runs one by one; in turn it takes as long as they do (the products are already
        # compute-bound at these sizes) and each run's numbers are those of ``run``.
        return jax.lax.map(one, (etas, params0, keys, start))
    return jax.vmap(one)((etas, params0, keys, start))


# Clients that take their local steps together in the "map" layout. On two CPU cores, two clients'
# independent steps in one loop body ran R2 1.30x faster than one client at a time (XLA:CPU runs
# independent operations concurrently); R1 and R3 ran at the same speed (1.02x, 1.01x): R1 is
# bound by the start-up cost of its small operations, R3's products already use both cores.
# Four gave R2 1.36x but R1 0.94x and R3 0.96x, with a program that grows with the number.
# Any value gives the same numbers to float32 rounding (tests/test_performance.py).
CLIENTS_TOGETHER = 2

# How ``run`` and ``sweep`` lay out the clients' local steps: None picks per backend (see
# ``_client_loop``); "map" or "vmap" forces one (the bench compares them). Same numbers either way.
CLIENT_LOOP = None


def _client_loop() -> str:
    """``"map"`` (one client after another, each taking its ``tau`` steps) on a CPU, ``"vmap"`` (all
    clients' step batched into one product a layer) on accelerators, whose throughput needs the
    large batched products. On two CPU cores "map" ran R1 1.36x, R2 1.24x and R3 1.35x faster than
    "vmap" (``bench/run.py --compare-loops``); the results agree to float32 rounding. On an H200,
    "vmap" ran R3 (m = 1024, K = 8) 1.2x (fp32) and 2.0x (tf32) and R3-GPU (m = 4096, K = 64)
    11x (fp32) and 1.3x (tf32) faster than "map" (``bench/gpu.py --layouts``).
    ``localsgd.distributed`` calls ``_train`` with its default "vmap": the clients axis is what it
    shards."""
    if CLIENT_LOOP is not None:
        return CLIENT_LOOP
    return "map" if jax.default_backend() == "cpu" else "vmap"


def run(
    config: RunConfig,
    spec: model.NetSpec,
    params0: dict,
    data: ClientData,
    key,
    start: TrainState | None = None,
) -> TrainOutput:
    """Runs ``config.algorithm`` from ``params0`` on ``data`` with PRNG ``key``: one compiled
    program. See the module docstring for the algorithms and :class:`TrainOutput` for the result.

    ``start``: a previous output's ``state``; the run then continues for ``config.rounds`` more
    rounds and, with the same ``params0`` and ``key``, ends exactly where one longer run would.
    """
    check_inputs(config, spec, params0, data)
    data = ClientData(*(jnp.asarray(a) for a in data))
    return _train_jit(
        config._static(),
        spec,
        jnp.asarray(config.eta, jnp.float32),
        params0,
        data,
        key,
        start,
        loop=_client_loop(),
    )


def sweep_etas(config: RunConfig, S: int, etas=None) -> np.ndarray:
    """The ``(S,)`` float32 step sizes of a sweep: ``config.eta`` for every run when ``etas`` is
    None, else ``etas`` checked to be ``S`` positive finite numbers."""
    if etas is None:
        return np.full((S,), config.eta, np.float32)
    etas = np.asarray(etas, np.float32)
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
) -> TrainOutput:
    """Many runs in one compiled program, vmapped over a leading axis ``S``.

    ``params0`` leaves and ``keys`` carry the axis ``S`` (one initialisation and one key per run);
    ``etas`` is ``(S,)`` or None for ``config.eta`` everywhere; ``start`` a previous sweep's
    ``state`` (leaves with the axis ``S``) to continue from. Every leaf of the result gains the
    axis ``S``; run ``s`` equals ``run`` with ``params0[s]``, ``keys[s]`` and ``etas[s]``.
    """
    S = jnp.shape(keys)[0]
    first = jax.tree.map(lambda a: a[0], params0)
    check_inputs(config, spec, first, data)
    etas = sweep_etas(config, S, etas)
    data = ClientData(*(jnp.asarray(a) for a in data))
    return _sweep_jit(
        config._static(), spec, jnp.asarray(etas), params0, data, keys, start, loop=_client_loop()
    )


def divergence_message(config: RunConfig, diverged_at: int) -> str | None:
    """A sentence saying at which round a run diverged and which parameter to lower, or None."""
    if diverged_at < 0:
        return None
    lower = "eta" if config.tau == 1 else "eta or tau"
    return (
        f"The run diverged at round {int(diverged_at)}: the loss became non-finite. "
        f"Lower {lower} (eta={config.eta}, tau={config.tau}); training stopped at the last "
        "finite weights."
    )
