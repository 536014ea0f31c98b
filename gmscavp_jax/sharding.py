"""The device mesh and the shardings of params and batches (DESIGN §6).

One 'data' axis over all devices: batches are split along it, params and optimizer state are
replicated. Model code never mentions devices; everything about layout lives here.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: every device of every process).

  Built with `Mesh(...)` rather than `jax.make_mesh` because the latter defaults to Explicit
  axis types in this jax, under which the contrastive `a @ v.T` over two batch-sharded arrays
  is a sharding type error; Auto lets XLA insert the all-gather of negatives.
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (params, optimizer state, scalars)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis is split over 'data'; other axes are whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(mesh: Mesh, local_batch: dict) -> dict:
  """Turns this process's numpy batch into global `jax.Array`s sharded over 'data'.

  Args:
    mesh: the training mesh.
    local_batch: dict of arrays (B_local, ...) where B_local = B / process_count.
  Returns:
    The same dict with global arrays of shape (B, ...).
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
