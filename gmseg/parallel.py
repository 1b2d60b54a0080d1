"""Data parallelism over the local devices: replicate, shard, pmap the steps.

The steps in gmseg/steps.py are pure per-device functions; here they are
wrapped with `jax.pmap(..., axis_name='devices')`, which makes them pmean
their gradients and metrics over every device of every process. State and
generator parameters are replicated (`[devices, ...]` leading axis, one copy
per local device); host batches are reshaped to `[devices, per_device, ...]`.

In JAX 0.10 `pmap` is implemented on `shard_map`; the removed
`jax.device_put_replicated` is replaced by one `jax.device_put` of a broadcast
array with a sharding over the local devices.

Multi-host: `init_distributed(True)` (the launcher's `--multihost`) calls
`jax.distributed.initialize()`, after which the pmap axis spans the devices of
all processes while each process feeds only its local devices.
"""
import functools
from typing import Any, Callable, Optional

import jax
import numpy as np

from gmseg import steps
from gmseg.state import Method

PyTree = Any
AXIS = "devices"


def _local_sharding(devices=None) -> jax.sharding.NamedSharding:
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: PyTree, devices=None) -> PyTree:
  """One copy of every leaf per local device: leaves `[devices, ...]`.

  Args:
    tree: arrays (jax or numpy) or scalars.
    devices: default `jax.local_devices()` (the devices pmap runs on).
  """
  sharding = _local_sharding(devices)
  n = len(sharding.mesh.devices.ravel())

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.device_put(np.broadcast_to(x, (n,) + x.shape), sharding)

  return jax.tree.map(put, tree)


def unreplicate(tree: PyTree) -> PyTree:
  """The first local copy of every replicated leaf (drops the device axis).

  Leaves are single-device arrays on the first local device; nothing is
  copied to the host.
  """
  def first(x):
    shard = x.addressable_shards[0].data
    # Shards of a [devices, ...] array keep a leading axis of 1.
    return shard[0] if shard.ndim == x.ndim else shard

  return jax.tree.map(first, tree)


def shard_batch(batch: PyTree, num_devices: Optional[int] = None) -> PyTree:
  """Reshapes host arrays `[batch, ...]` to `[devices, batch // devices, ...]`.

  Args:
    batch: numpy arrays sharing the leading batch axis (this host's batch).
    num_devices: default `jax.local_device_count()`.
  Raises:
    ValueError: when a batch size does not divide by the device count.
  """
  n = num_devices or jax.local_device_count()

  def split(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % n:
      size = x.shape[0] if x.ndim else "a scalar"
      raise ValueError(
          f"Batch of {size} does not divide over {n} local devices; use a batch "
          f"size that is a multiple of {n} (per host), or fewer devices.")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree.map(split, batch)


def pmap_steps(method: Method, devices=None) -> tuple[Callable, Callable, Callable]:
  """pmapped (annotator_step, segmenter_step, supervised_step) for `method`.

  Args:
    method: the static setup; its per-device batch sizes must be the global
      ones divided by the total device count (`build.method(..., devices=)`).
    devices: default all local devices (what `replicate` uses).

  Signatures, with every argument replicated or sharded over local devices:
    p_annotator_step(state, batch, gen_params) -> (state, metrics)
    p_segmenter_step(state, gen_params) -> (state, metrics)
    p_supervised_step(state, batch) -> (state, metrics)
  The state is donated. Metrics come back `[devices]` (already pmeaned).
  """
  def wrap(step):
    return jax.pmap(functools.partial(step, method=method, axis_name=AXIS),
                    axis_name=AXIS, devices=devices, donate_argnums=(0,))

  return (wrap(steps.annotator_step), wrap(steps.segmenter_step),
          wrap(steps.supervised_step))


def pmap_iteration(method: Method, devices=None) -> Callable:
  """pmapped `steps.iteration_step`: `(state, batch, gen_params) -> (state,
  metrics)`, an annotator and a segmenter step in one program (one dispatch,
  the state donated). Arguments as `pmap_steps`."""
  return jax.pmap(functools.partial(steps.iteration_step, method=method, axis_name=AXIS),
                  axis_name=AXIS, devices=devices, donate_argnums=(0,))


def pmap_iterations(method: Method, devices=None) -> Callable:
  """pmapped `steps.unrolled_iterations`: `(state, batches, gen_params) -> (state,
  metrics)`, several iterations in one program. `batches` leaves are
  `[devices, n, per_device, ...]` (`stack_batches`); metrics come back
  `[devices, n]`. The state is donated."""
  return jax.pmap(functools.partial(steps.unrolled_iterations, method=method, axis_name=AXIS),
                  axis_name=AXIS, devices=devices, donate_argnums=(0,))


def stack_batches(batches: list, num_devices: Optional[int] = None) -> PyTree:
  """Host batches of consecutive iterations -> `[devices, n, per_device, ...]`
  (each sharded by `shard_batch`, then stacked along axis 1) for `pmap_iterations`."""
  shards = [shard_batch(b, num_devices) for b in batches]
  return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *shards)


def init_distributed(multihost: bool, coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None,
                     process_id: Optional[int] = None) -> None:
  """Joins the multi-process job when `multihost`; call before any device use.

  With no arguments `jax.distributed.initialize()` detects the cluster
  (SLURM, Open MPI, TPU pods; the coordinator may also come from
  JAX_COORDINATOR_ADDRESS). Elsewhere (e.g. several processes on one machine)
  pass all three: `coordinator_address='host:port'`, `num_processes`,
  `process_id`.
  """
  if not multihost:
    if any(a is not None for a in (coordinator_address, num_processes, process_id)):
      raise ValueError("coordinator_address/num_processes/process_id are set but "
                       "multihost is off; pass multihost=True (--multihost).")
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
