"""Reliability of experiments.run: divergence is reported by name, reruns are bitwise equal, the
results cache refuses damaged entries and entries whose arrays do not fit their config (warning,
then recomputing) and records provenance, its key follows a user's data files by content and
holds the platform and the sharded path, a results folder that cannot be written is refused
before the work (and a write that fails later costs only the cache entry), temporary files of
dead writers are swept, and a run killed with SIGKILL resumes from its last checkpoint to exactly
the numbers of an uninterrupted run.

Every run is tiny and most share one compiled program; the kill test starts two interpreters.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from localsgd import budget, store
from localsgd import experiments as ex

TINY = dict(n=12, d=5, m=16, L=1, num_clients=3, rounds=6, eval_every=2, metrics=("loss", "dist"))
CPU = pytest.mark.skipif(jax.default_backend() != "cpu", reason="bitwise claims are made on CPU")


@pytest.fixture
def results(tmp_path, monkeypatch):
    path = tmp_path / "results"
    monkeypatch.setenv("LOCALSGD_RESULTS", str(path))
    return path


def same(a: ex.Result, b: ex.Result) -> bool:
    """Bitwise equality of everything a result holds but its provenance."""
    arrays = lambda r: {"rounds": r.rounds, "eta": r.eta, "diverged_at": r.diverged_at,  # noqa: E731
                        **{f"m/{k}": v for k, v in r.metrics.items()},
                        **{f"t/{k}": v for k, v in r.test.items()}}
    x, y = arrays(a), arrays(b)
    return x.keys() == y.keys() and all(
        np.asarray(x[k]).dtype == np.asarray(y[k]).dtype
        and np.asarray(x[k]).tobytes() == np.asarray(y[k]).tobytes() for k in x)


# -- divergence --------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1, 2])
def test_a_huge_step_is_reported_as_divergence_naming_eta(tau, results):
    exp = ex.Experiment(**TINY, tau=tau, eta=1e12, eta_rule="fixed")
    res = ex.run(exp, cache=False)
    assert res.diverged
    r = int(res.diverged_at[0])
    assert 1 <= r <= exp.rounds
    msg = res.divergence_message()
    assert f"round {r}" in msg and "eta=" in msg and "Lower eta" in msg
    assert ("Lower eta or tau" in msg) == (tau > 1), msg
    for name, v in res.metrics.items():
        assert np.all(np.isfinite(v)), f"metric {name} is not finite after divergence: {v}"
    # Training stopped at the last finite weights: from the divergence on, nothing moves.
    after = res.rounds >= r
    loss = res.metrics["loss"][0]
    assert np.all(loss[after] == loss[np.flatnonzero(after)[0] - 1])


def test_a_small_step_does_not_diverge(results):
    res = ex.run(ex.Experiment(**TINY, eta=0.1, eta_rule="fixed"), cache=False)
    assert not res.diverged and res.divergence_message() is None
    assert np.all(res.diverged_at == -1)


# -- determinism -------------------------------------------------------------------------------


@CPU
def test_same_config_and_seed_are_bitwise_equal_fresh_and_from_the_cache(results):
    exp = ex.Experiment(**TINY)
    first = ex.run(exp)  # computed and cached
    again = ex.run(exp, cache=False)  # computed again
    hit = ex.run(exp)  # read back
    assert hit.provenance["created"] == first.provenance["created"]  # read, not recomputed
    assert same(first, again) and same(first, hit)


@CPU
def test_different_seeds_differ(results):
    a = ex.run(ex.Experiment(**TINY, seed=0), cache=False)
    b = ex.run(ex.Experiment(**TINY, seed=1), cache=False)
    assert not np.array_equal(a.metrics["loss"], b.metrics["loss"])
    assert a.config.key() != b.config.key()


# -- the results cache -------------------------------------------------------------------------


def _damage_payload(blob: bytes) -> bytes:
    b = bytearray(blob)
    b[-200] ^= 0xFF  # a byte inside the arrays
    return bytes(b)


def _damage_checksum(blob: bytes) -> bytes:
    magic = len(store._MAGIC)
    i = magic + 8 + int.from_bytes(blob[magic:magic + 8], "little")
    digit = b"0" if blob[i:i + 1] != b"0" else b"1"
    return blob[:i] + digit + blob[i + 1:]


def _damage_header(blob: bytes) -> bytes:
    return blob.replace(b'"seconds": ', b'"seconds": 1', 1)  # still valid JSON, wrong checksum


DAMAGE = {
    "corrupt-bytes": _damage_payload,
    "truncated": lambda blob: blob[: len(blob) // 2],
    "truncated-to-nothing": lambda blob: b"",
    "wrong-checksum": _damage_checksum,
    "edited-provenance": _damage_header,
    "not-our-format": lambda blob: b"PK\x03\x04" + blob[4:],
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_cache_entry_is_recomputed_with_a_warning(damage, results):
    exp = ex.Experiment(**TINY)
    good = ex.run(exp)
    path = results / "cache" / f"{exp.key()}.npz"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        again = ex.run(exp)
    assert same(good, again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the entry was rewritten whole: no warning now
        assert same(good, ex.run(exp))


def test_an_entry_under_another_key_is_not_trusted(results):
    a, b = ex.Experiment(**TINY, seed=0), ex.Experiment(**TINY, seed=1)
    ex.run(a)
    cache = results / "cache"
    (cache / f"{b.key()}.npz").write_bytes((cache / f"{a.key()}.npz").read_bytes())
    with pytest.warns(UserWarning, match="unreadable"):
        res = ex.run(b)
    assert same(res, ex.run(b, cache=False))


def test_writes_are_atomic_and_leave_no_temporary_files(results):
    exp = ex.Experiment(**TINY)
    ex.run(exp)
    assert sorted(p.name for p in (results / "cache").iterdir()) == [f"{exp.key()}.npz"]


def test_provenance_records_config_versions_platform_and_time(results):
    exp = ex.Experiment(**TINY)
    prov = ex.run(exp).provenance
    for field in ("config", "key", "localsgd", "jax", "jaxlib", "flax", "optax", "numpy", "python",
                  "platform", "device", "machine", "os", "seconds", "created"):
        assert field in prov, field
    assert prov["config"]["m"] == exp.m and prov["key"] == exp.key()
    assert prov["jax"] == jax.__version__ and prov["platform"] == jax.default_backend()
    assert prov["seconds"] >= 0
    json.dumps(prov)  # plain JSON


def test_the_cache_key_covers_the_results_but_not_checkpointing():
    base = ex.Experiment(**TINY)
    assert base.key() == ex.Experiment(**TINY, checkpoint_every=2).key()
    assert base.key() == ex.Experiment(**{**TINY, "m": 16}, eta=0.5).key()
    assert base.key() == ex.Experiment(**{**TINY, "m": np.int64(16)}, eta=1 / 2).key()
    for change in (dict(m=32), dict(seed=1), dict(eta=0.25), dict(tau=2), dict(partition="shards")):
        assert base.key() != base.replace(**change).key(), change


# -- checkpoints -------------------------------------------------------------------------------


@CPU
def test_a_checkpointed_run_equals_an_uninterrupted_one_and_cleans_up(results):
    plain = ex.run(ex.Experiment(**TINY), cache=False)
    exp = ex.Experiment(**TINY, checkpoint_every=2)
    chunked = ex.run(exp)
    assert same(plain, chunked)
    assert not store.checkpoint_path(exp).exists()
    assert (results / "cache" / f"{exp.key()}.npz").exists()


@CPU
def test_an_unusable_checkpoint_means_a_fresh_start_with_a_warning(results, capsys):
    exp = ex.Experiment(**TINY, checkpoint_every=2)
    path = store.checkpoint_path(exp)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="checkpoint .* is unusable"):
        res = ex.run(exp, cache=False)
    assert "resuming" not in capsys.readouterr().out
    assert same(res, ex.run(ex.Experiment(**TINY), cache=False))
    assert not path.exists()


CHILD = """
import json, sys
import numpy as np
from localsgd import budget
from localsgd import experiments as ex
from localsgd import store
res = ex.run(ex.Experiment(**json.loads(sys.argv[1])))
np.savez(sys.argv[2], rounds=res.rounds, eta=res.eta, diverged_at=res.diverged_at,
         **{"metric_" + k: v for k, v in res.metrics.items()})
