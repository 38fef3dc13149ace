"""The networks of the paper: the deep ReLU network of Allen-Zhu, Li and Song (2019) and the
two-layer network of Du et al. (2019), as pure functions and as Flax NNX modules.

Both are one chain: a fixed input map, trained layers ``W_1 .. W_L`` and a fixed linear readout.

* ``arch="deep"``: ``h_0 = phi(A x)``, ``h_l = phi(W_l h_{l-1})`` for ``l = 1..L``, ``y = B h_L``,
  with ``A: (m, d)``, ``W_l: (m, m)`` i.i.d. ``N(0, 2/m)`` and ``B: (d_out, m)`` i.i.d.
  ``N(0, 1/d_out)``. ``A`` and ``B`` stay fixed.
* ``arch="two_layer"``: ``y = (1/sqrt(m)) a^T phi(W x)`` with ``W: (m, d)`` i.i.d. ``N(0, 1)``
  trained and ``a: (d_out, m)`` uniform on ``{-1, +1}`` fixed. The ``1/sqrt(m)`` is folded into the
  stored readout ``B = a / sqrt(m)``, so both architectures share :func:`forward`.

Parameters are a dict ``{"trainable": (W_1, ..., W_L), "fixed": {"A": ..., "B": ...}}``; the
two-layer net has no ``A`` (its input map is the identity). Inputs are rows: ``x: (n, d)``.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from .config import MAX_LAYERS, check_choice, check_int

ARCHS = ("deep", "two_layer")
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
}


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """Shape and activation of a network; hashable, so it can be a static jit argument.

    Attributes:
      arch: ``"deep"`` (ALS19, ``L`` trained ``m x m`` layers) or ``"two_layer"`` (Du et al.).
      d: input dimension.
      m: width of every hidden layer.
      L: number of trained layers (``arch="two_layer"`` requires ``L == 1``).
      d_out: output dimension.
      activation: ``"relu"``, ``"softplus"`` or ``"gelu"``.
    """

    arch: str = "deep"
    d: int = 16
    m: int = 256
    L: int = 2
    d_out: int = 1
    activation: str = "relu"

    def __post_init__(self):
        check_choice("arch", self.arch, ARCHS)
        for name in ("d", "m", "d_out"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        unrolled = "every layer is unrolled into the compiled program"
        object.__setattr__(self, "L", check_int("L", self.L, 1, MAX_LAYERS, unrolled))
        if self.arch == "two_layer" and self.L != 1:
            raise ValueError(f"L must be 1 for arch='two_layer', got {self.L!r}")
        check_choice("activation", self.activation, ACTIVATIONS)

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """Shapes of the trained matrices ``W_1 .. W_L``."""
        if self.arch == "two_layer":
            return ((self.m, self.d),)
        return tuple((self.m, self.m) for _ in range(self.L))

    @property
    def num_trainable(self) -> int:
        """Number of trained scalars, ``sum_l prod(W_l.shape)``."""
        return sum(a * b for a, b in self.layer_shapes)


def _normal(key: jax.Array, shape: tuple, dtype) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, drawn flat and reshaped: the same numbers (the
    threefry PRNG is partitionable, JAX's default: element ``i`` depends only on the key and
    ``i``), but XLA compiles the flat draw faster (four vmapped initialisations of 5 seeds, one
    to three trained layers: 9.4-9.6 s instead of 14.8 s on one core, timed in either order)."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def init(key: jax.Array, spec: NetSpec, dtype=jnp.float32) -> dict:
    """Draws parameters with the paper's initialisation.

    Returns ``{"trainable": (W_1, .., W_L), "fixed": {...}}``; see the module docstring.
    """
    kA, kW, kB = jax.random.split(key, 3)
    if spec.arch == "two_layer":
        W = _normal(kW, (spec.m, spec.d), dtype)
        signs = jax.random.rademacher(kB, (spec.d_out, spec.m), dtype)
        return {"trainable": (W,), "fixed": {"B": signs / math.sqrt(spec.m)}}
    std = math.sqrt(2.0 / spec.m)
    A = std * _normal(kA, (spec.m, spec.d), dtype)
    Ws = tuple(std * _normal(k, (spec.m, spec.m), dtype) for k in jax.random.split(kW, spec.L))
    B = _normal(kB, (spec.d_out, spec.m), dtype) / math.sqrt(spec.d_out)
    return {"trainable": Ws, "fixed": {"A": A, "B": B}}


def features(spec: NetSpec, fixed: dict, x: jax.Array) -> jax.Array:
    """The fixed input map: ``phi(A x)`` for the deep net, ``x`` for the two-layer net.

    ``x: (..., d) -> (..., m)`` (deep) or ``(..., d)`` (two-layer). It does not depend on the
    trained weights, so the algorithms compute it once per run.
    """
    if spec.arch == "two_layer":
        return x
    return ACTIVATIONS[spec.activation](x @ fixed["A"].T)


def forward(spec: NetSpec, trainable, fixed: dict, feats: jax.Array) -> jax.Array:
    """Network output from features: ``feats: (n, f) -> (n, d_out)``."""
    phi = ACTIVATIONS[spec.activation]
    h = feats
    for W in trainable:
        h = phi(h @ W.T)
    return h @ fixed["B"].T


def preactivations(spec: NetSpec, trainable, feats: jax.Array) -> list:
    """Pre-activations ``g_l = W_l h_{l-1}`` of the trained layers, ``L`` arrays ``(..., m)``.

    Their signs are the ReLU activation pattern.
    """
    phi = ACTIVATIONS[spec.activation]
    h, pre = feats, []
    for W in trainable:
        g = h @ W.T
        pre.append(g)
        h = phi(g)
    return pre


def hidden(spec: NetSpec, trainable, fixed: dict, x: jax.Array) -> list:
    """Hidden layers for inputs ``x: (n, d)``: ``h_0 .. h_L`` for the deep net (``L + 1`` arrays
    ``(n, m)``), ``[h_1]`` for the two-layer net."""
    phi = ACTIVATIONS[spec.activation]
    feats = features(spec, fixed, x)
    post = [phi(g) for g in preactivations(spec, trainable, feats)]
    return post if spec.arch == "two_layer" else [feats] + post


def apply(spec: NetSpec, params: dict, x: jax.Array) -> jax.Array:
    """Network output ``x: (n, d) -> (n, d_out)``."""
    return forward(spec, params["trainable"], params["fixed"], features(spec, params["fixed"], x))


@partial(jax.jit, static_argnums=0)
def apply_seeds(spec: NetSpec, params: dict, x: jax.Array) -> jax.Array:
    """:func:`apply` for every seed of ``params`` (leaves with a leading seed axis ``S``):
    ``x: (n, d) -> (S, n, d_out)``, compiled once per shape rather than run op by op."""
    return jax.vmap(lambda p: apply(spec, p, x))(params)


def sample_losses(spec: NetSpec, trainable, fixed: dict, feats, y) -> jax.Array:
    """Per-sample squared loss ``F_i = 1/2 ||f(x_i) - y_i||^2``: ``(n, f), (n, d_out) -> (n,)``."""
    r = forward(spec, trainable, fixed, feats) - y
    return 0.5 * jnp.sum(r * r, axis=-1)


def weighted_loss(spec: NetSpec, trainable, fixed: dict, feats, y, w) -> jax.Array:
    """``sum_i w_i F_i``; with ``w = mask / n_k`` it is a client's mean loss. Returns a scalar."""
    return jnp.sum(w * sample_losses(spec, trainable, fixed, feats, y))


