"""grain input pipelines: sources (synthetic, prepared, mixture) -> per-process numpy batches.

The train loader shuffles by seed and repeats forever. Global batch s is positions
[s*B, (s+1)*B) of one seeded stream of records, and process p reads its slice [p*B/n,
(p+1)*B/n) of each: the data a step sees does not depend on how many processes share it.
The iterator is checkpointable (grain's Orbax handler): a resumed run continues at the exact
record.
"""

import sys

import grain.python as grain
import jax
import ml_collections
import numpy as np

from gmscavp_jax.data import mixture
from gmscavp_jax.data import synthetic
from gmscavp_jax.infra import errors

# Fields the model and evaluators consume; the rest of a record stays on the host.
TRAIN_FIELDS = ('frames', 'waveform', 'label', 'labels', 'onsets', 'num_onsets', 'index')


def make_source(config: ml_collections.ConfigDict, split: str):
  """The random-access source of `split` for the configured dataset.

  data.name 'synthetic' is the embedded benchmark. Any other name is a dataset made by
  `python -m gmscavp_jax.prepare --name=NAME --data_dir=DIR`, found under data.data_dir at
  the config's geometry (data.num_frames, data.fps, data.image_size, audio.sample_rate);
  its records carry the synthetic source's fields (builders.PreparedSource). Its train split
  is used whole (data.num_train_clips only sizes the synthetic set); an evaluation split
  serves its first eval.num_test_clips records, which it must have. With data.mixture the
  train split is that mixture of sources instead (`mixture_source`).
  """
  if split == 'train' and config.data.mixture:
    return mixture_source(config)
  if config.data.name == 'synthetic':
    return synthetic.from_config(config, split)
  return _prepared_source(config, split)


def mixture_source(config: ml_collections.ConfigDict) -> mixture.MixtureSource:
  """The train sources of data.mixture, mixed by their weights (data/mixture.py).

  Each entry is the source `make_source` gives for data.name = its NAME, with its options
  in place of data.data_dir, data.seed and the train size. A ConfigError names the entry
  that cannot be opened, or whose records do not batch with the first entry's.
  """
  try:
    entries = mixture.parse(config.data.mixture)
  except ValueError as e:
    raise errors.ConfigError(f'config.data.mixture={config.data.mixture!r}: {e}')
  sources, shapes = [], None
  for i, entry in enumerate(entries):
    where = f'config.data.mixture entry {i} ({entry.spec()!r})'
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.data.mixture, sub.data.name = '', entry.name
    sub.data.data_dir = entry.data_dir or config.data.data_dir
    if entry.seed is not None:
      sub.data.seed = entry.seed
    if entry.name == 'synthetic' and entry.clips:
      sub.data.num_train_clips = entry.clips
    try:
      source = make_source(sub, 'train')
    except errors.ConfigError as e:
      raise errors.ConfigError(f'{where}: {e}') from e
    if entry.name != 'synthetic' and entry.clips:
      if entry.clips > len(source):
        raise errors.ConfigError(
            f'{where}: clips={entry.clips}, but its train split has {len(source)}')
      source = grain.MapDataset.source(source)[:entry.clips]
    # One record says what the source yields: every field must batch with the first entry's
    # (frames, fps, image size and sample rate set the shapes; the classes set `labels`).
    record = {k: np.shape(v) for k, v in source[0].items() if k in mixture.FIELDS}
    if shapes is None:
      shapes = record
    elif record != shapes:
      raise errors.ConfigError(
          f'{where}: its records have shapes {record}, those of entry 0 {shapes}; expected '
          'sources with the same geometry (data.num_frames, data.fps, data.image_size, '
          'audio.sample_rate) and classes')
    sources.append(source)
  return mixture.MixtureSource(sources, [e.weight for e in entries],
                               [e.spec() for e in entries])


