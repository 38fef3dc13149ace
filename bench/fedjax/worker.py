"""FedJAX's FedAvg on the bench's reference configurations; runs inside FedJAX's own virtual
environment (``bench/fedjax/.venv``, made by ``bench/run.py --install-fedjax``), driven by
``bench/run.py`` over stdin/stdout so that its timings interleave with the library's.

Protocol: one JSON object a line on stdin, one JSON answer a line on stdout.
``{"op": "setup", "case": name, "npz": path, "tau": .., "rounds": .., "batch_size": .., "eta": ..}``
loads the case's data and initial weights (written by run.py, the same numbers the library gets),
builds FedAvg (``fedjax.algorithms.fed_avg.federated_averaging`` with SGD on the clients and a
server learning rate of 1, i.e. plain model averaging) and runs one round to compile it.
``{"op": "time", "case": name}`` runs ``rounds`` rounds and answers the seconds they took, the
global loss being computed after every round as the library records it.
``{"op": "quit"}`` ends.

FedJAX 0.0.17 predates the removal of ``jax.tree_map`` and friends; the shims below put them back.
"""

from __future__ import annotations

import json
import sys
import time

import jax

# Shims: names removed from current JAX that FedJAX 0.0.17 still calls.
for _old, _new in (("tree_map", jax.tree.map), ("tree_leaves", jax.tree.leaves),
                   ("tree_flatten", jax.tree.flatten), ("tree_unflatten", jax.tree.unflatten),
                   ("tree_structure", jax.tree.structure), ("tree_reduce", jax.tree.reduce)):
    if not hasattr(jax, _old):
        setattr(jax, _old, _new)

import fedjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from fedjax.algorithms import fed_avg  # noqa: E402

CASES = {}


def _version():
    from importlib.metadata import version
    return version("fedjax")


def setup(msg):
    z = np.load(msg["npz"])
    x, y, A, B = z["x"], z["y"], z["A"], z["B"]  # x: (K, n, d), y: (K, n, d_out)
    Ws = tuple(jnp.asarray(z[f"W{i}"]) for i in range(int(z["L"])))
    A, B = jnp.asarray(A), jnp.asarray(B)
    K = x.shape[0]
    full_batch = msg["batch_size"] is None
    b = x.shape[1] if full_batch else int(msg["batch_size"])

    def loss(params, batch):
        # The same network as the library: h0 = relu(A x), h_l = relu(W_l h_{l-1}), y = B h_L,
        # mean squared loss 1/2 ||y_hat - y||^2 over the batch; A and B are closed over (fixed).
        h = jax.nn.relu(batch["x"] @ A.T)
        for W in params:
            h = jax.nn.relu(h @ W.T)
        r = h @ B.T - batch["y"]
        return jnp.mean(0.5 * jnp.sum(r * r, axis=-1))

    def grad_fn(params, batch, rng):
        del rng
        return jax.grad(loss)(params, batch)

    hp = fedjax.ShuffleRepeatBatchHParams(batch_size=b, num_epochs=None, num_steps=int(msg["tau"]),
                                          seed=0, skip_shuffle=full_batch)
    algo = fed_avg.federated_averaging(grad_fn, fedjax.optimizers.sgd(float(msg["eta"])),
                                       fedjax.optimizers.sgd(1.0), hp)
    clients = [(k, fedjax.ClientDataset({"x": x[k], "y": y[k]}), jax.random.key(k))
               for k in range(K)]
    all_batch = {"x": jnp.asarray(x.reshape(-1, x.shape[-1])),
                 "y": jnp.asarray(y.reshape(-1, y.shape[-1]))}
    global_loss = jax.jit(loss)
    case = {"algo": algo, "clients": clients, "Ws": Ws, "rounds": int(msg["rounds"]),
            "loss": lambda p: global_loss(p, all_batch)}
    CASES[msg["case"]] = case
    state = algo.init(Ws)
    state, _ = algo.apply(state, clients)  # compile
    jax.block_until_ready(case["loss"](state.params))
    return {"ok": True, "fedjax": _version(), "jax": jax.__version__}


def timed(msg):
    case = CASES[msg["case"]]
    state = case["algo"].init(case["Ws"])
    losses = []
    t0 = time.perf_counter()
    for _ in range(case["rounds"]):
        state, _ = case["algo"].apply(state, case["clients"])
        losses.append(case["loss"](state.params))
    losses = [float(v) for v in losses]
    jax.block_until_ready(state.params)
    return {"seconds": time.perf_counter() - t0, "final_loss": losses[-1]}


def main():
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "quit":
                break
            out = setup(msg) if msg["op"] == "setup" else timed(msg)
        except Exception as e:  # report, keep serving
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
