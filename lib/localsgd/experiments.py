"""Experiments: one frozen config, validated field by field, a runner that returns arrays plus
provenance, and an on-disk cache keyed by the config and the library version.

An :class:`Experiment` fixes the data, the network, the algorithm and the seeds. ``run`` draws
``seeds`` initialisations and PRNG keys and runs them all in one compiled program
(:func:`localsgd.engine.sweep`); results live in ``$LOCALSGD_RESULTS/cache`` (default
``results/cache``), so a rebuilt book does not recompute an unchanged run.

Reliability:

* Bad input is refused with a ValueError naming the parameter, the value and what is allowed,
  before any work starts and before anything is written: the config on construction, what the
  data decides (``n``, ``num_clients``, ``batch_size`` against the smallest client) right after
  loading it.
* Same config and seed, same numbers, bitwise (on one platform), whether computed or read back.
* A cache entry is written atomically (temporary file, then rename) and carries a SHA-256 of its
  contents; an entry that fails the check (corrupt, truncated) is recomputed with a warning.
* With ``checkpoint_every`` the rounds run in chunks, and the state after each chunk is saved to
  ``$LOCALSGD_RESULTS/checkpoints/<key>.npz``; a killed run, started again, resumes from the last
  checkpoint and ends with exactly the numbers of an uninterrupted run.
* Inputs must be unit-norm (the theory assumes ``||x_i|| = 1``): :func:`load_data` and
  :func:`client_data` (the way in for your own arrays) refuse other rows and point to
  :func:`localsgd.data.normalise_rows`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import platform
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from . import __version__, budget, model, store, theory
from . import config as cf
from . import data as dt
from . import engine as en
from .store import results_dir, write_bytes_atomic

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
    (Dirichlet concentration), ``data_seed``.

    Network: ``arch``, ``m``, ``L``, ``activation`` (see :class:`localsgd.model.NetSpec`).

    Run: ``algorithm``, ``rounds``, ``tau``, ``eta``, ``batch_size``, ``eval_every``, ``metrics``,
    ``prox_mu`` (FedProx's ``mu``) and ``dtype`` (``"float32"`` or ``"float64"``: the weights,
    the step size and the clients' averaging weights in that dtype), see
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

    def __post_init__(self):
        for f in dataclasses.fields(self):  # NumPy scalars as Python ones (JSON, the cache key)
            v = getattr(self, f.name)
            if isinstance(v, np.integer | np.floating):
                object.__setattr__(self, f.name, v.item())
        object.__setattr__(self, "metrics", cf.check_metrics(self.metrics))
        cf.check_choice("dtype", self.dtype, cf.DTYPES)
        # Floats as floats, so that eta=1 and eta=1.0 share a cache key.
        object.__setattr__(self, "eta", cf.check_float("eta", self.eta, dtype=self.dtype))
        cf.check_choice("dataset", self.dataset, DATASETS)
        for name, low in (
            ("n", 0 if self.dataset != "sphere" else 2),
            ("num_clients", 1),
            ("data_seed", 0),
            ("seeds", 1),
        ):
            object.__setattr__(self, name, cf.check_int(name, getattr(self, name), low))
        why = f"with seeds={self.seeds}, the seeds seed, ..., seed + seeds - 1 are int32 PRNG seeds"
        cf.check_int("seed", self.seed, 0, cf.INT32_MAX - self.seeds + 1, why)
        if self.dataset == "sphere" and self.num_clients > self.n:
            raise ValueError(f"num_clients must be at most n={self.n}, got {self.num_clients!r}")
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
        if (
            self.dataset == "sphere"
            and self.partition == "shards"
            and 2 * self.num_clients > self.n
        ):
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
            algorithm=self.algorithm,
            rounds=self.rounds,
            tau=self.tau,
            eta=float(eta),
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            metrics=self.metrics,
            prox_mu=self.prox_mu,
            dtype=self.dtype,
        )

    def replace(self, **changes: Any) -> Experiment:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Cache key: a hash of every field that the results depend on (all but
        ``checkpoint_every``), what else decides the numbers (:func:`_identity`: a user's data
        files by their contents), the library version and the source of the modules that compute
        results, so that a changed library or a rewritten data file never serves a stale
        entry."""
        config = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_KEY}
        blob = json.dumps(
            {"config": config, "identity": _identity(self), "version": __version__,
             "source": _source_digest()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


_COMPUTING_MODULES = (
    "algorithms", "config", "data", "diagnostics", "engine", "experiments", "model", "theory"
)


@functools.cache
def _source_digest() -> str:
    """SHA-256 of the source of the modules whose code determines a run's numbers."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _COMPUTING_MODULES:
        h.update((here / f"{name}.py").read_bytes())
    return h.hexdigest()


@dataclasses.dataclass
class Result:
    """What a run returns. Arrays carry a leading seed axis ``S``.

    ``metrics[name]``: ``(S, E, ...)`` at the recorded rounds ``rounds: (E,)``; ``iterations``
    is ``rounds * tau`` (local steps per client); ``eta: (S,)`` the step sizes used;
    ``diverged_at: (S,)`` the round at which a seed diverged, or -1; ``test``: dict of ``(S,)``
    test metrics where the data set has a test split; ``provenance``: config, versions, platform,
    time taken.

    A seed diverges when its weights or any recorded metric become non-finite; ``diverged_at`` is
    then the first such round (a recorded round when only a metric shows it), training stops at
    the last finite weights, and from there on ``metrics`` repeat the last finite record, so
    every recorded value is finite. :meth:`divergence_message` names the parameter to lower.
    """

    config: Experiment
    metrics: dict[str, np.ndarray]
    rounds: np.ndarray
    eta: np.ndarray
    diverged_at: np.ndarray
    test: dict[str, np.ndarray]
    provenance: dict[str, Any]

    @property
    def iterations(self) -> np.ndarray:
        return self.rounds * self.config.tau

    @property
    def diverged(self) -> bool:
        return bool(np.any(self.diverged_at >= 0))

    def divergence_message(self) -> str | None:
        """Why the run cannot be plotted, naming the parameter to lower; None when it converged."""
        if not self.diverged:
            return None
        s = int(np.argmax(self.diverged_at >= 0))
        why = self.provenance.get("diverged_why") or [en.WHY[1]] * len(self.diverged_at)
        cfg = self.config.run_config(float(self.eta[s]))
        return (
            en.divergence_message(cfg, int(self.diverged_at[s]), en.WHY.index(why[s]))
            + f" (seed {self.config.seed + s})"
        )


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
    parts = dt.partition(
        train.labels, exp.num_clients, exp.partition, alpha=exp.alpha, seed=exp.data_seed
    )
    return dt.to_clients(train.x, train.y, parts), test, train.labels


def client_data(
    x: ArrayLike,
    y: ArrayLike,
    num_clients: int = 1,
    partition: str = "iid",
    *,
    labels: ArrayLike | None = None,
    alpha: float = 1.0,
    seed: int = 0,
) -> dt.ClientData:
    """Your own samples ``x: (n, d)``, ``y: (n, d_out)`` split over ``num_clients`` clients, for
    :func:`localsgd.engine.run` and :func:`localsgd.engine.sweep`.

    The theory assumes unit-norm inputs, so rows that are not unit-norm are refused (ValueError,
    pointing to :func:`localsgd.data.normalise_rows`), as is what
    :func:`localsgd.data.check_samples` refuses (complex, NaN or infinite entries, shapes that do
    not match, huge targets, repeated inputs with different targets) and ``num_clients`` outside
    ``[1, n]``. ``labels: (n,)`` drive the ``shards`` and
    ``dirichlet`` partitions (default: the argmax of ``y``, or its sign when ``d_out == 1``).
    """
    x, y = dt.check_samples(x, y)
    dt.check_unit_norm(x)
    if labels is None:
        labels = np.argmax(y, axis=1) if y.shape[1] > 1 else (y[:, 0] > 0).astype(int)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape (n={x.shape[0]},), got shape {labels.shape}")
    parts = dt.partition(labels, num_clients, partition, alpha=alpha, seed=seed)
    return dt.to_clients(x, y, parts)


def init_params(exp: Experiment, spec: model.NetSpec) -> tuple[Any, jax.Array]:
    """``seeds`` initialisations stacked on a leading axis, and their PRNG keys for training."""
    keys = jnp.stack([jax.random.key_data(jax.random.key(exp.seed + s)) for s in range(exp.seeds)])
    keys = jax.vmap(jax.random.wrap_key_data)(keys)
    init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    return _init_stack(spec, init_keys), train_keys


# compiled once per network shape: run eagerly, the vmapped draws cost seconds per new width
@functools.partial(jax.jit, static_argnums=0)
def _init_stack(spec: model.NetSpec, keys: jax.Array):
    return jax.vmap(lambda k: model.init(k, spec))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _ntk_steps(spec: model.NetSpec, params0, x, scale):
    return jax.vmap(lambda p: theory.ntk_step_size(spec, p, x, scale))(params0)


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
        return np.asarray(_ntk_steps(spec, params0, x_all, jnp.asarray(exp.eta, dtype)))


# -- running -----------------------------------------------------------------------------------


def _mesh() -> str:
    """The path a run takes: ``"none"`` (one device) or ``"clients:<devices>"`` (the clients
    sharded over that many devices by ``LOCALSGD_MESH=clients``)."""
    mesh = os.environ.get("LOCALSGD_MESH", "") or "none"
    return f"clients:{jax.device_count()}" if mesh == "clients" else mesh


def _identity(exp: Experiment) -> dict:
    """What decides a run's numbers besides its fields: the contents of a user's IDX files
    (SHA-256 of their bytes; the paths alone would serve stale results after a rewrite), the
    platform (``jax.default_backend()``) and the path (:func:`_mesh`): the sharded and the
    single-device program agree only to float32 rounding, so neither may serve the other's
    entry."""
    ident = {"platform": jax.default_backend(), "mesh": _mesh()}
    if exp.dataset == "idx":
        ident["idx_contents"] = []
        for name in ("idx_images", "idx_labels"):
            try:
                ident["idx_contents"].append(dt.file_digest(getattr(exp, name)))
            except OSError as err:  # gone or unreadable since the config was built
                raise ValueError(
                    f"{name} must name a readable IDX file, got {getattr(exp, name)!r} ({err})"
                ) from err
    return ident


def _cache_path(exp: Experiment) -> Path:
    return results_dir() / "cache" / f"{exp.key()}.npz"


def _check_writable(exp: Experiment, cache: bool) -> None:
    """Before the work: the files this run will write (its cache entry, its checkpoints) can be
    written; else :class:`localsgd.store.NotWritableError` naming ``LOCALSGD_RESULTS``."""
    paths = ([_cache_path(exp)] if cache else []) + (
        [checkpoint_path(exp)] if exp.checkpoint_every else []
    )
    store.check_writable(*paths)


def checkpoint_path(exp: Experiment) -> Path:
    """Where :func:`run` keeps ``exp``'s checkpoint: ``$LOCALSGD_RESULTS/checkpoints/<key>.npz``."""
    return results_dir() / "checkpoints" / f"{exp.key()}.npz"


def checkpoint_info(exp: Experiment) -> dict | None:
    """The header of ``exp``'s checkpoint (``round``: rounds done, ``key``, ``created``), or None
    when there is none or it is unreadable."""
    try:
        meta, _ = _unpack(checkpoint_path(exp).read_bytes())
    except Exception:  # noqa: BLE001  (missing or corrupt: no usable checkpoint)
        return None
    return meta


def run(exp: Experiment, cache: bool = True) -> Result:
    """Runs (or loads from the cache) every seed of ``exp`` in one compiled program.

    Bad input raises ValueError before any work and before anything is written (the config on
    construction; ``n``, ``num_clients`` and ``batch_size`` against the data right after loading
    it). With ``exp.checkpoint_every`` the rounds run in chunks of that many (a progress bar
    counts them) and the state after each chunk is saved atomically, with a checksum, to
    :func:`checkpoint_path`; a run started again after being killed prints ``resuming from round
    r`` and continues from there, ending with exactly the numbers of an uninterrupted run. The
    checkpoint is deleted once the run completes (and its result is cached).
    """
    if not isinstance(exp, Experiment):
        raise ValueError(f"exp must be an Experiment, got {type(exp).__name__}")
    _sweep_fn(exp)  # a bad LOCALSGD_MESH fails here, before any work
    path = _cache_path(exp)
    if cache:
        hit = _load(path, exp)
        if hit is not None:
            return hit
    t0 = time.perf_counter()
    clients, test, _ = load_data(exp)
    d, d_out = clients.x.shape[-1], clients.y.shape[-1]
    spec = exp.net_spec(d, d_out)
    cfg = exp.run_config()
    # What only the data decides (batch_size against the smallest client), before any work.
    shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0), spec))
    en.check_inputs(cfg, spec, shapes, clients)
    budget.check_memory(exp, int(clients.mask.sum()), d, d_out, clients.x.shape[1])
    _check_writable(exp, cache)
    with en.precision(cfg):
        out, metrics, rounds, resumed, etas, test_metrics = _compute(exp, cfg, spec, clients, test)
    metrics, diverged_at = _stop_at_divergence(metrics, rounds, np.asarray(out.diverged_at))
    why = np.where(diverged_at >= 0, np.maximum(np.asarray(out.diverged_why), 1), 0)
    res = Result(
        config=exp,
        metrics=metrics,
        rounds=rounds,
        eta=etas,
        diverged_at=diverged_at,
        test=test_metrics,
        provenance=_provenance(exp, time.perf_counter() - t0, resumed),
    )
    res.provenance["diverged_why"] = [en.WHY[int(w)] for w in why]
    if cache:
        _store(path, res)
    if exp.checkpoint_every:
        checkpoint_path(exp).unlink(missing_ok=True)
    return res


