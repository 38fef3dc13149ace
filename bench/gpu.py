"""The bench on a GPU: the reference cases and R3-GPU at fp32 and at tf32, each against the card's
own matrix-product rate at that precision.

    python bench/gpu.py [--reps 3] [--only R3-GPU] [--layouts] [--out FILE] [--smoke]

For a machine with one CUDA GPU and JAX, Flax and NumPy (no FedJAX, no papermill): the library
runs unchanged (``localsgd.engine.run`` batches the clients with ``vmap`` on an accelerator).
For each precision, ``jax.default_matmul_precision`` set to ``"highest"`` (true fp32 products)
and to ``"tensorfloat32"`` (the tensor cores' tf32 mode, JAX's default for fp32 on these cards):

* the card's rate for an 8192^3 fp32 product at that precision, probed between timed runs;
* R1, R2, R3 and R3-GPU (``m = 4096``, ``K = 64``, Local GD) with the library and the plain
  per-client loop (``bench/baseline.py``), interleaved, medians of ``--reps`` repetitions;
  FLOPs counted as in ``bench/run.py`` (forward and backward of the trained layers);
* the sweeps of ``bench/run.py`` (8 seeds, 8 step sizes of R1 in one program against 8 runs).

Also: the same R1 run on the GPU (fp32) and on the host CPU, to show the answer does not depend
on the device beyond rounding; R2's compile time. ``--only R3-GPU --reps 2`` is a short check
(the device-vs-CPU run and one case); ``--smoke`` shrinks everything to check the script on a
CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as rb  # noqa: E402  (bench/run.py: cases, set-up, timing helpers)

jax, jnp, np, en = rb.jax, rb.jnp, rb.np, rb.en

PRECISIONS = {"fp32": "highest", "tf32": "tensorfloat32"}


def cpu_vs_device(case: dict) -> dict:
    """One run of ``case`` on the default device and on the host CPU: the largest relative
    difference of the recorded losses and of the final weights."""
    spec, params0, data, cfg = rb.setup(case)
    key = jax.random.key(1)
    with jax.default_matmul_precision("highest"):
        dev = en.run(cfg, spec, params0, data, key)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        p_cpu = jax.device_put(params0, cpu)
        host = en.run(cfg, spec, p_cpu, data, jax.device_put(key, cpu))

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    return {
        "loss_rel_diff": rel(dev.metrics["loss"], host.metrics["loss"]),
        "weights_rel_diff": max(rel(a, b) for a, b in zip(dev.params["trainable"],
                                                          host.params["trainable"])),
        "final_loss_device": float(dev.metrics["loss"][-1]),
        "final_loss_cpu": float(host.metrics["loss"][-1]),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(BENCH / "results-gpu.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    ap.add_argument("--only", default=None, help="comma-separated cases, e.g. R3-GPU")
    ap.add_argument("--layouts", action="store_true",
                    help="only R3 and R3-GPU, with the clients batched (vmap) and in turn (map)")
    args = ap.parse_args(argv)
    cases = {k: dict(v) for k, v in rb.CASES.items()}
    n_probe = 8192
    if args.smoke:
        for c in cases.values():
            c.update(m=min(c["m"], 64), K=min(c["K"], 4), rounds=2)
        n_probe = 256
    info = rb.machine_info()
    print(f"device: {info['device']} ({info['jax_backend']}), jax {jax.__version__}", flush=True)
    out = {"machine": info, "reps": args.reps, "precisions": {}}
    t0 = time.perf_counter()
    if not args.layouts:
        out["cpu_vs_device"] = cpu_vs_device(cases["R1"])
        print("R1 on the device vs the host CPU:", out["cpu_vs_device"], flush=True)
    if args.layouts or args.only:
        names = args.only.split(",") if args.only else ["R3", "R3-GPU"]
        cases = {k: cases[k] for k in names}
    for label, prec in PRECISIONS.items():
        with jax.default_matmul_precision(prec):
            probe = rb.MatmulProbe(n=n_probe, repeat=3)
            peak = probe()
            print(f"{label}: {n_probe}^3 matmul {peak / 1e3:.1f} TFLOP/s", flush=True)
            rows = {}
            with tempfile.TemporaryDirectory() as tmp:
                for name, case in cases.items():
                    rows[name] = rb.bench_case(
                        name, case, args.reps, probe, None, Path(tmp),
                        loops=("map", "vmap") if args.layouts else ())
                    r = rows[name]["results"]["library"]
                    print(f"  {name}: {r['steps_per_s']:.0f} steps/s, "
                          f"{100 * r['fraction_of_matmul']:.1f}% of the matmul rate, "
                          f"{r['vs_plain']:.2f}x plain", flush=True)
            out["precisions"][label] = {"matmul_tflops": peak / 1e3, "n": n_probe, "cases": rows}
    if args.layouts or args.only:
        out["sweeps"] = {}
        out["compile"] = None
    else:
        with jax.default_matmul_precision("highest"):
            out["sweeps"] = rb.bench_sweeps(args.reps)
            out["compile"] = rb.bench_compile("R2")
    out["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    for label, p in out["precisions"].items():
        print(f"\n{label} (matmul {p['matmul_tflops']:.1f} TFLOP/s)")
        rb.print_table(p["cases"])
    for k, v in out["sweeps"].items():
        print(f"sweep {k}: {v['speedup']:.2f}x, bitwise equal: {v['bitwise_equal']}")
    if out["compile"]:
        print(f"compile R2: {out['compile']['total_s']:.2f}s")
    print(f"total {out['seconds']:.0f}s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
