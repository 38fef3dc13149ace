"""The run configuration and the one set of field checks that every config in the library uses.

:class:`RunConfig` says what the engine (:mod:`localsgd.engine`) runs. It is a frozen dataclass,
validated on construction, and it is the static argument of the compiled program: two configs that
differ only in ``eta`` (which is traced) share one program.

The helpers :func:`check_int`, :func:`check_float` and :func:`check_choice` raise a ValueError
naming the field, the value and what is allowed; :class:`localsgd.experiments.Experiment` and
:class:`localsgd.model.NetSpec` use them too, so a field is checked the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from . import algorithms

# Metric name -> the arrays it records (each with a leading evaluation axis).
METRICS = {
    "loss": ("loss",),  # F(W_bar), scalar
    "client_loss": ("client_loss",),  # F_k(W_bar), (K,)
    "grad_norm": ("grad_norm",),  # ||grad F(W_bar)||, scalar
    "pl_ratio": ("pl_ratio",),  # ||grad F||^2 / F, scalar
    "dist": ("dist", "dist_rel"),  # ||W_l - W_l(0)|| (L,), ||W - W(0)|| / ||W(0)||
    "flips": ("flips",),  # fraction of signs differing from initialisation, scalar
    "ever_flipped": ("ever_flipped",),  # fraction of signs that differed at any evaluation so far
    "forward_norms": ("forward_norms",),  # mean ||h_l|| per hidden layer, (layers,)
    "gap": ("gap", "gap_rel"),  # ||grad F_k(W_k) - grad F_k(W_bar)|| at round end, (K,) each
    "local_flips": ("local_flips",),  # signs differing between W_k and W_bar on client k, (K,)
    "drift": ("drift",),  # ||W_k - W_bar||, (K,)
    "outputs": ("outputs",),  # f(W_bar) on every training sample, (K, n_max, d_out)
    "test_outputs": ("test_outputs",),  # f(W_bar) at the probe points (a test set), (P, d_out)
}
ROUND_END = ("gap", "local_flips", "drift")  # need the local models before averaging
LAYOUTS = ("auto", "map", "vmap", "lowrank")
DTYPES = ("float32", "float64")
# Integers the compiled program indexes with int32 (rounds, steps, sample counts) stay below this.
INT32_MAX = 2**31 - 1
# Every layer is unrolled into the compiled program, so the depth is bounded.
MAX_LAYERS = 1000
INDEXED = "the compiled program indexes it in int32"


def is_int(v) -> bool:
    """True for a Python or NumPy integer (not a bool)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_int(name: str, v, low: int = 0, high: int = INT32_MAX, why: str = INDEXED) -> int:
    """``v`` as a Python int, or ValueError unless it is an integer in ``[low, high]`` (``high``
    defaults to what the compiled program can index, int32; ``why`` says where a bound comes
    from in the message)."""
    if not is_int(v) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    if v > high:
        raise ValueError(f"{name} must be at most {high} ({why}), got {v!r}")
    return int(v)


def _interval(low, high, open_low) -> str:
    if low == 0 and math.isinf(high):
        return "a positive finite number" if open_low else "a non-negative finite number"
    return f"a finite number in {'(' if open_low else '['}{low:g}, {high:g}]"


def check_float(
    name: str, v, low: float = 0.0, high: float = math.inf, *, open_low: bool = True,
    dtype: str | None = None,
) -> float:
    """``v`` as a Python float, or ValueError unless it is a finite real number in ``(low, high]``
    (``[low, high]`` with ``open_low=False``). With ``dtype``, a nonzero value must also be
    representable there as a normal number (not overflow to inf nor flush to 0)."""
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (low < v if open_low else low <= v) and v <= high
    if not ok:
        raise ValueError(f"{name} must be {_interval(low, high, open_low)}, got {v!r}")
    v = float(v)
    if dtype is not None and v != 0:
        info = np.finfo(dtype)
        if not float(info.tiny) <= abs(v) <= float(info.max):
            raise ValueError(
                f"{name} must be representable in {dtype} (magnitude between {info.tiny:.3g} "
                f"and {info.max:.3g}), got {v!r}"
            )
    return v


def check_choice(name: str, v, allowed) -> str:
    """``v``, or ValueError unless it is one of the strings ``allowed``."""
    if not isinstance(v, str) or v not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {v!r}")
    return v


