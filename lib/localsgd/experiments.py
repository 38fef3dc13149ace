"""Experiments: one frozen config, validated field by field, and the runner that turns it into
arrays plus provenance (a :class:`localsgd.result.Result`).

An :class:`Experiment` fixes the data, the network, the algorithm and the seeds. ``run`` draws
``seeds`` initialisations and PRNG keys and runs them all in one compiled program
(:func:`localsgd.engine.sweep`); results are cached by :mod:`localsgd.store` under
``$LOCALSGD_RESULTS/cache`` (default ``results/cache``), keyed by the config, the library version
and its source, so a rebuilt book does not recompute an unchanged run.

Reliability:

* Bad input is refused with a ValueError naming the parameter, the value and what is allowed,
  before any work starts and before anything is written: the config on construction, what the
  data decides (``n``, ``num_clients``, ``batch_size`` against the smallest client) right after
  loading it.
* Same config and seed, same numbers, bitwise (on one platform), whether computed or read back.
* A damaged cache entry, or one whose arrays do not fit its config, is recomputed with a warning.
* With ``checkpoint_every`` the rounds run in chunks, the state saved after each; a killed run,
  started again, resumes from there and ends with exactly the numbers of an uninterrupted run.
* Inputs must be unit-norm (the theory assumes ``||x_i|| = 1``): :func:`load_data` and
  :func:`localsgd.data.client_data` (the way in for your own arrays) refuse other rows and point to
  :func:`localsgd.data.normalise_rows`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import __version__, budget, model, store, theory
from . import config as cf
from . import data as dt
from . import engine as en
from . import result as rs
from .result import Result

DATASETS = ("sphere", "digits", "idx")
ETA_RULES = ("fixed", "ntk")
_NOT_IN_KEY = ("checkpoint_every",)  # fields that do not change the results


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment. Every field is validated on construction; a bad value raises ValueError
    naming the field, the value and what is allowed.

    Data: ``dataset`` (``"sphere"``: synthetic unit-norm inputs; ``"digits"``: scikit-learn's
    digits; ``"idx"``: MNIST-style files at ``idx_images`` / ``idx_labels``), ``n`` (samples;
    for digits and idx the first ``n`` training samples, 0 for all), ``d`` and ``d_out`` (sphere
    only), ``delta`` (sphere's separation by construction, or None), ``targets`` (sphere),
    ``num_clients`` ``K``, ``partition`` (``iid``, ``shards``, ``dirichlet``), ``alpha``
    (Dirichlet concentration), ``data_seed``, ``client_rows`` (every client's data padded to
    this many rows; 0: the largest client's size). Runs whose arrays have the same shapes share
    their compiled programs, so experiments on several splits of the same data run faster with
    one ``client_rows`` for all, at least each split's largest client; the results do not
    depend on it beyond which minibatches a seed draws.

    Network: ``arch``, ``m``, ``L``, ``activation`` (see :class:`localsgd.model.NetSpec`).

    Run: ``algorithm``, ``rounds``, ``tau``, ``eta``, ``batch_size``, ``eval_every``, ``metrics``,
    ``prox_mu`` (FedProx's ``mu``) and ``dtype`` (``"float32"`` or ``"float64"``: the weights,
    the step size and the clients' averaging weights in that dtype) and ``layout`` (how the
    clients' steps are laid out in the program: the same numbers to rounding), see
    :class:`localsgd.config.RunConfig`; ``eta_rule``: ``"fixed"`` uses ``eta`` as the
    step size, ``"ntk"`` uses ``eta * n / lambda_max(G_0)`` per seed (``eta`` is then a fraction
    of the linearised model's critical step ``2 n / lambda_max``, so it must be below 2).

    Seeds: ``seeds`` runs with seeds ``seed, seed + 1, ...`` (initialisation and minibatches);
    the data does not change with the seed.

    Checkpoints: ``checkpoint_every`` rounds (0: off; else it must divide ``rounds`` and be a
    multiple of ``eval_every``) between saved states of a run; see :func:`run`. The results do not
    depend on it, so it is not part of the cache key.
    """

    dataset: str = "sphere"
    n: int = 64
    d: int = 16
    d_out: int = 1
    delta: float | None = None
    targets: str = "labels"
    num_clients: int = 4
    partition: str = "iid"
    alpha: float = 1.0
    data_seed: int = 0
    client_rows: int = 0
    idx_images: str | None = None
    idx_labels: str | None = None
    arch: str = "deep"
    m: int = 256
    L: int = 2
    activation: str = "relu"
    algorithm: str = "local_gd"
    rounds: int = 50
    tau: int = 1
    eta: float = 0.5
    eta_rule: str = "ntk"
    batch_size: int | None = None
    eval_every: int = 1
    metrics: tuple = ("loss",)
    seeds: int = 1
    seed: int = 0
    checkpoint_every: int = 0
    prox_mu: float = 0.0
    dtype: str = "float32"
    layout: str = "auto"

    def __post_init__(self):
        for f in dataclasses.fields(self):  # NumPy scalars as Python ones (JSON, the cache key)
            v = getattr(self, f.name)
            if isinstance(v, np.integer | np.floating):
                object.__setattr__(self, f.name, v.item())
        object.__setattr__(self, "metrics", cf.check_metrics(self.metrics))
        cf.check_choice("dtype", self.dtype, cf.DTYPES)
        cf.check_choice("layout", self.layout, cf.LAYOUTS)
        # Floats as floats, so that eta=1 and eta=1.0 share a cache key.
        object.__setattr__(self, "eta", cf.check_float("eta", self.eta, dtype=self.dtype))
        cf.check_choice("dataset", self.dataset, DATASETS)
        for name, low in (
            ("n", 0 if self.dataset != "sphere" else 2),
            ("num_clients", 1),
            ("data_seed", 0),
            ("client_rows", 0),
            ("seeds", 1),
        ):
            object.__setattr__(self, name, cf.check_int(name, getattr(self, name), low))
        why = f"with seeds={self.seeds}, the seeds seed, ..., seed + seeds - 1 are int32 PRNG seeds"
        cf.check_int("seed", self.seed, 0, cf.INT32_MAX - self.seeds + 1, why)
        if self.dataset == "sphere" and self.num_clients > self.n:
            raise ValueError(f"num_clients must be at most n={self.n}, got {self.num_clients!r}")
        if self.dataset == "sphere" and "test_outputs" in self.metrics:
            raise ValueError(
                "metrics: 'test_outputs' records the outputs on a test split, which "
                "dataset='sphere' has none of; use dataset='digits' or 'idx'"
            )
        if self.dataset == "idx":
            for name in ("idx_images", "idx_labels"):
                v = getattr(self, name)
                if not isinstance(v, (str, os.PathLike)) or not Path(v).is_file():
                    raise ValueError(
                        f"{name} must name an existing IDX file for dataset='idx', got {v!r}"
                    )
            object.__setattr__(self, "idx_images", str(self.idx_images))
            object.__setattr__(self, "idx_labels", str(self.idx_labels))
        cf.check_choice("targets", self.targets, dt.TARGETS)
        cf.check_choice("partition", self.partition, dt.PARTITIONS)
        object.__setattr__(self, "alpha", cf.check_float("alpha", self.alpha))
        if self.delta is not None:
            object.__setattr__(self, "delta", cf.check_float("delta", self.delta, 0.0, 1.0))
        shards = self.partition == "shards"
        if self.dataset == "sphere" and shards and 2 * self.num_clients > self.n:
            raise ValueError(
                f"num_clients must be at most n/2={self.n // 2} with partition='shards' (two "
                f"label-sorted shards per client), got {self.num_clients!r}"
            )
        cf.check_choice("eta_rule", self.eta_rule, ETA_RULES)
        self.run_config()  # validates algorithm, rounds, tau, batch_size, eval_every, prox_mu
        self.net_spec()  # validates arch, m, L, activation and the sizes
        if self.dataset == "sphere" and self.d < 3:
            raise ValueError(
                f"d must be an integer >= 3 for dataset='sphere' (the last coordinate is "
                f"fixed), got {self.d!r}"
            )
        ce = cf.check_int("checkpoint_every", self.checkpoint_every, 0)
        if ce and (self.rounds % ce or ce % self.eval_every):
            raise ValueError(
                f"checkpoint_every must divide rounds={self.rounds} and be a multiple of "
                f"eval_every={self.eval_every} (or be 0: no checkpoints), got {ce!r}"
            )
        if self.eta_rule == "ntk" and not self.eta < 2:
            raise ValueError(
                f"eta must be below 2 with eta_rule='ntk' (a fraction of the critical step), "
                f"got {self.eta!r}"
            )

    # -- the pieces -------------------------------------------------------------------------
    def net_spec(self, d: int | None = None, d_out: int | None = None) -> model.NetSpec:
        return model.NetSpec(
            self.arch, d or self.d, self.m, self.L, d_out or self.d_out, self.activation
        )

    def run_config(self, eta: float | None = None) -> cf.RunConfig:
        eta = self.eta if eta is None else eta
        return cf.RunConfig(
            algorithm=self.algorithm, rounds=self.rounds, tau=self.tau, eta=float(eta),
            batch_size=self.batch_size, eval_every=self.eval_every, metrics=self.metrics,
            prox_mu=self.prox_mu, dtype=self.dtype, layout=self.layout,
        )

    def replace(self, **changes: Any) -> Experiment:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Cache key: a hash of every field that the results depend on (all but
        ``checkpoint_every``), what else decides the numbers (:func:`localsgd.result.identity`: a
        user's data files by their contents), the library version and the source of the modules
        that compute results (:func:`localsgd.result.source_digest`), so that a changed library
        or a rewritten data file never serves a stale entry."""
        config = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_KEY}
        blob = json.dumps(
            {"config": config, "identity": rs.identity(self), "version": __version__,
             "source": rs.source_digest()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


# -- data --------------------------------------------------------------------------------------


def load_data(exp: Experiment) -> tuple[dt.ClientData, dt.Dataset | None, np.ndarray]:
    """``(clients, test, labels)``: the training data split over clients, the test
    :class:`localsgd.data.Dataset` (or None) and the training labels."""
    test = None
    if exp.dataset == "sphere":
        train = dt.sphere(
            exp.n, exp.d, exp.d_out, delta=exp.delta, targets=exp.targets, seed=exp.data_seed
        )
    else:
        if exp.dataset == "digits":
            train, test = dt.digits(seed=exp.data_seed)
        else:
            train, test = dt.idx_dataset(exp.idx_images, exp.idx_labels, seed=exp.data_seed)
        if exp.n:
            if exp.n > train.x.shape[0]:
                raise ValueError(
                    f"n must be at most the {train.x.shape[0]} training samples, got {exp.n}"
                )
            train = dt.Dataset(*(a[: exp.n] for a in train))
        if exp.num_clients > train.x.shape[0]:
            raise ValueError(
                f"num_clients must be at most n={train.x.shape[0]}, got {exp.num_clients!r}"
            )
    dt.check_unit_norm(train.x)
    parts = _parts(exp, train.labels)
    largest = max(len(p) for p in parts)
    if 0 < exp.client_rows < largest:
        raise ValueError(f"client_rows must be 0 or at least the largest client's {largest} "
                         f"samples (partition={exp.partition!r}), got {exp.client_rows}")
    return dt.to_clients(train.x, train.y, parts, exp.client_rows), test, train.labels


def _parts(exp: Experiment, labels: np.ndarray) -> list[np.ndarray]:
    return dt.partition(labels, exp.num_clients, exp.partition, alpha=exp.alpha,
                        seed=exp.data_seed)


def training_order(exp: Experiment) -> np.ndarray:
    """The index, in the data's own order, of every real client row of :func:`load_data`'s
    clients, client by client: ``(N,)``, so that ``clients.x[clients.mask > 0]`` is
    ``train.x[training_order(exp)]``. Two experiments on the same data with other splits hold
    the same training points in other orders."""
    _, _, labels = load_data(exp)
    return np.concatenate(_parts(exp, labels))


def init_params(exp: Experiment, spec: model.NetSpec) -> tuple[Any, jax.Array]:
    """``seeds`` initialisations stacked on a leading axis, and their PRNG keys for training."""
    keys = jnp.stack([jax.random.key_data(jax.random.key(exp.seed + s)) for s in range(exp.seeds)])
    keys = jax.vmap(jax.random.wrap_key_data)(keys)
    init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    return _init_stack(model.init, spec, init_keys), train_keys


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_stack(init, spec: model.NetSpec, keys: jax.Array):
    """``init(key, spec)`` of every key, compiled once per network shape; ``init`` is static, so
    that an initialisation replaced at run time is compiled anew, never served from the cache."""
    return jax.vmap(lambda k: init(k, spec))(keys)


def step_sizes(exp: Experiment, spec: model.NetSpec, params0, clients: dt.ClientData) -> np.ndarray:
    """The ``(S,)`` step sizes of ``exp``'s seeds, in ``exp.dtype``, from their initialisations
    ``params0`` (leaves with a leading seed axis, in ``exp.dtype``): ``exp.eta`` for
    ``eta_rule="fixed"``, else ``exp.eta * n / lambda_max(G_0)`` per seed
    (:func:`localsgd.theory.ntk_step_size` on the training samples of ``clients``)."""
    dtype = jnp.dtype(exp.dtype)
    if exp.eta_rule != "ntk":
        return np.full((exp.seeds,), exp.eta, dtype)
    with en.precision(exp.run_config()):
        x_all = jnp.asarray(np.asarray(clients.x)[np.asarray(clients.mask) > 0], dtype)
        params0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), params0)
        return np.asarray(_every_seed(theory.ntk_step_size, spec, params0, x_all, exp.eta))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _every_seed(rule, spec, params0, x, scale):
    """``rule(spec, p, x, scale)`` (the step-size rule, :func:`localsgd.theory.ntk_step_size`)
    of every seed's ``p``, ``(S,)``: one compiled program, where the rule run op by op compiles
    each of its operations apart (most of the cost on small problems). The rule is a static
    argument, so that a rule replaced at run time is compiled anew, never served from the cache
    of another."""
    return jax.vmap(lambda p: rule(spec, p, x, scale))(params0)


# -- running -----------------------------------------------------------------------------------


def run(exp: Experiment, cache: bool = True) -> Result:
    """Runs (or loads from the cache) every seed of ``exp`` in one compiled program.

    Bad input raises ValueError before any work and before anything is written (the config on
    construction; ``n``, ``num_clients`` and ``batch_size`` against the data right after loading
    it). With ``exp.checkpoint_every`` the rounds run in chunks of that many (a progress bar
    counts them) and the state after each chunk is saved atomically, with a checksum, to
    :func:`localsgd.store.checkpoint_path`; a run started again after being killed prints
    ``resuming from round r`` and continues from there, ending with exactly the numbers of an
    uninterrupted run. The checkpoint is deleted once the run completes (and its result is
    cached).
    """
    if not isinstance(exp, Experiment):
        raise ValueError(f"exp must be an Experiment, got {type(exp).__name__}")
    _sweep_fn(exp)  # a bad LOCALSGD_MESH fails here, before any work
    path = store.cache_path(exp)
    if cache:
        hit = store.load_result(path, exp)
        if hit is not None:
            return hit
    t0 = time.perf_counter()
    clients, test, _ = load_data(exp)
    d, d_out = clients.x.shape[-1], clients.y.shape[-1]
    spec = exp.net_spec(d, d_out)
    cfg = exp.run_config()
    # What only the data decides (batch_size against the smallest client), before any work.
    shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0), spec))
    probe = None if test is None else np.asarray(test.x, exp.dtype)
    en.check_inputs(cfg, spec, shapes, clients, probe if "test_outputs" in cfg.metrics else None)
    budget.check_memory(exp, int(clients.mask.sum()), d, d_out, clients.x.shape[1])
    ckpts = [store.checkpoint_path(exp)] if exp.checkpoint_every else []
    store.check_writable(*([path] if cache else []), *ckpts)  # before the work
    with en.precision(cfg):
        out, metrics, rounds, resumed, etas, test_metrics = _compute(exp, cfg, spec, clients, test,
                                                                     probe)
    metrics, diverged_at = rs.stop_at_divergence(metrics, rounds, np.asarray(out.diverged_at))
    why = np.where(diverged_at >= 0, np.maximum(np.asarray(out.diverged_why), 1), 0)
    res = Result(config=exp, metrics=metrics, rounds=rounds, eta=etas, diverged_at=diverged_at,
                 test=test_metrics,
                 provenance=rs.provenance(exp, time.perf_counter() - t0, resumed))
    res.provenance["diverged_why"] = [en.WHY[int(w)] for w in why]
    if cache:
        store.save_result(path, res)
    for ckpt in ckpts:  # the run is complete
        ckpt.unlink(missing_ok=True)
    return res


def _compute(exp, cfg, spec, clients, test, probe):
    """The initialisations, step sizes and the run itself, in ``exp.dtype`` (the clients'
    averaging weights ``n_k / n`` recomputed in it); test metrics where there is a test split.
    ``probe``: the test inputs, at which the metric ``"test_outputs"`` records the outputs."""
    dtype = jnp.dtype(exp.dtype)
    if dtype != clients.weight.dtype:
        mask = np.asarray(clients.mask, dtype)
        clients = clients._replace(weight=mask.sum(axis=1) / mask.sum())
    params0, keys = init_params(exp, spec)
    params0 = jax.tree.map(lambda a: a.astype(dtype), params0)
    etas = step_sizes(exp, spec, params0, clients)
    if "test_outputs" not in cfg.metrics:
        probe = None
    out, metrics, rounds, resumed = _run_rounds(exp, cfg, spec, params0, clients, keys, etas,
                                                probe)
    test_metrics = {}
    if test is not None:
        preds = model.apply_seeds(spec, out.params, jnp.asarray(test.x, dtype))
        test_metrics["accuracy"] = np.asarray(
            jnp.mean(jnp.argmax(preds, -1) == test.labels, axis=-1)
        )
        test_metrics["loss"] = np.asarray(
            jnp.mean(0.5 * jnp.sum((preds - test.y) ** 2, -1), axis=-1)
        )
    return out, metrics, rounds, resumed, etas, test_metrics


def _sweep_fn(exp):
    """``engine.sweep``, or with ``LOCALSGD_MESH=clients`` the same sweep with the clients
    sharded over every device of every process (:mod:`localsgd.distributed`; the numbers agree
    up to float32 rounding)."""
    mesh = os.environ.get("LOCALSGD_MESH", "")
    if mesh in ("", "none"):
        return en.sweep
    if mesh != "clients":
        raise ValueError(f"LOCALSGD_MESH must be 'clients', 'none' or unset, got {mesh!r}")
    from . import distributed

    mesh = distributed.client_mesh(num_clients=exp.num_clients)
    return functools.partial(distributed.sweep, mesh=mesh)


if os.environ.get("LOCALSGD_MESH") == "clients":  # a multi-host run must join before any JAX work
    from . import distributed as _distributed

    _distributed.initialize()


def _run_rounds(exp, cfg, spec, params0, clients, keys, etas, probe=None):
    """The sweep, in chunks of ``checkpoint_every`` rounds when that is set (each continuing from
    the previous one's state, which is exact). Returns the last chunk's output, the metrics and
    recorded rounds of the whole run, and the round it resumed from (0 for a fresh start)."""
    sweep = _sweep_fn(exp)
    every = exp.checkpoint_every or exp.rounds
    chunk = cfg if every == exp.rounds else dataclasses.replace(cfg, rounds=every)
    total = exp.rounds // every
    ckpt = store.checkpoint_path(exp)
    state, parts, done = None, [], 0
    if exp.checkpoint_every:
        def initial_state():
            return en.sweep(chunk, spec, params0, clients, keys, etas, probe=probe).state

        saved = store.load_checkpoint(ckpt, exp, etas, initial_state)
        if saved is not None:
            state, metrics, rounds, done = saved
            parts.append((metrics, rounds))
            print(f"resuming from round {done} of {exp.rounds} ({ckpt})", flush=True)
    from tqdm.std import tqdm  # text bars on stderr: no widget state in executed notebooks

    bar = tqdm(total=total, initial=done // every, desc=f"chunks of {every} rounds", leave=False,
               disable=not exp.checkpoint_every)
    out = None
    try:
        for c in range(done // every, total):
            out = sweep(chunk, spec, params0, clients, keys, etas, start=state, probe=probe)
            state = out.state
            metrics = {k: np.asarray(v) for k, v in out.metrics.items()}
            parts.append((metrics, np.asarray(out.rounds[0])))
            if exp.checkpoint_every and c + 1 < total:
                parts = [_concat(parts)]
                store.save_checkpoint(ckpt, exp, state, *parts[0], etas)
            bar.update()
    finally:
        bar.close()
    metrics, rounds = _concat(parts)
    return out, metrics, rounds, done


def _concat(parts):
    """``[(metrics, rounds), ...]`` -> one ``(metrics, rounds)`` along the evaluation axis."""
    if len(parts) == 1:
        return parts[0]
    metrics = {k: np.concatenate([m[k] for m, _ in parts], axis=1) for k in parts[0][0]}
    return metrics, np.concatenate([r for _, r in parts])


def run_grid(exps: Iterable[Experiment], desc: str = "runs", cache: bool = True) -> list[Result]:
    """Runs several experiments with a progress bar; all configs are validated first."""
    from tqdm.std import tqdm  # text bars on stderr: no widget state in executed notebooks

    exps = list(exps)
    for e in exps:
        if not isinstance(e, Experiment):
            raise ValueError(f"exps must hold Experiment objects, got {type(e).__name__}")
    return [run(e, cache=cache) for e in tqdm(exps, desc=desc, leave=False)]
