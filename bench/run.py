"""Performance benchmark of localsgd (``make bench``).

Reference configurations (ALS19 deep ReLU net, ``d = 64``, ``d_out = 10``, ``L = 3`` trained
``m x m`` layers, ``K = 8`` clients of 64 samples each, the loss recorded every round):

* R1: Local SGD, ``m = 128``, ``b = 16``, ``tau = 10``, 20 rounds;
* R2: R1 with ``m = 512``;
* R3: Local GD (the full local batch of 64), ``m = 1024``, ``tau = 10``, 10 rounds;
* R3-GPU (``--gpu-extra``; run by default only when JAX's backend is a GPU): R3 with
  ``m = 4096`` and ``K = 64``;
* R4: Local SGD with one trained layer (``L = 1``), ``m = 2048``, ``b = 4``, ``tau = 4``, 10
  rounds: chapter 11's widest width-axis run, where a client model (16 MB) outgrows the cache.
  The library is also timed with ``layout="map"`` and ``layout="lowrank"`` forced
  (``lib:map``, ``lib:lowrank``; ``vs_lib:map`` in the results).

Each is run with the library (``localsgd.engine.run``: one compiled program), with the plain
baseline (``bench/baseline.py``: clients in a Python loop, one jitted step per call) and, where it
can be imported, with FedJAX's FedAvg (``bench/fedjax/worker.py``, in its own virtual environment
``bench/fedjax/.venv`` that ``--install-fedjax`` makes; skipped with a message otherwise). On a
CPU the bench makes one JAX CPU device per core (``--cpu-devices``) and adds the row
``shardedN``: the library's client-sharded path (``localsgd.distributed.run``) over ``N`` of
them, the same algorithm with each device's clients on its own thread (its numbers equal the
single-device run's to float32 rounding).

Timing on a shared machine: the implementations' repetitions are interleaved (library, baseline,
FedJAX, library, ...) together with a probe of the machine's matrix-product rate, and the table
reports medians; every ratio is the median of per-repetition ratios, so that a slow spell hits
both sides of a ratio alike. Compilation is excluded from the step rates (one warm-up run each)
and reported on its own.

Counting FLOPs (from the shapes; only the trained layers, the work any implementation must do):
per sample and per trained ``m x m`` layer, the forward product costs ``2 m^2`` and the backward
``4 m^2`` (``2 m^2`` for the weight gradient, ``2 m^2`` for the gradient with respect to the
layer's input), except that the first trained layer needs no input gradient. So a local step on
``b`` samples costs ``b (6 L - 2) m^2`` FLOPs (``16 b m^2`` for ``L = 3``). Not counted: the fixed
``A`` (``2 d m`` a sample, which the library computes once per run and the baselines every
step), the ``d_out x m`` readout, the update ``W -= eta g`` and the per-round loss.
``steps/s`` counts client-steps: ``K * tau * rounds / seconds``.

Also measured: 8 seeds and 8 learning rates of R1 in one program (``engine.sweep``) against
8 sequential runs; R2's compile time; the compiled program's memory against ``tau``; the peak
resident memory of a process that runs R3. Results go to ``bench/results.json``.

Options: ``--quick`` (fewer repetitions), ``--reps N``, ``--no-fedjax``, ``--fedjax-python PATH``,
``--install-fedjax``, ``--gpu-extra``, ``--only R1,R2``, ``--cpu-devices N``, ``--compare-loops``,
``--skip-extras``, ``--out FILE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "lib"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from localsgd import __version__ as LOCALSGD_VERSION  # noqa: E402
from localsgd import data as dt  # noqa: E402
from localsgd import engine as en  # noqa: E402
from localsgd import model  # noqa: E402

FEDJAX_VENV = BENCH / "fedjax" / ".venv"
FEDJAX_PIN = "fedjax==0.0.17"

# name: (m, K, algorithm, batch size, tau, rounds)
CASES = {
    "R1": dict(m=128, K=8, algorithm="local_sgd", b=16, tau=10, rounds=20),
    "R2": dict(m=512, K=8, algorithm="local_sgd", b=16, tau=10, rounds=20),
    "R3": dict(m=1024, K=8, algorithm="local_gd", b=None, tau=10, rounds=10),
    "R3-GPU": dict(m=4096, K=64, algorithm="local_gd", b=None, tau=10, rounds=10),
    "R4": dict(m=2048, K=8, algorithm="local_sgd", b=4, tau=4, rounds=10, L=1),
}
LOOPS = {"R4": ("map", "lowrank")}  # layouts timed on a case whatever --compare-loops says
N_PER_CLIENT, D, D_OUT, L, ETA = 64, 64, 10, 3, 0.01


# ----------------------------------------------------------------------------------------------
# Problem set-up and FLOP counting


def setup(case: dict, seed: int = 0):
    """The case's network, initial weights and client data (iid split of points on the sphere)."""
    K = case["K"]
    ds = dt.sphere(K * N_PER_CLIENT, D, D_OUT, seed=seed)
    data = dt.to_clients(ds.x, ds.y, dt.partition(ds.labels, K, seed=seed))
    spec = model.NetSpec("deep", D, case["m"], case.get("L", L), D_OUT)
    params0 = model.init(jax.random.key(seed), spec)
    cfg = en.RunConfig(case["algorithm"], rounds=case["rounds"], tau=case["tau"], eta=ETA,
                       batch_size=case["b"])
    return spec, params0, data, cfg


