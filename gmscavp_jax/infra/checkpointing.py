"""Orbax checkpoints of train state + grain iterator state + config, in WORKDIR/checkpoints,
and the SIGTERM (preemption notice) watcher that decides when to save and stop.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it; with
several processes it also synchronises them). A restore walks back from the newest step: a
step folder that fails to restore (an interrupted save that still looks complete) is
reported and skipped rather than ending the run.
"""

import json
import os
import signal
import threading
from typing import Any

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from gmscavp_jax.infra import errors

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
    restored = self._restore_newest(ocp.args.StandardRestore(abstract_state))
    if restored is not None and data_iter is not None:
      self._restore_iterator(restored[1], data_iter)
    return restored

  def restore_latest_params(self, abstract_params: Any,
                            field: str = 'params') -> tuple[Any, int] | None:
    """One params tree alone of the newest good checkpoint: (params, step), or None if none.

    Only the state's `field` subtree is read (Orbax partial restore): the optimizer state
    is neither read nor allocated. Use a Checkpointer that has not restored the whole state
    (Orbax keeps one handler per item), as the inference commands do.

    Args:
      abstract_params: `jax.ShapeDtypeStruct`s with shardings, shaped like the state's params.
      field: the state's field to read: 'params', or 'ema_params' (their moving average).
    """
    item = {field: abstract_params}
    restored = self._restore_newest(ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))
    return None if restored is None else (restored[0][field], restored[1])

  def _restore_newest(self, state_args: Any) -> tuple[Any, int] | None:
    """(the 'state' item restored by `state_args`, step), walking back from the newest step."""
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(state=state_args))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint step %d in %s cannot be restored (%s: %s); trying the '
                        'previous one', step, self._manager.directory, type(e).__name__, e)
        continue
      return restored['state'], step
    return None

  def _restore_iterator(self, step: int, data_iter: Any) -> None:
    """Puts `data_iter` where step `step` left it; a mismatch is the user's to fix."""
    try:
      self._manager.restore(step, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    except Exception as e:  # pylint: disable=broad-except
      # The state restored, so the folder is whole: the pipeline differs from the one saved
      # (worker count, process count, batch size, dataset). Walking back would not help, and
      # starting over would silently change the data order.
      raise errors.ConfigError(
          f'config.data / config.train.batch_size: the data iterator saved at step {step} in '
          f'{self._manager.directory} does not fit this run\'s input pipeline ({e}); expected '
          'the data.worker_count, train.batch_size, dataset and process count of the run that '
          'saved it') from e

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionWatcher:
  """Turns a SIGTERM (preemption notice) into a step at which every process saves and stops.

  One process: a SIGTERM handler sets a flag, `reached(step)` is True from then on. Several:
  jax's preemption service (started by jax.distributed.initialize, which catches the
  signal) agrees on one step for all processes, so their checkpoint saves line up.
  """

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._flag = threading.Event()
    self._previous = None
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after this step, then stopping')
    self._flag.set()

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (call it at every step, on every process)."""
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def close(self) -> None:
    """Gives SIGTERM back its previous handler."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding structs of `tree`, the target layout for a restore."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
