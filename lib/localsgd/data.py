"""Data: synthetic points on the unit sphere with a controlled separation, scikit-learn's digits,
a reader for MNIST-style IDX files, and partitions of the samples over K clients.

Data preparation runs once, outside the compiled program, in NumPy with explicit seeds. The result
for the algorithms is a :class:`ClientData`: client ``k`` holds ``n_k`` samples, stored padded to
``n_max = max_k n_k`` with a mask. The global loss weights every *sample* equally,
``F = (1/n) sum_i F_i = sum_k (n_k/n) F_k``, and the server averages models with the same weights
``n_k / n`` (FedAvg's weighting); with equal client sizes both are plain means.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import struct
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

PARTITIONS = ("iid", "shards", "dirichlet")
TARGETS = ("labels", "gaussian", "teacher")


class Dataset(NamedTuple):
    """Samples as rows: ``x: (n, d)``, ``y: (n, d_out)``, integer ``labels: (n,)``."""

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray


class ClientData(NamedTuple):
    """Samples split over ``K`` clients, padded to ``n_max`` per client.

    ``x: (K, n_max, d)``, ``y: (K, n_max, d_out)``, ``mask: (K, n_max)`` (1.0 for real samples,
    0.0 for padding) and ``weight: (K,)`` with ``weight[k] = n_k / n``.
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    weight: np.ndarray

    @property
    def num_clients(self) -> int:
        return self.x.shape[0]

    @property
    def sizes(self) -> np.ndarray:
        """``n_k`` for every client, ``(K,)``."""
        return np.asarray(self.mask).sum(axis=1).astype(int)


# Targets larger than this are refused: the squared loss of targets near 1e19 overflows float32,
# and every step-size rule here is sized for targets of order one.
MAX_ABS_TARGET = 1e6
# Labels index one-hot targets of ``n x (largest label + 1)`` floats.
MAX_LABEL = 999


def _check_finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite entries")


def _real(name: str, a, dtype=np.float32) -> np.ndarray:
    """``a`` as a real array of ``dtype``; complex values are refused rather than losing their
    imaginary part."""
    a = np.asarray(a)
    if np.iscomplexobj(a):
        raise ValueError(
            f"{name} must be real, got complex values ({a.dtype}); pass np.real({name}), or its "
            f"real and imaginary parts as separate columns"
        )
    return a.astype(dtype, copy=False)


