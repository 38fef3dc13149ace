"""The same algorithms with the clients sharded over devices, on one host or several.

Design: the clients' leading array axis is split over a one-dimensional device mesh whose axis
is called ``clients``: device ``j`` of ``D`` holds clients ``j K/D .. (j+1) K/D - 1`` (their data
and, during a round, their local models). The engine is :mod:`localsgd.engine`'s program
itself (``layout="vmap"``), compiled once with every client-stacked input placed as
``NamedSharding(mesh, PartitionSpec("clients"))`` and everything else replicated; XLA's SPMD
partitioner propagates that placement through the program, so

* the local phase (the ``tau`` steps, ``vmap`` over clients) runs on each device's own clients
  with no communication (``tests/test_distributed.py`` checks the compiled program: no
  collective inside the local-step loop);
* the average ``sum_k (n_k/n) W_k`` (a ``tensordot`` over the clients axis) becomes a local
  partial sum and one all-reduce over the ``clients`` axis per round;
* metrics reduce the same way: global losses and gradients are all-reduced, per-client metrics
  stay sharded until the end of the run, when the result is gathered (replicated) so that every
  process holds all of it.

The numbers equal :func:`localsgd.engine.run` and :func:`~localsgd.engine.sweep` with
the same inputs up to float32 rounding: each client's local steps are computed as on one device,
but a sum over clients (the average, the global loss) adds per-device partial sums, in another
order than one device does. The PRNG is partitionable (``jax_threefry_partitionable``, JAX's
default), so the minibatches drawn are the same.

``K`` must be a multiple of the number of devices. Clients are not padded: a padding client
would need samples (its local mean divides by its sample count) and those samples would enter the
global loss. With an explicit mesh a ``K`` that does not divide is a ValueError saying which
``K`` or device count works; :func:`client_mesh` with ``num_clients`` (and no explicit devices)
instead uses the largest number of devices that divides ``K``, with a warning.

Several hosts (or processes): every process runs the same program (JAX's multi-controller
model). :func:`initialize` starts ``jax.distributed`` from environment variables; then
``jax.devices()`` lists every process's devices, :func:`client_mesh` spans them all (ordered by
process, so each process owns a contiguous block of clients) and :func:`shard_clients` builds the
global client arrays with each process materialising only its own clients on its devices. On CPU
the collectives go through gloo (``jax_cpu_collectives_implementation``).

The variables read by :func:`initialize` (the ``LOCALSGD_`` name wins over the ``JAX_`` one):

* ``LOCALSGD_COORDINATOR_ADDRESS`` / ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0;
* ``LOCALSGD_NUM_PROCESSES`` / ``JAX_NUM_PROCESSES``: the number of processes;
* ``LOCALSGD_PROCESS_ID`` / ``JAX_PROCESS_ID``: this process's index, ``0 .. N-1``;
* ``LOCALSGD_COORDINATOR_BIND_ADDRESS`` / ``JAX_COORDINATOR_BIND_ADDRESS`` (optional): the address
  process 0 listens on (JAX's default: every interface, on the coordinator's port);
* ``LOCALSGD_DISTRIBUTED=auto``: instead of the above, let ``jax.distributed.initialize`` detect
  the cluster (SLURM, Open MPI, Cloud TPU, ...).

The command line ``python -m localsgd`` (:mod:`localsgd.__main__`) runs one experiment this way,
started once per process with the variables above.
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import config as cf
from . import engine as en
from .data import ClientData

AXIS = "clients"
ENV = {
    "coordinator_address": ("LOCALSGD_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("LOCALSGD_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("LOCALSGD_PROCESS_ID", "JAX_PROCESS_ID"),
    "coordinator_bind_address": ("LOCALSGD_COORDINATOR_BIND_ADDRESS",
                                 "JAX_COORDINATOR_BIND_ADDRESS"),
}


# -- start-up ----------------------------------------------------------------------------------


def _env(names):
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: int = 300) -> bool:
    """Joins a multi-process run through ``jax.distributed.initialize``; call it before any JAX
    computation. Arguments left None come from the environment (module docstring); with neither
    arguments nor variables (and no ``LOCALSGD_DISTRIBUTED=auto``) it does nothing.

    Returns whether this process is part of a multi-process run. Calling it again is harmless.
    ``timeout``: seconds to wait for every process to join.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    args = {"coordinator_address": coordinator_address, "num_processes": num_processes,
            "process_id": process_id, "coordinator_bind_address": None}
    for name, names in ENV.items():
        if args[name] is None:
            args[name] = _env(names)
    auto = os.environ.get("LOCALSGD_DISTRIBUTED", "") == "auto"
    needed = ("coordinator_address", "num_processes", "process_id")
    if all(args[k] is None for k in needed) and not auto:
        return False
    if not auto:
        missing = [ENV[k][0] for k in needed if args[k] is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} must be set too for a multi-process run "
                             f"(got only some of {[v[0] for v in ENV.values()][:3]})")
        for k in ("num_processes", "process_id"):
            try:
                args[k] = int(args[k])
            except ValueError:
                raise ValueError(f"{ENV[k][0]} must be an integer, got {args[k]!r}") from None
        if not 0 <= args["process_id"] < args["num_processes"]:
            raise ValueError(f"{ENV['process_id'][0]} must be in [0, {args['num_processes']}), "
                             f"got {args['process_id']}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {k: v for k, v in args.items() if v is not None}
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=int(timeout))
    except RuntimeError as err:  # JAX refuses once its backends have started
        raise RuntimeError(
            "localsgd.distributed.initialize() must run before any JAX computation in this "
            "process: start it first (python -m localsgd ..., or import "
            f"localsgd.experiments before computing anything, with LOCALSGD_MESH=clients set) "
            f"({err})") from err
    return jax.process_count() > 1


