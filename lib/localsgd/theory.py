"""The theorems' predicted quantities, as functions, for overlays on the plots.

Allen-Zhu, Li and Song (2019) and Deng, Kamani and Mahdavi (2022) state their results up to
absolute constants and polylogarithmic factors, and with exponents that are far from tight. The
functions here therefore return *shapes*: each docstring says which parts are exact (an identity
that holds for the book's conventions) and which hold only up to constants. The book compares the
measured quantities with these shapes (slopes on log-log axes, ratios), never with absolute values.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import diagnostics as dg
from . import model


def pl_constant_shape(m, n, d, delta):
    """ALS19's gradient-dominance constant for the summed loss, ``delta m / (d n^2)``, up to an
    absolute constant: ``||grad (nF)||^2 >= c * delta m / (d n^2) * (nF)`` in the omega-ball.

    For the book's mean loss ``F`` the ratio ``||grad F||^2 / F`` is the summed-loss ratio over
    ``n`` (:func:`localsgd.diagnostics.pl_ratio`); either way it grows linearly in ``m``.
    """
    return delta * np.asarray(m, float) / (d * np.asarray(n, float) ** 2)


def linear_rate(eta, lam_min, n):
    """Per-iteration contraction of the loss of gradient descent on the linearised (NTK) model,
    ``F_{t+1} <= (1 - eta * lam_min / n)^2 F_t``, for the mean loss and Gram ``G`` with smallest
    eigenvalue ``lam_min``. Exact for the linearised model; the over-parameterised network follows
    it up to the drift of ``G`` during training. Returns the factor on ``F`` per iteration."""
    return (1.0 - eta * lam_min / n) ** 2


def log_rate(eta, lam_min, n):
    """The linearised rate per iteration on a log scale, ``-log`` :func:`linear_rate`: the ``r``
    of ``F_t = F_0 exp(-r t)``, elementwise over arrays of steps and eigenvalues (one per seed)."""
    return -np.log(linear_rate(np.asarray(eta, float), np.asarray(lam_min, float), n))


def predicted_log_loss(iterations, F0, eta, lam_min, n):
    """``log F_t`` along :func:`linear_rate`: a straight line in the iteration count."""
    return math.log(F0) + np.asarray(iterations, float) * math.log(linear_rate(eta, lam_min, n))


def lazy_distance_exponent(arch: str = "two_layer", relative: bool = True) -> float:
    """Exponent ``p`` of the width scaling ``m^p`` of the weights' movement in the lazy regime.

    Two-layer net (``W: m x d``, entries ``N(0, 1)``): every neuron moves ``O(1/sqrt(m))``, so the
    total movement ``||W_T - W_0||_F`` is ``O(1)`` while ``||W_0||_F ~ sqrt(m d)``: relative
    movement ``m^{-1/2}`` (Du et al. 2019). Deep net (``W_l: m x m``, ``N(0, 2/m)``): with ALS19's
    step ``eta ~ 1/m`` and gradient ``~ sqrt(m F)`` the absolute movement is ``m^{-1/2}`` and,
    since ``||W_0||_F ~ sqrt(2m)``, the relative movement is ``m^{-1}``. Shapes only: the
    constants depend on ``n``, ``L`` and ``delta``.
    """
    if arch not in ("deep", "two_layer"):
        raise ValueError(f"arch must be 'deep' or 'two_layer', got {arch!r}")
    absolute = 0.0 if arch == "two_layer" else -0.5
    return absolute - 0.5 if relative else absolute


def lazy_distance_shape(m, arch: str = "two_layer", relative: bool = True):
    """``m^p`` with ``p = lazy_distance_exponent(arch, relative)``, for overlays."""
    return np.asarray(m, float) ** lazy_distance_exponent(arch, relative)


def critical_step_size(gram_max_eig, n):
    """``2 n / lambda_max(G)``: above it gradient descent on the linearised model's mean loss
    diverges. Exact for the linearised model."""
    return 2.0 * n / gram_max_eig


def ntk_max_eigenvalue(spec, params, x, iters: int = 60, key=None):
    """Largest eigenvalue of the full NTK Gram ``J J^T`` (``n d_out x n d_out``) by power
    iteration with Jacobian-vector products (never forming ``J``). ``x: (n, d)``; a scalar."""
    fixed, trainable = params["fixed"], params["trainable"]
    feats = model.features(spec, fixed, x)

    def f(W):
        return model.forward(spec, W, fixed, feats)

    out, vjp = jax.vjp(f, trainable)
    v0 = jax.random.normal(key if key is not None else jax.random.key(0), out.shape, out.dtype)

    def body(v, _):
        (jt,) = vjp(v)
        gv = jax.jvp(f, (trainable,), (jt,))[1]
        lam = jnp.vdot(v, gv)
        return gv / jnp.linalg.norm(gv), lam

    v, lams = jax.lax.scan(body, v0 / jnp.linalg.norm(v0), None, length=iters)
    return lams[-1]


# Up to this many rows (n * d_out), the step-size rule takes lambda_max from the Gram itself.
EXACT_GRAM_ROWS = 2048


def ntk_step_size(spec, params, x, scale: float = 1.0):
    """The book's step-size rule: ``eta = scale * n / lambda_max(G_0)``, a fraction ``scale / 2`` of
    the critical step of the linearised model at initialisation (``scale`` in ``(0, 2)``).

    ``lambda_max`` is the largest eigenvalue of the full Gram (:func:`gram_extremes`) when it has
    at most :data:`EXACT_GRAM_ROWS` rows: forming it costs about one backward pass per sample,
    far less than the 60 Jacobian-vector products of :func:`ntk_max_eigenvalue`, which the rule
    uses for larger problems (it never forms the Gram)."""
    if x.shape[0] * spec.d_out <= EXACT_GRAM_ROWS:
        lam = gram_extremes(spec, params, x)[1]
    else:
        lam = ntk_max_eigenvalue(spec, params, x)
    return scale * x.shape[0] / lam


def min_eig_at_init(spec, params, x):
    """``lambda_min`` of the NTK Gram at initialisation (``outputs="full"``): the rate's
    constant."""
    return dg.min_eigenvalue(dg.ntk_gram(spec, params, x, outputs="full"))


def gram_infinity(x):
    """Du et al. (2019)'s infinite-width Gram matrix of the two-layer ReLU network,
    ``H^infty_ij = E_{w ~ N(0, I)}[x_i.x_j 1{w.x_i >= 0, w.x_j >= 0}]
    = x_i.x_j (pi - arccos(cos_ij)) / (2 pi)`` with ``cos_ij`` the cosine of the angle between
    ``x_i`` and ``x_j``. ``x: (n, d)`` -> ``(n, n)`` (NumPy, float64).

    Exact: for ``arch="two_layer"`` with ``d_out = 1`` the empirical Gram
    :func:`localsgd.diagnostics.ntk_gram` at initialisation is an average of ``m`` i.i.d. terms
    with this mean, so it concentrates to ``H^infty`` at the rate ``m^{-1/2}``; its smallest
    eigenvalue is Du et al.'s ``lambda_0``."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n, d) with n >= 1, got {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise ValueError("x must have no all-zero rows: the angle to them is undefined")
    dots = x @ x.T
    cos = np.clip(dots / np.outer(norms, norms), -1.0, 1.0)
    return dots * (np.pi - np.arccos(cos)) / (2.0 * np.pi)