def backprop(spec: NetSpec, fixed: dict, W, f, y, w, update=None):
    """Gradient of ``sum_i w_i F_i`` (:func:`weighted_loss`) with respect to the trained layers,
    written out: ``f: (n, fan_in)`` features, ``y: (n, d_out)``, ``w: (n,)``. The chain
    networks' fast path, tested equal to ``jax.grad`` of :func:`weighted_loss` (and of the NNX
    modules).

    The operations of ``jax.grad`` of that loss, in its order (bitwise equal results on CPU), the
    first layer's input gradient never formed. With ``update`` (``(l, W_l, grad_l) -> new W_l``)
    each layer is updated as soon as its gradient is known, and the update is made to depend on
    the product that carries the gradient through ``W_l`` (by adding ``0 * isnan(one entry of
    it)``, always exactly 0): XLA then orders that product before the update and overwrites
    ``W_l`` in place, where it otherwise copies every layer but the first on every step (1.2x on
    R2). Returns the gradients, or the updated layers with ``update``.
    """
    phi = ACTIVATIONS[spec.activation]
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
        out[l] = g if update is None else update(l, Wl, g)
        if l > 0:
            delta = delta_in
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Flax NNX modules. They hold the same arrays as ``init`` and call ``forward``; the hot path works
# on the plain pytrees (``to_params``), which keeps it a pure function of arrays.


