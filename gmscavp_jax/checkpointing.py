"""Orbax checkpoints of train state + grain iterator state + config, in WORKDIR/checkpoints.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it). A
restore walks back from the newest step: a step folder that fails to restore (an interrupted
save that still looks complete) is reported and skipped rather than ending the run.
"""

import json
import os
from typing import Any

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

ITEMS = ('state', 'data_iter', 'config')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


class Checkpointer:
  """Keeps the newest `keep` checkpoints of a run."""

  def __init__(self, workdir: str, keep: int):
    self._manager = ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=ITEMS)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any, config_json: str) -> None:
    """Starts an async save of `state`, the iterator position and the config at `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(json.loads(config_json))))

  def restore_latest(self, abstract_state: Any, data_iter: Any = None) -> tuple[Any, int] | None:
    """Restores the newest good checkpoint; returns (state, step), or None if there is none.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings (the layout to
        restore onto).
      data_iter: a grain iterator restored in place, or None to leave the data alone.
    """
    for step in reversed(self.all_steps()):
      items = {'state': ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None:
        items['data_iter'] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint step %d in %s cannot be restored (%s: %s); trying the '
                        'previous one', step, self._manager.directory, type(e).__name__, e)
        continue
      return restored['state'], step
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding structs of `tree`, the target layout for a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
