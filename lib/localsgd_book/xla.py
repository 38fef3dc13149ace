"""The XLA option the book's kernels and the test workers compile with.

On a CPU, XLA hands every program to LLVM, whose optimisation pipeline runs at level 2 by default,
and on two cores compiling takes close to half of a chapter's time (chapter 07 under ``default``:
87 s of compilation over 358 programs). At level 1 (``--xla_backend_optimization_level=1``) the
same programs compile faster and give bitwise the same numbers, measured on one core:

* a vmapped initialisation of 5 seeds (``model.init``): 1.7-2.1 s instead of 3.0-3.1 s;
* a training program of 40 rounds (``engine._sweep_jit``: Local GD and Local SGD at m = 256 and
  512, SCAFFOLD at m = 128): 2.7, 3.3 and 4.5 s instead of 3.7, 4.6 and 5.2 s, running as fast
  (1.05 against 1.07 s, 3.9 against 3.8 s, 0.09 against 0.09 s).

Level 0 compiles faster still but runs 3 to 10 times slower and changes the numbers. The option
is left out where a CUDA build of jax is installed, whose GPU kernels LLVM compiles too, and where
``XLA_FLAGS`` already sets the level.
"""

from __future__ import annotations

import importlib.util

FLAG = "--xla_backend_optimization_level=1"


def flags(current: str | None) -> str | None:
    """``XLA_FLAGS`` for a kernel or a test worker: ``current`` with :data:`FLAG` added, or
    ``current`` unchanged where it sets the level itself or a CUDA build of jax is installed
    (None stays None there)."""
    if current and "xla_backend_optimization_level" in current:
        return current
    if importlib.util.find_spec("jax_cuda12_plugin") is not None:
        return current
    return f"{current} {FLAG}".strip() if current else FLAG
