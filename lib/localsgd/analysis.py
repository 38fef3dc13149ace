"""Fits and summaries of recorded runs: linear-rate fits of log-loss, log-log slopes with their
uncertainty, and iterations to reach a target loss. NumPy only, on the arrays a run returns."""

from __future__ import annotations

import numpy as np


def fit_line(x, y):
    """Least-squares line ``y = a + s x``. Returns ``(slope, intercept, slope_stderr)``.

    ``x, y: (p,)`` with ``p >= 2``; the standard error is 0 for two points (an exact fit) and
    ``nan`` where it is undefined.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        raise ValueError(f"x must hold at least 2 finite points to fit a line, got {x.size}")
    A = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    if x.size == 2:
        return float(coef[0]), float(coef[1]), 0.0
    resid = y - A @ coef
    s2 = resid @ resid / (x.size - 2)
    cov = s2 * np.linalg.inv(A.T @ A)
    return float(coef[0]), float(coef[1]), float(np.sqrt(cov[0, 0]))


def loglog_slope(x, y):
    """Exponent ``p`` of ``y ~ x^p``: the slope of ``log y`` against ``log x``, with its standard
    error. Returns ``(p, stderr)``."""
    s, _, se = fit_line(np.log(x), np.log(y))
    return s, se


def linear_rate(iterations, loss, floor: float = 0.0):
    """Per-iteration rate ``r`` of ``F_t ~ F_0 exp(-r t)``: minus the slope of ``log F`` against the
    iteration count, fitted over the points with ``F > floor``. Returns ``(r, stderr)``."""
    iterations, loss = np.asarray(iterations, float), np.asarray(loss, float)
    keep = loss > floor
    s, _, se = fit_line(iterations[keep], np.log(loss[keep]))
    return -s, se


def log_linearity(iterations, loss, floor: float = 0.0):
    """R^2 of the straight-line fit of ``log F`` against iterations, over the points with
    ``F > floor`` (a loss of exactly 0 has no logarithm): 1 for exactly linear convergence."""
    x, loss = np.asarray(iterations, float), np.asarray(loss, float)
    keep = np.isfinite(loss) & (loss > floor)
    x, y = x[keep], np.log(loss[keep])
    s, a, _ = fit_line(x, y)
    resid = y - (a + s * x)
    tot = np.sum((y - y.mean()) ** 2)
    return float(1.0 - resid @ resid / tot) if tot > 0 else 1.0


def iterations_to(iterations, loss, eps: float):
    """First recorded iteration with ``F <= eps``, log-linearly interpolated between records;
    ``inf`` where the run never gets there. ``loss: (..., E)`` -> ``(...)``."""
    iterations = np.asarray(iterations, float)
    loss = np.asarray(loss, float)
    flat = loss.reshape(-1, loss.shape[-1])
    out = np.full(flat.shape[0], np.inf)
    for r, row in enumerate(flat):
        hit = np.flatnonzero(row <= eps)
        if hit.size == 0:
            continue
        j = hit[0]
        if j == 0:
            out[r] = iterations[0]
            continue
        l0, l1 = np.log(row[j - 1]), np.log(row[j])
        frac = (l0 - np.log(eps)) / (l0 - l1) if l0 != l1 else 1.0
        out[r] = iterations[j - 1] + frac * (iterations[j] - iterations[j - 1])
    return out.reshape(loss.shape[:-1])


def band(values, axis: int = 0):
    """``(median, low, high)`` over ``axis`` (the seeds): the median and the 10th and 90th
    percentiles."""
    v = np.asarray(values, float)
    return np.median(v, axis), np.percentile(v, 10, axis), np.percentile(v, 90, axis)


def time_to_eps(rounds, steps, latency, bandwidth, model_bytes, step_time):
    """Wall-clock time to reach a target loss under a simple cost model of federated training:

    ``T = rounds * latency + rounds * model_bytes / bandwidth + steps * step_time``

    i.e. every communication round pays one latency and one transfer of the model, and every
    local step (clients work in parallel, so ``steps`` is per client, ``rounds * tau`` for
    Local SGD) costs ``step_time``. Units: seconds, bytes and bytes per second.

    All arguments broadcast against each other (NumPy rules): e.g. ``rounds, steps: (T,)`` for
    several ``tau`` and ``latency: (A, 1)`` give ``(A, T)``. ``rounds`` and ``steps`` may be
    ``inf`` (a run that never reached the target), which gives ``inf``. Raises ValueError for a
    negative rounds, steps, latency, model_bytes or step_time, or a non-positive bandwidth.
    """
    args = {
        "rounds": rounds,
        "steps": steps,
        "latency": latency,
        "model_bytes": model_bytes,
        "step_time": step_time,
    }
    arrays = {}
    for name, value in args.items():
        a = np.asarray(value, float)
        if np.any(np.isnan(a)) or np.any(a < 0):
            raise ValueError(f"{name} must be non-negative numbers, got {value!r}")
        arrays[name] = a
    bw = np.asarray(bandwidth, float)
    if np.any(np.isnan(bw)) or np.any(bw <= 0):
        raise ValueError(f"bandwidth must be positive (bytes per second), got {bandwidth!r}")
    r, s = arrays["rounds"], arrays["steps"]
    return r * arrays["latency"] + r * arrays["model_bytes"] / bw + s * arrays["step_time"]
