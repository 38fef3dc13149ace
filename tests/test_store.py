"""Files written by earlier versions of the library read back unchanged.

``tests/data`` holds a cache entry (``cache-entry-v1.npz``) and a checkpoint
(``checkpoint-v1.npz``) in the format ``localsgd-results-v1``, written by localsgd 0.1.0's own
writers for the config ``FIELDS`` from the arrays that :func:`_arrays` builds (the checkpoint after
2 of the 6 rounds, with a small state pytree). A change to the format, or to what the readers
accept, fails here. The cache key itself changes with the library's source, so the tests give the
config the key the files were written under.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from localsgd import experiments as ex
from localsgd import store

DATA = Path(__file__).parent / "data"
ENTRY, CHECKPOINT = DATA / "cache-entry-v1.npz", DATA / "checkpoint-v1.npz"
FIELDS = dict(n=12, d=5, m=16, L=1, num_clients=3, rounds=6, eval_every=2,
              metrics=("loss", "dist"), seeds=2, eta=0.5, eta_rule="fixed", checkpoint_every=2)
KEY = "58b1d9f9c4e9cabf0fc5"  # the key the files were written under


def _arrays() -> dict:
    S, E = 2, 4
    return {
        "rounds": np.arange(0, 7, 2, dtype=np.int32),
        "eta": np.full(S, 0.5, np.float32),
        "diverged_at": np.full(S, -1, np.int32),
        "metrics/loss": (1.0 / (1.0 + np.arange(S * E))).reshape(S, E).astype(np.float32),
        "metrics/dist": (np.arange(S * E * 2) / 10).reshape(S, E, 2).astype(np.float32),
        "metrics/dist_rel": (np.arange(S * E) / 100).reshape(S, E).astype(np.float32),
    }


def _state() -> dict:
    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "count": np.array([3, 4], np.int32)}


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture
def exp(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(ex.Experiment, "key", lambda self: KEY)
    return ex.Experiment(**FIELDS)


def test_a_cache_entry_written_before_loads_unchanged(exp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unreadable, recomputing"
        res = store.load_result(ENTRY, exp)
    assert res is not None
    want = _arrays()
    got = {"rounds": res.rounds, "eta": res.eta, "diverged_at": res.diverged_at,
           **{f"metrics/{k}": v for k, v in res.metrics.items()}}
    assert got.keys() == want.keys()
    assert all(_same(got[k], want[k]) for k in want), got
    assert res.test == {}
    assert (res.provenance["key"], res.provenance["seconds"]) == (KEY, 0.25)
    assert res.config is exp and not res.diverged


def test_run_serves_a_cache_entry_written_before(exp, monkeypatch):
    path = store.cache_path(exp)
    path.parent.mkdir(parents=True)
    shutil.copyfile(ENTRY, path)

    def boom(*args, **kwargs):
        raise AssertionError("the cached entry was recomputed")

    monkeypatch.setattr("localsgd.engine.sweep", boom)
    res = ex.run(exp)
    assert _same(res.metrics["loss"], _arrays()["metrics/loss"])


def test_a_checkpoint_written_before_loads_unchanged(exp):
    template = lambda: {k: np.zeros_like(v) for k, v in _state().items()}  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unusable, starting from round 0"
        saved = store.load_checkpoint(CHECKPOINT, exp, _arrays()["eta"], template)
    assert saved is not None
    state, metrics, rounds, done = saved
    assert done == 2
    assert state.keys() == _state().keys()
    assert all(_same(state[k], v) for k, v in _state().items())
    assert _same(rounds, _arrays()["rounds"][:2])
    want = {k.split("/")[1]: v[:, :2] for k, v in _arrays().items() if k.startswith("metrics/")}
    assert metrics.keys() == want.keys()
    assert all(_same(metrics[k], v) for k, v in want.items())


def test_checkpoint_info_reads_a_checkpoint_written_before(exp):
    path = store.checkpoint_path(exp)
    path.parent.mkdir(parents=True)
    shutil.copyfile(CHECKPOINT, path)
    info = store.checkpoint_info(exp)
    assert info is not None
    assert {k: info[k] for k in ("key", "round", "rounds", "leaves")} == {
        "key": KEY, "round": 2, "rounds": 6, "leaves": 2}


@pytest.mark.parametrize("path", [ENTRY, CHECKPOINT], ids=["cache-entry", "checkpoint"])
def test_the_writer_lays_out_a_file_as_before(path):
    """Everything before the payload (magic line, header length, header) is byte for byte what
    the earlier writer wrote for the same header; the payload's arrays read back the same."""
    old = path.read_bytes()
    meta, arrays = store._unpack(old)
    arrays = {k: np.array(arrays[k]) for k in arrays.files}
    new = store._pack(meta, arrays)
    head = len(store._MAGIC) + 8 + int.from_bytes(old[len(store._MAGIC):][:8], "little")
    assert new[:head] == old[:head]
    meta_new, arrays_new = store._unpack(new)
    assert meta_new == meta
    assert all(_same(arrays_new[k], v) for k, v in arrays.items())