def _compute(exp, cfg, spec, clients, test):
    """The initialisations, step sizes and the run itself, in ``exp.dtype`` (the clients'
    averaging weights ``n_k / n`` recomputed in it); test metrics where there is a test split."""
    dtype = jnp.dtype(exp.dtype)
    if dtype != clients.weight.dtype:
        mask = np.asarray(clients.mask, dtype)
        clients = clients._replace(weight=mask.sum(axis=1) / mask.sum())
    params0, keys = init_params(exp, spec)
    params0 = jax.tree.map(lambda a: a.astype(dtype), params0)
    etas = step_sizes(exp, spec, params0, clients)
    out, metrics, rounds, resumed = _run_rounds(exp, cfg, spec, params0, clients, keys, etas)
    test_metrics = {}
    if test is not None:
        preds = jax.vmap(lambda p: model.apply(spec, p, jnp.asarray(test.x, dtype)))(out.params)
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


def _run_rounds(exp, cfg, spec, params0, clients, keys, etas):
    """The sweep, in chunks of ``checkpoint_every`` rounds when that is set (each continuing from
    the previous one's state, which is exact). Returns the last chunk's output, the metrics and
    recorded rounds of the whole run, and the round it resumed from (0 for a fresh start)."""
    sweep = _sweep_fn(exp)
    every = exp.checkpoint_every or exp.rounds
    chunk = cfg if every == exp.rounds else dataclasses.replace(cfg, rounds=every)
    total = exp.rounds // every
    ckpt = checkpoint_path(exp)
    state, parts, done = None, [], 0
    if exp.checkpoint_every:
        saved = _load_checkpoint(
            ckpt, exp, etas, lambda: en.sweep(chunk, spec, params0, clients, keys, etas).state
        )
        if saved is not None:
            state, metrics, rounds, done = saved
            parts.append((metrics, rounds))
            print(f"resuming from round {done} of {exp.rounds} ({ckpt})", flush=True)
    from tqdm.std import tqdm  # text bars on stderr: no widget state in executed notebooks

    bar = tqdm(
        total=total,
        initial=done // every,
        desc=f"chunks of {every} rounds",
        leave=False,
        disable=not exp.checkpoint_every,
    )
    out = None
    try:
        for c in range(done // every, total):
            out = sweep(chunk, spec, params0, clients, keys, etas, start=state)
            state = out.state
            metrics = {k: np.asarray(v) for k, v in out.metrics.items()}
            parts.append((metrics, np.asarray(out.rounds[0])))
            if exp.checkpoint_every and c + 1 < total:
                parts = [_concat(parts)]
                _save_checkpoint(ckpt, exp, state, *parts[0], etas)
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


def _stop_at_divergence(metrics, rounds, diverged_at):
    """Holds every metric of a diverged seed at its last record before the divergence round, so
    that the returned metrics show no value of the weights the run was stopped at, whichever
    metrics were recorded. (The engine's guard marks a run diverged when its loss, computed
    whatever is recorded, or any recorded value is non-finite; a non-finite record that it could
    not see marks the run here, at that record's round.)"""
    metrics = {k: np.array(v) for k, v in metrics.items()}
    diverged_at = np.array(diverged_at)
    S, E = diverged_at.shape[0], len(rounds)
    bad = np.zeros((S, E), bool)
    for v in metrics.values():
        bad |= ~np.isfinite(v.reshape(S, E, -1)).all(axis=-1)
    for s in range(S):
        hits = np.flatnonzero(bad[s])
        if hits.size and hits[0] > 0 and (diverged_at[s] < 0 or rounds[hits[0]] < diverged_at[s]):
            diverged_at[s] = rounds[hits[0]]
        if diverged_at[s] < 0:
            continue
        e = int(np.searchsorted(rounds, diverged_at[s]))
        if 0 < e < E:
            for v in metrics.values():
                v[s, e:] = v[s, e - 1]
    return metrics, diverged_at


def run_grid(exps: Iterable[Experiment], desc: str = "runs", cache: bool = True) -> list[Result]:
    """Runs several experiments with a progress bar; all configs are validated first."""
    from tqdm.std import tqdm  # text bars on stderr: no widget state in executed notebooks

    exps = list(exps)
    for e in exps:
        if not isinstance(e, Experiment):
            raise ValueError(f"exps must hold Experiment objects, got {type(e).__name__}")
    return [run(e, cache=cache) for e in tqdm(exps, desc=desc, leave=False)]


def _provenance(exp, seconds, resumed_from=0):
    import flax
    import jaxlib
    import optax

    return {
        "config": dataclasses.asdict(exp),
        "key": exp.key(),
        "localsgd": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": jax.default_backend(),
        "mesh": _mesh(),
        "device": str(jax.devices()[0].device_kind),
        "machine": platform.machine(),
        "os": platform.platform(),
        "seconds": round(seconds, 3),
        "resumed_from_round": int(resumed_from),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- the cache and the checkpoints -------------------------------------------------------------
# One file format for both: a magic line, the header's length (8 bytes), the header (JSON), the
# SHA-256 of header and payload (64 hex digits), the payload (an .npz of the arrays).

_MAGIC = b"localsgd-results-v1\n"


def _pack(meta: dict, arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    head = json.dumps(meta, sort_keys=True).encode()
    digest = hashlib.sha256(head + payload).hexdigest().encode()
    return _MAGIC + len(head).to_bytes(8, "little") + head + digest + payload


def _unpack(blob: bytes):
    """``(meta, arrays)``; raises ValueError on a file that is not one, truncated or corrupt."""
    if not blob.startswith(_MAGIC):
        raise ValueError("not a localsgd results file (bad magic line)")
    blob = blob[len(_MAGIC) :]
    size = int.from_bytes(blob[:8], "little")
    if len(blob) < 8 + size + 64:
        raise ValueError(f"truncated: {len(blob)} bytes after the magic line")
    head, digest = blob[8 : 8 + size], blob[8 + size : 8 + size + 64]
    payload = blob[8 + size + 64 :]
    if hashlib.sha256(head + payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch")
    return json.loads(head), np.load(io.BytesIO(payload))


def _store(path: Path, res: Result) -> None:
    """Writes the result atomically (temporary file, then rename) with a checksum. A write that
    fails (disk full, the folder gone read-only since the run began) costs only the cache entry:
    a warning says so and the result is still returned."""
    arrays = {f"metrics/{k}": v for k, v in res.metrics.items()}
    arrays.update({f"test/{k}": v for k, v in res.test.items()})
    arrays.update(rounds=res.rounds, eta=res.eta, diverged_at=res.diverged_at)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, _pack({"provenance": res.provenance}, arrays))
    except OSError as err:
        warnings.warn(
            f"the result was not cached: cannot write {path} ({err}); check LOCALSGD_RESULTS",
            stacklevel=3,
        )


def _load(path: Path, exp: Experiment) -> Result | None:
    if not path.is_file():  # missing, or a folder (which the run then refuses to overwrite)
        return None
    try:
        meta, arrays = _unpack(path.read_bytes())
        if meta["provenance"]["key"] != exp.key():
            raise ValueError(f"it holds key {meta['provenance']['key']}, not {exp.key()}")
        metrics = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("metrics/")}
        test = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("test/")}
        res = Result(
            exp,
            metrics,
            arrays["rounds"],
            arrays["eta"],
            arrays["diverged_at"],
            test,
            meta["provenance"],
        )
        _check_entry(res)
        return res
    except Exception as err:  # noqa: BLE001  (a corrupt, truncated or invalid entry is recomputed)
        warnings.warn(
            f"cache entry {path} is unreadable or does not match its config ({err}); recomputing",
            stacklevel=3,
        )
        return None


# Metrics recorded as one value an evaluation, and as a vector (clients or layers) an evaluation.
_SCALAR_METRICS = ("loss", "grad_norm", "pl_ratio", "dist_rel", "flips", "ever_flipped")
_VECTOR_METRICS = ("client_loss", "dist", "forward_norms", "gap", "gap_rel", "local_flips", "drift")


def _check_entry(res: Result) -> None:
    """Raises ValueError where a cache entry's arrays cannot be the result of its config: the
    recorded rounds, the ``(S,)`` step sizes and divergence rounds, every metric the config asks
    for at ``(S, E, ...)``, finite where the run records finite values (ratios may be 0/0), and
    the test metrics exactly where the data has a test split. The checksum guards against damage;
    this guards against an entry written whole but wrong."""
    exp, S = res.config, res.config.seeds
    want_rounds = np.arange(0, exp.rounds + 1, exp.eval_every)
    if not np.array_equal(res.rounds, want_rounds):
        raise ValueError(f"its rounds {np.shape(res.rounds)} are not {want_rounds.shape}")
    E = want_rounds.size
    eta, div = np.asarray(res.eta), np.asarray(res.diverged_at)
    if eta.shape != (S,) or not np.all(np.isfinite(eta) & (eta > 0)):
        raise ValueError(f"its step sizes are not {S} positive finite numbers: {eta!r}")
    if div.shape != (S,) or div.dtype.kind not in "iu" or np.any((div < -1) | (div > exp.rounds)):
        raise ValueError(f"its divergence rounds are not {S} integers in [-1, {exp.rounds}]")
    want = {k for name in exp.metrics for k in cf.METRICS.get(name, (name,))}
    if set(res.metrics) != want:
        raise ValueError(f"it records {sorted(res.metrics)}, the config asks for {sorted(want)}")
    for k, v in res.metrics.items():
        ndim = 2 if k in _SCALAR_METRICS else 3 if k in _VECTOR_METRICS else v.ndim
        if v.shape[:2] != (S, E) or v.ndim != ndim or v.dtype.kind != "f":
            raise ValueError(f"its metric {k} is {v.dtype}{v.shape}, expected ({S}, {E}, ...)")
        if k != "pl_ratio" and not k.endswith("_rel") and not np.all(np.isfinite(v)):
            raise ValueError(f"its metric {k} has NaN or infinite values")
    want_test = set() if exp.dataset == "sphere" else {"accuracy", "loss"}
    if set(res.test) != want_test or any(np.shape(v) != (S,) for v in res.test.values()):
        raise ValueError(f"its test metrics {sorted(res.test)} are not {sorted(want_test)}")


def _save_checkpoint(path: Path, exp: Experiment, state, metrics, rounds, etas) -> None:
    leaves, treedef = jax.tree_util.tree_flatten(state)
    arrays = {f"state/{i}": np.asarray(a) for i, a in enumerate(leaves)}
    arrays.update({f"metrics/{k}": v for k, v in metrics.items()})
    arrays.update(rounds=rounds, eta=etas)
    meta = {
        "key": exp.key(),
        "round": int(rounds[-1]),
        "rounds": exp.rounds,
        "treedef": str(treedef),
        "leaves": len(leaves),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, _pack(meta, arrays))
    except OSError as err:  # the run goes on; only a resume after a kill is lost
        warnings.warn(
            f"checkpoint at round {meta['round']} not saved: cannot write {path} ({err}); "
            f"check LOCALSGD_RESULTS",
            stacklevel=3,
        )


def _load_checkpoint(path: Path, exp: Experiment, etas, template):
    """``(state, metrics, rounds, round_done)`` from a valid checkpoint of ``exp``, else None (with
    a warning when one exists but cannot be used). ``template()`` gives a state of the right
    structure (only its shapes are evaluated)."""
    if not path.exists():
        return None
    try:
        meta, arrays = _unpack(path.read_bytes())
        if meta["key"] != exp.key():
            raise ValueError(f"it holds key {meta['key']}, not {exp.key()}")
        done, every = int(meta["round"]), exp.checkpoint_every
        if not (0 < done < exp.rounds and done % every == 0):
            raise ValueError(
                f"round {done} is not a multiple of checkpoint_every={every} below "
                f"rounds={exp.rounds}"
            )
        if not np.array_equal(arrays["eta"], etas):
            raise ValueError("its step sizes differ from this run's")
        shapes, treedef = jax.tree_util.tree_flatten(jax.eval_shape(template))
        if meta["treedef"] != str(treedef) or meta["leaves"] != len(shapes):
            raise ValueError("its state has another structure")
        leaves = [arrays[f"state/{i}"] for i in range(len(shapes))]
        for a, t in zip(leaves, shapes, strict=True):
            if a.shape != t.shape or a.dtype != t.dtype:
                raise ValueError(
                    f"a state array is {a.dtype}{a.shape}, expected {t.dtype}{t.shape}"
                )
        state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in leaves])
        metrics = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("metrics/")}
        return state, metrics, arrays["rounds"], done
    except Exception as err:  # noqa: BLE001  (an unusable checkpoint means a fresh start)
        warnings.warn(f"checkpoint {path} is unusable ({err}); starting from round 0", stacklevel=3)
        return None
