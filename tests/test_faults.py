"""Fault handling that needs no training run: broken checkpoints, a changed input pipeline,
SIGTERM, runs of non-finite steps, and how a process finds out it is one of many."""

import json
import os
import shutil
import signal

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax import cli
from gmscavp_jax.core import train_state
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import errors
from gmscavp_jax import train
from tests.conftest import tiny_config

# Elements of the arrays of the damage tests: 64 KiB, enough for Orbax to keep them in a data
# file of their own (4 elements sit in the checksummed b-tree node beside their keys).
BIG = 2**14


def _loader(seed: int = 0):
  return grain.DataLoader(
      data_source=list(range(100)), operations=[grain.Batch(2)], worker_count=0,
      sampler=grain.IndexSampler(100, shuffle=True, seed=seed, num_epochs=None),
      shard_options=grain.NoSharding())


def _tree(value: float, size: int = 4) -> dict:
  return {'w': value + jnp.arange(size, dtype=jnp.float32) / size}


def _save_steps(workdir, saves, size: int = 4, config_json: str = '{}'):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=5)
  it = iter(_loader())
  for step, value in saves:
    next(it)
    ckpt.save(step, _tree(value, size), it, config_json)
    ckpt.wait()
  ckpt.close()
  return checkpointing.checkpoint_dir(str(workdir))


def _restore(workdir, loader=None, size: int = 4):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=5)
  abstract = checkpointing.abstract_like(_tree(0.0, size))
  try:
    return ckpt.restore_latest(abstract, iter(loader or _loader()))
  finally:
    ckpt.close()


def _damage_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.levelname == 'WARNING' and 'is damaged' in r.getMessage()]


def _data_file(directory, step: int) -> str:
  """The arrays' data file of `step` (in ocdbt's d/ folder): the largest under state/."""
  files = [os.path.join(root, f)
           for root, _, names in os.walk(os.path.join(directory, str(step), 'state'))
           for f in names]
  path = max(files, key=os.path.getsize)
  assert os.path.getsize(path) > BIG, path  # Not one of the small metadata files.
  return path


def _flip_byte_of_the_data_file(directory, step: int) -> None:
  path = _data_file(directory, step)
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(data)


def _assert_step_2_restored_with_one_warning(restored, caplog, directory, size=4):
  state, step = restored
  assert step == 2
  np.testing.assert_array_equal(state['w'], _tree(2.0, size)['w'])
  warnings = _damage_warnings(caplog)
  assert len(warnings) == 1, warnings
  assert os.path.join(directory, '4') + ' is damaged' in warnings[0]


def test_a_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path):
  directory = _save_steps(tmp_path, [(2, 2.0), (4, 4.0)])
  # Step 4 looks complete (its folder was renamed) but its array data is gone.
  state_dir = os.path.join(directory, '4', 'state')
  for name in os.listdir(state_dir):
    path = os.path.join(state_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
  # A save killed mid-way leaves a temporary folder: never a candidate.
  os.makedirs(os.path.join(directory, '6.orbax-checkpoint-tmp-1234', 'state'))
  state, step = _restore(tmp_path)
  assert step == 2
  np.testing.assert_array_equal(state['w'], _tree(2.0)['w'])


# Measured with Orbax 0.12.8: it fails on a truncated or an all-zero data file by itself, and on
# a zeroed 4 KiB block here (zstd sees it; with 10^5 elements it did not), but restores a
# flipped byte as wrong numbers, silently: the fingerprints saved with each step catch it.
@pytest.mark.parametrize('damage', ['truncate', 'zero', 'zero_block', 'flip_byte'])
def test_damaged_array_bytes_are_skipped_for_the_previous_step(tmp_path, caplog, damage):
  directory = _save_steps(tmp_path, [(2, 2.0), (4, 4.0)], size=BIG)
  path = _data_file(directory, 4)
  data = bytearray(open(path, 'rb').read())
  middle = len(data) // 2
  if damage == 'truncate':
    data = data[:middle]
  elif damage == 'zero':
    data = bytearray(len(data))
  elif damage == 'zero_block':
    data[middle:middle + 4096] = bytes(4096)
  else:
    data[middle] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(data)
  _assert_step_2_restored_with_one_warning(_restore(tmp_path, size=BIG), caplog, directory,
                                           size=BIG)


def test_a_checkpoint_saved_before_fingerprints_still_restores(tmp_path, caplog):
  directory = _save_steps(tmp_path, [(2, 2.0), (4, 4.0)])
  shutil.rmtree(os.path.join(directory, '4', 'fingerprints'))  # As saves were before them.
  state, step = _restore(tmp_path)
  assert step == 4 and not _damage_warnings(caplog)
  np.testing.assert_array_equal(state['w'], _tree(4.0)['w'])


def test_a_params_only_restore_checks_the_fingerprints_too(tmp_path, caplog):
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=5)
  it = iter(_loader())
  for step in (2, 4):
    ckpt.save(step, train_state.TrainState(step=jnp.array(step), params=_tree(step, BIG),
                                           opt_state=_tree(0.0)), it, '{}')
    ckpt.wait()
  ckpt.close()
  directory = checkpointing.checkpoint_dir(str(tmp_path))
  _flip_byte_of_the_data_file(directory, 4)
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=5)
  params, step = ckpt.restore_latest_params(checkpointing.abstract_like(_tree(0.0, BIG)))
  ckpt.close()
  assert step == 2  # The dataclass field and the partial tree's key name the same arrays.
  np.testing.assert_array_equal(params['w'], _tree(2.0, BIG)['w'])
  assert 'fingerprints taken when it was saved: params/w' in _damage_warnings(caplog)[0]


