"""Fits and summaries of recorded runs: linear-rate fits of log-loss, log-log slopes with their
uncertainty, iterations to reach a target loss, and the Markdown tables the chapters show, with
their numbers written one way (:func:`format_number`). NumPy and SciPy only, on the arrays a run
returns."""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import numpy as np
from scipy import stats


class Fit(NamedTuple):
    """A least-squares line ``y = intercept + slope x`` with its slope's standard error, the
    ``level`` confidence interval of the slope (Student t, ``p - 2`` degrees of freedom), ``r2``
    and the number of points ``p``."""

    slope: float
    intercept: float
    stderr: float
    low: float
    high: float
    r2: float
    points: int


def fit(x, y, *, log: str = "", level: float = 0.95) -> Fit:
    """Fits a line to the finite points of ``x, y: (p,)`` with ``scipy.stats.linregress``.

    ``log``: ``""`` (linear), ``"y"`` (``log y`` against ``x``: a rate) or ``"xy"`` (``log y``
    against ``log x``: an exponent). Needs at least 3 finite points (an interval needs one
    degree of freedom); raises ValueError otherwise.
    """
    if log not in ("", "y", "xy"):
        raise ValueError(f"log must be '', 'y' or 'xy', got {log!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same number of points, got {x.size} and {y.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        if log == "xy":
            x = np.log(x)
        if log:
            y = np.log(y)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        raise ValueError(f"x, y must hold at least 3 finite points to fit a line, got {ok.sum()}")
    r = stats.linregress(x[ok], y[ok])
    half = stats.t.ppf(0.5 + level / 2, ok.sum() - 2) * r.stderr
    return Fit(float(r.slope), float(r.intercept), float(r.stderr), float(r.slope - half),
               float(r.slope + half), float(r.rvalue**2), int(ok.sum()))


def exponent(x, y) -> float:
    """Exponent ``p`` of ``y ~ x^p`` (:func:`fit` with ``log="xy"``) for a verdict: NaN unless
    ``y: (p,)`` holds at least 3 values, all finite and positive, so that a degenerate
    measurement (a zero eigenvalue, a NaN) fails the checks built on it instead of being fitted
    over the points that remain."""
    y = np.asarray(y, float)
    if y.size < 3 or not np.all(np.isfinite(y) & (y > 0)):
        return float("nan")
    return fit(x, y, log="xy").slope


NOT_REACHED = "not reached"
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _as_number(value: Any) -> Any:
    """numpy / jax scalars -> Python numbers; the strings that JSON records hold for non-finite
    floats ("inf", "-inf", "nan") -> floats; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "-inf", "nan"):
        return float(value)
    return value


def format_number(value: Any, fmt: str | None = None) -> str:
    """A number as the book writes it, in tables, glued text and verdict boxes.

    * an integer, or a float equal to one (below 10^15), as an integer: ``4096``, not ``4096.0``
      (unless ``fmt`` asks for fixed or exponent notation, ``".2f"``, ``".1e"``);
    * infinity as ``"not reached"`` (a count of rounds or iterations for a run that never reached
      its target), minus infinity as ``"−∞"``, NaN as ``"n/a"``; the strings ``"inf"`` and
      ``"nan"`` of a JSON record likewise;
    * otherwise with ``fmt`` (a format spec such as ``".3f"``) or, by default, four significant
      digits (whole numbers from 10^4 on), a power of ten written ``1.2 × 10⁻⁷``; a nonzero
      value that ``fmt`` would round to zero (``"0.0"``) gets two significant digits instead.

    Booleans and other values come back as ``str(value)``.
    """
    value = _as_number(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    kind = fmt[-1:] if fmt else "g"
    if isinstance(value, numbers.Integral):
        return format(int(value), fmt) if kind in "deEfF%" else str(int(value))
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return NOT_REACHED if value > 0 else "−∞"
    if value.is_integer() and abs(value) < 1e15 and kind in "gGd":
        return str(int(value))
    if fmt is None and 1e4 <= abs(value) < 1e15:
        return f"{value:.0f}"
    text = format(value, ".4g" if fmt is None or kind == "d" else fmt)
    if value != 0 and not any(ch in "123456789" for ch in text.split("e")[0]):
        text = format(value, ".2g")
    return _power_of_ten(text)


def _power_of_ten(text: str) -> str:
    """``"1.2e-07"`` -> ``"1.2 × 10⁻⁷"``; text without an exponent unchanged."""
    if "e" not in text or text.startswith(("n", "-n")):
        return text
    mantissa, exp = text.split("e")
    exp = str(int(exp)).translate(_SUPERSCRIPT)
    return f"{mantissa} × 10{exp}"


def markdown_table(header, rows, align: str | None = None) -> str:
    """A Markdown pipe table: ``header`` is a sequence of column titles, ``rows`` a sequence of
    sequences of cells (already formatted strings, or numbers written by
    :func:`format_number`). ``align``: one character per column, ``l`` or ``r`` (default: left
    for the first column, right for the rest)."""
    header = [str(h) for h in header]
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be {len(header)} characters of 'l' or 'r', got {align!r}")

    def cell(v):
        return v if isinstance(v, str) else format_number(v)

    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    for row in rows:
        row = [cell(v) for v in row]
        if len(row) != len(header):
            raise ValueError(f"rows must have {len(header)} cells each, got {len(row)}: {row}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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


def linear_rates(iterations, loss, keep):
    """Per row of ``loss: (S, E)``, :func:`linear_rate` over the recorded points that ``keep:
    (S, E)`` selects; NaN for a row with fewer than 3 of them. Returns ``(S,)``."""
    it = np.asarray(iterations, float)
    out = np.full(len(loss), np.nan)
    for s, (row, k) in enumerate(zip(np.asarray(loss, float), np.asarray(keep, bool))):
        if k.sum() >= 3:
            out[s] = linear_rate(it[k], row[k])[0]
    return out


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


def format_pm(value: float, err: float, sig: int = 2) -> str:
    """``value ± err`` with ``err`` to ``sig`` significant figures and ``value`` to the same
    decimal place: ``format_pm(1.1623, 0.0937) == "1.162 ± 0.094"``. A zero or non-finite
    ``err`` shows ``value`` to four significant figures and the error as it is."""
    value, err = float(value), float(err)
    if not (np.isfinite(err) and err > 0):
        return f"{value:.4g} ± {err:g}"
    decimals = max(0, sig - 1 - int(np.floor(np.log10(err))))
    return f"{value:.{decimals}f} ± {err:.{decimals}f}"


def bootstrap_loglog(x, values, bootstrap: int = 1000, level: float = 0.95, seed: int = 0):
    """Exponent ``p`` of ``values ~ x^p`` with a bootstrap interval over the seeds.

    ``x: (P,)`` settings, ``values: (P, S)`` one value per setting and seed (non-finite values
    are left out of every fit). The seeds of each setting are resampled independently, the
    log-log line refitted ``bootstrap`` times, and the ``level`` percentile interval returned:
    ``(p, low, high)``. Raises ValueError for mismatched shapes or fewer than 3 finite points.
    """
    x, values = np.asarray(x, float), np.asarray(values, float)
    if values.ndim != 2 or values.shape[0] != x.size:
        raise ValueError(f"values must have shape (P={x.size}, S), got {values.shape}")
    X = np.repeat(x[:, None], values.shape[1], axis=1)
    p = fit(X, values, log="xy").slope
    rng = np.random.default_rng(seed)
    # every resample at once, (bootstrap, P, S); one draw of them all is the same stream of
    # integers as one draw per resample
    idx = rng.integers(0, values.shape[1], size=(bootstrap,) + values.shape)
    sample = np.take_along_axis(np.broadcast_to(values, idx.shape), idx, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.broadcast_to(np.log(X), idx.shape)
        ok = np.isfinite(sample) & (sample > 0) & np.isfinite(lx)
        ly = np.where(ok, np.log(np.where(ok, sample, 1.0)), 0.0)
    w = ok.astype(float)
    count = w.sum(axis=(1, 2))
    # a line needs 3 points at 2 or more settings; its least-squares slope, as linregress's
    usable = (count >= 3) & (ok.any(axis=2).sum(axis=1) >= 2)
    count = np.maximum(count, 1.0)
    dx = np.where(ok, lx - ((w * lx).sum(axis=(1, 2)) / count)[:, None, None], 0.0)
    dy = np.where(ok, ly - ((w * ly).sum(axis=(1, 2)) / count)[:, None, None], 0.0)
    sxx = (dx * dx).sum(axis=(1, 2))
    boot = (dx * dy).sum(axis=(1, 2))[usable] / sxx[usable]
    if not boot.size:
        return p, np.nan, np.nan
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return p, float(lo), float(hi)
