"""Throughput of the client-sharded path (localsgd.distributed) against the single-device path,
for 1, 2 and 4 devices.

    python bench/scaling.py [--devices 1 2 4] [--repeats 3] [--out bench/scaling.json]

Each device count runs in its own Python (JAX fixes the device count at start-up). On a machine
without several accelerators the devices are forced CPU devices
(``--xla_force_host_platform_device_count``) made of the same cores: each runs its clients on
its own thread, so the ratio shows the sharded path's overhead (partitioning, the all-reduce per
round) against what the extra threads gain; on a host with several GPUs, run it with
``--devices`` up to their number and ``--no-force``.

Workload: Local SGD with K = 8 clients (a multiple of every device count), ``tau`` local steps
per round, the loss recorded every round. Throughput is client steps per second,
``K * rounds * tau / seconds``, the best of ``--repeats`` timed runs (the two paths
interleaved) after one compiling run.
The table and ``bench/scaling.json`` give both throughputs and their ratio (sharded / single).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = dict(K=8, n=1024, d=16, m=128, L=2, rounds=20, tau=10, batch_size=16)


def child(repeats: int) -> dict:
    import jax
    import numpy as np

    from localsgd import data as dt
    from localsgd import distributed as ds
    from localsgd import engine as en
    from localsgd import model

    w = WORK
    sph = dt.sphere(w["n"], w["d"], 1, seed=0)
    clients = dt.to_clients(sph.x, sph.y, dt.partition(sph.labels, w["K"], "iid", seed=0))
    spec = model.NetSpec("deep", w["d"], w["m"], w["L"], 1)
    params0 = model.init(jax.random.key(0), spec)
    cfg = en.RunConfig("local_sgd", rounds=w["rounds"], tau=w["tau"], eta=0.1,
                       batch_size=w["batch_size"], metrics=("loss",))
    mesh = ds.client_mesh()
    sharded = ds.shard_clients(clients, mesh)

    key = jax.random.key(1)
    fns = {"single": lambda: en.run(cfg, spec, params0, clients, key),
           "sharded": lambda: ds.run(cfg, spec, params0, sharded, key, mesh=mesh)}
    for fn in fns.values():
        jax.block_until_ready(fn())  # compiles
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):  # interleaved, so that a busy moment hits both alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - t0)
    single, shard = best["single"], best["sharded"]
    a = en.run(cfg, spec, params0, clients, key).metrics["loss"]
    b = ds.run(cfg, spec, params0, sharded, key, mesh=mesh).metrics["loss"]
    steps = w["K"] * w["rounds"] * w["tau"]
    return {"devices": jax.device_count(), "platform": jax.default_backend(),
            "single_seconds": single, "sharded_seconds": shard,
            "single_steps_per_s": steps / single, "sharded_steps_per_s": steps / shard,
            "ratio": single / shard,
            "max_loss_difference": float(np.max(np.abs(np.asarray(a) - np.asarray(b))))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=str(HERE / "scaling.json"))
    p.add_argument("--no-force", action="store_true",
                   help="use the real devices (GPUs) instead of forced CPU devices")
    p.add_argument("--timeout", type=float, default=600, help="seconds per device count")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats)))
        return 0
    bad = [d for d in args.devices if d < 1 or WORK["K"] % d]
    if bad:
        p.error(f"--devices must divide K={WORK['K']}, got {bad}")
    rows = []
    for d in args.devices:
        env = dict(os.environ)
        if not args.no_force:
            env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={d}", JAX_PLATFORMS="cpu")
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(d)))
        proc = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                              env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"Local SGD, K={WORK['K']} clients, m={WORK['m']}, L={WORK['L']}, "
          f"{WORK['rounds']} rounds x tau={WORK['tau']}; client steps per second (best of "
          f"{args.repeats})")
    print(f"{'devices':>7} {'platform':>8} {'single':>10} {'sharded':>10} {'ratio':>6} "
          f"{'|dloss|':>9}")
    for r in rows:
        print(f"{r['devices']:>7} {r['platform']:>8} {r['single_steps_per_s']:>10.0f} "
              f"{r['sharded_steps_per_s']:>10.0f} {r['ratio']:>6.2f} "
              f"{r['max_loss_difference']:>9.1e}")
    out = {"workload": WORK, "forced_cpu_devices": not args.no_force, "repeats": args.repeats,
           "machine": platform.machine(), "cpus": os.cpu_count(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
