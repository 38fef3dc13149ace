"""Experiments: one frozen config, validated field by field, a runner that returns arrays plus
provenance, and an on-disk cache keyed by the config and the library version.

An :class:`Experiment` fixes the data, the network, the algorithm and the seeds. ``run`` draws
``seeds`` initialisations and PRNG keys and runs them all in one compiled program
(:func:`localsgd.algorithms.sweep`); results live in ``$LOCALSGD_RESULTS/cache`` (default
``results/cache``), so a rebuilt book does not recompute an unchanged run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import __version__
from . import algorithms as al
from . import data as dt
from . import model
from . import theory

DATASETS = ("sphere", "digits", "idx")
ETA_RULES = ("fixed", "ntk")


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

    Run: ``algorithm``, ``rounds``, ``tau``, ``eta``, ``batch_size``, ``eval_every``, ``metrics``
    (see :class:`localsgd.algorithms.RunConfig`); ``eta_rule``: ``"fixed"`` uses ``eta`` as the
    step size, ``"ntk"`` uses ``eta * n / lambda_max(G_0)`` per seed (``eta`` is then a fraction
    of the linearised model's critical step ``2 n / lambda_max``, so it must be below 2).

    Seeds: ``seeds`` runs with seeds ``seed, seed + 1, ...`` (initialisation and minibatches);
    the data does not change with the seed.
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

    def __post_init__(self):
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        for name, low in (("n", 0 if self.dataset != "sphere" else 2), ("num_clients", 1),
                          ("data_seed", 0), ("seeds", 1), ("seed", 0)):
            v = getattr(self, name)
            if not al._is_int(v) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.dataset == "sphere" and self.num_clients > self.n:
            raise ValueError(f"num_clients must be at most n={self.n}, got {self.num_clients!r}")
        if self.dataset == "idx" and not (self.idx_images and self.idx_labels):
            raise ValueError("idx_images and idx_labels must both name files for dataset='idx'")
        if self.targets not in dt.TARGETS:
            raise ValueError(f"targets must be one of {dt.TARGETS}, got {self.targets!r}")
        if self.partition not in dt.PARTITIONS:
            raise ValueError(f"partition must be one of {dt.PARTITIONS}, got {self.partition!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
            math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a positive finite number, got {self.alpha!r}")
        if self.delta is not None and (isinstance(self.delta, bool) or not isinstance(
                self.delta, (int, float)) or not 0 < self.delta <= 1):
            raise ValueError(f"delta must be a number in (0, 1] or None, got {self.delta!r}")
        if self.eta_rule not in ETA_RULES:
            raise ValueError(f"eta_rule must be one of {ETA_RULES}, got {self.eta_rule!r}")
        self.run_config()  # validates algorithm, rounds, tau, eta, batch_size, eval_every, metrics
        self.net_spec()  # validates arch, m, L, activation and the sizes
        if self.eta_rule == "ntk" and not self.eta < 2:
            raise ValueError(
                f"eta must be below 2 with eta_rule='ntk' (a fraction of the critical step), got {self.eta!r}"
            )

    # -- the pieces -------------------------------------------------------------------------
    def net_spec(self, d: int | None = None, d_out: int | None = None) -> model.NetSpec:
        return model.NetSpec(self.arch, d or self.d, self.m, self.L, d_out or self.d_out, self.activation)

    def run_config(self, eta: float | None = None) -> al.RunConfig:
        return al.RunConfig(self.algorithm, self.rounds, self.tau, float(eta or self.eta),
                            self.batch_size, self.eval_every, self.metrics)

    def replace(self, **changes) -> "Experiment":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Cache key: a hash of every field and the library version."""
        blob = json.dumps({"config": dataclasses.asdict(self), "version": __version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclasses.dataclass
class Result:
    """What a run returns. Arrays carry a leading seed axis ``S``.

    ``metrics[name]``: ``(S, E, ...)`` at the recorded rounds ``rounds: (E,)``; ``iterations``
    is ``rounds * tau`` (local steps per client); ``eta: (S,)`` the step sizes used;
    ``diverged_at: (S,)`` the round at which a seed diverged, or -1; ``test``: dict of ``(S,)``
    test metrics where the data set has a test split; ``provenance``: config, versions, platform,
    time taken.
    """

    config: Experiment
    metrics: dict
    rounds: np.ndarray
    eta: np.ndarray
    diverged_at: np.ndarray
    test: dict
    provenance: dict

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
        cfg = self.config.run_config(float(self.eta[s]))
        return al.divergence_message(cfg, int(self.diverged_at[s])) + f" (seed {self.config.seed + s})"


# -- data --------------------------------------------------------------------------------------


def load_data(exp: Experiment):
    """``(clients, test, labels)``: the training data split over clients, the test
    :class:`localsgd.data.Dataset` (or None) and the training labels."""
    test = None
    if exp.dataset == "sphere":
        train = dt.sphere(exp.n, exp.d, exp.d_out, delta=exp.delta, targets=exp.targets, seed=exp.data_seed)
    else:
        if exp.dataset == "digits":
            train, test = dt.digits(seed=exp.data_seed)
        else:
            train, test = dt.idx_dataset(exp.idx_images, exp.idx_labels, seed=exp.data_seed)
        if exp.n:
            if exp.n > train.x.shape[0]:
                raise ValueError(f"n must be at most the {train.x.shape[0]} training samples, got {exp.n}")
            train = dt.Dataset(*(a[: exp.n] for a in train))
        if exp.num_clients > train.x.shape[0]:
            raise ValueError(
                f"num_clients must be at most n={train.x.shape[0]}, got {exp.num_clients!r}")
    dt.check_unit_norm(train.x)
    parts = dt.partition(train.labels, exp.num_clients, exp.partition, alpha=exp.alpha, seed=exp.data_seed)
    return dt.to_clients(train.x, train.y, parts), test, train.labels


def init_params(exp: Experiment, spec: model.NetSpec):
    """``seeds`` initialisations stacked on a leading axis, and their PRNG keys for training."""
    keys = jnp.stack([jax.random.key_data(jax.random.key(exp.seed + s)) for s in range(exp.seeds)])
    keys = jax.vmap(jax.random.wrap_key_data)(keys)
    init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
    params0 = jax.vmap(lambda k: model.init(k, spec))(init_keys)
    return params0, train_keys


# -- running -----------------------------------------------------------------------------------


def _results_dir() -> Path:
    return Path(os.environ.get("LOCALSGD_RESULTS", "results"))


def run(exp: Experiment, cache: bool = True) -> Result:
    """Runs (or loads from the cache) every seed of ``exp`` in one compiled program."""
    path = _results_dir() / "cache" / f"{exp.key()}.npz"
    if cache:
        hit = _load(path, exp)
        if hit is not None:
            return hit
    t0 = time.perf_counter()
    clients, test, _ = load_data(exp)
    d, d_out = clients.x.shape[-1], clients.y.shape[-1]
    spec = exp.net_spec(d, d_out)
    params0, keys = init_params(exp, spec)
    x_all = jnp.asarray(clients.x[clients.mask > 0])
    if exp.eta_rule == "ntk":
        etas = jax.vmap(lambda p: theory.ntk_step_size(spec, p, x_all, exp.eta))(params0)
    else:
        etas = jnp.full((exp.seeds,), exp.eta, jnp.float32)
    cfg = exp.run_config()
    out = al.sweep(cfg, spec, params0, clients, keys, np.asarray(etas))
    metrics = {k: np.asarray(v) for k, v in out.metrics.items()}
    test_metrics = {}
    if test is not None:
        preds = jax.vmap(lambda p: model.apply(spec, p, jnp.asarray(test.x)))(out.params)
        test_metrics["accuracy"] = np.asarray(jnp.mean(jnp.argmax(preds, -1) == test.labels, axis=-1))
        test_metrics["loss"] = np.asarray(jnp.mean(0.5 * jnp.sum((preds - test.y) ** 2, -1), axis=-1))
    res = Result(
        config=exp, metrics=metrics, rounds=np.asarray(out.rounds[0]), eta=np.asarray(etas),
        diverged_at=np.asarray(out.diverged_at), test=test_metrics,
        provenance=_provenance(exp, time.perf_counter() - t0),
    )
    if cache:
        _store(path, res)
    return res


def run_grid(exps, desc: str = "runs", cache: bool = True) -> list[Result]:
    """Runs several experiments with a progress bar; all configs are validated first."""
    from tqdm.auto import tqdm

    exps = list(exps)
    for e in exps:
        if not isinstance(e, Experiment):
            raise ValueError(f"exps must hold Experiment objects, got {type(e).__name__}")
    return [run(e, cache=cache) for e in tqdm(exps, desc=desc, leave=False)]


def _provenance(exp, seconds):
    import flax
    import optax  # noqa: F401  (version recorded for the environment)

    return {
        "config": dataclasses.asdict(exp),
        "key": exp.key(),
        "localsgd": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "machine": platform.machine(),
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- the cache ---------------------------------------------------------------------------------


def _store(path: Path, res: Result) -> None:
    """Writes the result atomically (temporary file, then rename) with a checksum of its arrays."""
    arrays = {f"metrics/{k}": v for k, v in res.metrics.items()}
    arrays.update({f"test/{k}": v for k, v in res.test.items()})
    arrays.update(rounds=res.rounds, eta=res.eta, diverged_at=res.diverged_at)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    meta = json.dumps({"sha256": hashlib.sha256(payload).hexdigest(), "provenance": res.provenance}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, len(meta).to_bytes(8, "little") + meta + payload)


def _atomic_write(path: Path, blob: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, exp: Experiment) -> Result | None:
    if not path.exists():
        return None
    try:
        blob = path.read_bytes()
        size = int.from_bytes(blob[:8], "little")
        meta = json.loads(blob[8 : 8 + size])
        payload = blob[8 + size :]
        if hashlib.sha256(payload).hexdigest() != meta["sha256"]:
            raise ValueError("checksum mismatch")
        arrays = np.load(io.BytesIO(payload))
        metrics = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("metrics/")}
        test = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("test/")}
        return Result(exp, metrics, arrays["rounds"], arrays["eta"], arrays["diverged_at"], test,
                      meta["provenance"])
    except Exception as err:  # a corrupt or truncated entry is recomputed
        warnings.warn(f"cache entry {path} is unreadable ({err}); recomputing", stacklevel=3)
        return None
