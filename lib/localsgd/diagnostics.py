"""The theory's quantities as functions, usable inside the compiled training run and on their own.

Conventions: ``params = {"trainable": (W_1..W_L), "fixed": {...}}`` (see :mod:`localsgd.model`);
``data`` is a :class:`localsgd.data.ClientData` (``x: (K, n_max, d)``, ``y``, ``mask``, ``weight``).
The loss is the sample mean ``F = (1/n) sum_i F_i`` with ``F_i = 1/2 ||f(x_i) - y_i||^2``; ALS19
state their bounds for the sum ``n F``, so ``||grad (nF)||^2 / (nF) = n ||grad F||^2 / F``
(:func:`pl_ratio` takes ``sum_loss=True`` for that convention).

Every function here is pure and jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import model
from .data import separation  # noqa: F401  (delta is a diagnostic too)


def tree_norm(tree) -> jax.Array:
    """Frobenius norm of a pytree of arrays, a scalar."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree)))


def tree_dot(a, b) -> jax.Array:
    """``<a, b>`` summed over all leaves, a scalar."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _sample_weights(data) -> jax.Array:
    """``mask / n``: weights that turn a sum of per-sample losses into the global mean,
    ``(K, n_max)``."""
    return data.mask / jnp.sum(data.mask)


def _client_weights(data) -> jax.Array:
    """``mask / n_k``: per-client mean weights, ``(K, n_max)``."""
    return data.mask / jnp.sum(data.mask, axis=1, keepdims=True)


def global_loss_of(spec, trainable, fixed, data) -> jax.Array:
    """``F(W)`` over all clients' samples, as a function of the trained weights (for ``grad``)."""
    feats = model.features(spec, fixed, data.x)
    f = feats.reshape(-1, feats.shape[-1])
    return model.weighted_loss(
        spec,
        trainable,
        fixed,
        f,
        data.y.reshape(-1, data.y.shape[-1]),
        _sample_weights(data).ravel(),
    )


def loss(spec, params, data) -> jax.Array:
    """Global training loss ``F(W) = (1/n) sum_i F_i(W)``, a scalar."""
    return global_loss_of(spec, params["trainable"], params["fixed"], data)


def client_losses(spec, params, data) -> jax.Array:
    """Each client's mean loss ``F_k(W)``, ``(K,)``."""
    feats = model.features(spec, params["fixed"], data.x)
    per = jax.vmap(
        lambda f, y: model.sample_losses(spec, params["trainable"], params["fixed"], f, y)
    )(feats, data.y)
    return jnp.sum(per * _client_weights(data), axis=1)


def loss_and_grad(spec, params, data):
    """``(F(W), grad_W F(W))``; the gradient has the structure of ``params["trainable"]``."""
    return jax.value_and_grad(global_loss_of, argnums=1)(
        spec, params["trainable"], params["fixed"], data
    )


def grad_norm(spec, params, data) -> jax.Array:
    """``||grad F(W)||_F``, a scalar."""
    return tree_norm(loss_and_grad(spec, params, data)[1])


def pl_ratio(loss_value, grad_norm_value, n=None, sum_loss: bool = False) -> jax.Array:
    """Gradient-dominance ratio ``||grad F||^2 / F``.

    With ``sum_loss=True`` (and the sample count ``n``) it is the ratio for ALS19's summed loss,
    ``n ||grad F||^2 / F``, whose lower bound scales as ``delta m / (d n^2)``.
    """
    r = jnp.square(grad_norm_value) / loss_value
    return r * n if sum_loss else r


def client_grads(spec, trainable, fixed, data, per_client: bool):
    """``grad F_k`` for every client: at client ``k``'s own weights when ``per_client`` (leaves of
    ``trainable`` then carry a leading ``K`` axis), else all at the same weights. Leaves
    ``(K, ...)``."""
    feats = model.features(spec, fixed, data.x)

    def one(W, f, y, wk):
        return jax.grad(model.weighted_loss, argnums=1)(spec, W, fixed, f, y, wk)

    in_axes = (0 if per_client else None, 0, 0, 0)
    return jax.vmap(one, in_axes=in_axes)(trainable, feats, data.y, _client_weights(data))