def check_samples(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``x: (n, d)`` and targets ``y: (n, d_out)`` as float32 arrays, or a ValueError
    naming ``x`` or ``y``: complex values, other shapes, ``d_out = 0``, NaN or infinite entries,
    targets above ``MAX_ABS_TARGET`` in magnitude, and identical inputs with different targets
    (separation ``delta = 0``, which the theory excludes and no network can fit)."""
    x, y = _real("x", x), _real("y", y)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n, d) with n >= 1, got shape {x.shape}")
    if y.ndim != 2 or y.shape[0] != x.shape[0] or y.shape[1] < 1:
        raise ValueError(
            f"y must have shape (n={x.shape[0]}, d_out) with d_out >= 1, got shape {y.shape}"
        )
    _check_finite("x", x)
    _check_finite("y", y)
    big = float(np.max(np.abs(y)))
    if big > MAX_ABS_TARGET:
        raise ValueError(
            f"y must have entries of magnitude at most {MAX_ABS_TARGET:g} (the step sizes assume "
            f"targets of order one; the squared loss overflows float32 near 1e19), got "
            f"max |y| = {big:.3g}: scale the targets, e.g. y / {big:.3g}"
        )
    _check_no_conflicts(x, y)
    return x, y


def _check_no_conflicts(x: np.ndarray, y: np.ndarray) -> None:
    """Refuses identical rows of ``x`` whose rows of ``y`` differ."""
    rows = np.ascontiguousarray(x + np.float32(0.0))  # -0.0 and 0.0 as one value
    # Rows grouped by a hash of their bytes (a sort of whole rows took 1 s for MNIST's 60000),
    # then compared exactly with the first row of their group.
    digest = np.fromiter((hash(r.tobytes()) for r in rows), np.int64, count=rows.shape[0])
    _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
    rep = first[inverse.ravel()]
    clash = [
        i
        for i in np.flatnonzero(rep != np.arange(rows.shape[0]))
        if np.array_equal(rows[i], rows[rep[i]]) and np.any(y[i] != y[rep[i]])
    ]
    if clash:
        i, j = int(clash[0]), int(rep[clash[0]])
        raise ValueError(
            f"x must not repeat an input with different targets: rows {j} and {i} are identical "
            f"but their y differ ({len(clash)} such rows; separation delta = 0, which the theory "
            f"excludes and no network can fit); remove or merge them"
        )


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(int(seed))


# ---------------------------------------------------------------------------------------------
# Geometry


def separation(x) -> float:
    """The data's separation ``delta = min_{i != j} ||x_i - x_j||`` for ``x: (n, d)``."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 samples to measure delta, got {x.shape[0]}")
    sq = np.sum(x * x, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(d2, np.inf)
    return float(np.sqrt(max(d2.min(), 0.0)))


def normalise_rows(x, last_coordinate: bool = False) -> np.ndarray:
    """Scales every row of ``x: (n, d)`` to unit norm.

    With ``last_coordinate=True`` (ALS19's convention) the rows are scaled to norm ``1/sqrt(2)``
    and a coordinate ``1/sqrt(2)`` is appended: the result is ``(n, d + 1)`` with unit rows.
    """
    x = _real("x", x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got shape {x.shape}")
    finite = np.all(np.isfinite(x), axis=1)
    if not np.all(finite):
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"x must be finite to be normalised, got NaN or infinite entries in rows "
            f"{bad[:10].tolist()}; drop or impute those rows first"
        )
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        zero = np.flatnonzero(norms[:, 0] == 0)
        raise ValueError(
            f"x must have no all-zero rows (they cannot be normalised), got zero rows "
            f"{zero[:10].tolist()}"
        )
    if not last_coordinate:
        return x / norms
    half = math.sqrt(0.5)
    return np.concatenate([half * x / norms, np.full((x.shape[0], 1), half)], axis=1)


def check_unit_norm(x, tol: float = 1e-4) -> None:
    """Refuses inputs whose rows are not unit-norm (the theory assumes ``||x_i|| = 1``)."""
    x = _real("x", x, np.float64)
    finite = np.all(np.isfinite(x), axis=-1)
    if not np.all(finite):  # normalise_rows cannot help here: say what can
        bad = np.argwhere(~finite)
        raise ValueError(
            f"x must be finite, got NaN or infinite entries in {len(bad)} rows (first: row "
            f"{tuple(int(j) for j in bad[0]) if bad.shape[1] > 1 else int(bad[0, 0])}); drop or "
            f"impute those rows, then normalise with localsgd.data.normalise_rows"
        )
    norms = np.linalg.norm(x, axis=-1)
    off = np.abs(norms - 1.0)
    worst = float(np.max(off)) if norms.size else 0.0
    if not worst <= tol:  # also refuses NaN norms
        flat = np.where(np.isnan(off), np.inf, off).ravel()
        i = np.unravel_index(int(np.argmax(flat)), off.shape)
        where = int(i[0]) if len(i) == 1 else tuple(int(j) for j in i)
        raise ValueError(
            f"x must have unit-norm rows (the theory assumes ||x_i|| = 1, to within {tol:g}); "
            f"got row {where} with norm {float(norms[i]):.6g}: normalise with "
            f"localsgd.data.normalise_rows"
        )


def sphere(
    n: int,
    d: int,
    d_out: int = 1,
    *,
    delta: float | None = None,
    targets: str = "labels",
    last_coordinate: bool = True,
    seed: int = 0,
) -> Dataset:
    """``n`` unit-norm inputs in ``R^d`` and their targets.

    Args:
      n, d, d_out: sizes; ``x: (n, d)``, ``y: (n, d_out)``.
      delta: if given, the separation is set by construction: the samples come in pairs at
        distance exactly ``delta`` (the rest of the pairs are far apart in high dimension), so the
        measured separation is ``delta`` whenever ``delta`` is below the closest distance between
        unpaired points (about 1 with ``last_coordinate``, less for many points in low ``d``);
        otherwise a ValueError names ``delta``. ``None`` draws the points independently.
      targets: ``"labels"``: one-hot rows of a uniformly random class in ``range(d_out)``
        (``d_out >= 2``) or random signs ``+-1`` (``d_out == 1``); ``"gaussian"``: i.i.d.
        ``N(0, 1/d_out)`` entries; ``"teacher"``: the output of a random two-layer ReLU network of
        width 64, scaled to unit mean norm. ``labels`` holds the class (or the sign) where defined,
        else the index of the largest target coordinate.
      last_coordinate: ALS19's convention: the last coordinate of every ``x_i`` is ``1/sqrt(2)``.
      seed: NumPy seed.
    """
    for name, value, low in (
        ("n", n, 2),
        ("d", d, 3 if last_coordinate else 2),
        ("d_out", d_out, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
    if delta is not None and (
        isinstance(delta, bool)
        or not isinstance(delta, (int, float, np.number))
        or not 0 < delta <= 1.0
    ):
        raise ValueError(f"delta must be in (0, 1] (or None), got {delta!r}")
    rng = _rng(seed)
    k = d - 1 if last_coordinate else d
    # Unit directions in R^k; the final scaling to the sphere (with the last coordinate) keeps
    # pairwise distances proportional, which the delta construction accounts for.
    scale = math.sqrt(0.5) if last_coordinate else 1.0
    u = rng.standard_normal((n, k))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    if delta is not None:
        # Pair 2j+1 with 2j at angle theta, so that the final distance is exactly delta.
        theta = 2.0 * math.asin(min(delta / (2.0 * scale), 1.0))
        for j in range(0, n - 1, 2):
            v = rng.standard_normal(k)
            v -= (v @ u[j]) * u[j]
            v /= np.linalg.norm(v)
            u[j + 1] = math.cos(theta) * u[j] + math.sin(theta) * v
    x = scale * u
    if last_coordinate:
        x = np.concatenate([x, np.full((n, 1), math.sqrt(0.5))], axis=1)
    y, labels = _targets(rng, x, d_out, targets)
    x = x.astype(np.float32)
    # Unpaired points are independent: in low d or for many points they can come closer than a
    # large delta, and the promised separation would silently not hold.
    if delta is not None and separation(x) < delta - 1e-5:
        raise ValueError(
            f"delta={delta!r} is not attainable with n={n} points in d={d}: independent points "
            f"come as close as {separation(x):.3g}; lower delta or n, or raise d"
        )
    return Dataset(x, y.astype(np.float32), labels)


def _targets(rng, x, d_out, kind):
    n = x.shape[0]
    if kind == "labels":
        if d_out == 1:
            labels = rng.integers(0, 2, n)
            return (2.0 * labels - 1.0)[:, None], labels
        labels = rng.integers(0, d_out, n)
        return np.eye(d_out)[labels], labels
    if kind == "gaussian":
        y = rng.standard_normal((n, d_out)) / math.sqrt(d_out)
    else:
        width = 64
        W = rng.standard_normal((width, x.shape[1]))
        a = rng.standard_normal((d_out, width))
        y = np.maximum(x @ W.T, 0.0) @ a.T
        y /= np.mean(np.linalg.norm(y, axis=1))
    labels = (y[:, 0] > 0).astype(int) if d_out == 1 else np.argmax(y, axis=1)
    return y, labels


# ---------------------------------------------------------------------------------------------
# Real data


def digits(*, test_fraction: float = 0.25, last_coordinate: bool = True, seed: int = 0):
    """scikit-learn's handwritten digits (1797 images of 8x8 pixels, shipped with the package).

    Rows are normalised to unit norm (with ALS19's last coordinate when ``last_coordinate``), so
    ``x: (n, 65)`` or ``(n, 64)``; targets are one-hot ``(n, 10)``. Returns ``(train, test)``
    :class:`Dataset` s from a split stratified by class.
    """
    from sklearn.datasets import load_digits

    if not (0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    raw = load_digits()
    return _split(raw.data, raw.target, test_fraction, last_coordinate, seed)


def _split(images, labels, test_fraction, last_coordinate, seed):
    rng = _rng(seed)
    x = normalise_rows(images, last_coordinate).astype(np.float32)
    labels = np.asarray(labels).astype(int)
    y = np.eye(int(labels.max()) + 1, dtype=np.float32)[labels]
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return (Dataset(x[~test], y[~test], labels[~test]), Dataset(x[test], y[test], labels[test]))


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Reads an MNIST-style IDX file (optionally gzip-compressed) into an array.

    The format: two zero bytes, a type byte, the number of dimensions, each dimension as a
    big-endian int32, then the values in C order.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"path {str(path)!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"path {str(path)!r} is truncated: the header announces {ndim} dimensions")
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    body = raw[4 + 4 * ndim :]
    if len(body) != count * dtype.itemsize:
        raise ValueError(
            f"path {str(path)!r} is truncated: header says {count} values of {dtype.itemsize} "
            f"bytes, body has {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def file_digest(path) -> str:
    """SHA-256 of the bytes of the file at ``path`` (hex). A user's data file enters a cache key by
    its contents, so that a file rewritten at the same path never serves stale results. Computed
    once per version of the file: the memo is keyed by the file's size, modification and status
    change times and inode, and a rewrite changes the status change time, which no user call can
    set back."""
    st = os.stat(path)
    return _digest(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _digest(path, size, mtime_ns, ctime_ns, ino) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_labels(labels: np.ndarray, path) -> np.ndarray:
    """IDX labels as integers ``(n,)`` in ``[0, MAX_LABEL]``, or a ValueError naming the file."""
    where = f"labels_path {str(path)!r}"
    if labels.ndim != 1:
        raise ValueError(f"{where} must hold one label per image, shape (n,), got {labels.shape}")
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if not np.all(whole):
            bad = labels[~whole]
            raise ValueError(
                f"{where} must hold integer labels, got {bad[0].item()!r} ({bad.size} such)"
            )
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(
            f"{where} must hold labels in [0, {MAX_LABEL}] (one-hot targets take n x (largest "
            f"label + 1) floats), got labels from {labels.min().item()!r} to "
            f"{labels.max().item()!r}"
        )
    return labels.astype(np.int64)


def idx_dataset(images_path, labels_path, *, test_fraction=0.25, last_coordinate=True, seed=0):
    """MNIST-style image and label IDX files a user already has, prepared like :func:`digits`."""
    images = read_idx(images_path)
    labels = _check_labels(read_idx(labels_path), labels_path)
    _check_finite(f"images_path {str(images_path)!r}", images)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"labels_path must hold one label per image ({images.shape[0]} in images_path), "
            f"got {labels.shape[0]} labels"
        )
    return _split(images.reshape(images.shape[0], -1), labels, test_fraction, last_coordinate, seed)


# ---------------------------------------------------------------------------------------------
# Clients


def partition(
    labels,
    num_clients: int,
    scheme: str = "iid",
    *,
    alpha: float = 1.0,
    shards_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Splits sample indices ``0..n-1`` over clients; every sample goes to exactly one client.

    Args:
      labels: ``(n,)`` integer classes (used by ``"shards"`` and ``"dirichlet"``).
      num_clients: ``K``, at most ``n``.
      scheme: ``"iid"``: a random split into near-equal parts; ``"shards"``: the samples sorted by
        label, cut into ``K * shards_per_client`` shards, each client taking ``shards_per_client``
        random shards (McMahan et al. 2017); ``"dirichlet"``: for every class, the fractions going
        to each client are drawn from ``Dirichlet(alpha)`` (smaller ``alpha``, more skew). Every
        client is guaranteed at least one sample.
    Returns: a list of ``K`` sorted index arrays.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ValueError(f"num_clients must be an integer in [1, n={n}], got {num_clients!r}")
    if not 1 <= num_clients <= n:
        raise ValueError(f"num_clients must be in [1, n={n}], got {num_clients!r}")
    if scheme not in PARTITIONS:
        raise ValueError(f"partition scheme must be one of {PARTITIONS}, got {scheme!r}")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float, np.number))
        or not (np.isfinite(alpha) and alpha > 0)
    ):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    rng = _rng(seed)
    K = int(num_clients)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), K)
    elif scheme == "shards":
        if (
            isinstance(shards_per_client, bool)
            or shards_per_client < 1
            or K * shards_per_client > n
        ):
            raise ValueError(
                f"shards_per_client must be an integer with 1 <= K * shards_per_client <= n={n} "
                f"(num_clients K={K}), got {shards_per_client!r}"
            )
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, K * shards_per_client)
        pick = rng.permutation(len(shards)).reshape(K, shards_per_client)
        parts = [np.concatenate([shards[s] for s in row]) for row in pick]
    else:
        owner = np.empty(n, dtype=int)
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(K, float(alpha)))) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                owner[chunk] = k
        # Move single samples from the largest clients to any empty one.
        counts = np.bincount(owner, minlength=K)
        for k in np.flatnonzero(counts == 0):
            donor = int(np.argmax(counts))
            i = rng.choice(np.flatnonzero(owner == donor))
            owner[i] = k
            counts[donor] -= 1
            counts[k] += 1
        parts = [np.flatnonzero(owner == k) for k in range(K)]
    return [np.sort(p) for p in parts]


