"""Orbax checkpoints of train state + grain iterator state + config, in WORKDIR/checkpoints,
and the SIGTERM (preemption notice) watcher that decides when to save and stop.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it; with
several processes it also synchronises them). A restore walks back from the newest step: a
damaged step folder (a metadata file missing or unreadable, arrays that fail to restore or
differ from the fingerprints taken when they were saved, an unreadable iterator file) is
reported in one warning and skipped. Step folders none of which restores are an error,
never a silent start from step 0 (docs/training.md, "Resuming, and damaged checkpoints").
"""

from collections.abc import Callable
import json
import os
import signal
import threading
from typing import Any

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gmscavp_jax.infra import errors

ITEMS = ('state', 'data_iter', 'config', 'fingerprints', 'log_window')

# JSON files a finished save leaves in every step folder (Orbax 0.12 writes them before it
# renames the folder into place). One missing or unreadable means the folder was damaged
# after the save; Orbax itself restores without the first two, so they are checked here.
_METADATA_FILES = ('_CHECKPOINT_METADATA', 'state/_METADATA', 'config/metadata')


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

  def save(self, step: int, state: Any, data_iter: Any, config_json: str,
           log_window: list[dict] | None = None) -> None:
    """Starts an async save of `state`, the iterator position and the config at `step`,
    with the state's `fingerprints` (checked at restore) and `log_window`: the metrics of
    the steps since the last log line ({name: numpy scalar} per step), so that a run resumed
    from here logs the same means as one never stopped."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(json.loads(config_json)),
        fingerprints=ocp.args.JsonSave(fingerprints(state)),
        log_window=ocp.args.JsonSave({'steps': [
            {k: [float(v), np.asarray(v).dtype.name] for k, v in m.items()}
            for m in log_window or []]})))

  def log_window(self, step: int) -> list[dict]:
    """The `log_window` saved at `step` ([] for checkpoints saved before it existed)."""
    if not (self._manager.directory / str(step) / 'log_window').exists():
      return []
    # Back in their own dtypes: a mean over float32 values must round as it would have.
    return [{k: np.asarray(v, dtype) for k, (v, dtype) in m.items()}
            for m in self._read_json(step, 'log_window')['steps']]

  def restore_latest(self, abstract_state: Any, data_iter: Any = None,
                     check_config: Callable[[int, dict], None] | None = None
                     ) -> tuple[Any, int] | None:
    """Restores the newest good checkpoint; returns (state, step), or None if there is none.

    Args:
      abstract_state: a pytree of `jax.ShapeDtypeStruct` with shardings (the layout to
        restore onto).
      data_iter: a grain iterator restored in place, or None to leave the data alone.
      check_config: called with (step, the config saved at that step) before the step is
        restored; it raises errors.ConfigError when the checkpoints are another run's.

    Raises:
      errors.DamagedCheckpointError: step folders exist but none of them restores.
      errors.ConfigError: the data iterator saved does not fit `data_iter`'s pipeline.
    """
    return self._restore_newest(ocp.args.StandardRestore(abstract_state), data_iter,
                                check_config)

  def restore_latest_params(self, abstract_params: Any,
                            field: str = 'params') -> tuple[Any, int] | None:
    """One params tree alone of the newest good checkpoint: (params, step), or None if none.

    Only the state's `field` subtree is read (Orbax partial restore): the optimizer state
    is neither read nor allocated. Use a Checkpointer that has not restored the whole state
    (Orbax keeps one handler per item), as the inference commands do.

    Args:
      abstract_params: `jax.ShapeDtypeStruct`s with shardings, shaped like the state's params.
      field: the state's field to read: 'params', or 'ema_params' (their moving average).

    Raises:
      errors.DamagedCheckpointError: step folders exist but none of them restores.
    """
    item = {field: abstract_params}
    restored = self._restore_newest(ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True))
    return None if restored is None else (restored[0][field], restored[1])

  def _restore_newest(self, state_args: Any, data_iter: Any = None,
                      check_config: Callable[[int, dict], None] | None = None
                      ) -> tuple[Any, int] | None:
    """(the 'state' item restored by `state_args`, step), walking back from the newest step."""
    failures = []
    for step in reversed(self.all_steps()):
      state, why = self._restore_step(step, state_args, data_iter, check_config)
      if why is None:
        return state, step
      logging.warning('checkpoint %s is damaged (%s); trying the previous step',
                      self._manager.directory / str(step), why)
      failures.append(f'step {step}: {why}')
    if failures:
      raise errors.DamagedCheckpointError(
          f'none of the checkpoints in {self._manager.directory} can be restored ('
          f'{"; ".join(failures)}); expected at least one whole step folder. To start over '
          'from step 0, move that folder aside (or use a fresh --workdir)')
    return None

  def _restore_step(self, step: int, state_args: Any, data_iter: Any,
                    check_config: Callable[[int, dict], None] | None) -> tuple[Any, str | None]:
    """(state, None), or (None, what is wrong with step folder `step`)."""
    folder = self._manager.directory / str(step)
    state, why = None, _metadata_damage(folder)
    if why is None and check_config is not None:
      try:
        saved_config = self._read_json(step, 'config')
      except Exception as e:  # pylint: disable=broad-except
        why = f'its config is unreadable: {_one_line(e)}'
      else:
        check_config(step, saved_config)  # Another run's checkpoints: no walking back.
    if why is None:
      try:
        state = self._manager.restore(step, args=ocp.args.Composite(state=state_args))['state']
      except Exception as e:  # pylint: disable=broad-except
        why = f'its state does not restore: {_one_line(e)}'
    why = _agreed(why)  # Fingerprints are computed by every process together.
    if why is None:
      why = self._verify(step, state)
    if why is None and data_iter is not None:
      why = _agreed(self._restore_iterator(step, data_iter))
    return (None, why) if why else (state, None)

  def _read_json(self, step: int, item: str) -> Any:
    return self._manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.JsonRestore()}))[item]

  def _verify(self, step: int, state: Any) -> str | None:
    """What differs between `state` (restored from `step`) and the fingerprints saved with it.

    Orbax restores a flipped byte, and at times a zeroed block, inside its array files as
    wrong numbers without an error (measured with Orbax 0.12.8); the fingerprints catch both.
    """
    if not (self._manager.directory / str(step) / 'fingerprints').exists():
      logging.info('checkpoint step %d predates fingerprints: its arrays are not verified', step)
      return None
    try:
      saved = self._read_json(step, 'fingerprints')
    except Exception as e:  # pylint: disable=broad-except
      return f'its fingerprints are unreadable: {_one_line(e)}'
    bad = [path for path, value in fingerprints(state).items()
           if path in saved and saved[path] != value]
    if bad:
      return ('arrays differ from the fingerprints taken when it was saved: '
              f'{", ".join(bad[:3])}{f" and {len(bad) - 3} more" if len(bad) > 3 else ""}')
    return None

  def _restore_iterator(self, step: int, data_iter: Any) -> str | None:
    """Puts `data_iter` where step `step` left it; returns what is wrong if the iterator's
    file is damaged, raises errors.ConfigError if it does not fit the pipeline."""
    try:
      self._manager.restore(step, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    except Exception as e:  # pylint: disable=broad-except
      damage = _iterator_damage(self._manager.directory / str(step) / 'data_iter')
      if damage:
        return damage
      # The files are whole: the pipeline differs from the one saved (worker count, process
      # count, batch size, dataset). Walking back would not help, and starting over would
      # silently change the data order.
      raise errors.ConfigError(
          f'config.data / config.train.batch_size: the data iterator saved at step {step} in '
          f'{self._manager.directory} does not fit this run\'s input pipeline ({e}); expected '
          'the data.worker_count, train.batch_size, dataset and process count of the run that '
          'saved it') from e
    return None

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


def fingerprints(tree: Any) -> dict[str, int]:
  """{'a/b/c': a 32-bit fingerprint of the leaf's bits} for each jax.Array leaf of `tree`.

  Paths name dict keys and dataclass fields alike, so a partial restore ({'params': ...})
  matches the whole state's. Computed on the host from each process's shards (no program to
  compile, where a jitted reduction over a few hundred leaves costs seconds of XLA compile
  per state layout) and summed over processes, so every process must call it; the result
  does not depend on the sharding.
  """
  named = [('/'.join(_key_name(k) for k in path), leaf)
           for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
           if isinstance(leaf, jax.Array)]
  partial = np.array([_local_fingerprint(leaf) for _, leaf in named], np.uint32)
  if jax.process_count() > 1:
    partial = np.sum(multihost_utils.process_allgather(partial), axis=0, dtype=np.uint32)
  return {name: int(v) for (name, _), v in zip(named, partial)}


def _local_fingerprint(x: jax.Array) -> np.uint32:
  """sum_i mix(bits_i) * (2i + 1) mod 2^32 over this process's share of `x` (i: the global
  index of a 32-bit word): mix is a bijection and each weight odd, so any one changed element
  changes it; a reordering or a zeroed block does too, but for chance 2^-32. Sums mod 2^32
  associate, so partial sums over shards (replicas counted once) add up to one value for
  any sharding."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  total = np.uint32(0)
  for shard in x.addressable_shards:
    if shard.replica_id != 0 or shard.data.size == 0:
      continue
    data = np.asarray(shard.data)
    if data.dtype == np.bool_:
      words = data.astype(np.uint32).reshape(-1, 1)
    elif data.dtype.itemsize == 8:
      words = data.reshape(-1).view(np.uint32).reshape(-1, 2)  # Two words per element.
    else:
      words = data.reshape(-1).view(f'uint{8 * data.dtype.itemsize}').astype(
          np.uint32).reshape(-1, 1)
    offsets = np.array([s.start or 0 for s in shard.index], np.int64).reshape(-1, 1)
    grid = np.indices(data.shape).reshape(data.ndim, data.size) + offsets
    flat = np.ravel_multi_index(grid, x.shape) if data.ndim else np.zeros(1, np.int64)
    first_word = flat.astype(np.uint64) * np.uint64(words.shape[1])
    index = (first_word[:, None] + np.arange(words.shape[1], dtype=np.uint64)).reshape(-1)
    weights = (index * 2 + 1).astype(np.uint32)  # Truncation is the mod 2^32.
    bits = words.reshape(-1)
    mixed = (bits ^ (bits >> 16)) * np.uint32(0x45D9F3B)
    mixed ^= mixed >> 16
    total += np.sum(mixed * weights, dtype=np.uint32)
  return total