def gradient_gap(spec, local_trainables, avg_trainable, fixed, data):
    """The key lemma's quantity: ``||grad F_k(W_k) - grad F_k(W_bar)||`` for every client.

    Args:
      local_trainables: the clients' weights, leaves ``(K, ...)``.
      avg_trainable: the averaged weights ``W_bar``, leaves without the ``K`` axis.
    Returns: ``(gap, relative_gap)``, both ``(K,)``; the relative gap divides by
      ``||grad F_k(W_bar)||``.
    """
    g_local = client_grads(spec, local_trainables, fixed, data, per_client=True)
    g_avg = client_grads(spec, avg_trainable, fixed, data, per_client=False)
    diff = jax.tree.map(lambda a, b: a - b, g_local, g_avg)
    gap = jax.vmap(tree_norm)(diff)
    return gap, gap / jax.vmap(tree_norm)(g_avg)


def layer_distances(trainable, trainable0) -> jax.Array:
    """``||W_l - W_l(0)||_F`` for every trained layer, ``(L,)``."""
    return jnp.stack([jnp.linalg.norm(a - b) for a, b in zip(trainable, trainable0)])


def relative_distance(trainable, trainable0) -> jax.Array:
    """``||W - W(0)||_F / ||W(0)||_F`` over all trained layers together, a scalar."""
    diff = jax.tree.map(lambda a, b: a - b, trainable, trainable0)
    return tree_norm(diff) / tree_norm(trainable0)


def activation_patterns(spec, params, x) -> list:
    """Signs of the trained layers' pre-activations, ``L`` boolean arrays ``(..., m)``."""
    feats = model.features(spec, params["fixed"], x)
    return [g > 0 for g in model.preactivations(spec, params["trainable"], feats)]


def flip_fraction(patterns_a, patterns_b, mask=None) -> jax.Array:
    """Fraction of activation signs that differ between two patterns (over real samples only).

    ``patterns_*``: lists of ``(..., n, m)`` booleans; ``mask``: ``(..., n)`` or None.
    """
    flipped = sum(jnp.sum(_masked(a != b, mask)) for a, b in zip(patterns_a, patterns_b))
    total = sum(jnp.sum(_masked(jnp.ones_like(a), mask)) for a in patterns_a)
    return flipped / total


def _masked(a, mask):
    a = a.astype(jnp.float32)
    return a if mask is None else a * mask[..., None]


def forward_norms(spec, params, x) -> jax.Array:
    """``||h_l(x_i)||`` for every hidden layer and sample: ``x: (n, d) -> (layers, n)``
    (``L + 1`` layers ``h_0..h_L`` for the deep net, one for the two-layer net)."""
    return jnp.stack(
        [
            jnp.linalg.norm(h, axis=-1)
            for h in model.hidden(spec, params["trainable"], params["fixed"], x)
        ]
    )


def backprop_vectors(spec, params, x):
    """``d f_o(x_i) / d g_l(x_i)`` for every trained layer: list of ``(n, d_out, m)``, and the
    layer inputs ``h_{l-1}``: list of ``(n, fan_in)``."""
    fixed, trainable = params["fixed"], params["trainable"]
    phi = model.ACTIVATIONS[spec.activation]
    feats = model.features(spec, fixed, x)

    def out(eps, f):  # one sample; eps perturbs every pre-activation
        h = f
        for W, e in zip(trainable, eps):
            h = phi(W @ h + e)
        return fixed["B"] @ h

    zeros = [jnp.zeros((W.shape[0],), x.dtype) for W in trainable]
    deltas = jax.vmap(lambda f: jax.jacrev(out)(zeros, f))(feats)
    inputs = [feats] + [phi(g) for g in model.preactivations(spec, trainable, feats)[:-1]]
    return deltas, inputs