def to_clients(x, y, parts: list[np.ndarray], rows: int = 0) -> ClientData:
    """Gathers a :class:`ClientData` from samples ``x: (n, d)``, ``y: (n, d_out)`` and a partition,
    each client padded to ``rows`` (0: the largest client's size).

    Raises ValueError where the partition does not cover every sample exactly once, where
    ``rows`` is below the largest client's size, or where the data is refused by
    :func:`check_samples`.
    """
    x, y = check_samples(x, y)
    flat = np.concatenate(parts) if parts else np.array([], int)
    if len(flat) != x.shape[0] or not np.array_equal(np.sort(flat), np.arange(x.shape[0])):
        n = x.shape[0]
        inside = (flat >= 0) & (flat < n)
        counts = np.bincount(flat[inside].astype(int), minlength=n)
        raise ValueError(
            f"parts must cover every sample index 0..{n - 1} exactly once, got {len(flat)} "
            f"indices ({int(np.sum(counts == 0))} samples missing, {int(np.sum(counts > 1))} "
            f"repeated, {int(np.sum(~inside))} out of range)"
        )
    if any(len(p) == 0 for p in parts):
        empty = [k for k, p in enumerate(parts) if len(p) == 0]
        raise ValueError(
            f"parts must give every client at least one sample, got empty clients {empty}"
        )
    K, n_max = len(parts), max(len(p) for p in parts)
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or 0 < rows < n_max \
            or rows < 0:
        raise ValueError(f"rows must be 0 or at least the largest client's {n_max} samples, "
                         f"got {rows!r}")
    n_max = max(n_max, int(rows))
    cx = np.zeros((K, n_max, x.shape[1]), np.float32)
    cy = np.zeros((K, n_max, y.shape[1]), np.float32)
    mask = np.zeros((K, n_max), np.float32)
    for k, p in enumerate(parts):
        cx[k, : len(p)] = x[p]
        cy[k, : len(p)] = y[p]
        mask[k, : len(p)] = 1.0
    weight = (mask.sum(axis=1) / x.shape[0]).astype(np.float32)
    return ClientData(cx, cy, mask, weight)


