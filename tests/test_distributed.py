"""Clients sharded over devices (localsgd.distributed) give the single-device numbers.

JAX fixes its device count when it starts, so every check that needs several devices runs in a
fresh Python with ``--xla_force_host_platform_device_count`` (CPU devices), and the multi-process
check starts two processes that meet through ``jax.distributed`` on a free loopback port and
exchange data through gloo (JAX's CPU collectives).

Tolerance, not bitwise: each client's local steps are computed as on one device, but a sum over
clients (the average, the global loss) adds per-device partial sums in another order, so values
differ in the last float32 bits. Every array must agree to ``RTOL = 1e-5`` of its largest entry
(plus ``ATOL = 1e-6``); differences of nearby quantities such as the gradient gap are only
accurate relative to the gradients' scale, not their own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6
# K=8 clients over 4 devices; small enough to compile in seconds on two cores.
TINY = dict(n=64, d=8, m=32, L=2, num_clients=8, rounds=4, tau=3, eta=0.1, eta_rule="fixed",
            metrics=("loss", "client_loss"), seeds=2)


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOCALSGD_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                                "JAX_PROCESS_ID"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT / "lib"), **extra)
    return env


def _start(code: str, devices: int, **env) -> subprocess.Popen:
    """Starts ``code`` in a fresh interpreter with ``devices`` CPU devices."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=_env(devices, **env),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, timeout: float = 300) -> dict:
    """The one JSON line that a process started by :func:`_start` prints last."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


SHARDED_VS_SINGLE = """
import json, re
import jax, jax.numpy as jnp, numpy as np
from localsgd import engine as en, data as dt, distributed as ds, model

assert jax.device_count() == 4, jax.devices()
K, m = 8, 32
sph = dt.sphere(64, 8, 1, seed=0)
clients = dt.to_clients(sph.x, sph.y, dt.partition(sph.labels, K, "iid", seed=0))
spec = model.NetSpec("deep", 8, m, 2, 1)
mesh = ds.client_mesh()
metrics = ("loss", "gap", "client_loss")

def diff(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert [x.shape for x in a] == [y.shape for y in b]
    err = []
    for x, y in zip(a, b):
        x, y = np.asarray(x, float), np.asarray(y, float)
        assert np.array_equal(np.isnan(x), np.isnan(y))
        x, y = np.nan_to_num(x), np.nan_to_num(y)
        err.append(float(np.max(np.abs(x - y) / (RTOL * np.max(np.abs(x)) + ATOL), initial=0)))
    return dict(bitwise=all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b)),
                worst=max(err))

out = {}
# local_sgd through run: one initialisation, one key
cfg = en.RunConfig("local_sgd", rounds=4, tau=3, eta=0.1, batch_size=4, metrics=metrics)
p0 = model.init(jax.random.key(0), spec)
ref = en.run(cfg, spec, p0, clients, jax.random.key(1))
got = ds.run(cfg, spec, p0, clients, jax.random.key(1), mesh=mesh)
out["local_sgd"] = diff((ref.metrics, ref.params, ref.diverged_at),
                        (got.metrics, got.params, got.diverged_at))
placed = ds.shard_clients(clients, mesh)
# One process owns every device here, so its "own clients" are all of them.
own = ds.shard_clients(clients, mesh, process_local=True)
out["sharded_input"] = all(a.sharding.spec == jax.P("clients") and b.sharding == a.sharding
                           and np.array_equal(a, b) for a, b in zip(placed, own))
# The compiled program: no collective in the local-step loop, an all-reduce for the average.
txt = ds.lower(cfg, spec, p0, clients, jax.random.key(1), mesh=mesh).compile().as_text()
out["hlo"] = txt

# local_gd through sweep: two seeds, two step sizes (continuing from a state: the two-process test)
# with the outputs on the training data and at probe points
cfg = en.RunConfig("local_gd", rounds=4, tau=3, eta=0.5,
                   metrics=metrics + ("outputs", "test_outputs"))
P0 = jax.vmap(lambda k: model.init(k, spec))(jax.random.split(jax.random.key(2), 2))
keys, etas = jax.random.split(jax.random.key(3), 2), np.array([0.5, 0.25], np.float32)
probe = jnp.asarray(dt.sphere(5, 8, 1, seed=1).x)
ref = en.sweep(cfg, spec, P0, clients, keys, etas, probe=probe)
got = ds.sweep(cfg, spec, P0, clients, keys, etas, mesh=mesh, probe=probe)
out["local_gd"] = diff((ref.metrics, ref.params, ref.state), (got.metrics, got.params, got.state))

# FedProx and SCAFFOLD through run, two rounds and two more from the state (SCAFFOLD's control
# variates are per-client state, sharded like the data)
for name, extra in (("fedprox", {"prox_mu": 0.5}), ("scaffold", {})):
    cfg = en.RunConfig(name, rounds=2, tau=3, eta=0.1, batch_size=4, metrics=metrics, **extra)
    ref = en.run(cfg, spec, p0, clients, jax.random.key(1))
    ref = en.run(cfg, spec, p0, clients, jax.random.key(1), start=ref.state)
    got = ds.run(cfg, spec, p0, clients, jax.random.key(1), mesh=mesh)
    got = ds.run(cfg, spec, p0, clients, jax.random.key(1), mesh=mesh, start=got.state)
    out[name] = diff((ref.metrics, ref.params, ref.state), (got.metrics, got.params, got.state))

# K that does not divide: a ValueError naming num_clients and the device count
try:
    six = dt.to_clients(sph.x, sph.y, dt.partition(sph.labels, 6, "iid", seed=0))
    ds.run(cfg, spec, p0, six, jax.random.key(1), mesh=mesh)
    out["indivisible"] = None