@pytest.mark.parametrize('name', ['_CHECKPOINT_METADATA', 'state/_METADATA',
                                  'state/manifest.ocdbt'])
def test_a_missing_metadata_file_is_skipped_for_the_previous_step(tmp_path, caplog, name):
  directory = _save_steps(tmp_path, [(2, 2.0), (4, 4.0)])
  os.remove(os.path.join(directory, '4', name))
  _assert_step_2_restored_with_one_warning(_restore(tmp_path), caplog, directory)


def test_a_zeroed_metadata_or_iterator_file_is_skipped(tmp_path, caplog):
  directory = _save_steps(tmp_path, [(2, 2.0), (4, 4.0), (6, 6.0)])
  for step, name in ((6, '_CHECKPOINT_METADATA'), (4, 'data_iter/process_0-of-1.json')):
    path = os.path.join(directory, str(step), name)
    with open(path, 'wb') as f:
      f.write(bytes(os.path.getsize(path)))
  state, step = _restore(tmp_path)
  assert step == 2
  np.testing.assert_array_equal(state['w'], _tree(2.0)['w'])
  warnings = _damage_warnings(caplog)
  assert len(warnings) == 2, warnings
  assert '_CHECKPOINT_METADATA is not JSON' in warnings[0]
  assert 'data_iter/process_0-of-1.json is not JSON' in warnings[1]


def test_no_checkpoint_that_restores_is_an_error_not_a_fresh_start(tmp_path):
  directory = _save_steps(tmp_path, [(2, 2.0), (4, 4.0)])
  shutil.rmtree(os.path.join(directory, '2', 'state'))
  os.remove(os.path.join(directory, '4', '_CHECKPOINT_METADATA'))
  with pytest.raises(errors.DamagedCheckpointError,
                     match=r'step 4: _CHECKPOINT_METADATA is missing; step 2: .*move that folder '
                     r'aside') as raised:
    _restore(tmp_path)
  assert directory in str(raised.value) and '\n' not in str(raised.value)
  assert isinstance(raised.value, errors.ConfigError)  # cli.USER_ERRORS: one line.


def test_no_checkpoint_folder_or_an_empty_one_is_a_fresh_start(tmp_path):
  assert _restore(tmp_path / 'none') is None
  directory = checkpointing.checkpoint_dir(str(tmp_path / 'empty'))
  os.makedirs(os.path.join(directory, '6.orbax-checkpoint-tmp-1234', 'state'))
  assert _restore(tmp_path / 'empty') is None  # An interrupted first save: nothing saved.


def _resume(workdir, config):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=5)
  try:
    return train._resume(ckpt, _tree(0.0), iter(_loader()), str(workdir), config)  # pylint: disable=protected-access
  finally:
    ckpt.close()


def test_checkpoints_of_another_config_stop_the_run_naming_the_fields(tmp_path):
  config = tiny_config('msa')
  _save_steps(tmp_path, [(2, 2.0), (4, 4.0)], config_json=config.to_json_best_effort())
  config.model.embed_dim = 32
  config.train.batch_size = 16
  config.data.worker_count = 2  # grain's saved iterator would refuse it anyway.
  with pytest.raises(errors.ConfigError) as raised:
    _resume(tmp_path, config)
  message = str(raised.value)
  assert not isinstance(raised.value, errors.DamagedCheckpointError)
  assert message.startswith('config.data.worker_count: '), message
  assert ('; config.model.embed_dim: the checkpoints in '
          f'{checkpointing.checkpoint_dir(str(tmp_path))} were written with 16 (step 4), this '
          'run has 32; config.train.batch_size: ') in message, message
  assert message.endswith('expected the same values to continue that run, or a fresh '
                          '--workdir')
  assert message.count('config.') == 3, message


