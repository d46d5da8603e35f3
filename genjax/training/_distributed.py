"""Multi-process (multi-host) setup for data-parallel training.

After :func:`initialize_distributed` every process sees the devices of all processes in ``jax.devices()``;
``genjax.fit(..., devices="all")`` then trains data parallel across them: each process feeds only the batch
shards of its own devices, gradients are averaged across processes, and process 0 writes the checkpoints.
"""

from __future__ import annotations

import jax

__all__ = ["initialize_distributed"]


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