def _key_name(key: Any) -> str:
  for attr in ('key', 'name', 'idx'):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey.
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _metadata_damage(folder) -> str | None:
  """What is wrong with the metadata files of step folder `folder` (an epath.Path)."""
  for name in _METADATA_FILES:
    path = folder / name
    if not path.exists():
      return f'{name} is missing'
    try:
      json.loads(path.read_text())
    except ValueError as e:  # UnicodeDecodeError is one.
      return f'{name} is not JSON ({_one_line(e)})'
  return None


def _iterator_damage(folder) -> str | None:
  """What is wrong with the iterator files in `folder` (STEP/data_iter): none, or one that is
  not JSON (grain writes one JSON file per process). None: they are whole."""
  files = list(folder.glob('*.json')) if folder.exists() else []
  if not files:
    return 'data_iter holds no iterator file'
  for path in files:
    try:
      json.loads(path.read_text())
    except ValueError as e:
      return f'data_iter/{path.name} is not JSON ({_one_line(e)})'
  return None


def _agreed(why: str | None) -> str | None:
  """`why`, or a verdict of damage when another process found one: every process must walk
  back to the same step (restores and fingerprints are collective)."""
  if jax.process_count() == 1:
    return why
  damaged = multihost_utils.process_allgather(np.array(why is not None))
  return why or ('damaged as another process found it' if damaged.any() else None)


def _one_line(e: Exception, limit: int = 300) -> str:
  """The innermost cause of `e` (Orbax wraps TensorStore's telling error), on one line."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = ' '.join(f'{type(e).__name__}: {e}'.split())
  return text if len(text) <= limit else text[:limit] + '...'
