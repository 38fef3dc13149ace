"""localsgd.data: synthetic sphere data, digits, IDX files, partitions and client layouts."""

from __future__ import annotations

import gzip
import math
import re
import struct

import numpy as np
import pytest

from localsgd import data as dt

# ---------------------------------------------------------------------------------------------
# Partitions


@pytest.mark.parametrize("scheme", dt.PARTITIONS)
@pytest.mark.parametrize("n, K", [(10, 3), (50, 7), (97, 10), (12, 12), (5, 1)])
def test_partition_covers_every_sample_once(scheme, n, K):
    labels = np.random.default_rng(n).integers(0, 4, n)
    kw = {"alpha": 0.3} if scheme == "dirichlet" else {}
    if scheme == "shards":
        kw["shards_per_client"] = 1 if 2 * K > n else 2
    parts = dt.partition(labels, K, scheme, seed=1, **kw)
    assert len(parts) == K
    assert all(len(p) >= 1 for p in parts)
    flat = np.concatenate(parts)
    assert flat.size == n
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats


def test_iid_partition_sizes_are_near_equal():
    parts = dt.partition(np.zeros(10, int), 3, "iid", seed=0)
    assert sorted(len(p) for p in parts) == [3, 3, 4]


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 60)  # 600 samples, 10 balanced classes
    alphas = [100.0, 3.0, 0.3, 0.03]
    skews = [
        np.mean([dt.label_skew(labels, dt.partition(labels, 8, "dirichlet", alpha=a, seed=s))
                 for s in range(5)])
        for a in alphas
    ]
    assert all(a < b for a, b in zip(skews, skews[1:])), skews
    assert skews[0] < 0.15 and skews[-1] > 0.6, skews


def test_shards_are_label_sorted_and_iid_is_balanced():
    labels = np.repeat(np.arange(10), 40)
    shards = dt.partition(labels, 10, "shards", shards_per_client=1, seed=0)
    # One shard per client of a label-sorted list: every client holds a single class.
    assert all(len(np.unique(labels[p])) == 1 for p in shards)
    assert dt.label_skew(labels, shards) == pytest.approx(0.9)
    iid = dt.partition(labels, 4, "iid", seed=0)
    assert dt.label_skew(labels, iid) < 0.15


def test_label_skew_extremes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert dt.label_skew(labels, [np.array([0, 2, 4]), np.array([1, 3, 5])]) == pytest.approx(0.0)
    # Single-class clients with 3 equally frequent classes: TV = 1 - 1/3.
    assert dt.label_skew(labels, [np.array([0, 1]), np.array([2, 3]), np.array([4, 5])]) == \
        pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 11}, "num_clients"),
        ({"num_clients": 2.0}, "num_clients"),
        ({"num_clients": 2, "scheme": "random"}, "scheme"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": float("nan")}, "alpha"),
        ({"num_clients": 3, "scheme": "shards", "shards_per_client": 4}, "shards_per_client"),
        ({"num_clients": 2, "seed": -1}, "seed"),
    ],
)
def test_partition_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dt.partition(np.arange(10) % 2, **kwargs)


# ---------------------------------------------------------------------------------------------
# Client layout


def test_to_clients_unequal_parts():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    y = rng.standard_normal((10, 2)).astype(np.float32)
    parts = [np.array([7]), np.array([0, 2, 4, 9]), np.array([1, 3, 5, 6, 8])]
    cd = dt.to_clients(x, y, parts)
    assert cd.x.shape == (3, 5, 3) and cd.y.shape == (3, 5, 2) and cd.mask.shape == (3, 5)
    assert cd.num_clients == 3
    np.testing.assert_array_equal(cd.sizes, [1, 4, 5])
    np.testing.assert_allclose(cd.weight, [0.1, 0.4, 0.5], rtol=1e-6)
    assert cd.weight.sum() == pytest.approx(1.0, abs=1e-6)
    for k, p in enumerate(parts):
        np.testing.assert_array_equal(cd.x[k, : len(p)], x[p])
        np.testing.assert_array_equal(cd.y[k, : len(p)], y[p])
        np.testing.assert_array_equal(cd.mask[k], np.arange(5) < len(p))
        # Padding: zero rows, masked out.
        assert np.all(cd.x[k, len(p):] == 0) and np.all(cd.y[k, len(p):] == 0)