def prepared_info(config: ml_collections.ConfigDict) -> tuple[str, tuple[str, ...], dict]:
  """(directory, class names, {split: clips}) of data.name's prepared set at the config's
  geometry, read from its metadata alone; a ConfigError names the field that is off."""
  from gmscavp_jax.data import builders  # pylint: disable=g-import-not-at-top  (tfds: slow)
  d = config.data
  if not d.data_dir:
    raise errors.ConfigError(
        f'config.data.data_dir={d.data_dir!r}: expected the --data_dir where dataset '
        f'{d.name!r} was prepared')
  geometry = builders.clips_config(d.num_frames, d.fps, d.image_size, config.audio.sample_rate)
  try:
    path = builders.find_prepared(d.data_dir, d.name, geometry)
  except builders.NotPreparedError as e:
    raise errors.ConfigError(
        f'config.data.name={d.name!r} (data.data_dir={d.data_dir!r}, data.num_frames, '
        f'data.fps, data.image_size, audio.sample_rate): {e}') from e
  classes, sizes = builders.prepared_info(path)
  return path, classes, sizes


def _prepared_source(config: ml_collections.ConfigDict, split: str):
  """builders.PreparedSource of `split`, or a ConfigError naming the field that is off.

  The trainer checks the same against the set's metadata before any work
  (core/preflight.py); these checks stay for every other reader of a config.
  """
  from gmscavp_jax.data import builders  # pylint: disable=g-import-not-at-top  (tfds: slow)
  d = config.data
  path, classes, sizes = prepared_info(config)
  if split not in sizes:
    raise errors.ConfigError(
        f'config.data.name={d.name!r}: the prepared dataset {path} has no {split!r} split '
        f'(it has {sorted(sizes)})')
  if classes and d.num_classes != len(classes):
    raise errors.ConfigError(
        f'config.data.num_classes={d.num_classes}: expected {len(classes)}, the classes of '
        f'the prepared dataset {path}')
  num_records = None
  if split != 'train':
    num_records = config.eval.num_test_clips
    if num_records > sizes[split]:
      raise errors.ConfigError(
          f'config.eval.num_test_clips={num_records}: expected at most {sizes[split]}, the '
          f'clips of split {split!r} of {path}')
  return builders.PreparedSource(path, split, max_onsets=d.max_onsets,
                                 num_classes=d.num_classes, num_records=num_records)


def _per_process(global_batch_size: int, field: str) -> int:
  n = jax.process_count()
  if global_batch_size % n:
    raise errors.ConfigError(
        f'config.{field}={global_batch_size}: expected a multiple of the process count ({n})')
  return global_batch_size // n


