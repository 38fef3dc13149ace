"""Command line: one experiment with its clients sharded over every device of every process.

::

    python -m localsgd info
    python -m localsgd run [--out FILE.npz] [--cache] [FIELD=VALUE ...]

``info`` prints the processes, the devices and the mesh. ``run`` builds a
:class:`localsgd.experiments.Experiment` from the fields (Python literals; ``metrics`` may be
comma-separated names) and runs it through :func:`localsgd.experiments.run` with
``LOCALSGD_MESH=clients`` (:mod:`localsgd.distributed`). Start it once per process with the
variables that :func:`localsgd.distributed.initialize` reads; without them it runs on this
process's devices alone. ``FILE`` may contain ``{process}``; without it only process 0 writes.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import time

import jax
import numpy as np

from . import distributed


def _field(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise ValueError(f"expected FIELD=VALUE, got {text!r}")
    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        v = value
    if name == "metrics" and isinstance(v, str):
        v = tuple(s for s in v.split(",") if s)
    return name, v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localsgd",
        description="Run an experiment with its clients sharded over every device of every "
        "process. Start one process per host (or per device group) with "
        "LOCALSGD_COORDINATOR_ADDRESS, LOCALSGD_NUM_PROCESSES and LOCALSGD_PROCESS_ID set; "
        "without them it runs on this process's devices alone.")
    p.add_argument("--timeout", type=int, default=300,
                   help="seconds to wait for every process to join (default 300)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the processes, devices and the mesh")
    r = sub.add_parser("run", help="run one Experiment; fields as FIELD=VALUE (Python literals)")
    r.add_argument("fields", nargs="*", metavar="FIELD=VALUE")
    r.add_argument("--out", help="write metrics, rounds, eta, diverged_at to this .npz "
                   "(process 0 only unless the name contains {process})")
    r.add_argument("--cache", action="store_true",
                   help="read and write the results cache ($LOCALSGD_RESULTS/cache)")
    return p


def main(argv=None) -> int:
    """Parses ``argv`` (default: the command line), joins the processes and runs the command;
    returns the exit status."""
    args = _parser().parse_args(argv)
    fields = dict(_field(f) for f in getattr(args, "fields", []))  # bad syntax: before start-up
    multi = distributed.initialize(timeout=args.timeout)
    pid = jax.process_index()
    mesh = distributed.client_mesh()
    if args.command == "info":
        print(f"process {pid} of {jax.process_count()} (multi-process: {multi}); local devices "
              f"{jax.local_devices()}; mesh {dict(mesh.shape)} over {mesh.devices.tolist()}",
              flush=True)
        return 0
    os.environ["LOCALSGD_MESH"] = "clients"
    # Imported after initialize: with LOCALSGD_MESH=clients in the environment, importing
    # experiments joins the processes itself, with the default timeout instead of --timeout.
    from . import experiments as ex

    exp = ex.Experiment(**fields)
    t0 = time.perf_counter()
    res = ex.run(exp, cache=args.cache)
    seconds = time.perf_counter() - t0
    if args.out and (pid == 0 or "{process}" in args.out):
        out = args.out.format(process=pid)
        arrays = {f"metrics/{k}": v for k, v in res.metrics.items()}
        np.savez(out, rounds=res.rounds, eta=res.eta, diverged_at=res.diverged_at, **arrays)
    if pid == 0:
        final = res.metrics[exp.metrics[0]][:, -1]
        print(f"{jax.process_count()} process(es), {math.prod(mesh.shape.values())} device(s): "
              f"{exp.metrics[0]} at round {int(res.rounds[-1])} = {np.asarray(final).tolist()} "
              f"({seconds:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