def test_to_clients_pads_to_the_rows_asked_for_and_refuses_fewer_than_the_largest_client():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    y = rng.standard_normal((10, 2)).astype(np.float32)
    parts = [np.array([7]), np.array([0, 2, 4, 9]), np.array([1, 3, 5, 6, 8])]
    bare, padded = dt.to_clients(x, y, parts), dt.to_clients(x, y, parts, rows=8)
    assert padded.x.shape == (3, 8, 3) and padded.mask.shape == (3, 8)
    np.testing.assert_array_equal(padded.sizes, bare.sizes)
    np.testing.assert_array_equal(padded.weight, bare.weight)
    np.testing.assert_array_equal(padded.x[:, :5], bare.x)
    assert np.all(padded.x[:, 5:] == 0) and np.all(padded.mask[:, 5:] == 0)
    for bad in (4, -1, 2.5, True):
        with pytest.raises(ValueError, match="rows"):
            dt.to_clients(x, y, parts, rows=bad)


@pytest.mark.parametrize(
    "parts, match",
    [
        ([np.array([0, 1]), np.array([1, 2, 3])], "parts"),  # index 1 twice
        ([np.array([0, 1]), np.array([2])], "parts"),  # index 3 missing
        ([np.array([0, 1, 2, 3]), np.array([], int)], "parts"),  # empty client
    ],
)
def test_to_clients_rejects_bad_partitions(parts, match):
    x, y = np.ones((4, 2)), np.ones((4, 1))
    with pytest.raises(ValueError, match=match):
        dt.to_clients(x, y, parts)


def test_to_clients_rejects_bad_arrays():
    x, y = np.ones((4, 2)), np.ones((4, 1))
    parts = [np.arange(4)]
    with pytest.raises(ValueError, match="y"):
        dt.to_clients(x, np.ones((3, 1)), parts)
    with pytest.raises(ValueError, match="y"):
        dt.to_clients(x, np.ones(4), parts)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="x"):
        dt.to_clients(bad, y, parts)
    bad_y = y.copy()
    bad_y[0] = np.inf
    with pytest.raises(ValueError, match="y"):
        dt.to_clients(x, bad_y, parts)


def test_pooled_and_replicate():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.standard_normal((5, 1)).astype(np.float32)
    cd = dt.to_clients(x, y, [np.array([0, 1, 2]), np.array([3, 4])])
    pool = dt.pooled(cd)
    assert pool.x.shape == (1, 6, 3) and pool.weight.tolist() == [1.0]
    assert pool.mask.sum() == 5
    # The real rows of the pooled client are exactly the samples.
    real = pool.x[0][pool.mask[0] > 0]
    np.testing.assert_array_equal(np.sort(real, axis=0), np.sort(x, axis=0))
    rep = dt.replicate(x, y, 3)
    assert rep.x.shape == (3, 5, 3)
    for k in range(3):
        np.testing.assert_array_equal(rep.x[k], x)
        np.testing.assert_array_equal(rep.y[k], y)
    np.testing.assert_allclose(rep.weight, 1 / 3)
    assert rep.mask.all()


# ---------------------------------------------------------------------------------------------
# Sphere data


@pytest.mark.parametrize("delta", [0.01, 0.1, 0.3])
@pytest.mark.parametrize("n, d", [(64, 32), (21, 8)])
def test_sphere_separation_is_delta(delta, n, d):
    ds = dt.sphere(n, d, delta=delta, seed=3)
    assert ds.x.shape == (n, d) and ds.x.dtype == np.float32
    assert abs(dt.separation(ds.x) - delta) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(ds.x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ds.x[:, -1], 1 / math.sqrt(2), atol=1e-7)