def flops_per_step(spec: model.NetSpec, batch: int) -> float:
    """FLOPs of one client's local step on ``batch`` samples (see the module docstring)."""
    m2 = spec.m * spec.m
    return batch * (2 * spec.L * m2 + 2 * spec.L * m2 + 2 * (spec.L - 1) * m2)


def client_steps(case: dict) -> int:
    return case["K"] * case["tau"] * case["rounds"]


# ----------------------------------------------------------------------------------------------
# Timing helpers


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class MatmulProbe:
    """The machine's fp32 matrix-product rate: a jitted ``n x n x n`` product (``n = 1024``),
    best of ``repeat`` calls; called between the timed runs so that every run has a reference
    measured under the same load."""

    def __init__(self, n: int = 1024, repeat: int = 5):
        self.n, self.repeat = n, repeat
        k1, k2 = jax.random.split(jax.random.key(0))
        self.a = jax.random.normal(k1, (n, n), jnp.float32)
        self.b = jax.random.normal(k2, (n, n), jnp.float32)
        self.f = jax.jit(jnp.matmul)
        jax.block_until_ready(self.f(self.a, self.b))

    def __call__(self) -> float:
        best = min(_timed(lambda: jax.block_until_ready(self.f(self.a, self.b)))
                   for _ in range(self.repeat))
        return 2.0 * self.n ** 3 / best / 1e9  # GFLOP/s


# ----------------------------------------------------------------------------------------------
# FedJAX, in its own virtual environment


def fedjax_python(args) -> str | None:
    if args.fedjax_python:
        return args.fedjax_python
    p = FEDJAX_VENV / "bin" / "python"
    return str(p) if p.exists() else None


