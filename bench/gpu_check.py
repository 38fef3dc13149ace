"""A short check of the library on a GPU: R1 on the device against the host CPU (both client
layouts), and R3-GPU's rate at fp32 and tf32 against the card's matmul rate.

    python bench/gpu_check.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu  # noqa: E402  (bench/gpu.py)
import run as rb  # noqa: E402

jax, al = rb.jax, rb.al


def main():
    print("R1 on the device vs the host CPU:", gpu.cpu_vs_device(rb.CASES["R1"]), flush=True)
    case = rb.CASES["R3-GPU"]
    spec, params0, data, cfg = rb.setup(case)
    key = jax.random.key(1)
    flops = rb.flops_per_step(spec, rb.N_PER_CLIENT) * rb.client_steps(case)
    for label, prec in gpu.PRECISIONS.items():
        with jax.default_matmul_precision(prec):
            peak = rb.MatmulProbe(n=8192, repeat=3)()
            jax.block_until_ready(al.run(cfg, spec, params0, data, key))
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                jax.block_until_ready(al.run(cfg, spec, params0, data, key))
                ts.append(time.perf_counter() - t0)
        rate = flops / min(ts) / 1e9
        print(f"R3-GPU {label}: {rb.client_steps(case) / min(ts):.0f} steps/s, "
              f"{rate / 1e3:.1f} TFLOP/s = {100 * rate / peak:.1f}% of the {peak / 1e3:.1f} "
              "TFLOP/s matmul", flush=True)


if __name__ == "__main__":
    main()
