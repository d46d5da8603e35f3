"""Data parallelism: the device mesh, replicated placement, and multi-process (multi-host) setup.

:func:`resolve_mesh` turns ``devices=`` into a 1-D mesh over the axis :data:`DATA_AXIS`; :func:`place` /
:func:`first_replica` move replicated pytrees onto and off it. After :func:`initialize_distributed` every process sees the devices of all processes in ``jax.devices()``;
``genjax.fit(..., devices="all")`` then trains data parallel across them: each process feeds only the batch
shards of its own devices, gradients are averaged across processes, and process 0 writes the checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

__all__ = ["DATA_AXIS", "initialize_distributed", "resolve_mesh", "place", "first_replica"]

DATA_AXIS = "data"
"""Name of the mesh axis of data-parallel training (``lax.pmean`` / ``lax.axis_index`` inside losses)."""


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int, *,
                           cpu_collectives: str = "gloo", **kwargs) -> None:
    """Join a multi-process JAX run (a thin wrapper over ``jax.distributed.initialize``).

    Call it in every process before any other JAX call.

    Arguments:
        coordinator_address: ``"host:port"`` of process 0 (e.g. ``"localhost:12355"`` for processes on one
            machine).
        num_processes: total number of processes.
        process_id: this process's index in ``[0, num_processes)``.
        cpu_collectives: implementation of cross-process collectives on CPU devices (``"gloo"``, or ``"mpi"``);
            ignored on GPU / TPU, which bring their own.
        **kwargs: passed on to ``jax.distributed.initialize`` (e.g. ``local_device_ids``).

    Raises:
        ValueError: ``process_id`` outside ``[0, num_processes)``.
    """
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is not in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)


def resolve_mesh(devices) -> Mesh | None:
    """``None`` -> single device; otherwise a 1-D mesh (axis :data:`DATA_AXIS`) over the requested devices.

    ``devices`` may be ``"all"`` (every device of every process: multi-host data parallelism after
    ``jax.distributed.initialize``), an int (the first ``n`` local devices) or a sequence of devices.
    """
    if devices is None:
        return None
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be None, 'all', an int or a list of devices; got {devices!r}")
        devices = jax.devices()
    elif isinstance(devices, int):
        available = jax.local_devices()
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices={devices} but this process has {len(available)} local devices "
                             f"({available}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                             "before importing jax")
        devices = available[:devices]
    return Mesh(np.array(list(devices)), (DATA_AXIS,))


def place(tree, sharding):
    """Put a host pytree on ``sharding`` (works across processes; typed PRNG keys kept typed).

    Every process passes the full value of replicated leaves; used for replicated state and data.
    """

    def put(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=impl)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

    return jax.tree.map(put, tree)


def first_replica(tree):
    """Single-device copy of a replicated pytree (the local replica; works across processes)."""

    def get(x):
        if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(get(jax.random.key_data(x)), impl=impl)
        return jnp.asarray(np.asarray(x.addressable_data(0)))

    return jax.tree.map(get, tree)
