"""The plain baseline the bench compares the library with: Local SGD / Local GD written the way one
would without the library's single compiled program. Clients run one after another in a Python
loop; each local step is one call of a jitted gradient step; minibatches are drawn and sliced on
the host with NumPy; the server averages the clients' models and computes the global loss after
every round (the library records it every round too).

Same network, data, initial weights, step size and number of steps as the library's run; the
minibatches come from another random stream, so the numbers agree in distribution, not exactly.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from localsgd import model


class PlainLocalSGD:
    """``run(seed)`` performs ``rounds`` rounds of Local SGD (``batch_size``) or Local GD
    (``batch_size=None``) and returns the final averaged weights and the recorded losses."""

    def __init__(self, spec: model.NetSpec, params0: dict, data, *, rounds: int, tau: int,
                 eta: float, batch_size: int | None):
        self.spec, self.rounds, self.tau, self.b = spec, rounds, tau, batch_size
        self.fixed, self.W0 = params0["fixed"], params0["trainable"]
        x, y, mask = (np.asarray(a) for a in (data.x, data.y, data.mask))
        self.sizes = mask.sum(axis=1).astype(int)
        # Host copies of each client's real samples (the usual shape of per-client data).
        self.x = [x[k, : n] for k, n in enumerate(self.sizes)]
        self.y = [y[k, : n] for k, n in enumerate(self.sizes)]
        self.weight = jnp.asarray(np.asarray(data.weight))
        fixed = self.fixed

        def batch_loss(W, xb, yb):
            # The network from raw inputs, fixed A included (computed per step, as a plain
            # implementation would); mean squared loss over the batch.
            out = model.forward(spec, W, fixed, model.features(spec, fixed, xb))
            return jnp.mean(0.5 * jnp.sum((out - yb) ** 2, axis=-1))

        @partial(jax.jit, donate_argnums=0)
        def step(W, xb, yb, eta):
            g = jax.grad(batch_loss)(W, xb, yb)
            return jax.tree.map(lambda w, gw: w - eta * gw, W, g)

        @jax.jit
        def average(weight, Ws):
            return jax.tree.map(lambda *ws: sum(wk * w for wk, w in zip(weight, ws)), *Ws)

        x_all = jnp.asarray(np.concatenate(self.x))
        y_all = jnp.asarray(np.concatenate(self.y))
        self._loss = jax.jit(lambda W: batch_loss(W, x_all, y_all))
        self._step, self._average = step, average
        self.eta = jnp.float32(eta)

    def run(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        Wbar, losses = self.W0, [self._loss(self.W0)]
        for _ in range(self.rounds):
            local = []
            for k in range(len(self.x)):
                W = jax.tree.map(jnp.copy, Wbar)  # the step donates its input
                for _ in range(self.tau):
                    if self.b is None:
                        xb, yb = self.x[k], self.y[k]
                    else:
                        idx = rng.choice(self.sizes[k], self.b, replace=False)
                        xb, yb = self.x[k][idx], self.y[k][idx]
                    W = self._step(W, xb, yb, self.eta)
                local.append(W)
            Wbar = self._average(self.weight, local)
            losses.append(self._loss(Wbar))
        return jax.block_until_ready(Wbar), np.asarray(jnp.stack(losses))
