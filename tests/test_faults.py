"""Fault handling that needs no training run: broken checkpoints, a changed input pipeline,
SIGTERM, runs of non-finite steps, and how a process finds out it is one of many."""

import os
import shutil
import signal

import grain.python as grain
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax import cli
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import errors
from gmscavp_jax import train


def _loader(seed: int = 0):
  return grain.DataLoader(
      data_source=list(range(100)), operations=[grain.Batch(2)], worker_count=0,
      sampler=grain.IndexSampler(100, shuffle=True, seed=seed, num_epochs=None),
      shard_options=grain.NoSharding())


def _save_steps(workdir, saves):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=5)
  it = iter(_loader())
  for step, value in saves:
    next(it)
    ckpt.save(step, {'w': jnp.full((4,), value)}, it, '{}')
    ckpt.wait()
  ckpt.close()
  return checkpointing.checkpoint_dir(str(workdir))


def _restore(workdir, loader=None):
  ckpt = checkpointing.Checkpointer(str(workdir), keep=5)
  abstract = checkpointing.abstract_like({'w': jnp.zeros((4,))})
  try:
    return ckpt.restore_latest(abstract, iter(loader or _loader()))
  finally:
    ckpt.close()


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
  np.testing.assert_array_equal(state['w'], np.full((4,), 2.0))


def test_no_good_checkpoint_restores_nothing(tmp_path):
  directory = _save_steps(tmp_path, [(2, 2.0)])
  shutil.rmtree(os.path.join(directory, '2', 'state'))
  assert _restore(tmp_path) is None


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
