"""Sizes a run before it starts: an estimate of the memory a run needs, checked against what the
machine has. (The integer bounds the compiled program can index are checked with every other
field, by :func:`localsgd.config.check_int`.)

:func:`check_memory` refuses with a ValueError naming the field to change, before any work: once
the data's sizes are known (right after loading it, before any network is initialised).

The estimate counts the arrays a run holds at its peak, in float32 (4 bytes a value):

* the initial and final weights of every seed, ``S (2 P + P_fixed)``, with ``P`` the trained
  values of one network (``L m^2`` for the deep network) and ``P_fixed`` its fixed ``A`` and
  ``B`` (``m (d + d_out)``);
* the weights in training: the averaged model, its start and its gradient (``3 P``), and every
  client's local model and gradient (``2 K P``), for each seed trained at once (one on a CPU,
  where the seeds run in turn; all ``S`` on an accelerator, where they are batched);
* the activations of a step, ``3 (L + 1) m`` values (pre-activations, activations and their
  gradients) for each of the ``K b`` samples the clients take together (``b`` the batch, or the
  largest client's samples for full-batch algorithms), and of an evaluation on all ``n``
  samples; with ``eta_rule="ntk"`` the step-size estimate holds them for all ``S`` seeds;
* the recorded metrics, ``S E (K + L + 2)`` values a metric at ``E`` evaluations;
* the data, ``K n_max (d + d_out + 1)`` values, on the host and on the device.

The estimate is meant to catch a run that is out of reach by a wide margin (a width of 10^5, 10^7
seeds) before XLA fails deep inside with an out-of-memory error; it does not promise that a run
just under the limit fits.
"""

from __future__ import annotations

import math
import os

import jax

__all__ = ["available_bytes", "check_memory", "estimate"]

_F32 = 4


def sizes(exp, n: int, d: int, d_out: int, n_max: int | None = None) -> dict:
    """The sizes the estimate depends on: ``exp``'s fields and the data's ``n`` samples of ``d``
    inputs and ``d_out`` targets, the largest client holding ``n_max`` (default ``ceil(n/K)``)."""
    K = 1 if exp.algorithm == "gd" else exp.num_clients
    n_max = n if exp.algorithm == "gd" else (n_max or math.ceil(n / K))
    return dict(
        arch=exp.arch, n=n, d=d, d_out=d_out, m=exp.m, L=exp.L, num_clients=K,
        n_max=n_max, batch_size=exp.batch_size, seeds=exp.seeds,
        evaluations=exp.rounds // exp.eval_every + 1, ntk=exp.eta_rule == "ntk",
        metrics=len(exp.metrics) + sum(name in ("dist", "gap") for name in exp.metrics),
    )


def estimate(s: dict, batched_seeds: bool | None = None) -> dict:
    """Bytes a run of sizes ``s`` (from :func:`sizes`) needs, by part (see the module
    docstring). ``batched_seeds``: the seeds run at once (default: on an accelerator)."""
    if batched_seeds is None:
        batched_seeds = jax.default_backend() != "cpu"
    m, L, K, S = s["m"], s["L"], s["num_clients"], s["seeds"]
    deep = s["arch"] == "deep"
    P = L * m * m if deep else m * s["d"]
    fixed = m * (s["d"] + s["d_out"]) if deep else m * s["d_out"]
    together = S if batched_seeds else 1
    width = 3 * (L + 1) * m
    step = K * (s["batch_size"] or s["n_max"]) * width
    return {
        "initial and final weights of every seed": S * (2 * P + fixed) * _F32,
        "weights in training": together * 3 * P * _F32,
        "clients' local models": together * 2 * K * P * _F32,
        "activations": together * (step + s["n"] * width) * _F32,
        "step-size estimate": (S * s["n"] * width * _F32) if s["ntk"] else 0,
        "recorded metrics": S * s["evaluations"] * (K + L + 2) * s["metrics"] * _F32,
        "data": 2 * K * s["n_max"] * (s["d"] + s["d_out"] + 1) * _F32,
    }


def available_bytes() -> int | None:
    """Memory a run can still take: on an accelerator, its memory pool's limit less what is in
    use (``memory_stats``); on a CPU, the host's ``MemAvailable`` (``/proc/meminfo``), else its
    free pages (``os.sysconf``). None when neither is known. With ``LOCALSGD_MESH=clients`` the
    clients spread over every device: their memory together."""
    devices = jax.local_devices()
    per_device = None
    if devices[0].platform != "cpu":
        stats = devices[0].memory_stats() or {}
        if "bytes_limit" in stats:
            per_device = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    else:
        per_device = _host_available()
    if per_device is None:
        return None
    if os.environ.get("LOCALSGD_MESH") == "clients" and devices[0].platform != "cpu":
        return per_device * jax.device_count()
    return per_device


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# Fields a user can lower to shrink a run, with their smallest value.
_LEVERS = {"m": 1, "L": 1, "seeds": 1, "num_clients": 1, "batch_size": 1, "n": 2}


def _largest_fitting(s: dict, name: str, limit: int, batched: bool) -> int | None:
    """The largest value of field ``name`` below its current one at which the run fits in
    ``limit`` bytes, all else equal; None when even its smallest value does not fit."""
    if not s.get(name):
        return None
    low, high = _LEVERS[name], s[name] - 1
    if high < low:
        return None

    def fits(v):
        t = dict(s, **{name: v})
        if name in ("n", "num_clients"):
            t["n_max"] = math.ceil(t["n"] / t["num_clients"])
        return sum(estimate(t, batched).values()) <= limit

    if not fits(low):
        return None
    while low < high:  # the largest fitting value in [low, high]
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def check_memory(exp, n: int, d: int, d_out: int, n_max: int | None = None,
                 available: int | None = None) -> None:
    """Refuses, before any work, a run whose estimated memory exceeds what is available
    (``available`` bytes, default :func:`available_bytes`): a ValueError with the estimate, its
    largest part, and the fields that would make the run fit on their own, each with the largest
    value that does (the nearest to its current value first)."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    s = sizes(exp, n, d, d_out, n_max)
    batched = jax.default_backend() != "cpu"
    parts = estimate(s, batched)
    total = sum(parts.values())
    if total <= available:
        return
    largest = max(parts, key=parts.get)
    fixes = []
    for name in _LEVERS:
        v = _largest_fitting(s, name, available, batched)
        if v is not None:
            fixes.append((v / s[name], f"{name} to at most {v} (now {s[name]})"))
    advice = (
        "lower " + ", or ".join(f for _, f in sorted(fixes, reverse=True)[:3])
        if fixes
        else "lower m, L, seeds or num_clients"
    )
    raise ValueError(
        f"the run needs about {_gib(total)} of memory, more than the {_gib(available)} available "
        f"({largest}: {_gib(parts[largest])}): {advice}"
    )


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"