def check_metrics(v) -> tuple:
    """``v`` as a tuple of metric names, or ValueError naming ``metrics``."""
    names = tuple(v) if isinstance(v, (tuple, list)) else None
    if not names or not all(isinstance(m, str) and m in METRICS for m in names):
        raise ValueError(
            f"metrics must be a non-empty subset of {tuple(METRICS)} (a tuple of names), "
            f"got {v!r}"
        )
    return names


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What to run; validated on construction (a bad field raises ValueError naming it).

    Attributes:
      algorithm: a name in :data:`localsgd.algorithms.REGISTRY`.
      rounds: communication rounds ``R``; the run takes ``R * tau`` local steps per client.
      tau: local steps per round (1 for the algorithms that take one step per round).
      eta: step size, positive, finite and representable in ``dtype``. It is traced: it takes
        no part in ``==`` and ``hash``, so configs that differ only in ``eta`` share a compiled
        program.
      batch_size: ``b`` for the stochastic algorithms (at most the smallest client's size);
        ``None`` for the full-batch ones.
      eval_every: rounds between recorded metrics; must divide ``rounds``.
      metrics: names from :data:`METRICS`.
      layout: how the clients' local steps are laid out in the program; the numbers agree to
        float32 rounding whichever is chosen:

        * ``"vmap"``: all clients' step batched into one product a layer (a leading clients axis);
          what accelerators need for throughput, and what the sharded path
          (:mod:`localsgd.distributed`) splits over devices.
        * ``"map"``: one group of ``clients_together`` clients after another, each taking its
          ``tau`` steps while its weights stay in cache; faster on a CPU.
        * ``"lowrank"``: for plain SGD steps on one trained layer (``local_sgd``, ``local_gd``
          with ``L = 1``), the clients' steps as low-rank corrections to the server's model,
          which is read once a round instead of once a client step; faster on a CPU once a
          model outgrows the cache (:func:`localsgd.engine.lowrank_refusal` says what it runs).
        * ``"auto"`` (default): ``"map"`` when the program runs on a CPU, ``"vmap"`` on an
          accelerator. On two CPU cores "map" ran 1.2-1.4x faster than "vmap"; on an H200 "vmap"
          ran 1.2-11x faster than "map" (``bench/run.py --compare-loops``, ``bench/gpu.py``).
      clients_together: with ``layout="map"``, how many clients step side by side in one loop
        body (XLA:CPU runs their independent products concurrently); 2 ran fastest on two cores.
      prox_mu: FedProx's proximal weight ``mu >= 0`` (only with ``algorithm="fedprox"``).
      dtype: ``"float32"`` or ``"float64"``: the dtype of the weights, data and step size.
    """

    algorithm: str = "local_sgd"
    rounds: int = 10
    tau: int = 1
    eta: float = dataclasses.field(default=0.1, compare=False)
    batch_size: int | None = None
    eval_every: int = 1
    metrics: tuple = ("loss",)
    layout: str = "auto"
    clients_together: int = 2
    prox_mu: float = 0.0
    dtype: str = "float32"

    def __post_init__(self):
        alg = algorithms.get(self.algorithm)
        check_choice("dtype", self.dtype, DTYPES)
        for name in ("tau", "eval_every", "clients_together"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1))
        # Round r + 1 is still numbered (and keys the minibatches) in int32.
        why = "the compiled program numbers the rounds, and the minibatch keys by round, in int32"
        object.__setattr__(self, "rounds", check_int("rounds", self.rounds, 1, INT32_MAX - 1, why))
        if alg.one_step and self.tau != 1:
            raise ValueError(
                f"tau must be 1 for algorithm={self.algorithm!r} (one step per round), "
                f"got {self.tau!r}"
            )
        check_int("rounds * tau", self.rounds * self.tau, 1)
        object.__setattr__(self, "eta", check_float("eta", self.eta, dtype=self.dtype))
        if alg.stochastic:
            if not is_int(self.batch_size) or self.batch_size < 1:
                raise ValueError(
                    f"batch_size must be an integer >= 1 for algorithm={self.algorithm!r}, "
                    f"got {self.batch_size!r}"
                )
            object.__setattr__(self, "batch_size", int(self.batch_size))
        elif self.batch_size is not None:
            raise ValueError(
                f"batch_size must be None for full-batch algorithm={self.algorithm!r}, "
                f"got {self.batch_size!r}"
            )
        if self.rounds % self.eval_every:
            raise ValueError(
                f"eval_every must divide rounds={self.rounds}, got {self.eval_every!r}"
            )
        object.__setattr__(self, "metrics", check_metrics(self.metrics))
        check_choice("layout", self.layout, LAYOUTS)
        mu = check_float("prox_mu", self.prox_mu, open_low=False, dtype=self.dtype)
        if mu and "prox_mu" not in alg.fields:
            raise ValueError(
                f"prox_mu must be 0 for algorithm={self.algorithm!r} (it is FedProx's), got {mu!r}"
            )
        object.__setattr__(self, "prox_mu", mu)

    @property
    def steps(self) -> int:
        """Local steps (gradient evaluations) per client over the whole run."""
        return self.rounds * self.tau

    @property
    def evaluations(self) -> int:
        """Recorded points, including round 0."""
        return self.rounds // self.eval_every + 1