def test_fields_a_continued_run_may_change_or_added_since_still_resume(tmp_path):
  config = tiny_config('msa')
  saved = json.loads(config.to_json_best_effort())
  del saved['train']['ema_decay']  # A field added later (config_io.upgrade knows it)...
  saved['data']['retired_field'] = 1  # ...and one since removed.
  _save_steps(tmp_path, [(2, 2.0)], config_json=json.dumps(saved))
  for path, value in (('train.num_steps', 99), ('train.checkpoint_every_steps', 7),
                      ('train.keep_checkpoints', 9), ('eval.batch_size', 4),
                      ('vocoder.width', 8), ('mesh.fsdp', 2),
                      ('data.data_dir', '/elsewhere')):
    section, field = path.split('.')
    config[section][field] = value
  state, step = _resume(tmp_path, config)
  assert step == 2
  np.testing.assert_array_equal(state['w'], _tree(2.0)['w'])
  config.train.ema_decay = 0.9  # The saved run, without the field, had no EMA.
  with pytest.raises(errors.ConfigError, match=r'^config\.train\.ema_decay: .* written with 0\.0 '
                     r'\(step 2\), this run has 0\.9; expected'):
    _resume(tmp_path, config)


def test_fingerprints_see_one_changed_element_and_a_reordering():
  tree = {'a': jnp.arange(1000, dtype=jnp.float32), 'b': jnp.ones((3, 2), jnp.bfloat16),
          'c': jnp.array(7, jnp.int32), 'k': jax.random.key(0)}
  base = checkpointing.fingerprints(tree)
  assert sorted(base) == ['a', 'b', 'c', 'k']
  assert checkpointing.fingerprints(jax.tree.map(jnp.copy, tree)) == base
  changed = [dict(tree, a=tree['a'].at[500].set(500.00003)), dict(tree, a=tree['a'][::-1]),
             dict(tree, b=tree['b'].at[2, 1].set(0)), dict(tree, c=jnp.array(8, jnp.int32)),
             dict(tree, k=jax.random.key(1))]
  for other in changed:
    differing = [k for k, v in checkpointing.fingerprints(other).items() if v != base[k]]
    assert len(differing) == 1, differing


def test_a_changed_input_pipeline_is_a_clear_error_not_a_silent_restart(tmp_path):
  _save_steps(tmp_path, [(2, 2.0)])
  with pytest.raises(errors.ConfigError, match='data iterator saved at step 2'):
    _restore(tmp_path, _loader(seed=1))


def test_sigterm_sets_the_preemption_flag_and_close_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  watcher = checkpointing.PreemptionWatcher()
  assert not watcher.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watcher.reached(2)
  watcher.close()
  assert signal.getsignal(signal.SIGTERM) == before


def test_skip_counter_stops_after_the_limit_in_a_row():
  counter = train.SkipCounter(limit=3)
  for step, flag in enumerate([1.0, 1.0, 0.0, 1.0, 1.0], start=1):
    counter.add(step, np.float32(flag))
  counter.check(lambda: [2])
  assert (counter.total, counter.streak) == (4, 2)
  counter.add(6, np.float32(1.0))
  with pytest.raises(errors.NonFiniteError, match=r'3 steps in a row \(steps 4-6\).*step 2'):
    counter.check(lambda: [2])


@pytest.mark.parametrize('env,expected', [
    ({}, False), ({'SLURM_NTASKS': '1'}, False), ({'SLURM_NTASKS': '4'}, True),
    ({'SLURM_NTASKS': '4', 'SLURM_STEP_NUM_TASKS': '1'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),
    ({'TPU_WORKER_HOSTNAMES': '10.0.0.2,10.0.0.3'}, True)])
def test_multiprocess_clusters_are_detected_from_the_environment(env, expected):
  assert cli._in_multiprocess_cluster(env) == expected  # pylint: disable=protected-access


def test_a_coordinator_without_process_flags_is_a_clear_error():
  holders = {name: type('Flag', (), {'value': value})()
             for name, value in (('coordinator_address', '127.0.0.1:1234'),
                                 ('num_processes', 2), ('process_id', None))}
  with pytest.raises(errors.ConfigError, match='--process_id'):
    cli.init_distributed(holders)
