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

Phase one pmaps always. Phase two, fine-tuning and the supervised baseline
(`TrainStep`) and synthetic-set generation (`work_indices`) pmap when there is
more than one device in all, and jit on a single device, the program they ran
before they were data-parallel. Global batches are checked once with
`check_global_batch`; each host then feeds `host_slice` of each global batch.

BatchNorm (norm='batch'; GroupNorm, the default, has no batch statistics):
under pmap each device normalises with the statistics of its own per-device
batch (no cross-device sync, as flax's imagenet example), and the running
averages are pmeaned after every step (gmseg.steps). So N devices compute
what one device does only with batch-free norms; likewise dropout (DeepLab's
ASPP) draws a different key per device.
"""
import functools
from typing import Any, Callable, Optional

import jax
import numpy as np

from gmseg import errors
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


class BatchSplitError(errors.UserError, ValueError):
  """A batch that does not split evenly over the devices or hosts."""


def shard_batch(batch: PyTree, num_devices: Optional[int] = None) -> PyTree:
  """Reshapes host arrays `[batch, ...]` to `[devices, batch // devices, ...]`.

  Args:
    batch: numpy arrays sharing the leading batch axis (this host's batch).
    num_devices: default `jax.local_device_count()`.
  Raises:
    BatchSplitError: when a batch size does not divide by the device count.
  """
  n = num_devices or jax.local_device_count()

  def split(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % n:
      size = x.shape[0] if x.ndim else "a scalar"
      raise BatchSplitError(
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


def is_data_parallel() -> bool:
  """Whether the run spans several devices (local or over processes): the
  data-parallel (pmap) path of `TrainStep` and generation. One device in all
  jits the step, as before these paths were data-parallel."""
  return jax.device_count() > 1


def check_global_batch(size: int, name: str) -> int:
  """This host's share of a global batch of `size` (config key `name`).

  Raises:
    BatchSplitError: `size` is not a multiple of the total device count (each
      device of each process takes the same number of rows).
  """
  total, hosts = jax.device_count(), jax.process_count()
  if size < 1 or size % total:
    up = max(total, -(-size // total) * total)
    where = f"{total} devices" if hosts == 1 else (
        f"{total} devices ({hosts} processes x {jax.local_device_count()} local)")
    raise BatchSplitError(
        f"{name}={size} does not split over {where}: the global batch is divided evenly "
        f"among them. Set {name} to a multiple of {total} (e.g. {up}), or run on fewer "
        "devices (e.g. CUDA_VISIBLE_DEVICES).")
  return size // hosts


def host_slice(batch: PyTree, process_index: Optional[int] = None,
               process_count: Optional[int] = None) -> PyTree:
  """This host's contiguous rows of a global batch `[batch, ...]` (all of it
  with one process): rows `[p * batch / P, (p + 1) * batch / P)`.

  Every host builds the same global batch (same seed and step), so the
  hosts' slices together are exactly the batch one host would feed; the
  size must divide by P (`check_global_batch`).
  """
  p = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count == 1:
    return batch

  def rows(x):
    x = np.asarray(x)
    if x.shape[0] % count:
      raise BatchSplitError(f"Batch of {x.shape[0]} does not divide over {count} processes; "
                            f"use a multiple of {count}.")
    per = x.shape[0] // count
    return x[p * per:(p + 1) * per]

  return jax.tree.map(rows, batch)


def pmap_train_step(step_fn: Callable, devices=None) -> Callable:
  """`step_fn(state, batch, *, axis_name) -> (state, metrics)` pmapped over
  `devices` (default the local ones) with the state donated; arguments and
  results carry a leading device axis (`replicate`, `shard_batch`). The step
  pmeans its gradients, BatchNorm running averages and metrics (gmseg.steps)."""
  return jax.pmap(functools.partial(step_fn, axis_name=AXIS), axis_name=AXIS,
                  devices=devices, donate_argnums=(0,))


class TrainStep:
  """A training step over this host's devices: pmapped when the run spans
  several devices (`is_data_parallel`), else jitted alone, the single-device
  program as before.

  Usage: `state = ts.put(state)`, then `state, metrics = ts(state, batch)`
  with this host's rows of the global batch (`host_slice`), and
  `ts.get(state)` for a single-device copy (evaluation, checkpoints).
  Metrics come back as the first device's values (already pmeaned).
  """

  def __init__(self, step_fn: Callable):
    """Args: step_fn: `(state, batch, *, axis_name=None) -> (state, metrics)`."""
    self.data_parallel = is_data_parallel()
    if self.data_parallel:
      self._step = pmap_train_step(step_fn)
    else:
      self._step = jax.jit(step_fn, donate_argnums=0)

  def put(self, state: PyTree) -> PyTree:
    """`state` as the step takes it (replicated over local devices if pmapped)."""
    return replicate(state) if self.data_parallel else state

  def get(self, state: PyTree) -> PyTree:
    """A single-device copy of a state returned by the step (no transfer)."""
    return unreplicate(state) if self.data_parallel else state

  def __call__(self, state: PyTree, batch: PyTree) -> tuple[PyTree, PyTree]:
    """One step on this host's `batch` (its leading size divides by the local
    device count when pmapped); the input state is donated."""
    if not self.data_parallel:
      return self._step(state, batch)
    state, metrics = self._step(state, shard_batch(batch))
    return state, unreplicate(metrics)


def work_indices(round_index: int) -> np.ndarray:
  """Global work-item indices (e.g. generation batches) of this host's local
  devices at `round_index`: each round covers `device_count()` consecutive
  items, host p's local device d takes `round * device_count() + p *
  local_device_count() + d`. `[local_devices]` int32."""
  local = jax.local_device_count()
  start = round_index * jax.device_count() + jax.process_index() * local
  return np.arange(start, start + local, dtype=np.int32)


def sync_hosts(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing to wait
  for with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


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