except ValueError as e:
    out["indivisible"] = str(e)
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    out["fallback_devices"] = ds.client_mesh(num_clients=6).shape["clients"]
    out["fallback_warning"] = str(w[0].message) if w else None
print(json.dumps(out))
""".replace("RTOL", repr(RTOL)).replace("ATOL", repr(ATOL))


def _local_loops(hlo: str, carry: str):
    """``(loop body, collectives)`` for every innermost while loop whose carry has ``carry``."""
    import re

    comps, cur = {}, None
    for line in hlo.splitlines():
        if line[:1] not in ("", " ") and line.rstrip().endswith("{") and "->" in line:
            cur = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            comps[cur] = []
        if cur is not None:
            comps[cur].append(line)
    comps = {k: "\n".join(v) for k, v in comps.items()}

    def reach(name, seen):
        if name in comps and name not in seen:
            seen.add(name)
            for grp in re.findall(r"(?:to_apply|calls|body|condition|branch_computations|"
                                  r"called_computations)=\{?([%\w.\-, ]+)\}?", comps[name]):
                for c in grp.split(","):
                    reach(c.strip().lstrip("%"), seen)
        return seen

    loops = []
    for body in set(re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo)):
        inner = reach(body, set())
        if any(" while(" in comps[c] for c in inner) or carry not in comps[body].splitlines()[0]:
            continue
        coll = re.findall(r"\b(all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)"
                          r"(?:-start)?\(", "\n".join(comps[c] for c in inner))
        loops.append((body, coll))
    return loops


@pytest.fixture(scope="module", autouse=True)
def _four_devices():
    """The four-device run starts with the module and compiles while the other tests run."""
    proc = _start(SHARDED_VS_SINGLE, devices=4)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def sharded(_four_devices):
    return _result(_four_devices)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    """Two processes with two CPU devices each (K=8 over 4 devices) through the command line
    and experiments.run, against the plain single-device experiments.run."""
    port = _free_port()
    # In chunks of two rounds (checkpoint_every): the second continues from the first's state.
    fields = [f"{k}={v!r}" for k, v in {**TINY, "algorithm": "local_sgd", "batch_size": 4,
                                         "checkpoint_every": 2}.items()]
    out = tmp_path / "out_{process}.npz"
    procs = []
    for pid in range(2):
        env = _env(2, LOCALSGD_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   LOCALSGD_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
                   LOCALSGD_NUM_PROCESSES="2", LOCALSGD_PROCESS_ID=str(pid),
                   LOCALSGD_RESULTS=str(tmp_path / f"results{pid}"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "localsgd", "--timeout", "60", "run", "--out",
             str(out), *fields], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    logs = []
    try:
        ref = _result(_start(f"""
            import json
            from localsgd import experiments as ex
            exp = ex.Experiment(**{{**{TINY!r}, "algorithm": "local_sgd", "batch_size": 4}})
            r = ex.run(exp, cache=False)
            print(json.dumps({{k: v.tolist() for k, v in r.metrics.items()}}))
            """, devices=1, LOCALSGD_RESULTS=str(tmp_path / "ref")))
        for p in procs:
            stdout, stderr = p.communicate(timeout=240)
            logs.append(stdout + stderr[-3000:])
            assert p.returncode == 0, "\n".join(logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert "2 process(es), 4 device(s)" in logs[0]
    for pid in range(2):
        got = np.load(str(out).format(process=pid))
        for k, v in ref.items():
            np.testing.assert_allclose(got[f"metrics/{k}"], np.asarray(v), rtol=RTOL, atol=ATOL,
                                       err_msg=f"process {pid}, metric {k}")


def test_mesh_environment_variable(monkeypatch, tmp_path):
    """Bad values are refused by name before anything is written. (LOCALSGD_MESH=clients itself
    runs in the two-process test, whose command line sets it for experiments.run.)"""
    from localsgd import distributed as ds
    from localsgd import experiments as ex

    monkeypatch.setenv("LOCALSGD_RESULTS", str(tmp_path))
    monkeypatch.setenv("LOCALSGD_MESH", "everything")
    with pytest.raises(ValueError, match="LOCALSGD_MESH must be 'clients'.*'everything'"):
        ex.run(ex.Experiment(n=16, d=6, m=8, L=1, num_clients=4, rounds=2, eta_rule="fixed"))
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("LOCALSGD_COORDINATOR_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ValueError, match="LOCALSGD_NUM_PROCESSES, LOCALSGD_PROCESS_ID must be set"):
        ds.initialize()


@pytest.mark.parametrize("algorithm", ["local_sgd", "local_gd", "fedprox", "scaffold"])
def test_sharded_equals_single_device(sharded, algorithm):
    worst = sharded[algorithm]["worst"]
    assert worst <= 1, f"{algorithm}: sharded and single-device differ by {worst} x tolerance"


def test_data_is_sharded_over_clients(sharded):
    assert sharded["sharded_input"]


def test_local_phase_has_no_communication(sharded):
    hlo = sharded["hlo"]
    # The local models of the 8 / 4 = 2 clients of a device, (2, m, m): the local-step loop's carry.
    loops = _local_loops(hlo, "f32[2,32,32]")
    assert loops, "no local-step loop found in the compiled program"
    assert all(not coll for _, coll in loops), loops
    assert "all-reduce(" in hlo or "all-reduce-start(" in hlo, "the average should be an all-reduce"


def test_indivisible_clients(sharded):
    msg = sharded["indivisible"]
    assert msg and "num_clients=6" in msg and "4 devices" in msg and "num_clients=4 or 8" in msg
    assert sharded["fallback_devices"] == 3 and "6" in sharded["fallback_warning"]
