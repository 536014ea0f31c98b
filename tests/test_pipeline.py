"""The grain pipeline: deterministic order by seed, checkpointable position, global arrays."""

import jax
import numpy as np
import pytest

from gmscavp_jax.infra import sharding
from gmscavp_jax.data import pipeline
from tests.conftest import tiny_config


def _first_indices(config, n=3):
  it = iter(pipeline.train_loader(config))
  return [next(it)['index'].tolist() for _ in range(n)]


def test_order_is_deterministic_by_seed():
  config = tiny_config('msa')
  first = _first_indices(config)
  assert first == _first_indices(config)
  assert all(len(b) == config.train.batch_size for b in first)
  config.seed = 1
  assert _first_indices(config) != first


def test_training_seed_keeps_the_synthetic_world():
  # An ablation's seeds vary init and data order, not the benchmark (data.seed does).
  config = tiny_config('msa')
  clip = pipeline.make_source(config, 'test')[0]
  config.seed = 7
  np.testing.assert_array_equal(pipeline.make_source(config, 'test')[0]['waveform'],
                                clip['waveform'])
  config.data.seed = 1
  assert not np.array_equal(pipeline.make_source(config, 'test')[0]['waveform'],
                            clip['waveform'])


def test_iterator_state_restores_the_exact_position():
  config = tiny_config('msa')
  it = iter(pipeline.train_loader(config))
  next(it)
  state = it.get_state()
  expected = next(it)
  other = iter(pipeline.train_loader(config))
  other.set_state(state)
  got = next(other)
  np.testing.assert_array_equal(got['index'], expected['index'])
  np.testing.assert_array_equal(got['frames'], expected['frames'])


def test_global_batch_is_sharded_over_data():
  config = tiny_config('msa')
  local = pipeline.select(next(iter(pipeline.train_loader(config))))
  batch = sharding.global_batch(sharding.make_mesh(), local)
  assert batch['frames'].shape == (8, 8, 32, 32, 3) and batch['frames'].dtype == np.uint8
  assert batch['waveform'].shape == (8, 8000)
  assert batch['frames'].sharding == sharding.batch_sharded(sharding.make_mesh())
  np.testing.assert_array_equal(jax.device_get(batch['index']), local['index'])


def test_eval_loader_is_one_ordered_pass():
  config = tiny_config('msa')
  indices = np.concatenate([b['index'] for b in pipeline.eval_loader(config)])
  np.testing.assert_array_equal(indices, np.arange(config.eval.num_test_clips))


def _grain_batches(sampler, process, num_processes, num_workers, local, num_batches):
  """The local batches grain's DataLoader makes from `sampler` (its layout, simulated):
  process p asks for indices j*n + p; worker w batches its records j = w, w+W, ...; the
  loader yields the workers' batches in turn."""
  workers = max(num_workers, 1)
  per_worker = [[sampler[j * num_processes + process].record_key
                 for j in range(w, num_batches * local, workers)] for w in range(workers)]
  return [per_worker[m % workers][(m // workers) * local:(m // workers + 1) * local]
          for m in range(num_batches)]


@pytest.mark.parametrize('num_workers', [0, 2, 3])
def test_global_batches_do_not_depend_on_processes_or_workers(num_workers):
  def stream(num_processes, num_workers, num_batches=6, batch=8):
    sampler = pipeline.GlobalBatchSampler(100, batch, num_processes, num_workers=num_workers,
                                          shuffle=True, num_epochs=None, seed=3)
    local = [_grain_batches(sampler, p, num_processes, num_workers, batch // num_processes,
                            num_batches) for p in range(num_processes)]
    return [key for s in range(num_batches) for p in range(num_processes) for key in local[p][s]]

  one = stream(1, 0)
  assert stream(1, num_workers) == one
  assert stream(2, num_workers) == one and stream(4, num_workers) == one
  assert len(set(one[:48])) == 48  # One shuffled epoch of 100 records: no repeats yet.


def test_an_epoch_limited_sampler_keeps_whole_global_batches():
  sampler = pipeline.GlobalBatchSampler(20, 8, 2, num_workers=0, shuffle=False, num_epochs=1,
                                        seed=0)
  assert len(sampler) == 16
  with pytest.raises(IndexError):
    sampler[16]  # pylint: disable=pointless-statement


def test_a_finite_pass_uses_workers_that_split_its_batches_evenly():
  assert pipeline._worker_count(2, None) == 2  # pylint: disable=protected-access
  assert pipeline._worker_count(2, 1) == 1  # pylint: disable=protected-access
  assert pipeline._worker_count(4, 6) == 3  # pylint: disable=protected-access
  assert pipeline._worker_count(0, 6) == 0  # pylint: disable=protected-access
