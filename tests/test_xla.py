"""localsgd_book.xla: the XLA option the book's kernels and the test workers compile with, and
that it leaves the numbers as they are."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest

from localsgd_book import xla

CUDA = importlib.util.find_spec("jax_cuda12_plugin") is not None

# an initialisation and a short Local SGD run, hashed to the last bit
PROGRAM = """
import hashlib, jax, numpy as np
from localsgd import data as dt, engine as en, model
spec = model.NetSpec("deep", 16, 64, 2, 1)
keys = jax.vmap(jax.random.key)(np.arange(3))
p0 = jax.jit(jax.vmap(lambda k: model.init(k, spec)))(keys)
ds = dt.sphere(32, 16, 1, seed=0)
data = dt.to_clients(ds.x, ds.y, dt.partition(ds.labels, 4, seed=0))
cfg = en.RunConfig("local_sgd", rounds=6, tau=3, eta=0.5, batch_size=2, metrics=("loss",))
out = en.run(cfg, spec, jax.tree.map(lambda a: a[0], p0), data, jax.random.key(1))
h = hashlib.sha1()
for a in jax.tree.leaves(p0) + jax.tree.leaves(out.params) + [out.metrics["loss"]]:
    h.update(np.asarray(a).tobytes())
print(h.hexdigest())
"""


@pytest.mark.skipif(CUDA, reason="the option is left out where a CUDA build of jax is installed")
def test_flags_add_the_level_unless_it_is_set():
    assert xla.flags(None) == xla.FLAG
    assert xla.flags("") == xla.FLAG
    assert xla.flags("--xla_dump_to=/tmp/x") == f"--xla_dump_to=/tmp/x {xla.FLAG}"
    assert xla.flags("--xla_backend_optimization_level=2") == "--xla_backend_optimization_level=2"
    assert xla.FLAG in os.environ.get("XLA_FLAGS", "")  # this test run compiles with it


def _digest(flags: str) -> str:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_ENABLE_COMPILATION_CACHE="false")
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def test_the_level_leaves_the_numbers_as_they_are():
    """The same initialisation and training run compiled at LLVM's level 2 (XLA's default) and
    at :data:`FLAG`'s level 1 give bitwise the same numbers; level 0, which changes them, shows
    that the digest can tell."""
    default = _digest("--xla_backend_optimization_level=2")
    assert _digest(xla.FLAG) == default
    assert _digest("--xla_backend_optimization_level=0") != default
    assert len(default) == len(hashlib.sha1().hexdigest())
