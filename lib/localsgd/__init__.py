"""localsgd: Local (S)GD on over-parameterised ReLU networks, after Deng, Kamani and Mahdavi,
*Local SGD Optimizes Overparameterized Neural Networks in Polynomial Time* (AISTATS 2022).

The public API, importable from the package itself::

    import localsgd

    exp = localsgd.Experiment(n=64, d=32, m=512, L=2, num_clients=4, algorithm="local_sgd",
                              batch_size=4, tau=5, rounds=100, eta=0.5, seeds=4)
    result = localsgd.run(exp)        # a Result; cached under $LOCALSGD_RESULTS/cache
    result.metrics["loss"]            # (seeds, evaluations)

Running experiments
    :class:`Experiment` (the frozen, validated config), :func:`run`, :func:`run_grid`,
    :class:`Result`, :func:`load_data`, :func:`client_data` (your own arrays, split over
    clients), :func:`checkpoint_path`, :func:`results_dir`.
Data
    :func:`sphere`, :func:`digits`, :func:`read_idx`, :func:`idx_dataset`,
    :func:`normalise_rows`, :func:`separation`, :func:`partition`, :func:`to_clients`,
    :class:`Dataset`, :class:`ClientData`.
Modules, one job each
    ``model`` (the networks), ``data``, ``algorithms`` (the training program), ``diagnostics``
    (the theory's quantities), ``theory`` (predictions), ``claims`` (each chapter's checks),
    ``analysis`` (fits and tables), ``experiments`` (the config and the runner), ``result``
    (what a run returns, and its provenance), ``distributed`` (clients sharded over devices),
    ``plotting``, ``store`` (everything written: cache entries, checkpoints, where they go).
    ``python -m localsgd`` runs one experiment with its clients sharded over every device.

Names are imported on first use, so ``import localsgd`` is quick and loads no JAX until an
exported name or a module is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# exported name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Experiment": "experiments",
    "Result": "result",
    "run": "experiments",
    "run_grid": "experiments",
    "load_data": "experiments",
    "client_data": "data",
    "checkpoint_path": "store",
    "results_dir": "store",
    "Dataset": "data",
    "ClientData": "data",
    "sphere": "data",
    "digits": "data",
    "read_idx": "data",
    "idx_dataset": "data",
    "normalise_rows": "data",
    "separation": "data",
    "partition": "data",
    "to_clients": "data",
}

_MODULES = (
    "algorithms",
    "analysis",
    "claims",
    "data",
    "diagnostics",
    "distributed",
    "experiments",
    "model",
    "plotting",
    "result",
    "store",
    "theory",
)

__all__ = [
    "ClientData",
    "Dataset",
    "Experiment",
    "Result",
    "checkpoint_path",
    "client_data",
    "digits",
    "idx_dataset",
    "load_data",
    "normalise_rows",
    "partition",
    "read_idx",
    "results_dir",
    "run",
    "run_grid",
    "separation",
    "sphere",
    "to_clients",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .data import (
        ClientData,
        Dataset,
        client_data,
        digits,
        idx_dataset,
        normalise_rows,
        partition,
        read_idx,
        separation,
        sphere,
        to_clients,
    )
    from .experiments import Experiment, load_data, run, run_grid
    from .result import Result
    from .store import checkpoint_path, results_dir
