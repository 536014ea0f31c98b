"""grain input pipelines: records -> per-process numpy batches -> global jax.Arrays.

The train loader shuffles by seed, repeats forever and shards records over JAX processes, so
every process reads a disjoint slice and together they make one global batch. Its iterator is
checkpointable (grain's Orbax handler): a resumed run continues at the exact record.
"""

import grain.python as grain
import jax
import ml_collections

from gmscavp_jax import config_validation
from gmscavp_jax.data import synthetic

# Fields the model and evaluators consume; the rest of a record stays on the host.
TRAIN_FIELDS = ('frames', 'waveform', 'label', 'labels', 'onsets', 'num_onsets', 'index')


def make_source(config: ml_collections.ConfigDict, split: str):
  """The random-access source of `split` for the configured dataset."""
  if config.data.name == 'synthetic':
    return synthetic.from_config(config, split)
  raise config_validation.ConfigError(
      f"config.data.name={config.data.name!r}: only 'synthetic' is available")


def _per_process(global_batch_size: int, field: str) -> int:
  n = jax.process_count()
  if global_batch_size % n:
    raise config_validation.ConfigError(
        f'config.{field}={global_batch_size}: expected a multiple of the process count ({n})')
  return global_batch_size // n


def _loader(config: ml_collections.ConfigDict, split: str, *, shuffle: bool,
            num_epochs: int | None, global_batch_size: int, field: str) -> grain.DataLoader:
  """A loader of this process's slice of `split`, batched B / process_count at a time."""
  source = make_source(config, split)
  shard = grain.ShardOptions(shard_index=jax.process_index(),
                             shard_count=jax.process_count(), drop_remainder=True)
  sampler = grain.IndexSampler(num_records=len(source), shard_options=shard, shuffle=shuffle,
                               num_epochs=num_epochs, seed=config.seed)
  batch = _per_process(global_batch_size, field)
  # Read ahead two batches per worker, not grain's default 500 records: a synthetic clip is
  # computed, not read, and a deep read-ahead only churns memory.
  read = grain.ReadOptions(prefetch_buffer_size=2 * batch)
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[grain.Batch(batch, drop_remainder=True)],
      worker_count=config.data.worker_count,
      worker_buffer_size=config.data.prefetch_buffer_size, read_options=read)


def train_loader(config: ml_collections.ConfigDict) -> grain.DataLoader:
  """An endless, shuffled loader of this process's share of each global train batch.

  Yields dicts of numpy arrays with leading dim B / process_count (the fields of the source).
  """
  return _loader(config, 'train', shuffle=True, num_epochs=None,
                 global_batch_size=config.train.batch_size, field='train.batch_size')


def eval_loader(config: ml_collections.ConfigDict, split: str = 'test') -> grain.DataLoader:
  """One ordered pass over the first `eval.num_test_clips` clips of `split`, batched."""
  return _loader(config, split, shuffle=False, num_epochs=1,
                 global_batch_size=config.eval.batch_size, field='eval.batch_size')


def select(batch: dict, fields=TRAIN_FIELDS) -> dict:
  """Keeps the model's fields of a numpy batch (what travels to the devices)."""
  return {k: batch[k] for k in fields if k in batch}


def num_eval_batches(config: ml_collections.ConfigDict) -> int:
  """Global eval batches in one pass over the test split."""
  return config.eval.num_test_clips // config.eval.batch_size