# -- the mesh and the data ---------------------------------------------------------------------


def _divisors_hint(K: int, D: int) -> str:
    below = (K // D) * D
    ks = [k for k in (below, below + D) if k >= D]
    fit = max(d for d in range(1, D + 1) if K % d == 0)
    return (f"use num_clients={' or '.join(map(str, ks))} (a multiple of {D}), or a mesh of "
            f"{fit} device{'s' if fit > 1 else ''} (client_mesh(jax.devices()[:{fit}]))")


def check_clients(num_clients: int, mesh: Mesh) -> None:
    """ValueError unless ``num_clients`` is a multiple of the mesh's ``clients`` axis."""
    D = mesh.shape[AXIS]
    if num_clients % D:
        raise ValueError(
            f"num_clients={num_clients} must be a multiple of the {D} devices of the mesh's "
            f"'{AXIS}' axis (clients are not padded): {_divisors_hint(num_clients, D)}")


def client_mesh(devices=None, *, num_clients: int | None = None) -> Mesh:
    """A one-dimensional mesh ``(D,)`` with axis ``"clients"`` over ``devices`` (default: every
    device of every process, ordered by process, so that each process holds a contiguous block of
    clients).

    With ``num_clients`` and default devices in a single process, it uses the largest number of
    devices that divides ``num_clients`` (warning when that leaves devices idle); across processes
    every device is used and a ``num_clients`` that does not divide is a ValueError.
    """
    explicit = devices is not None
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices must hold at least one device, got none")
    devs.sort(key=lambda d: (d.process_index, d.id))
    if num_clients is not None:
        cf.check_int("num_clients", num_clients, 1)
        D = len(devs)
        if num_clients % D and not explicit and jax.process_count() == 1:
            fit = max(d for d in range(1, D + 1) if num_clients % d == 0)
            warnings.warn(f"num_clients={num_clients} is not a multiple of the {D} devices: "
                          f"sharding over {fit} of them ({_divisors_hint(num_clients, D)} to use "
                          f"all)", stacklevel=2)
            devs = devs[:fit]
    mesh = Mesh(np.asarray(devs), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
    if num_clients is not None:
        check_clients(num_clients, mesh)
    return mesh


def client_sharding(mesh: Mesh, batched: bool = False) -> NamedSharding:
    """Arrays whose leading axis (after a sweep's ``S`` axis when ``batched``) is the clients."""
    return NamedSharding(mesh, P(None, AXIS) if batched else P(AXIS))


def _put(a, sharding):
    """``a`` (host array, or a jax.Array of any placement) as a global array with ``sharding``;
    in a multi-process run every process passes the same host value."""
    if isinstance(a, jax.Array):
        if a.sharding == sharding:
            return a
        if not a.is_fully_addressable or jax.process_count() == 1:
            return jax.device_put(a, sharding)
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_clients(data: ClientData, mesh: Mesh, *, process_local: bool = False) -> ClientData:
    """``data`` as global arrays sharded over the mesh's ``clients`` axis (leading axis ``K``).

    ``process_local=False``: ``data`` holds all ``K`` clients (the same on every process); each
    process copies only the clients of its own devices to them.
    ``process_local=True``: ``data`` holds only this process's clients, ``K / P`` of them for
    ``P`` processes with equal device counts, in process order (``weight`` must still be the global
    ``n_k / n``); the global arrays are assembled with ``jax.make_array_from_process_local_data``.
    """
    sh = client_sharding(mesh)
    if process_local:
        local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
        k_local = np.shape(data.x)[0]
        if local_devices == 0 or k_local % local_devices:
            raise ValueError(f"data must hold a multiple of this process's {local_devices} mesh "
                             f"devices in clients, got {k_local}")
        K = k_local // local_devices * mesh.shape[AXIS]
        return ClientData(*(jax.make_array_from_process_local_data(
            sh, np.asarray(a), (K,) + np.shape(a)[1:]) for a in data))
    check_clients(np.shape(data.x)[0], mesh)
    return ClientData(*(_put(a, sh) for a in data))


def _host_view(data: ClientData) -> ClientData:
    """The clients this process can see, as NumPy (all of them unless the arrays span processes)."""
    def local(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards])
    return ClientData(*(local(a) for a in data))


def _prepare(data, mesh, num_clients):
    if mesh is None:
        mesh = client_mesh(num_clients=num_clients)
    check_clients(num_clients, mesh)
    sh = client_sharding(mesh)
    if all(isinstance(a, jax.Array) and a.sharding == sh for a in data):
        return data, mesh
    return shard_clients(data, mesh), mesh


# -- running -----------------------------------------------------------------------------------


def _key_parts(keys):
    """Typed PRNG keys -> (raw uint32 data, impl name); raw keys pass through with impl None."""
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(keys), str(jax.random.key_impl(keys))
    return keys, None


def _train(config, spec, impl, eta, params0, data, key_data, start, probe=None):
    key = key_data if impl is None else jax.random.wrap_key_data(key_data, impl=impl)
    # The batched layout: the clients axis is what the mesh shards.
    return en._train(config, spec, eta, params0, data, key, start, layout="vmap", probe=probe)


def _sweep(config, spec, impl, etas, params0, data, key_data, start, probe=None):
    return jax.vmap(_train, in_axes=(None, None, None, 0, 0, None, 0, 0, None))(
        config, spec, impl, etas, params0, data, key_data, start, probe)


@functools.cache
def _compiled(mesh: Mesh, batched: bool):
    """One jitted program per mesh (its own compilation cache, apart from the engine's). Results
    come back replicated: every process then holds all of them."""
    return jax.jit(_sweep if batched else _train, static_argnums=(0, 1, 2),
                   out_shardings=NamedSharding(mesh, P()))


def _put_tree(tree, sharding):
    return jax.tree.map(lambda a: _put(a, sharding), tree)


def _inputs(mesh, batched, eta, params0, data, keys, start, probe=None):
    rep = NamedSharding(mesh, P())
    key_data, impl = _key_parts(keys)
    params0, key_data, eta, probe = (jax.tree.map(lambda a: _put(a, rep), t)
                                     for t in (params0, key_data, eta, probe))
    if start is not None:
        # The ever-flipped masks (per sample, (K, n_max, m) per layer) and the clients' states
        # are per client: sharded like the data; the rest is replicated.
        per_client = client_sharding(mesh, batched)
        start = start._replace(**{
            f: _put_tree(getattr(start, f), per_client if f in ("ever", "client_state") else rep)
            for f in start._fields})
    return impl, eta, params0, data, key_data, start, probe


def _local(out):
    """In a multi-process run, the replicated result as this process's own arrays."""
    if jax.process_count() == 1:
        return out
    return jax.tree.map(lambda a: a.addressable_data(0), out)


def _check(config, spec, params0, data, probe=None):
    en.check_inputs(config, spec, params0, _host_view(data), probe)


def lower(config: cf.RunConfig, spec, params0: dict, data: ClientData, key,
          mesh: Mesh | None = None, start: en.TrainState | None = None):
    """The lowered (not yet compiled) sharded program of :func:`run`, for inspection, e.g.
    ``lower(...).compile().as_text()`` is the partitioned HLO."""
    data, mesh = _prepare(data, mesh, np.shape(data.x)[0])
    args = _inputs(mesh, False, jnp.asarray(config.eta, config.dtype), params0, data, key, start)
    return _compiled(mesh, False).lower(config, spec, *args)


def run(config: cf.RunConfig, spec, params0: dict, data: ClientData, key, mesh: Mesh | None = None,
        start: en.TrainState | None = None, *, probe=None) -> en.TrainOutput:
    """:func:`localsgd.engine.run` with the clients sharded over ``mesh`` (default:
    :func:`client_mesh` for ``K`` clients). Same arguments and result (shapes included), equal up
    to float32 rounding; ``data`` may already be sharded (:func:`shard_clients`).

    Raises ValueError for what ``engine.run`` refuses and for a ``K`` that is not a multiple
    of the mesh's devices. In a multi-process run every process calls it with the same arguments
    and gets the whole result.
    """
    _check(config, spec, params0, data, probe)
    with en.precision(config):
        params0, data, start, probe = en._prepare(config, params0, data, start, probe)
        data, mesh = _prepare(data, mesh, np.shape(data.x)[0])
        args = _inputs(mesh, False, jnp.asarray(config.eta, config.dtype), params0, data, key,
                       start, probe)
        return _local(_compiled(mesh, False)(config, spec, *args))


def sweep(config: cf.RunConfig, spec, params0: dict, data: ClientData, keys, etas=None,
          start: en.TrainState | None = None, mesh: Mesh | None = None, *,
          probe=None) -> en.TrainOutput:
    """:func:`localsgd.engine.sweep` (``S`` runs vmapped in one program) with the clients
    sharded over ``mesh``; every device runs all ``S`` runs on its own clients. Same arguments and
    result, equal up to float32 rounding."""
    S = np.shape(keys)[0]
    _check(config, spec, jax.tree.map(lambda a: a[0], params0), data, probe)
    etas = en.sweep_etas(config, S, etas)
    with en.precision(config):
        params0, data, start, probe = en._prepare(config, params0, data, start, probe)
        data, mesh = _prepare(data, mesh, np.shape(data.x)[0])
        args = _inputs(mesh, True, etas, params0, data, keys, start, probe)
        return _local(_compiled(mesh, True)(config, spec, *args))