class Fixed(nnx.Variable):
    """A variable that the algorithms never train (``A`` and ``B``)."""


class _Network(nnx.Module):
    spec: NetSpec

    def __init__(self, spec: NetSpec, rngs: nnx.Rngs):
        self.spec = spec
        p = init(rngs.params(), spec)
        self.W = nnx.List([nnx.Param(w) for w in p["trainable"]])
        for name, value in p["fixed"].items():
            setattr(self, name, Fixed(value))

    def __call__(self, x: jax.Array) -> jax.Array:
        return apply(self.spec, to_params(self), x)


class DeepReLUNet(_Network):
    """ALS19's network: ``y = B phi(W_L ... phi(W_1 phi(A x)))``, ``A`` and ``B`` fixed."""

    def __init__(self, d: int, m: int, L: int, d_out: int, *, activation="relu", rngs: nnx.Rngs):
        super().__init__(NetSpec("deep", d, m, L, d_out, activation), rngs)


class TwoLayerNet(_Network):
    """Du et al.'s network: ``y = a^T phi(W x) / sqrt(m)``, ``a`` fixed in ``{-1, 1}``."""

    def __init__(self, d: int, m: int, d_out: int = 1, *, activation="relu", rngs: nnx.Rngs):
        super().__init__(NetSpec("two_layer", d, m, 1, d_out, activation), rngs)


def to_params(module: _Network) -> dict:
    """The module's arrays as the ``{"trainable", "fixed"}`` pytree the algorithms take."""
    fixed = {k: getattr(module, k)[...] for k in ("A", "B") if hasattr(module, k)}
    return {"trainable": tuple(w[...] for w in module.W), "fixed": fixed}


def split(module: _Network) -> dict:
    """The module's state split, with ``nnx.split``, into its trained part (the ``nnx.Param``
    layers ``W_1 .. W_L``) and its fixed part (the :class:`Fixed` ``A`` and ``B``), as the
    ``{"trainable", "fixed"}`` pytree the engine trains (:func:`localsgd.engine.run_module`)."""
    _, trained, fixed = nnx.split(module, nnx.Param, Fixed)
    W = nnx.to_pure_dict(trained)["W"]
    return {"trainable": tuple(W[i] for i in range(len(W))), "fixed": nnx.to_pure_dict(fixed)}


def merge(module: _Network, params: dict) -> _Network:
    """A copy of ``module`` with the trained layers of ``params`` (the inverse of :func:`split`);
    ``module`` itself is not changed."""
    graphdef, trained, fixed = nnx.split(module, nnx.Param, Fixed)
    if len(params["trainable"]) != len(module.W):
        raise ValueError(f"params must hold {len(module.W)} trained layers, got "
                         f"{len(params['trainable'])}")
    nnx.replace_by_pure_dict(trained, {"W": dict(enumerate(params["trainable"]))})
    return nnx.merge(graphdef, trained, fixed)