class GlobalBatchSampler:
  """grain sampler: process p's share of each global batch of one seeded record stream.

  grain's DataLoader asks process p (of n) for indices q = j*n + p, j = 0, 1, ...; its
  worker w (of W) takes the local records j = w, w+W, ... and batches them b = B/n at a time;
  the loader then yields the workers' batches in turn. `stream_position` inverts that
  layout, so the processes' local batches s concatenate to stream positions
  [s*B, (s+1)*B), in order, whatever n and W are.
  """

  def __init__(self, num_records: int, global_batch_size: int, num_processes: int, *,
               num_workers: int, shuffle: bool, num_epochs: int | None, seed: int):
    self._stream = grain.IndexSampler(num_records=num_records, shuffle=shuffle,
                                      num_epochs=num_epochs, seed=seed)
    self._args = dict(num_records=num_records, global_batch_size=global_batch_size,
                      num_processes=num_processes, num_workers=num_workers, shuffle=shuffle,
                      num_epochs=num_epochs, seed=seed)
    self._batch, self._n = global_batch_size, num_processes
    self._workers = max(num_workers, 1)  # 0 workers: the main process is the one "worker".
    self._local = global_batch_size // num_processes
    # Whole global batches only (an epoch-limited stream drops its last partial batch).
    self._len = (None if num_epochs is None
                 else num_records * num_epochs // global_batch_size * global_batch_size)

  def __len__(self) -> int:
    return sys.maxsize if self._len is None else self._len

  def __repr__(self) -> str:  # grain checks it when restoring an iterator.
    return 'GlobalBatchSampler(' + ', '.join(f'{k}={v!r}' for k, v in self._args.items()) + ')'

  def stream_position(self, index: int) -> int:
    """The stream position that grain's sampler index `index` (= j*n + p) stands for."""
    j, p = divmod(index, self._n)  # Local record j of process p,
    r, w = divmod(j, self._workers)  # the r-th record of worker w,
    k, i = divmod(r, self._local)  # slot i of that worker's k-th batch,
    local_batch = k * self._workers + w  # which the loader yields as this local batch.
    return local_batch * self._batch + p * self._local + i

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or (self._len is not None and index >= self._len):
      raise IndexError(f'sampler index {index} out of [0, {self._len})')
    record = self._stream[self.stream_position(index)]
    return grain.RecordMetadata(index=index, record_key=record.record_key, rng=record.rng)


def _worker_count(configured: int, num_batches: int | None) -> int:
  """The configured workers, or for a finite pass the most that split its batches evenly
  (each worker makes whole batches of its own records: 1 batch over 2 workers makes none)."""
  if num_batches is None or configured == 0:
    return configured
  return max(w for w in range(1, configured + 1) if num_batches % w == 0)


class PaddedSource:
  """`source` padded to a multiple of `multiple` records by repeating its last one.

  Every record gains `valid` () bool, False on the padding: an evaluation pass then reads
  the whole split in batches of one shape (one compiled program), and drops the padding.
  """

  def __init__(self, source, multiple: int):
    self._source, self.num_valid = source, len(source)
    self._len = -(-self.num_valid // multiple) * multiple

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:
    return f'PaddedSource({self._source!r}, len={self._len})'

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._len:
      raise IndexError(f'index {index} out of range for {self._len} records')
    record = self._source[min(index, self.num_valid - 1)]
    return dict(record, valid=np.bool_(index < self.num_valid))


def _loader(config: ml_collections.ConfigDict, split: str, *, shuffle: bool,
            num_epochs: int | None, global_batch_size: int, field: str,
            pad: bool = False) -> grain.DataLoader:
  """A loader of this process's slice of `split`, batched B / process_count at a time; `pad`
  makes the last batch whole (`PaddedSource`) instead of dropping it."""
  source = make_source(config, split)
  if pad:
    source = PaddedSource(source, global_batch_size)
  batch = _per_process(global_batch_size, field)
  num_batches = None if num_epochs is None else len(source) * num_epochs // global_batch_size
  workers = _worker_count(config.data.worker_count, num_batches)
  shard = grain.ShardOptions(shard_index=jax.process_index(),
                             shard_count=jax.process_count(), drop_remainder=True)
  sampler = GlobalBatchSampler(len(source), global_batch_size, jax.process_count(),
                               num_workers=workers, shuffle=shuffle, num_epochs=num_epochs,
                               seed=config.seed)
  # Read ahead two batches per worker, not grain's default 500 records: a synthetic clip is
  # computed, not read, and a deep read-ahead only churns memory.
  read = grain.ReadOptions(prefetch_buffer_size=2 * batch)
  return grain.DataLoader(
      data_source=source, sampler=sampler, shard_options=shard,
      operations=[grain.Batch(batch, drop_remainder=True)],
      worker_count=workers,
      worker_buffer_size=config.data.prefetch_buffer_size, read_options=read)


def train_loader(config: ml_collections.ConfigDict) -> grain.DataLoader:
  """An endless, shuffled loader of this process's share of each global train batch.

  Yields dicts of numpy arrays with leading dim B / process_count (the fields of the source).
  """
  return _loader(config, 'train', shuffle=True, num_epochs=None,
                 global_batch_size=config.train.batch_size, field='train.batch_size')


def eval_loader(config: ml_collections.ConfigDict, split: str = 'test') -> grain.DataLoader:
  """One ordered pass over the first `eval.num_test_clips` clips of `split`, batched; the
  last batch is padded (records with `valid` False, see `PaddedSource`), so eval.batch_size
  need not divide the clip count."""
  return _loader(config, split, shuffle=False, num_epochs=1,
                 global_batch_size=config.eval.batch_size, field='eval.batch_size', pad=True)


def train_records(config: ml_collections.ConfigDict, first_step: int,
                  last_step: int) -> np.ndarray:
  """The source indices (N,) of the train records that steps first_step..last_step (1-based)
  read, in stream order: global batch s - 1 is stream positions [(s-1)*B, s*B) of the
  loader's seeded stream (`GlobalBatchSampler`), whatever the process count."""
  stream = grain.IndexSampler(num_records=len(make_source(config, 'train')), shuffle=True,
                              num_epochs=None, seed=config.seed)
  size = config.train.batch_size
  return np.array([stream[p].record_key
                   for p in range((first_step - 1) * size, last_step * size)], np.int64)


def select(batch: dict, fields=TRAIN_FIELDS) -> dict:
  """Keeps the model's fields of a numpy batch (what travels to the devices)."""
  return {k: batch[k] for k in fields if k in batch}

