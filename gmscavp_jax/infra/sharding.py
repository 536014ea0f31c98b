"""The device mesh and the shardings of params, optimizer state and batches (DESIGN §6).

A 2-D mesh ('data', 'fsdp'). Batches are split over both axes. Params and optimizer state are
sharded along 'fsdp' by `param_spec` (a rule on each leaf's path and shape) and gathered
whole inside the step, so memory at rest is 1/fsdp of the model while the maths is that of
plain data parallelism. Model code never mentions devices; everything about layout lives here.
"""

from collections.abc import Sequence
import math
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import orbax.checkpoint as ocp

from gmscavp_jax.infra import errors

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1) -> tuple[int, int]:
  """(data, fsdp) sizes for `num_devices`; one of them may be -1 ("the rest").

  Raises ConfigError (naming mesh.data / mesh.fsdp) if the sizes cannot tile the devices.
  """
  if data == -1 and fsdp == -1:
    raise errors.ConfigError('config.mesh.data and config.mesh.fsdp are both -1: '
                                        'expected at most one axis left to fill')
  if data == -1 or fsdp == -1:
    known, field = (fsdp, 'fsdp') if data == -1 else (data, 'data')
    if num_devices % known:
      raise errors.ConfigError(
          f'config.mesh.{field}={known}: expected a divisor of the device count ({num_devices})')
    return (num_devices // known, known) if data == -1 else (known, num_devices // known)
  if data * fsdp != num_devices:
    raise errors.ConfigError(
        f'config.mesh.data x config.mesh.fsdp = {data} x {fsdp}: expected their product to be '
        f'the device count ({num_devices}); set one of them to -1')
  return data, fsdp


def make_mesh(devices: Sequence[jax.Device] | None = None, *, data: int = -1,
              fsdp: int = 1) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: every device of every process).

  jax orders devices by process, so with fsdp dividing the per-host device count the 'fsdp'
  axis (the inner one) stays within a host and its all-gathers use the fast local links.
  Built with `Mesh(...)` (Auto axis types) rather than `jax.make_mesh`, whose Explicit
  default makes the contrastive `a @ v.T` over two batch-sharded arrays a type error.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(len(devices), data, fsdp)
  return Mesh(np.asarray(devices).reshape(shape), BATCH_AXES)


def mesh_from_config(config: ml_collections.ConfigDict,
                     devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`make_mesh` with the config's mesh.data x mesh.fsdp."""
  return make_mesh(devices, data=config.mesh.data, fsdp=config.mesh.fsdp)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (scalars, small params, the rng)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split over 'data' x 'fsdp'; other axes are whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def param_spec(path: str, shape: Sequence[int], fsdp_size: int, *, min_size: int = 2**16,
               replicate: str = '') -> P:
  """The PartitionSpec of one param / optimizer leaf under the FSDP rule.

  Args:
    path: the leaf's '/'-joined key path, e.g. 'params/denoiser/down0_block0/conv1/kernel'.
    shape: its shape.
    fsdp_size: the mesh's 'fsdp' size.
    min_size: leaves with fewer elements stay replicated (sharding them saves little memory
      and costs a collective each).
    replicate: a regex; leaves whose path matches it stay replicated.
  Returns:
    P() (replicated), or 'fsdp' on the largest dimension divisible by `fsdp_size` (the last
    such on ties: a kernel's output channels).
  """
  if (fsdp_size == 1 or math.prod(shape) < min_size
      or (replicate and re.search(replicate, path))):
    return P()
  candidates = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))
  return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in path)


def tree_specs(tree: Any, fsdp_size: int, config: ml_collections.ConfigDict) -> Any:
  """The PartitionSpec `param_spec` gives every leaf of `tree` (arrays or ShapeDtypeStructs).

  Applied to the whole train state: Adam's moments share their param's path suffix and
  shape, so each moment is sharded exactly like its param; step counters stay replicated.
  """
  m = config.mesh
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: param_spec(_path_str(path), leaf.shape, fsdp_size,
                                    min_size=m.fsdp_min_size, replicate=m.fsdp_replicate),
      tree)


def tree_shardings(tree: Any, mesh: Mesh, config: ml_collections.ConfigDict) -> Any:
  """`tree_specs` on `mesh` as NamedShardings (the layout jit and Orbax take)."""
  specs = tree_specs(tree, mesh.shape[FSDP_AXIS], config)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, P))


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
  """Turns this process's numpy batch into global `jax.Array`s sharded over the batch axes.

  Args:
    mesh: the training mesh.
    local_batch: dict of arrays (B_local, ...) where B_local = B / process_count.
  Returns:
    The same dict with global arrays of shape (B, ...).
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def padded_host_batch(mesh: Mesh, array: np.ndarray, size: int) -> jax.Array:
  """A host array (N,...) that every process holds whole, padded to (size,...) by repeating
  its last row, as a global array sharded over the batch axes (`size` a multiple of the
  device count: each small query batch reuses one compiled program)."""
  pad = size - len(array)
  if pad:
    array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)])
  return jax.make_array_from_callback(array.shape, batch_sharded(mesh),
                                      lambda idx: array[idx])


def sync_processes(name: str, timeout_s: int = 3600) -> None:
  """Waits until every process reaches the barrier `name` (unique per call); no-op alone.

  Through the coordination service, not a device collective: CPU (gloo) collectives give up
  after 30 s, so a process still compiling (or loading its compile cache slower) would make
  the first collective of a faster one fail.
  """
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)