print("finished", flush=True)
"""
# 20 chunks of 10 rounds, two seeds of Local SGD with ever-flipped masks in the state.
LONG = dict(n=24, d=6, m=32, L=1, num_clients=3, algorithm="local_sgd", batch_size=4, tau=2,
            rounds=200, eval_every=5, metrics=("loss", "ever_flipped"), seeds=2, eta=0.2,
            eta_rule="fixed")


@CPU
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_numbers(tmp_path, monkeypatch):
    killed = tmp_path / "killed"
    exp = ex.Experiment(**LONG, checkpoint_every=10)
    env = {**os.environ, "LOCALSGD_RESULTS": str(killed), "JAX_PLATFORMS": "cpu"}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = [sys.executable, str(script), json.dumps({**LONG, "checkpoint_every": 10})]
    ckpt = killed / "checkpoints" / f"{exp.key()}.npz"

    proc = subprocess.Popen(args + [str(tmp_path / "a.npz")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared within 240 s")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    monkeypatch.setenv("LOCALSGD_RESULTS", str(killed))
    info = store.checkpoint_info(exp)
    assert info is not None, "the checkpoint is unreadable after the kill"
    at = info["round"]
    assert 0 < at < exp.rounds and at % 10 == 0
    assert not list(killed.glob("cache/*.npz")), "the killed run got as far as caching"

    done = subprocess.run(args + [str(tmp_path / "b.npz")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming from round {at} of {exp.rounds}" in done.stdout, done.stdout
    assert "finished" in done.stdout
    assert not ckpt.exists(), "the checkpoint outlived the completed run"
    assert not list(killed.rglob(".*.tmp")), "a temporary file of the killed writer is left"

    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path / "reference"))
    ref = ex.run(ex.Experiment(**LONG), cache=False)  # uninterrupted, no checkpoints, no cache
    got = np.load(tmp_path / "b.npz")
    want = {"rounds": ref.rounds, "eta": ref.eta, "diverged_at": ref.diverged_at,
            **{"metric_" + k: v for k, v in ref.metrics.items()}}
    assert sorted(got.files) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].tobytes() == v.tobytes(), k
    print(f"\nkilled with a checkpoint at round {at} of {exp.rounds}; resumed from round {at}; "
          f"metrics bitwise equal to the uninterrupted run")


# -- what the cache key holds ------------------------------------------------------------------


def _write_idx(path, arr, type_byte=0x08):
    arr = np.asarray(arr)
    header = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    path.write_bytes(header + arr.tobytes())


def _idx_files(folder, seed):
    rng = np.random.default_rng(seed)
    images, labels = folder / "images.idx", folder / "labels.idx"
    _write_idx(images, rng.integers(1, 256, (24, 4, 4), dtype=np.uint8))
    _write_idx(labels, np.repeat(np.arange(3), 8).astype(np.uint8))
    return images, labels


IDX = dict(dataset="idx", n=0, m=16, L=1, num_clients=3, rounds=4, eval_every=2)


def test_idx_cache_key_follows_contents(tmp_path, results):
    images, labels = _idx_files(tmp_path, seed=0)
    exp = ex.Experiment(**IDX, idx_images=str(images), idx_labels=str(labels))
    key0, first = exp.key(), ex.run(exp)
    # The same path, new pixels of the same size, and the old modification time put back.
    stat = images.stat()
    _idx_files(tmp_path, seed=1)
    os.utime(images, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert images.stat().st_size == stat.st_size
    assert exp.key() != key0, "the cache key ignores the file's contents"
    again = ex.run(exp)
    assert not np.array_equal(again.metrics["loss"], first.metrics["loss"]), "stale entry served"
    assert same(again, ex.run(exp, cache=False))
    _idx_files(tmp_path, seed=0)  # the original contents again: the original entry is served
    assert exp.key() == key0
    assert ex.run(exp).provenance["created"] == first.provenance["created"]
    labels.unlink()  # gone since the config was built: refused by name, not served from the cache
    with pytest.raises(ValueError, match="idx_labels must name a readable IDX file"):
        ex.run(exp)


# -- when results cannot be written ------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a run gets as far as initialising its networks."""

    def boom(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(ex, "init_params", boom)


def test_unwritable_results_folder_is_refused_before_work(tmp_path, monkeypatch, no_work):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    monkeypatch.setenv("LOCALSGD_RESULTS", str(blocker))
    for exp, cache in ((ex.Experiment(**TINY), True),
                       (ex.Experiment(**TINY, checkpoint_every=2), False)):
        with pytest.raises(OSError, match="LOCALSGD_RESULTS must name a folder") as err:
            ex.run(exp, cache=cache)
        assert isinstance(err.value, ValueError) and str(blocker) in str(err.value)
    assert blocker.read_text() == "a file where the results folder should be"


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_results_folder_is_refused_before_work(results, no_work):
    results.mkdir()
    results.chmod(0o555)
    try:
        with pytest.raises(OSError, match="LOCALSGD_RESULTS"):
            ex.run(ex.Experiment(**TINY))
    finally:
        results.chmod(0o755)


def test_a_folder_at_the_cache_path_is_refused_before_work(results, no_work):
    exp = ex.Experiment(**TINY, checkpoint_every=2)
    for path, cache in ((results / "cache" / f"{exp.key()}.npz", True),
                        (store.checkpoint_path(exp), False)):
        path.mkdir(parents=True)
        with pytest.raises(OSError, match=f"LOCALSGD_RESULTS.*{path.name} is a folder"):
            ex.run(exp, cache=cache)
        path.rmdir()


def test_a_run_that_writes_nothing_needs_no_writable_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "results"
    blocker.write_text("")
    monkeypatch.setenv("LOCALSGD_RESULTS", str(blocker))
    assert ex.run(ex.Experiment(**TINY), cache=False).metrics["loss"].shape == (1, 4)


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_failed_cache_write_returns_the_result_with_a_warning(results, monkeypatch):
    exp = ex.Experiment(**TINY)
    monkeypatch.setattr(store, "write_bytes_atomic", _disk_full)
    with pytest.warns(UserWarning, match="not cached.*No space left"):
        res = ex.run(exp)
    monkeypatch.undo()
    assert same(res, ex.run(exp, cache=False))


@CPU
def test_a_failed_checkpoint_write_lets_the_run_finish_with_a_warning(results, monkeypatch):
    exp = ex.Experiment(**TINY, checkpoint_every=2)
    monkeypatch.setattr(store, "write_bytes_atomic", _disk_full)
    with pytest.warns(UserWarning, match=r"checkpoint at round \d not saved.*No space left") as rec:
        res = ex.run(exp, cache=False)
    assert [str(w.message).split(" not saved")[0] for w in rec] == [
        "checkpoint at round 2", "checkpoint at round 4"]  # every one tried, none lost silently
    assert same(res, ex.run(ex.Experiment(**TINY), cache=False))


# -- cache identity ----------------------------------------------------------------------------


def test_cache_key_holds_the_platform_and_the_sharded_path(monkeypatch):
    exp = ex.Experiment(**TINY)
    plain = exp.key()
    monkeypatch.setenv("LOCALSGD_MESH", "none")
    assert exp.key() == plain  # "none" is the single-device path, as unset
    monkeypatch.setenv("LOCALSGD_MESH", "clients")
    sharded = exp.key()
    assert sharded != plain, "the sharded and the single-device path share a cache key"
    monkeypatch.delenv("LOCALSGD_MESH")
    other = "gpu" if jax.default_backend() != "gpu" else "cpu"
    monkeypatch.setattr(ex.jax, "default_backend", lambda: other)
    assert exp.key() not in (plain, sharded), "the platform is not in the cache key"


def _rewrite_entry(path, change):
    """Rewrites a cache entry whole, with a valid checksum, after ``change(arrays)``."""
    meta, arrays = store._unpack(path.read_bytes())
    arrays = {k: np.array(arrays[k]) for k in arrays.files}
    change(arrays)
    path.write_bytes(store._pack(meta, arrays))


def _set(key, value):
    return lambda a: a.__setitem__(key, value)


WRONG_ARRAYS = {
    "metric-missing": lambda a: a.pop("metrics/dist"),
    "metric-nan": lambda a: a["metrics/loss"].__setitem__((0, 1), np.nan),
    "metric-wrong-shape": lambda a: a.__setitem__("metrics/loss", a["metrics/loss"][:, :2]),
    "metric-extra-axis": lambda a: a.__setitem__("metrics/loss", a["metrics/loss"][..., None]),
    "metric-extra": _set("metrics/flips", np.zeros((1, 4), np.float32)),
    "rounds-wrong": _set("rounds", np.arange(4)),
    "eta-wrong-shape": _set("eta", np.ones(2, np.float32)),
    "eta-nan": _set("eta", np.full(1, np.nan, np.float32)),
    "diverged-at-float": _set("diverged_at", np.array([-1.0])),
    "diverged-at-out-of-range": _set("diverged_at", np.array([99], np.int32)),
    "test-metrics-where-there-is-no-test-split": _set("test/accuracy", np.ones(1)),
    "rounds-missing": lambda a: a.pop("rounds"),
}


@pytest.mark.parametrize("change", list(WRONG_ARRAYS), ids=list(WRONG_ARRAYS))
def test_an_entry_with_a_valid_checksum_but_wrong_arrays_is_recomputed(change, results):
    exp = ex.Experiment(**TINY)
    good = ex.run(exp)
    path = results / "cache" / f"{exp.key()}.npz"
    _rewrite_entry(path, WRONG_ARRAYS[change])
    store._unpack(path.read_bytes())  # the checksum holds
    with pytest.warns(UserWarning, match="does not match its config.*recomputing"):
        again = ex.run(exp)
    assert same(good, again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten whole and valid: served without a warning
        assert same(good, ex.run(exp))


# -- temporary files of killed writers ---------------------------------------------------------


def test_a_temporary_file_names_its_writer(tmp_path, monkeypatch):
    seen = []

    def replace(src, dst):
        seen.append(os.path.basename(src))
        raise OSError("stop before the rename")

    monkeypatch.setattr(store.os, "replace", replace)
    with pytest.raises(OSError):
        store.write_bytes_atomic(tmp_path / "entry.npz", b"x")
    assert seen and seen[0].startswith(f".entry.npz.{store._host()}-{os.getpid()}.")
    assert seen[0].endswith(".tmp")
    assert not list(tmp_path.iterdir()), "the temporary file outlived the failed write"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_dead_writers_are_swept(results):
    exp = ex.Experiment(**TINY)
    cache = results / "cache"
    cache.mkdir(parents=True)
    host, old = store._host(), time.time() - store.STALE_AFTER_S - 60
    files = {
        f".{exp.key()}.npz.{host}-{_dead_pid()}.abc123.tmp": ("now", False),  # dead writer
        f".other.npz.{host}-{os.getppid()}.abc123.tmp": ("now", True),  # live writer
        f".other.npz.{host}-{os.getppid()}.def456.tmp": ("old", False),  # live but too old
        ".other.npz.elsewhere-1.abc123.tmp": ("now", True),  # another host's, can't ask
        ".other.npz.elsewhere-1.def456.tmp": ("old", False),  # another host's, too old
        ".other.npz.q1w2e3r4.tmp": ("old", False),  # an older name without a writer, too old
        ".other.npz.t5y6u7i8.tmp": ("now", True),  # the same, recent
        "other.npz": ("old", True),  # not a temporary file
    }
    for name, (age, _) in files.items():
        (cache / name).write_bytes(b"partial")
        if age == "old":
            os.utime(cache / name, (old, old))
    ex.run(exp)
    left = {p.name for p in cache.iterdir()}
    for name, (_, kept) in files.items():
        assert (name in left) == kept, f"{name} {'removed' if kept else 'left behind'}"
    assert f"{exp.key()}.npz" in left


# -- sizes: what the program can index, and memory ---------------------------------------------


@pytest.mark.parametrize("field, value, extra", [
    ("rounds", 10**12, {}), ("L", 100_000, {}), ("seeds", 2**31, {}), ("n", 2**31, {}),
    ("m", 2**31, {}), ("seed", 2**63 - 1, {"seeds": 2}),
])
def test_integer_fields_are_bounded_to_what_the_program_indexes(field, value, extra):
    with pytest.raises(ValueError, match=f"^{field} must be at most") as err:
        ex.Experiment(**{**TINY, field: value, **extra})
    assert str(value) in str(err.value)
    limit = int(str(err.value).split("at most ")[1].split()[0])
    ex.Experiment(**{**TINY, **extra, field: min(limit, 8) if field != "seed" else limit})


def test_memory_estimate_counts_the_arrays_of_a_run():
    for arch, L in (("deep", 3), ("two_layer", 1)):
        exp = ex.Experiment(**{**TINY, "arch": arch, "L": L, "m": 64}, seeds=3)
        spec = exp.net_spec()
        params = jax.eval_shape(lambda spec=spec: ex.model.init(jax.random.key(0), spec))
        trained = sum(a.size for a in params["trainable"])
        fixed = sum(a.size for a in params["fixed"].values())
        parts = budget.estimate(budget.sizes(exp, 12, 5, 1), batched_seeds=True)
        assert parts["initial and final weights of every seed"] == 3 * (2 * trained + fixed) * 4
        assert parts["clients' local models"] == 3 * 2 * 3 * trained * 4
        # In turn (a CPU), one seed trains at a time.
        alone = budget.estimate(budget.sizes(exp, 12, 5, 1), batched_seeds=False)
        assert alone["clients' local models"] * 3 == parts["clients' local models"]
    grow = [sum(budget.estimate(budget.sizes(ex.Experiment(**{**TINY, "m": m}), 12, 5, 1)).values())
            for m in (16, 32, 64)]
    assert grow[0] < grow[1] < grow[2] and grow[2] / grow[1] > 3  # the m^2 weights dominate


def test_memory_guard_refuses_before_any_work_with_the_estimate_and_the_field(
        results, monkeypatch, no_work):
    monkeypatch.setattr(budget, "available_bytes", lambda: 2**22)  # 4 MiB
    exp = ex.Experiment(**{**TINY, "m": 512}, seeds=2)
    with pytest.raises(ValueError, match=r"needs about .* GiB of memory, more than the 0.00391 GiB "
                                         r"available .*: lower m to at most (\d+) \(now 512\)"
                       ) as err:
        ex.run(exp)
    fits = int(str(err.value).split("m to at most ")[1].split()[0])
    size = lambda m: sum(budget.estimate(budget.sizes(exp.replace(m=m), 12, 5, 1)).values())  # noqa: E731
    assert size(fits) <= 2**22 < size(fits + 1), "the suggested width is not the largest that fits"
    assert not results.exists() or not any(results.rglob("*")), "written before the refusal"


@pytest.mark.skipif(jax.default_backend() != "cpu" or not os.path.exists("/proc/meminfo"),
                    reason="the host's memory is what a CPU run has")
def test_available_memory_is_the_hosts():
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo")
                 if line.startswith("MemTotal:"))
    available = budget.available_bytes()
    assert 0 < available <= total
