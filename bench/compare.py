"""Time two versions of the library on bench/run.py's cases, interleaved, and print the ratios.

    python bench/compare.py BASE_TREE NEW_TREE [--cases R1,R2] [--pairs 4] [--reps 5]

Each tree is a checkout (``git worktree add`` or ``git archive REV lib bench | tar -x -C DIR``).
For every case the two trees run in turn, each in a fresh process that compiles the case, runs
it once, then times ``--reps`` runs (median); the order alternates between pairs so that a slow
spell of a shared machine hits both sides alike. Reported: the median over pairs of the
per-pair ratio new / base (below 1: the new tree is faster) and each pair's times and final losses
(equal losses: both trees computed the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, statistics, sys, time
tree, case, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path[:0] = [tree + "/bench", tree + "/lib"]
import jax
import run as rb
lib = getattr(rb, "en", None) or rb.al  # the engine module, or the older algorithms module
spec, params0, data, cfg = rb.setup(rb.CASES[case])
key = jax.random.key(1)
f = lambda: jax.block_until_ready(lib.run(cfg, spec, params0, data, key))
f()
ts = []
for _ in range(reps):
    t0 = time.perf_counter()
    out = f()
    ts.append(time.perf_counter() - t0)
print(json.dumps({"median": statistics.median(ts), "loss": float(out.metrics["loss"][-1])}))
"""


def time_tree(tree: str, case: str, reps: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    out = subprocess.run([sys.executable, "-c", WORKER, tree, case, str(reps)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{tree} {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--cases", default="R1,R2")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    for case in args.cases.split(","):
        ratios, rows = [], []
        for p in range(args.pairs):
            order = (args.base, args.new) if p % 2 == 0 else (args.new, args.base)
            t = {tree: time_tree(tree, case, args.reps) for tree in order}
            ratios.append(t[args.new]["median"] / t[args.base]["median"])
            rows.append([t[args.base]["median"], t[args.new]["median"], t[args.base]["loss"],
                         t[args.new]["loss"]])
        print(case, json.dumps({"ratio_new_over_base": statistics.median(ratios),
                                "pair_ratios": ratios, "pairs": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