def pooled(data: ClientData) -> ClientData:
    """All clients' samples as one client (``K = 1``), for centralised baselines."""
    K, n_max = data.mask.shape
    return ClientData(
        np.asarray(data.x).reshape(1, K * n_max, -1),
        np.asarray(data.y).reshape(1, K * n_max, -1),
        np.asarray(data.mask).reshape(1, K * n_max),
        np.ones((1,), np.float32),
    )


def replicate(x, y, num_clients: int) -> ClientData:
    """``K`` clients that each hold every sample (for the identity Local GD == GD)."""
    n = np.asarray(x).shape[0]
    x = np.broadcast_to(np.asarray(x, np.float32), (num_clients,) + np.shape(x)).copy()
    y = np.broadcast_to(np.asarray(y, np.float32), (num_clients,) + np.shape(y)).copy()
    mask = np.ones((num_clients, n), np.float32)
    return ClientData(x, y, mask, np.full((num_clients,), 1.0 / num_clients, np.float32))


def label_skew(labels, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    0 for perfectly balanced clients, close to 1 when every client holds a single class.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    glob = np.array([np.mean(labels == c) for c in classes])
    tv = [
        0.5 * np.abs(np.array([np.mean(labels[p] == c) for c in classes]) - glob).sum()
        for p in parts
    ]
    return float(np.mean(tv))


_partition = partition  # client_data's argument ``partition`` (a name) shadows the function


def client_data(
    x: ArrayLike,
    y: ArrayLike,
    num_clients: int = 1,
    partition: str = "iid",
    *,
    labels: ArrayLike | None = None,
    alpha: float = 1.0,
    seed: int = 0,
) -> ClientData:
    """Your own samples ``x: (n, d)``, ``y: (n, d_out)`` split over ``num_clients`` clients, for
    :func:`localsgd.engine.run` and :func:`localsgd.engine.sweep`.

    The theory assumes unit-norm inputs, so rows that are not unit-norm are refused (ValueError,
    pointing to :func:`normalise_rows`), as is what
    :func:`check_samples` refuses (complex, NaN or infinite entries, shapes that do
    not match, huge targets, repeated inputs with different targets) and ``num_clients`` outside
    ``[1, n]``. ``labels: (n,)`` drive the ``shards`` and
    ``dirichlet`` partitions (default: the argmax of ``y``, or its sign when ``d_out == 1``).
    """
    x, y = check_samples(x, y)
    check_unit_norm(x)
    if labels is None:
        labels = np.argmax(y, axis=1) if y.shape[1] > 1 else (y[:, 0] > 0).astype(int)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape (n={x.shape[0]},), got shape {labels.shape}")
    parts = _partition(labels, num_clients, partition, alpha=alpha, seed=seed)
    return to_clients(x, y, parts)
