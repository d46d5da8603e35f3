"""Feeding minibatches to the jitted training scan: data order, host sources, device placement, sharding.

A training dispatch runs ``steps`` optimizer steps inside one ``lax.scan``. Its inputs are a *payload* (a pytree
of arrays with a leading examples axis) and an index array ``idx`` of shape ``(steps, batch)``: batch ``i`` is
``payload[idx[i]]``. Where the payload comes from:

* device-resident data (a pytree of arrays): the whole data set is moved to the device(s) once and ``idx`` holds
  the example indices, so no data crosses from the host per step;
* a :class:`HostSource` (scipy CSR, backed ``.h5ad``, anything row-addressable): the rows of one dispatch are
  fetched (densified) on the host in a background thread while the previous dispatch runs, and ``idx`` is a
  plain ``arange``.

For data-parallel training the global batch is split into equal contiguous shards, one per device (in global
device order); each process feeds only the shards of its local devices (per-process data sharding).
"""

from __future__ import annotations

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ..data import HostSource, num_examples
from ._distributed import DATA_AXIS, place

__all__ = ["Feeder"]



class Feeder:
    """Epoch order and device inputs of the training dispatches.

    Arguments:
        data: pytree of arrays or :class:`HostSource`.
        batch_size: global batch size.
        steps_per_dispatch: steps per jitted scan.
        data_key: PRNG key of the data order; epoch ``e`` uses ``permutation(fold_in(data_key, e), n)``.
        mesh: ``None`` for single-device feeding (default device); otherwise a 1-D ``jax.sharding.Mesh`` over
            the devices (of all processes) of a data-parallel run. Each global batch is then split into equal
            contiguous shards in mesh order, and each process builds only the shards of its own devices.
    """

    def __init__(self, data, batch_size: int, steps_per_dispatch: int, data_key, *, mesh=None):
        self.data = data
        self.host = isinstance(data, HostSource)
        self.n = num_examples(data)
        self.batch_size = batch_size
        self.k = steps_per_dispatch
        self.data_key = data_key
        self.steps_per_epoch = self.n // batch_size
        self.mesh = mesh
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if self.host else None
        self._payload = None
        self._eval_payload = None
        if not self.host:
            self._payload = (jax.tree.map(jnp.asarray, data) if mesh is None
                             else place(data, NamedSharding(mesh, P())))

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of the steps of ``epoch``: int array ``(steps_per_epoch, batch_size)``."""
        perm = jax.random.permutation(jax.random.fold_in(self.data_key, epoch), self.n)
        return np.asarray(perm[: self.steps_per_epoch * self.batch_size]).reshape(
            self.steps_per_epoch, self.batch_size)

    def plan(self, start_step: int, stop_step: int) -> list[tuple[int, int]]:
        """Step ranges ``[a, b)`` of the dispatches between two positions within an epoch."""
        return [(a, min(a + self.k, stop_step)) for a in range(start_step, stop_step, self.k)]

    def _inputs(self, rows: np.ndarray):
        rows = rows.astype(np.int32)
        if self.mesh is None:
            if not self.host:
                return self._payload, jnp.asarray(rows)
            payload = jax.device_put(jax.tree.map(np.asarray, self.data.fetch(rows.reshape(-1))))
            return payload, jnp.arange(rows.size, dtype=jnp.int32).reshape(rows.shape)
        idx_sharding = NamedSharding(self.mesh, P(None, DATA_AXIS))
        if not self.host:
            return self._payload, jax.make_array_from_callback(rows.shape, idx_sharding, lambda i: rows[i])
        # host data: every local device fetches the rows of its own shard (per-process data sharding)
        steps, batch = rows.shape
        n_shards = self.mesh.devices.size
        local_b = batch // n_shards
        devices = list(self.mesh.devices.flat)
        local = [(d, dev) for d, dev in enumerate(devices) if dev.process_index == jax.process_index()]
        blocks = {d: jax.tree.map(np.asarray, self.data.fetch(rows[:, d * local_b:(d + 1) * local_b].reshape(-1)))
                  for d, _ in local}
        first = blocks[local[0][0]]
        payload_sharding = NamedSharding(self.mesh, P(DATA_AXIS))

        def assemble(*leaves_per_device):
            shape = (n_shards * leaves_per_device[0].shape[0], *leaves_per_device[0].shape[1:])
            arrays = [jax.device_put(leaf, dev) for leaf, (_, dev) in zip(leaves_per_device, local, strict=True)]
            return jax.make_array_from_single_device_arrays(shape, payload_sharding, arrays)

        payload = jax.tree.map(assemble, first, *[blocks[d] for d, _ in local[1:]])
        local_idx = np.arange(steps * local_b, dtype=np.int32).reshape(steps, local_b)
        idx = np.tile(local_idx, (1, n_shards))
        return payload, jax.make_array_from_callback(idx.shape, idx_sharding, lambda i: idx[i])

    def iterate(self, epoch: int, ranges: list[tuple[int, int]]):
        """Yield ``((a, b), payload, idx)`` for the dispatches of ``epoch`` covering ``ranges``."""
        order = self.order(epoch)
        if not self.host:
            for a, b in ranges:
                yield (a, b), *self._inputs(order[a:b])
            return
        # host data: fetch (densify) the next dispatch's rows in a background thread while this one runs. Only
        # the current and the next dispatch are referenced: keeping every consumed future would hold all of an
        # epoch's densified chunks (host and device copies) until the epoch ends.
        pending = self._pool.submit(self._inputs, order[ranges[0][0]:ranges[0][1]]) if ranges else None
        for i, (a, b) in enumerate(ranges):
            current = pending
            if i + 1 < len(ranges):
                na, nb = ranges[i + 1]
                pending = self._pool.submit(self._inputs, order[na:nb])
            payload, idx = current.result()
            del current
            yield (a, b), payload, idx
            del payload, idx

    def eval_batches(self, max_batches: int = 32):
        """Single-device ``(payload, idx)`` pairs covering every example once: full batches, then the rest.

        Host data is fetched ``max_batches`` batches at a time (a validation set of a large atlas is never
        densified whole); device data is evaluated in one pass over its resident payload.
        """
        n, bs = self.n, self.batch_size
        full = n // bs
        rows = np.arange(n)
        parts = []
        if full:
            batches = rows[: full * bs].reshape(full, bs)
            step = max_batches if self.host else full
            parts += [batches[i:i + step] for i in range(0, full, step)]
        if n % bs:
            parts.append(rows[full * bs:].reshape(1, -1))
        if not self.host and self._eval_payload is None:
            self._eval_payload = self._payload if self.mesh is None else jax.tree.map(jnp.asarray, self.data)
        for part in parts:
            if self.host:
                yield (jax.device_put(jax.tree.map(np.asarray, self.data.fetch(part.reshape(-1)))),
                       jnp.arange(part.size, dtype=jnp.int32).reshape(part.shape))
            else:
                yield self._eval_payload, jnp.asarray(part, jnp.int32)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False)