def ntk_gram(spec, params, x, outputs: str = "sum") -> jax.Array:
    """Empirical NTK Gram matrix with respect to the trained weights.

    ``K[(i,o),(j,o')] = <d f_o(x_i)/dW, d f_o'(x_j)/dW>`` for ``x: (n, d)``. With
    ``outputs="full"`` it is ``(n d_out, n d_out)`` ordered ``(i, o)``; with ``outputs="sum"`` the
    output pairs ``o = o'`` are summed, ``(n, n)`` (equal to the full one when ``d_out = 1``).

    Computed layer by layer as ``sum_l (delta_l delta_l^T) * (h_{l-1} h_{l-1}^T)``, which never
    forms
    the ``n d_out x P`` Jacobian.
    """
    if outputs not in ("sum", "full"):
        raise ValueError(f"outputs must be 'sum' or 'full', got {outputs!r}")
    n, d_out = x.shape[0], spec.d_out
    if outputs == "full":
        return ntk_cross_gram(spec, params, x, x).reshape(n * d_out, n * d_out)
    deltas, inputs = backprop_vectors(spec, params, x)
    gram = 0.0
    for dl, h in zip(deltas, inputs):
        gram = gram + jnp.einsum("iom,jom->ij", dl, dl) * (h @ h.T)
    return gram


def ntk_cross_gram(spec, params, x_rows, x_cols) -> jax.Array:
    """The empirical NTK between two sets of inputs, every output pair kept:
    ``K[i, o, j, p] = <d f_o(x_i)/dW, d f_p(x'_j)/dW>`` for ``x_rows: (n_r, d)`` and
    ``x_cols: (n_c, d)``; returns ``(n_r, d_out, n_c, d_out)``. With ``x_rows = x_cols`` it is
    :func:`ntk_gram` (``outputs="full"``) before flattening. Layer by layer, as there."""
    d_r, h_r = backprop_vectors(spec, params, x_rows)
    d_c, h_c = (d_r, h_r) if x_cols is x_rows else backprop_vectors(spec, params, x_cols)
    gram = 0.0
    for dr, hr, dc, hc in zip(d_r, h_r, d_c, h_c):
        gram = gram + jnp.einsum("iom,jpm->iojp", dr, dc) * (hr @ hc.T)[:, None, :, None]
    return gram


def min_eigenvalue(gram) -> jax.Array:
    """Smallest eigenvalue of a symmetric matrix, a scalar."""
    return jnp.linalg.eigvalsh(0.5 * (gram + gram.T))[0]


def gradient_change_ratio(spec, params, data, direction, t) -> jax.Array:
    """``||grad F(W + t U) - grad F(W)|| / (t ||U||)``: bounded as ``t -> 0`` for a
    gradient-Lipschitz
    loss, unbounded for the ReLU network at points where a pattern flips within ``t``."""
    g0 = loss_and_grad(spec, params, data)[1]
    moved = {
        "trainable": jax.tree.map(lambda w, u: w + t * u, params["trainable"], direction),
        "fixed": params["fixed"],
    }
    g1 = loss_and_grad(spec, moved, data)[1]
    return tree_norm(jax.tree.map(jnp.subtract, g1, g0)) / (t * tree_norm(direction))


def semi_smoothness_residual(spec, params, data, step) -> jax.Array:
    """``F(W + W') - F(W) - <grad F(W), W'>`` for a step ``W'`` shaped like the trained weights.

    Semi-smoothness (ALS19, Theorem 4) bounds it by a term linear in ``||W'||`` plus
    ``O(n L^2 m / d) ||W'||^2`` (for the summed loss).
    """
    f0, g0 = loss_and_grad(spec, params, data)
    moved = {
        "trainable": jax.tree.map(jnp.add, params["trainable"], step),
        "fixed": params["fixed"],
    }
    return loss(spec, moved, data) - f0 - tree_dot(g0, step)