def install_fedjax() -> None:
    """Makes ``bench/fedjax/.venv`` with FedJAX and this venv's jax/jaxlib versions."""
    print(f"installing {FEDJAX_PIN} into {FEDJAX_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(FEDJAX_VENV)], check=True)
    pins = [f"jax=={jax.__version__}", f"jaxlib=={jax.__version__}"]
    subprocess.run([str(FEDJAX_VENV / "bin" / "python"), "-m", "pip", "install",
                    "--disable-pip-version-check", "-q", FEDJAX_PIN, *pins], check=True)


class FedJaxWorker:
    """``bench/fedjax/worker.py`` in FedJAX's interpreter, one JSON line per request."""

    def __init__(self, python: str):
        self.proc = subprocess.Popen([python, str(BENCH / "fedjax" / "worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"FedJAX worker exited: {err.strip().splitlines()[-3:]}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def close(self):
        try:
            self.ask(op="quit")
        except Exception:
            pass
        self.proc.kill()


def start_fedjax(args):
    if args.no_fedjax:
        return None, "skipped (--no-fedjax)"
    py = fedjax_python(args)
    if py is None:
        return None, ("skipped: FedJAX is not installed; `.venv/bin/python bench/run.py "
                      "--install-fedjax` installs it into bench/fedjax/.venv")
    try:
        w = FedJaxWorker(py)
        return w, None
    except Exception as e:  # noqa: BLE001
        return None, f"skipped: FedJAX could not be started ({e})"


# ----------------------------------------------------------------------------------------------
# One reference configuration


def bench_case(name: str, case: dict, reps: int, probe: MatmulProbe, fedjax, tmpdir: Path,
               loops=()):
    from baseline import PlainLocalSGD

    spec, params0, data, cfg = setup(case)
    key = jax.random.key(1)
    steps = client_steps(case)
    batch = case["b"] or N_PER_CLIENT
    step_flops = flops_per_step(spec, batch)
    row = {"config": {k: v for k, v in case.items()}, "flops_per_client_step": step_flops}

    def lib():
        out = en.run(cfg, spec, params0, data, key)
        jax.block_until_ready(out)
        return out

    t_first = _timed(lib)  # compile + one run
    plain = PlainLocalSGD(spec, params0, data, rounds=cfg.rounds, tau=cfg.tau, eta=cfg.eta,
                          batch_size=cfg.batch_size)
    plain.run(0)  # compile its step
    impls = {"library": lib, "plain": lambda: plain.run(0)}
    if jax.default_backend() == "cpu" and jax.device_count() > 1:
        # The library's sharded path (localsgd.distributed) over the host's CPU devices, one per
        # core (--cpu-devices): each device runs its clients on its own thread.
        from localsgd import distributed as ds
        mesh = ds.client_mesh(num_clients=case["K"])
        sharded_data = ds.shard_clients(data, mesh)

        def sharded():
            out = ds.run(cfg, spec, params0, sharded_data, key, mesh=mesh)
            jax.block_until_ready(out)
            return out

        sharded()  # compile
        impls[f"sharded{mesh.size}"] = sharded
    for loop in loops:  # the library with a forced client layout (RunConfig.layout)
        forced_cfg = dataclasses.replace(cfg, layout=loop)

        def forced(c=forced_cfg):
            return jax.block_until_ready(en.run(c, spec, params0, data, key))
        forced()  # compile
        impls[f"lib:{loop}"] = forced
    fed_err = None
    if fedjax is not None:
        npz = tmpdir / f"{name}.npz"
        np.savez(npz, x=data.x, y=data.y, A=params0["fixed"]["A"], B=params0["fixed"]["B"],
                 L=spec.L, **{f"W{i}": w for i, w in enumerate(params0["trainable"])})
        try:
            fedjax.ask(op="setup", case=name, npz=str(npz), tau=cfg.tau, rounds=cfg.rounds,
                       batch_size=cfg.batch_size, eta=cfg.eta)
            impls["fedjax"] = lambda: fedjax.ask(op="time", case=name)["seconds"]
        except Exception as e:  # noqa: BLE001
            fed_err = f"FedJAX failed on {name}: {e}"
            print("  " + fed_err, flush=True)

    times = {k: [] for k in impls}
    peaks = []
    for _ in range(reps):
        peaks.append(probe())
        for k, fn in impls.items():
            if k == "fedjax":
                times[k].append(fn())  # the worker times itself, excluding the pipe
            else:
                times[k].append(_timed(fn))
    out_lib = lib()

    res = {}
    for k, ts in times.items():
        rates = [steps / t for t in ts]
        gflops = [r * step_flops / 1e9 for r in rates]
        res[k] = {
            "seconds": ts,
            "steps_per_s": statistics.median(rates),
            "gflops": statistics.median(gflops),
            "fraction_of_matmul": statistics.median([g / p for g, p in zip(gflops, peaks)]),
        }
    for k in res:
        for ref in ("plain", "fedjax", "lib:map"):
            if ref in times and k != ref:
                res[k][f"vs_{ref}"] = statistics.median(
                    [tr / tk for tk, tr in zip(times[k], times[ref])])
    row.update(results=res, matmul_gflops=peaks, compile_and_first_run_s=t_first,
               final_loss=float(out_lib.metrics["loss"][-1]),
               initial_loss=float(out_lib.metrics["loss"][0]))
    for k, fn in impls.items():
        if k.startswith("sharded"):
            row[f"{k}_max_loss_diff"] = float(np.max(np.abs(
                np.asarray(fn().metrics["loss"]) - np.asarray(out_lib.metrics["loss"]))))
    if fed_err:
        row["fedjax_error"] = fed_err
    return row


# ----------------------------------------------------------------------------------------------
# Sweeps, compile time, memory


def bench_sweeps(reps: int):
    """8 seeds (and 8 learning rates) of R1 in one ``engine.sweep`` against 8 ``run`` calls."""
    case = CASES["R1"]
    spec, _, data, cfg = setup(case)
    S = 8
    keys = jax.random.split(jax.random.key(11), S)
    params = jax.vmap(lambda k: model.init(k, spec))(jax.random.split(jax.random.key(12), S))
    one = [jax.tree.map(lambda a, s=s: a[s], params) for s in range(S)]
    etas = np.geomspace(0.002, 0.05, S).astype(np.float32)
    p_same = one[0]
    params_same = jax.tree.map(lambda a: jnp.stack([a] * S), p_same)
    out = {}
    for label, sw_kw, seq in (
        ("seeds", dict(params0=params, keys=keys),
         [dict(config=cfg, params0=one[s], key=keys[s]) for s in range(S)]),
        ("learning_rates", dict(params0=params_same, keys=jnp.stack([keys[0]] * S), etas=etas),
         [dict(config=en.RunConfig(cfg.algorithm, cfg.rounds, cfg.tau, float(etas[s]),
                                   cfg.batch_size), params0=p_same, key=keys[0])
          for s in range(S)]),
    ):
        def sweep_fn(sw_kw=sw_kw):
            return jax.block_until_ready(en.sweep(cfg, spec, data=data, **sw_kw))

        def seq_fn(seq=seq):
            return [jax.block_until_ready(en.run(spec=spec, data=data, **kw)) for kw in seq]

        sw, runs = sweep_fn(), seq_fn()  # compile both
        t_sw, t_seq = [], []
        for _ in range(reps):
            t_sw.append(_timed(sweep_fn))
            t_seq.append(_timed(seq_fn))
        diffs = []
        for s, r in enumerate(runs):
            diffs.append(float(np.max(np.abs(np.asarray(sw.metrics["loss"][s])
                                              - np.asarray(r.metrics["loss"])))))
            for a, b in zip(sw.params["trainable"], r.params["trainable"]):
                diffs.append(float(np.max(np.abs(np.asarray(a[s]) - np.asarray(b)))))
        out[label] = {
            "runs": S,
            "sweep_s": statistics.median(t_sw),
            "sequential_s": statistics.median(t_seq),
            "speedup": statistics.median([b / a for a, b in zip(t_sw, t_seq)]),
            "max_abs_diff": max(diffs),
            "bitwise_equal": max(diffs) == 0.0,
        }
    return out


def bench_compile(name: str = "R2"):
    """Trace + lower and XLA compile time of one case's program, measured apart, best of two
    (JAX's in-memory caches are cleared first, so that both really happen)."""
    spec, params0, data, cfg = setup(CASES[name])
    data = dt.ClientData(*(jnp.asarray(a) for a in data))
    args = (cfg, spec, jnp.float32(cfg.eta), params0, data, jax.random.key(1), None)
    best = None
    for _ in range(2):
        jax.clear_caches()
        t0 = time.perf_counter()
        lowered = en._train_jit.lower(*args, layout=en.layout_for(cfg))
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        if best is None or t2 - t0 < best[0] + best[1]:
            best = (t1 - t0, t2 - t1)
    return {"case": name, "trace_lower_s": best[0], "compile_s": best[1],
            "total_s": best[0] + best[1]}


def bench_memory_vs_tau(name: str = "R1", taus=(10, 100, 1000)):
    """The compiled program's temporary memory (XLA's memory analysis) against ``tau``, the loss
    recorded every round: flat means the recorded metrics and the local steps take no memory that
    grows with the number of steps."""
    spec, params0, data, cfg = setup(CASES[name])
    data = dt.ClientData(*(jnp.asarray(a) for a in data))
    out = {}
    for tau in taus:
        c = en.RunConfig(cfg.algorithm, rounds=cfg.rounds, tau=tau, eta=cfg.eta,
                         batch_size=cfg.batch_size)
        ma = en._train_jit.lower(c, spec, jnp.float32(c.eta), params0, data,
                                 jax.random.key(1), None, layout=en.layout_for(c)
                                 ).compile().memory_analysis()
        out[str(tau)] = {"temp_bytes": int(ma.temp_size_in_bytes),
                         "output_bytes": int(ma.output_size_in_bytes),
                         "argument_bytes": int(ma.argument_size_in_bytes)}
    return out


def peak_rss_child(name: str):
    """Entry point of the subprocess that runs one case and reports its peak resident memory."""
    spec, params0, data, cfg = setup(CASES[name])
    jax.block_until_ready(en.run(cfg, spec, params0, data, jax.random.key(1)))
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"case": name, "peak_rss_bytes": kib * 1024}))


def bench_peak_rss(name: str = "R3"):
    r = subprocess.run([sys.executable, __file__, "--peak-rss-child", name],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Report


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    versions = {"localsgd": LOCALSGD_VERSION, "jax": jax.__version__,
                "jaxlib": _version("jaxlib"),
                "numpy": np.__version__, "python": platform.python_version()}
    try:
        import flax
        versions["flax"] = flax.__version__
    except ImportError:
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "jax_backend": jax.default_backend(), "device": dev.device_kind,
            "device_count": jax.device_count(), "versions": versions,
            "load_average_at_start": os.getloadavg()}


def print_table(rows: dict):
    hdr = (f"{'case':7} {'impl':11} {'steps/s':>9} {'GFLOP/s':>8} {'% matmul':>9} "
           f"{'vs plain':>9} {'vs FedJAX':>9}")
    print(hdr)
    print("-" * len(hdr))
    for name, row in rows.items():
        for impl, r in row["results"].items():
            vp = f"{r['vs_plain']:.2f}x" if "vs_plain" in r else "-"
            vf = f"{r['vs_fedjax']:.2f}x" if "vs_fedjax" in r else "-"
            print(f"{name:7} {impl:11} {r['steps_per_s']:9.0f} {r['gflops']:8.1f} "
                  f"{100 * r['fraction_of_matmul']:8.1f}% {vp:>9} {vf:>9}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per case")
    ap.add_argument("--only", default=None, help="comma-separated cases, e.g. R1,R2")
    ap.add_argument("--no-fedjax", action="store_true")
    ap.add_argument("--fedjax-python", default=None, help="interpreter that can import fedjax")
    ap.add_argument("--install-fedjax", action="store_true",
                    help=f"pip install {FEDJAX_PIN} into bench/fedjax/.venv first")
    ap.add_argument("--gpu-extra", action="store_true", help="also R3-GPU (m=4096, K=64)")
    ap.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1,
                    help="CPU devices JAX makes of the host (default: one per core); with more "
                         "than one, the bench adds the library's client-sharded path "
                         "(localsgd.distributed) as the row 'shardedN'")
    ap.add_argument("--compare-loops", action="store_true",
                    help="also time the library with each client layout forced (map, vmap)")
    ap.add_argument("--skip-extras", action="store_true",
                    help="no sweeps, compile-time and memory measurements")
    ap.add_argument("--out", default=str(BENCH / "results.json"))
    ap.add_argument("--peak-rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peak_rss_child:
        return peak_rss_child(args.peak_rss_child)
    if args.install_fedjax and fedjax_python(args) is None:
        try:
            install_fedjax()
        except subprocess.CalledProcessError as e:
            print(f"FedJAX could not be installed ({e}); the bench goes on without it.")

    if args.cpu_devices > 1:
        # Before JAX starts its CPU backend; the library's single-device rows use device 0 and
        # run as fast as in a one-device process (measured), the sharded row uses them all.
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    info = machine_info()
    on_gpu = jax.default_backend() == "gpu"
    names = ["R1", "R2", "R3"] + (["R3-GPU"] if (args.gpu_extra or on_gpu) else []) + ["R4"]
    if args.only:
        names = [n for n in args.only.split(",") if n in CASES]
    reps = args.reps or (2 if args.quick else 5)
    print(f"machine: {info['cpu_model']}, {info['cores']} cores, backend {info['jax_backend']} "
          f"({info['device']}); load average {info['load_average_at_start'][0]:.1f}", flush=True)

    probe = MatmulProbe()
    peak = probe()
    print(f"fp32 matmul 1024^3: {peak:.1f} GFLOP/s", flush=True)
    fedjax, fed_msg = start_fedjax(args)
    if fed_msg:
        print("FedJAX: " + fed_msg, flush=True)
    results = {"machine": info, "matmul_gflops_1024": peak, "fedjax": fed_msg or "ran",
               "reps": reps, "cases": {}}
    if on_gpu:
        big = MatmulProbe(n=8192, repeat=3)
        results["matmul_gflops_8192"] = big()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                case_reps = reps if CASES[name]["m"] < 1024 or on_gpu else max(2, reps // 2)
                print(f"{name}: {CASES[name]} x {case_reps} reps ...", flush=True)
                results["cases"][name] = bench_case(
                    name, CASES[name], case_reps, probe, fedjax, Path(tmp),
                    loops=LOOPS.get(name, ("map", "vmap") if args.compare_loops else ()))
    finally:
        if fedjax is not None:
            fedjax.close()
    print()
    print_table(results["cases"])
    if not args.skip_extras:
        print("\nsweeps (R1, 8 runs in one program vs 8 sequential runs) ...", flush=True)
        results["sweeps"] = bench_sweeps(max(2, reps // 2 + 1))
        for k, v in results["sweeps"].items():
            print(f"  {k:15} sweep {v['sweep_s']:.3f}s  sequential {v['sequential_s']:.3f}s  "
                  f"speedup {v['speedup']:.2f}x  max |diff| {v['max_abs_diff']:.1e}"
                  f"{' (bitwise equal)' if v['bitwise_equal'] else ''}")
        results["compile"] = bench_compile("R2")
        c = results["compile"]
        print(f"compile R2: trace+lower {c['trace_lower_s']:.2f}s + XLA {c['compile_s']:.2f}s "
              f"= {c['total_s']:.2f}s")
        results["memory_vs_tau"] = bench_memory_vs_tau("R1")
        print("compiled temp memory of R1 against tau: " + ", ".join(
            f"tau={t}: {v['temp_bytes'] / 2**20:.2f} MiB"
            for t, v in results["memory_vs_tau"].items()))
        results["peak_rss"] = bench_peak_rss("R3")
        print(f"peak resident memory of a process running R3: "
              f"{results['peak_rss']['peak_rss_bytes'] / 2**30:.2f} GiB")
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
