"""The algorithms, as a registry of small named entries that the engine (:mod:`localsgd.engine`)
runs. A new algorithm is one :class:`Algorithm` added with :func:`register`; the engine does not
change.

In the style of FedJAX's client/server split, an entry says

* how a client steps: ``client_update(eta, config, W_l, g_l, ctx_l) -> new W_l``, applied to each
  trained layer ``l`` as soon as its gradient ``g_l`` is known (the engine's fused backward pass);
* what a client knows when it starts a round: ``client_context(W_bar, state_k, server) -> ctx``,
  one entry per layer (or None);
* what state it carries across rounds: ``init_state(W_0) -> state_k`` (one client's; the engine
  stacks it over clients, keeps it in :class:`localsgd.engine.TrainState`, checkpoints and shards
  it), ``finish(eta, config, W_bar, W_k, state_k, server) -> new state_k`` at a round's end, and
  the server's view of all clients' states, ``server_state(weight, states) -> server``;
* and what the server does with the clients' results: every entry here averages the clients'
  models, ``W_bar <- sum_k (n_k / n) W_k`` (``minibatch_sgd`` averages gradients instead).

Entries:

* ``local_sgd``: every round, each client starts from ``W_bar``, takes ``tau`` steps
  ``W_k <- W_k - eta * grad F_k^B(W_k)`` on minibatches ``B`` of ``batch_size`` samples drawn
  uniformly without replacement from its own data, independently at every step; then the server
  averages.
* ``local_gd``: the same with full local gradients ``grad F_k``.
* ``gd``: centralised gradient descent on the pooled data, one step per round (``tau = 1``).
* ``minibatch_sgd``: synchronous minibatch SGD, one step per round: every client computes a
  minibatch gradient at ``W_bar`` and the server steps along their weighted mean. With the same key
  it draws the same minibatches as ``local_sgd`` with ``tau = 1``.
* ``fedprox`` (Li et al., 2020): Local SGD on the proximal objective
  ``F_k^B(W) + (mu / 2) ||W - W_bar||^2``, that is
  ``W_k <- W_k - eta * (grad F_k^B(W_k) + mu (W_k - W_bar))`` with ``mu = config.prox_mu``;
  ``mu = 0`` is ``local_sgd``.
* ``scaffold`` (Karimireddy et al., 2020, option II, full participation, global step 1): client
  ``k`` keeps a control variate ``c_k`` (zero at the start) and steps
  ``W_k <- W_k - eta * (grad F_k^B(W_k) - c_k + c)`` with ``c = sum_k (n_k / n) c_k``; at the
  round's end ``c_k <- c_k - c + (W_bar - W_k) / (tau * eta)``.
* ``local_sgd_momentum``: Local SGD whose clients step with heavy-ball momentum 0.9
  (``optax.sgd(eta, momentum=0.9)``), the momentum started afresh every round: an example of a
  client optimiser given as an Optax transformation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def sgd_update(eta, config, W, g, ctx):
    """Plain SGD: ``W - eta * g``."""
    return W - eta * g


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One algorithm: its name, what it needs from the config, and its client and server parts
    (module docstring). Hashable, so the engine's compiled program can depend on it.

    Attributes:
      name: the ``algorithm`` name of a config.
      stochastic: clients step on minibatches of ``batch_size`` (else on their full data).
      one_step: one step per round (``tau`` must be 1).
      pooled: the clients' data is pooled into one client (centralised training).
      server_gradient: clients return a gradient at ``W_bar`` and the server steps along their
        weighted mean, instead of averaging models.
      fields: the config fields, beyond the common ones, that the entry reads.
      client_update, client_context, init_state, finish, server_state: the parts (module
        docstring); None where the entry has none.
      optimizer: instead of ``client_update``, a client optimiser as an Optax transformation,
        ``(eta, config) -> optax.GradientTransformation``, whose state starts afresh every
        round; None for the fused, in-place update (the fast path, for SGD-like updates).
      linear: every part is affine in the weights, gradients and state (true of every entry
        here); the kernel model (:mod:`localsgd.kernel`) then replays the entry exactly in
        function space, and refuses entries that are not (an Adam client, say).
    """

    name: str
    stochastic: bool = False
    one_step: bool = False
    pooled: bool = False
    server_gradient: bool = False
    fields: tuple = ()
    client_update: Callable = sgd_update
    client_context: Callable | None = None
    init_state: Callable | None = None
    finish: Callable | None = None
    server_state: Callable | None = None
    optimizer: Callable | None = None
    linear: bool = True

    @property
    def stateful(self) -> bool:
        """Whether clients carry state across rounds."""
        return self.init_state is not None


REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Adds ``algorithm`` to :data:`REGISTRY` under its name (ValueError if taken)."""
    if algorithm.name in REGISTRY:
        raise ValueError(f"algorithm name {algorithm.name!r} is already registered")
    REGISTRY[algorithm.name] = algorithm
    return algorithm


def get(name) -> Algorithm:
    """The entry called ``name``, or ValueError naming ``algorithm`` and the registered names."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"algorithm must be one of {tuple(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def _average(weight, trees):
    """``sum_k weight_k T_k`` over the leading client axis of every leaf."""
    return jax.tree.map(lambda w: jnp.tensordot(weight, w, axes=1), trees)


# -- FedProx -----------------------------------------------------------------------------------


def _prox_context(Wbar, state, server):
    return tuple(Wbar)


def _prox_update(eta, config, W, g, Wbar_l):
    return W - eta * (g + config.prox_mu * (W - Wbar_l))


# -- SCAFFOLD ----------------------------------------------------------------------------------


def _client_momentum(eta, config):
    return optax.sgd(eta, momentum=0.9)


def _scaffold_init(W0):
    return tuple(jnp.zeros_like(w) for w in W0)


def _scaffold_context(Wbar, c_k, c):
    return tuple(zip(c_k, c))


def _scaffold_update(eta, config, W, g, ctx_l):
    c_kl, c_l = ctx_l
    return W - eta * (g - c_kl + c_l)


def _scaffold_finish(eta, config, Wbar, W_k, c_k, c):
    scale = 1.0 / (config.tau * eta)
    return tuple(ck - cl + (wb - wk) * scale for ck, cl, wb, wk in zip(c_k, c, Wbar, W_k))


register(Algorithm("local_sgd", stochastic=True))
register(Algorithm("local_gd"))
register(Algorithm("gd", one_step=True, pooled=True))
register(Algorithm("minibatch_sgd", stochastic=True, one_step=True, server_gradient=True))
register(Algorithm("fedprox", stochastic=True, fields=("prox_mu",), client_update=_prox_update,
                   client_context=_prox_context))
register(Algorithm("scaffold", stochastic=True, client_update=_scaffold_update,
                   client_context=_scaffold_context, init_state=_scaffold_init,
                   finish=_scaffold_finish, server_state=_average))
register(Algorithm("local_sgd_momentum", stochastic=True, optimizer=_client_momentum))

ALGORITHMS = tuple(REGISTRY)
STOCHASTIC = tuple(a.name for a in REGISTRY.values() if a.stochastic)