def test_sphere_unattainable_delta_is_refused():
    # Independent points in R^7 come much closer than 0.9: the promise cannot be kept.
    with pytest.raises(ValueError, match="delta"):
        dt.sphere(200, 8, delta=0.9, seed=0)


def test_sphere_without_last_coordinate_and_seed():
    a = dt.sphere(30, 5, last_coordinate=False, seed=1)
    np.testing.assert_allclose(np.linalg.norm(a.x, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(a.x[:, -1], 1 / math.sqrt(2))
    b = dt.sphere(30, 5, last_coordinate=False, seed=1)
    c = dt.sphere(30, 5, last_coordinate=False, seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.allclose(a.x, c.x)


def test_sphere_targets():
    signs = dt.sphere(200, 6, 1, targets="labels", seed=0)
    assert set(np.unique(signs.y)) == {-1.0, 1.0}
    np.testing.assert_array_equal(signs.y[:, 0], 2 * signs.labels - 1)
    onehot = dt.sphere(200, 6, 4, targets="labels", seed=0)
    np.testing.assert_array_equal(onehot.y.sum(1), 1.0)
    np.testing.assert_array_equal(onehot.y.argmax(1), onehot.labels)
    assert set(np.unique(onehot.labels)) == {0, 1, 2, 3}
    gauss = dt.sphere(400, 6, 4, targets="gaussian", seed=0)
    assert abs(gauss.y.var() - 0.25) < 0.05
    np.testing.assert_array_equal(gauss.y.argmax(1), gauss.labels)
    teacher = dt.sphere(100, 6, 2, targets="teacher", seed=0)
    assert np.mean(np.linalg.norm(teacher.y, axis=1)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": 1, "d": 5}, "n"),
        ({"n": 10, "d": 2}, "d"),
        ({"n": 10, "d": 5, "d_out": 0}, "d_out"),
        ({"n": 10, "d": 5, "targets": "noise"}, "targets"),
        ({"n": 10, "d": 5, "delta": 0.0}, "delta"),
        ({"n": 10, "d": 5, "delta": 1.5}, "delta"),
        ({"n": 10, "d": 5, "seed": -3}, "seed"),
    ],
)
def test_sphere_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dt.sphere(**kwargs)


def test_separation_and_normalise():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    assert dt.separation(x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="x"):
        dt.separation(x[:1])
    u = dt.normalise_rows(np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(u, [[0.6, 0.8], [0.0, 1.0]])
    v = dt.normalise_rows(np.array([[3.0, 4.0]]), last_coordinate=True)
    np.testing.assert_allclose(v, [[0.6 / math.sqrt(2), 0.8 / math.sqrt(2), 1 / math.sqrt(2)]])
    with pytest.raises(ValueError, match="x"):
        dt.normalise_rows(np.array([[0.0, 0.0]]))
    dt.check_unit_norm(u)
    with pytest.raises(ValueError, match="unit-norm"):
        dt.check_unit_norm(2 * u)


# ---------------------------------------------------------------------------------------------
# Real data


def test_digits():
    from sklearn.datasets import load_digits

    train, test = dt.digits(seed=0)
    raw = load_digits()
    assert train.x.shape[0] + test.x.shape[0] == 1797
    assert train.x.shape[1] == 65 and train.y.shape[1] == 10
    for ds in (train, test):
        np.testing.assert_allclose(np.linalg.norm(ds.x, axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(ds.y.sum(1), 1.0)
        np.testing.assert_array_equal(ds.y.argmax(1), ds.labels)
    for c in range(10):  # stratified: a quarter of every class, rounded
        n_c = int(np.sum(raw.target == c))
        assert int(np.sum(test.labels == c)) == round(0.25 * n_c)
        assert int(np.sum(train.labels == c)) == n_c - round(0.25 * n_c)
    # The split is disjoint: no image appears on both sides.
    both = np.concatenate([train.x, test.x])
    assert len(np.unique(both.round(6), axis=0)) == len(np.unique(raw.data, axis=0))
    train2, _ = dt.digits(seed=0, last_coordinate=False, test_fraction=0.5)
    assert train2.x.shape[1] == 64
    with pytest.raises(ValueError, match="test_fraction"):
        dt.digits(test_fraction=1.0)


def _write_idx(path, arr, type_byte, opener=open):
    arr = np.asarray(arr)
    header = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_read_idx(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    _write_idx(tmp_path / "img.idx", images, 0x08)
    _write_idx(tmp_path / "lab.idx", labels, 0x08)
    _write_idx(tmp_path / "img.idx.gz", images, 0x08, opener=gzip.open)
    ints = rng.integers(-1000, 1000, (3, 2)).astype(">i4")
    _write_idx(tmp_path / "int.idx", ints, 0x0C)
    floats = rng.standard_normal(4).astype(">f8")
    _write_idx(tmp_path / "f8.idx", floats, 0x0E)
    got = dt.read_idx(tmp_path / "img.idx")
    assert got.shape == (5, 4, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(dt.read_idx(tmp_path / "lab.idx"), labels)
    np.testing.assert_array_equal(dt.read_idx(tmp_path / "img.idx.gz"), images)
    np.testing.assert_array_equal(dt.read_idx(tmp_path / "int.idx"), ints.astype(np.int32))
    np.testing.assert_array_equal(dt.read_idx(tmp_path / "f8.idx"), floats.astype(np.float64))


def test_read_idx_rejects_bad_files(tmp_path):
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "good.idx", images, 0x08)
    blob = (tmp_path / "good.idx").read_bytes()
    cases = {
        "truncated_body": blob[:-1],
        "long_body": blob + b"\0",
        "truncated_header": blob[:9],
        "bad_magic": b"\x01" + blob[1:],
        "bad_type": blob[:2] + b"\x07" + blob[3:],
        "empty": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="path"):
            dt.read_idx(tmp_path / name)


def test_idx_dataset_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 8).astype(np.uint8)  # 24 images, 3 classes
    images = rng.integers(1, 256, (24, 4, 4), dtype=np.uint8)
    _write_idx(tmp_path / "img.gz", images, 0x08, opener=gzip.open)
    _write_idx(tmp_path / "lab", labels, 0x08)
    train, test = dt.idx_dataset(tmp_path / "img.gz", tmp_path / "lab", seed=0)
    assert train.x.shape == (18, 17) and test.x.shape == (6, 17)
    assert train.y.shape == (18, 3)
    np.testing.assert_allclose(np.linalg.norm(train.x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.bincount(test.labels), [2, 2, 2])
    np.testing.assert_array_equal(train.y.argmax(1), train.labels)
    # Every training row is a normalised image of its own label.
    flat = images.reshape(24, -1).astype(np.float64)
    want = dt.normalise_rows(flat, last_coordinate=True)
    for row, lab in zip(train.x, train.labels):
        i = int(np.argmin(np.linalg.norm(want - row, axis=1)))
        assert np.allclose(want[i], row, atol=1e-6) and labels[i] == lab
    _write_idx(tmp_path / "lab_short", labels[:-1], 0x08)
    with pytest.raises(ValueError, match="labels_path"):
        dt.idx_dataset(tmp_path / "img.gz", tmp_path / "lab_short")


# ---------------------------------------------------------------------------------------------
# Edge cases of the data: refused by name, never silently changed


def _unit(n=6, d=4, seed=0):
    return dt.normalise_rows(np.random.default_rng(seed).standard_normal((n, d)))


def test_complex_x_is_refused_not_truncated():
    x, y = _unit(), np.ones((6, 1))
    for call in (lambda a: dt.check_samples(a, y), dt.check_unit_norm, dt.normalise_rows,
                 lambda a: dt.to_clients(a, y, [np.arange(6)])):
        with pytest.raises(ValueError, match=r"x must be real, got complex values"):
            call(x + 1e-3j)
    with pytest.raises(ValueError, match=r"y must be real"):
        dt.check_samples(x, y + 0j)


def test_targets_without_columns_are_refused():
    with pytest.raises(ValueError, match=r"y must have shape \(n=6, d_out\) with d_out >= 1, "
                                         r"got shape \(6, 0\)"):
        dt.check_samples(_unit(), np.ones((6, 0)))


def test_duplicate_inputs_with_conflicting_targets_are_refused():
    x, y = _unit(), np.arange(6.0)[:, None]
    x[4] = x[1]
    with pytest.raises(ValueError, match=r"rows 1 and 4 are identical but their y differ "
                                         r"\(1 such rows; separation delta = 0"):
        dt.check_samples(x, y)
    zero = np.zeros((2, 3), np.float32)
    zero[1] = -0.0  # the same input, whatever the sign of its zeros
    with pytest.raises(ValueError, match="identical"):
        dt.check_samples(zero, np.array([[0.0], [1.0]]))
    y[4] = y[1]  # repeated with the same target: harmless, accepted
    got_x, got_y = dt.check_samples(x, y)
    assert got_x.dtype == got_y.dtype == np.float32 and got_x.shape == (6, 4)
    x[4, 0] += 1e-6  # near but not identical: accepted (delta > 0)
    dt.check_samples(x, np.arange(6.0)[:, None])


def test_huge_targets_are_refused_with_the_scale():
    x = _unit()
    dt.check_samples(x, np.full((6, 1), dt.MAX_ABS_TARGET))  # the bound itself is accepted
    with pytest.raises(ValueError, match=r"y must have entries of magnitude at most 1e\+06.*"
                                         r"max \|y\| = 1e\+20: scale the targets"):
        dt.check_samples(x, np.full((6, 1), -1e20))


def test_normalise_rows_refuses_nan_rows_and_the_advice_is_right():
    x = np.random.default_rng(0).standard_normal((5, 3))
    x[3, 1] = np.nan
    x[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"x must be finite to be normalised, got NaN or infinite "
                                         r"entries in rows \[3, 4\]; drop or impute"):
        dt.normalise_rows(x)
    # A NaN row is not told to normalise (which cannot help) but to drop or impute first.
    u = dt.normalise_rows(np.nan_to_num(x, posinf=1.0))
    u[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 rows \(first: row 3\); drop or impute") as err:
        dt.check_unit_norm(u)
    assert "norm nan" not in str(err.value)


@pytest.mark.parametrize(
    "labels, type_byte, match",
    [
        (np.array([0, 1, -1, 2], ">i1"), 0x09, r"labels in \[0, 999\].*from -1 to 2"),
        (np.array([0, 1, 2, 1e9], ">i4"), 0x0C, r"labels in \[0, 999\].*to 1000000000"),
        (np.array([0.0, 1.5, 2.0, 1.0], ">f4"), 0x0D, r"integer labels, got 1\.5"),
        (np.array([0.0, 1.0, np.nan, 1.0], ">f8"), 0x0E, r"integer labels, got nan"),
        (np.array([[0], [1], [2], [1]], ">u1"), 0x08, r"one label per image.*got \(4, 1\)"),
    ],
    ids=["negative", "huge", "fractional", "nan", "two-dimensional"],
)
def test_idx_labels_are_refused_naming_the_labels_file(tmp_path, labels, type_byte, match):
    _write_idx(tmp_path / "img", np.arange(1, 65, dtype=np.uint8).reshape(4, 4, 4), 0x08)
    _write_idx(tmp_path / "lab", labels, type_byte)
    named = re.escape(f"labels_path '{tmp_path / 'lab'}' must hold ")
    with pytest.raises(ValueError, match=named + match):
        dt.idx_dataset(tmp_path / "img", tmp_path / "lab")


def test_integer_valued_float_idx_labels_are_accepted(tmp_path):
    _write_idx(tmp_path / "img", np.arange(1, 97, dtype=np.uint8).reshape(6, 4, 4), 0x08)
    _write_idx(tmp_path / "lab", np.array([0, 1, 2, 0, 1, 2], ">f4"), 0x0D)
    train, test = dt.idx_dataset(tmp_path / "img", tmp_path / "lab", test_fraction=0.5)
    assert train.labels.dtype.kind == "i" and sorted(train.labels) == [0, 1, 2]