def _relu_moments(K):
    """For a covariance ``K: (n, n)`` of pre-activations ``u``: ``2 E[phi(u_i) phi(u_j)]`` (the
    next layer's ``K`` under He init) and ``2 P(u_i > 0, u_j > 0)`` (the ReLU derivative's
    kernel), both ``(n, n)``, by the arc-cosine formulas of Cho and Saul (2009)."""
    norms = np.sqrt(np.diag(K))
    outer = np.outer(norms, norms)
    cos = np.clip(K / outer, -1.0, 1.0)
    theta = np.arccos(cos)
    return outer * (np.sin(theta) + (np.pi - theta) * cos) / np.pi, (np.pi - theta) / np.pi


def gram_infinity_deep(x, L: int, d_out: int = 1):
    """The infinite-width limit of ``G_0 / m`` for ALS19's deep ReLU network (``arch="deep"``:
    ``A``, ``W_l`` i.i.d. ``N(0, 2/m)``, ``B`` i.i.d. ``N(0, 1/d_out)``, ``W_1..W_L`` trained),
    for one output: ``x: (n, d) -> (n, n)`` (NumPy, float64). The full Gram over ``d_out``
    outputs is this matrix on each diagonal block (the outputs' blocks decouple as ``m -> oo``).

    With ``K_l = <h_l(x_i), h_l(x_j)>`` (``K_{-1} = x x^T``, ``K_l = 2 E phi(u) phi(u')`` for
    ``u ~ N(0, K_{l-1})``) and ``D_l = 2 P(g_l > 0, g_l' > 0)`` at the trained layer ``l``,
    ``<df/dW_l, df'/dW_l> / m -> K_{l-1} * (D_L / 2) * prod_{k=l}^{L-1} D_k / d_out``, summed over
    ``l``. Exact as ``m -> oo`` (Jacot et al. 2018's recursion in ALS19's scaling); at width
    ``m`` the empirical Gram fluctuates around it at the rate ``m^{-1/2}`` and, ``lambda_min``
    being concave, its smallest eigenvalue sits below the limit's on average."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n, d) with n >= 1, got {x.shape}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be an integer >= 1, got {L!r}")
    if isinstance(d_out, bool) or not isinstance(d_out, int) or d_out < 1:
        raise ValueError(f"d_out must be an integer >= 1, got {d_out!r}")
    K, _ = _relu_moments(x @ x.T)  # K_0 = <h_0, h_0'>, h_0 = phi(A x)
    inputs, derivs = [], []
    for _ in range(L):
        inputs.append(K)
        K, D = _relu_moments(K)
        derivs.append(D)
    gram = np.zeros_like(K)
    for l in range(L):
        back = derivs[-1] / 2.0
        for k in range(l, L - 1):
            back = back * derivs[k]
        gram = gram + inputs[l] * back
    return gram / d_out


def kernel_constants(spec, params0, xs):
    """``lambda_min(G_0) / m`` of every initialisation on every data set, next to the
    infinite-width limit's ``lambda_min`` (:func:`gram_infinity_deep`, deep nets only).

    ``params0``: initialisations stacked on a leading seed axis ``S``; ``xs``: ``P`` input
    arrays ``(n_p, d)``. Returns ``(finite (S, P), limit (P,))`` as float64 NumPy arrays."""
    if spec.arch != "deep":
        raise ValueError(f"spec.arch must be 'deep' for the limit kernel, got {spec.arch!r}")

    finite = np.stack([np.asarray(_min_eigenvalues(spec, params0, jnp.asarray(x)), np.float64)
                       for x in xs], axis=1)
    limit = np.array([np.linalg.eigvalsh(gram_infinity_deep(x, spec.L, spec.d_out))[0]
                      for x in xs])
    return finite, limit


def gap_first_order(spec, params, data):
    """First-order prediction of the key lemma's relative gap, per unit of ``eta * tau``.

    A round from ``W`` moves client ``k`` to ``W - eta tau g_k + O((eta tau)^2)`` and the average
    to ``W - eta tau g + O((eta tau)^2)``, with ``g_k = grad F_k(W)`` and ``g = sum_k w_k g_k``;
    so ``grad F_k(W_k) - grad F_k(W_bar) = -eta tau H_k (g_k - g) + O((eta tau)^2)`` with
    ``H_k`` the Hessian of ``F_k`` at ``W`` (a Hessian-vector product, never formed). Returns
    ``||H_k (g_k - g)|| / ||g_k||``, ``(K,)``: the relative gap over ``eta * tau`` as
    ``eta * tau -> 0``. ``params``: one network's ``{"trainable", "fixed"}``; ``data``: the
    :class:`localsgd.data.ClientData`. Exact to first order; not a bound.
    """
    fixed, W = params["fixed"], params["trainable"]

    def grads(W_):
        return dg.client_grads(spec, W_, fixed, data, per_client=False)  # leaves (K, ...)

    g_k = grads(W)
    g = jax.tree.map(lambda a: jnp.tensordot(data.weight.astype(a.dtype), a, axes=1), g_k)

    def one(k):
        pick = functools.partial(jax.tree.map, lambda a: a[k])
        d_k = jax.tree.map(lambda a, b: a[k] - b, g_k, g)
        hv = jax.jvp(lambda W_: pick(grads(W_)), (W,), (d_k,))[1]
        return dg.tree_norm(hv) / dg.tree_norm(pick(g_k))

    return jnp.stack([one(k) for k in range(data.mask.shape[0])])


def iterations_to_eps(F0, eps, eta, lam_min, n):
    """Iterations for gradient descent on the linearised model to bring the mean loss from
    ``F0`` to ``eps`` along its slowest direction: ``n log(F0 / eps) / (2 eta lam_min)``, from
    :func:`linear_rate` with ``log(1 - x) ~ -x``. Every direction contracts at least this fast,
    so the linearised model gets there no later (an upper bound for it, up to the ``log``
    approximation); a network whose Gram drifts during training may take longer. Arguments
    broadcast (NumPy); ``F0 <= eps`` gives 0."""
    F0, eps = np.asarray(F0, float), np.asarray(eps, float)
    steps = np.asarray(n, float) * np.log(F0 / eps) / (2.0 * np.asarray(eta, float) * lam_min)
    return np.maximum(steps, 0.0)


def gram_extremes(spec, params, x):
    """``(lambda_min, lambda_max)`` of the full NTK Gram ``J J^T`` at ``params`` (``x: (n, d)``),
    both from one symmetric eigendecomposition; two scalars."""
    lam = jnp.linalg.eigvalsh(dg.ntk_gram(spec, params, x, outputs="full"))
    return lam[0], lam[-1]


def rounds_ratio_at_fixed_eta_tau(c, lam_ratio, tau, tau0: int = 1):
    """``R(tau) / R(tau0)``: how the rounds to a target loss change with ``tau`` when the step
    shrinks as ``eta = c n / (lambda_max tau)`` (``eta * tau`` held fixed, the theorems' regime).

    On the linearised model the slowest direction (``lambda_min``) sets the rounds, and its residual
    contracts per round by ``(1 - c lam_ratio / tau)^tau`` with ``lam_ratio = lambda_min /
    lambda_max``; so ``R(tau) / R(tau0) = tau0 log(1 - x / tau0) / (tau log(1 - x / tau))``,
    ``x = c lam_ratio``: about 1 (no fewer rounds) whenever ``x`` is small. Exact for Local GD on
    the linearised model with clients whose slow direction is shared (i.i.d. clients)."""
    x = float(c) * np.asarray(lam_ratio, float)
    tau, tau0 = np.asarray(tau, float), np.asarray(tau0, float)
    if np.any(x <= 0) or np.any(x >= np.minimum(tau, tau0)):
        raise ValueError(f"c * lam_ratio must be in (0, min(tau, tau0)), got {x!r}")
    return tau0 * np.log1p(-x / tau0) / (tau * np.log1p(-x / tau))


def taylor_residuals(spec, fixed, iterates, data):
    """Semi-smoothness along a trajectory, in float64: for consecutive iterates ``W_r, W_{r+1}``
    (tuples of trained weights) and the step ``W' = W_{r+1} - W_r``, the residual
    ``F(W_r + W') - F(W_r) - <grad F(W_r), W'>`` (bounded by ALS19's semi-smoothness theorem),
    the first-order term ``<grad F(W_r), W'>`` and ``F(W_r)``, on ``data`` (a ClientData).
    Returns three ``(R,)`` NumPy arrays, ``R = len(iterates) - 1``."""
    if len(iterates) < 2:
        raise ValueError(f"iterates must hold at least 2 points, got {len(iterates)}")
    with jax.enable_x64(True):
        def to64(tree):
            return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)

        fixed64, data64 = to64(fixed), to64(data)

        @jax.jit
        def one(W, W1):
            p = {"trainable": W, "fixed": fixed64}
            F, g = dg.loss_and_grad(spec, p, data64)
            step = jax.tree.map(jnp.subtract, W1, W)
            return dg.semi_smoothness_residual(spec, p, data64, step), dg.tree_dot(g, step), F

        vals = np.array([[float(v) for v in one(to64(a), to64(b))]
                         for a, b in zip(iterates[:-1], iterates[1:])])
    return vals[:, 0], vals[:, 1], vals[:, 2]


def gram_spectra(spec, params0, xs):
    """``(lambda_min, lambda_max)`` of the full NTK Gram matrix (symmetrised, as
    :func:`~localsgd.diagnostics.min_eigenvalue`) of every initialisation on every data set.

    ``params0``: initialisations stacked on a leading seed axis ``S``; ``xs``: ``P`` input arrays
    ``(n_p, d)``. Returns two ``(S, P)`` float64 NumPy arrays."""
    pairs = [_spectra(spec, params0, jnp.asarray(x)) for x in xs]
    return tuple(np.stack([np.asarray(p[k], np.float64) for p in pairs], axis=1) for k in (0, 1))


# compiled once per network and data shape, whichever call asks
@functools.partial(jax.jit, static_argnums=0)
def _min_eigenvalues(spec, params0, x):
    """:func:`kernel_constants`'s ``lambda_min(G_0) / m`` of every seed at ``x``: ``(S,)``."""
    return jax.vmap(lambda p: dg.min_eigenvalue(dg.ntk_gram(spec, p, x, outputs="full"))
                    / spec.m)(params0)


@functools.partial(jax.jit, static_argnums=0)
def _spectra(spec, params0, x):
    """:func:`gram_spectra` at one data set: ``(lambda_min (S,), lambda_max (S,))``."""
    def one(p):
        gram = dg.ntk_gram(spec, p, x, outputs="full")
        lam = jnp.linalg.eigvalsh(0.5 * (gram + gram.T))
        return lam[0], lam[-1]

    return jax.vmap(one)(params0)


def grams_at_init(spec, params0, x):
    """The full NTK Gram matrix of every initialisation: ``params0`` stacked on a leading seed
    axis ``S``, ``x: (n, d)`` -> ``(S, n d_out, n d_out)``."""
    return _grams(spec, params0, jnp.asarray(x))


@functools.partial(jax.jit, static_argnums=0)
def _grams(spec, params0, x):
    return jax.vmap(lambda p: dg.ntk_gram(spec, p, x, outputs="full"))(params0)


def linearised_curves(iterations, loss, eta, lam_min, n, anchor: int):
    """Each seed's loss along :func:`predicted_log_loss` from its recorded loss at index
    ``anchor``: ``iterations: (E,)``, ``loss: (S, E)``, ``eta, lam_min: (S,)`` -> ``(S, E)``."""
    it = np.asarray(iterations, float)
    return np.stack([np.exp(predicted_log_loss(it - it[anchor], loss[s, anchor], eta[s], lam_min[s],
                                               n)) for s in range(len(lam_min))])
