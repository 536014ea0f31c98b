"""Preparing a dataset: decode every clip once, in parallel and resumably, then build TFDS.

Decode: a split's items are cut, in dataset order, into chunks of `chunk_size`. Worker
processes decode a chunk's clips (clips_builder.decode_item) and write them as one .npz under
DATA_DIR/NAME/CONFIG/decoded/ atomically (a temporary name, then a rename), together with
the chunk's bad files. A chunk's file name carries a hash of its items and the geometry,
so a re-run, after a crash or a kill, skips every chunk already written and decodes only
the rest (an edited CSV redoes only the chunks it changes). A bad file (media.MediaError,
or any other exception from decoding it) is recorded with its reason and the job goes on;
a file on which a worker process dies twice (a decoder crash, the OOM killer) is recorded
as bad too.

Build: the TFDS builder (data/builders.py) reads the chunks in order and writes the
ArrayRecord shards, cheap and deterministic; the chunks are then deleted unless
`keep_decoded`. The report of bad files, CONFIG/prepare_report.json and a readable
prepare_report.txt (counts per reason, then `file<TAB>split<TAB>reason` lines), is
written before the build, so it survives a failed build too.
"""

import collections
from concurrent import futures
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from typing import Callable
import zipfile

import numpy as np
import tqdm

from gmscavp_jax.data import builders

from gmscavp_jax.data import media
from gmscavp_jax.data.prepare import clips_builder
from gmscavp_jax.data.prepare import layouts
from gmscavp_jax.data.prepare import tfds_compat

REPORT_NAME = 'prepare_report'
# A worker that dies this often while decoding the same file marks the file as bad.
_CRASHES_TO_BLAME = 2


class PrepareError(RuntimeError):
  """Preparation cannot go on (another run holds the dataset, nothing decoded, ...)."""


@dataclasses.dataclass(frozen=True)
class ChunkTask:
  """One chunk to decode: `items` of `split` into the .npz at `path`.

  `excluded` holds (key, reason) of items not to decode (reported as bad); `decode_fn`
  (clips_builder.decode_item's signature) is a module-level function, so it reaches spawned
  worker processes.
  """
  split: str
  index: int
  items: tuple[layouts.Item, ...]
  path: str
  config: builders.ClipsConfig
  num_classes: int
  excluded: tuple[tuple[str, str], ...] = ()
  decode_fn: Callable = clips_builder.decode_item


def plan_chunks(dataset: layouts.Dataset, config: builders.ClipsConfig, decoded_dir: str,
                chunk_size: int, decode_fn: Callable = clips_builder.decode_item
                ) -> list[ChunkTask]:
  """The chunks of every split, each named SPLIT-INDEX-HASH.npz under `decoded_dir`."""
  if chunk_size <= 0:
    raise ValueError(f'chunk_size={chunk_size}: expected a positive number of clips')
  tasks = []
  for split in dataset.splits():
    items = dataset.split_items(split)
    for index, start in enumerate(range(0, len(items), chunk_size)):
      chunk = tuple(items[start:start + chunk_size])
      identity = json.dumps([config.name, len(dataset.classes)] + [
          [i.key, i.path, i.start_seconds, list(i.labels)] for i in chunk])
      digest = hashlib.sha1(identity.encode('utf-8')).hexdigest()[:12]
      tasks.append(ChunkTask(split, index, chunk,
                             os.path.join(decoded_dir, f'{split}-{index:05d}-{digest}.npz'),
                             config, len(dataset.classes), decode_fn=decode_fn))
  return tasks


def chunk_done(path: str) -> bool:
  """Whether the chunk file exists and is whole (its zip directory, at the end, reads)."""
  try:
    with zipfile.ZipFile(path) as z:
      return 'key.npy' in z.namelist()
  except (OSError, zipfile.BadZipFile):
    return False


def _marker(path: str) -> str:
  """The file naming the clip a worker is decoding for chunk `path`."""
  return path + '.decoding'


def decode_chunk(task: ChunkTask) -> dict:
  """Decodes a chunk and writes its .npz; returns {'path', 'ok', 'failed', 'seconds'}.

  The .npz holds the record fields of builders.FIELDS stacked over the good clips (N, ...)
  ('file' as 'key'), and failed_file / failed_split / failed_reason / failed_error (M,).
  """
  t0 = time.perf_counter()
  excluded = dict(task.excluded)
  records, failed = [], []
  for item in task.items:
    if item.key in excluded:
      failed.append((item.path, item.split, excluded[item.key], 'WorkerDied'))
      continue
    with open(_marker(task.path), 'w', encoding='utf-8') as f:
      f.write(item.key)  # If this process dies, the main process learns on which clip.
    try:
      records.append(task.decode_fn(item, task.config, task.num_classes))
    except media.MediaError as e:
      failed.append((item.path, item.split, e.reason, type(e).__name__))
    except Exception as e:  # pylint: disable=broad-except
      # One odd file must not stop a week-long job: report it and go on.
      failed.append((item.path, item.split, f'unexpected {type(e).__name__}: {e}',
                     type(e).__name__))
  _save_chunk(task, records, failed)
  with contextlib.suppress(FileNotFoundError):
    os.remove(_marker(task.path))
  return dict(path=task.path, ok=len(records), failed=len(failed),
              seconds=time.perf_counter() - t0)


def _save_chunk(task: ChunkTask, records: list[dict], failed: list[tuple]) -> None:
  """Writes the chunk atomically: a temporary file, synced, then renamed into place."""
  c = task.config
  shapes = dict(frames=(c.num_frames, c.image_size, c.image_size, 3),
                waveform=(c.num_samples,), labels=(task.num_classes,))
  arrays = {}
  for field in builders.FIELDS[:-1]:
    values = [r[field] for r in records]
    arrays[field] = (np.stack(values) if values else
                     np.zeros((0,) + shapes.get(field, ()), _DTYPES[field]))
  arrays['key'] = np.array([r['file'] for r in records], dtype=str)
  for i, name in enumerate(('file', 'split', 'reason', 'error')):
    arrays[f'failed_{name}'] = np.array([f[i] for f in failed], dtype=str)
  tmp = f'{task.path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.savez(f, **arrays)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, task.path)


_DTYPES = dict(frames=np.uint8, waveform=np.float32, label=np.int32, labels=np.float32,
               audio_padding=np.int32, video_padding=np.int32, start_seconds=np.float32)


def _results(tasks: list[ChunkTask], workers: int):
  """Yields decode_chunk's results as chunks finish: inline (workers = 0) or in a pool."""
  if workers == 0:
    for task in tasks:
      yield decode_chunk(task)
    return
  # Spawned, not forked: the parent may hold threads (tfds, jax) that a fork would copy
  # mid-lock, and a fresh process per worker keeps one FFmpeg's state from another's.
  context = multiprocessing.get_context('spawn')
  with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
    pending = [pool.submit(decode_chunk, task) for task in tasks]
    try:
      for done in futures.as_completed(pending):
        yield done.result()
    finally:
      for f in pending:
        f.cancel()


def decode_all(tasks: list[ChunkTask], workers: int, *, progress: bool = True) -> dict:
  """Decodes the chunks not written yet; returns counts and timings.

  Keys: chunks, chunks_reused, chunks_decoded, clips_decoded (attempted in this run),
  worker_seconds (summed over chunks), wall_seconds, workers, worker_restarts.
  """
  if workers < 0:
    raise ValueError(f'workers={workers}: expected 0 (decode in this process) or more')
  t0 = time.perf_counter()
  pending = [t for t in tasks if not chunk_done(t.path)]
  stats = dict(chunks=len(tasks), chunks_reused=len(tasks) - len(pending), chunks_decoded=0,
               clips_decoded=0, bad_clips_decoded=0, worker_seconds=0.0, workers=workers,
               worker_restarts=0)
  crashes = collections.Counter()  # Clip key -> worker deaths while decoding it.
  bar = tqdm.tqdm(total=sum(len(t.items) for t in pending), unit='clip', desc='decoding',
                  disable=not progress, mininterval=1.0, smoothing=0.05, dynamic_ncols=True)
  with bar:
    while pending:
      pending = [_exclude_crashers(t, crashes) for t in pending]
      finished = set()
      try:
        for result in _results(pending, workers):
          finished.add(result['path'])
          stats['chunks_decoded'] += 1
          stats['clips_decoded'] += result['ok'] + result['failed']
          stats['bad_clips_decoded'] += result['failed']
          stats['worker_seconds'] += result['seconds']
          bar.update(result['ok'] + result['failed'])
          bar.set_postfix(bad=stats['bad_clips_decoded'], refresh=False)
        pending = []
      except futures.process.BrokenProcessPool:
        # A chunk may finish while the pool breaks without its result reaching us.
        pending = [t for t in pending if t.path not in finished and not chunk_done(t.path)]
        blamed = _blame(pending)
        if not blamed:
          raise
        stats['worker_restarts'] += 1
        crashes.update(blamed)
        bar.write(f'a decoding worker died on one of {blamed}; restarting the workers')
  stats['wall_seconds'] = time.perf_counter() - t0
  return stats


def _blame(pending: list[ChunkTask]) -> list[str]:
  """Keys of the clips the unfinished chunks were decoding (their markers, then removed)."""
  keys = []
  for task in pending:
    with contextlib.suppress(FileNotFoundError):
      with open(_marker(task.path), encoding='utf-8') as f:
        keys.append(f.read())
      os.remove(_marker(task.path))
  return keys


def _exclude_crashers(task: ChunkTask, crashes: collections.Counter) -> ChunkTask:
  excluded = tuple(
      (i.key, f'the decoding worker process died on it {crashes[i.key]} times (a decoder '
       'crash or out of memory)') for i in task.items if crashes[i.key] >= _CRASHES_TO_BLAME)
  return dataclasses.replace(task, excluded=excluded)


def make_report(tasks: list[ChunkTask], *, name: str, dataset: layouts.Dataset,
                config: builders.ClipsConfig, stats: dict) -> dict:
  """The report of a finished decode, read back from every chunk (reused ones included)."""
  splits, failures = {}, []
  for task in tasks:
    with np.load(task.path, allow_pickle=False) as chunk:
      ok = len(chunk['key'])
      failed = list(zip(*(chunk[f'failed_{k}'].tolist()
                          for k in ('file', 'split', 'reason', 'error'))))
    counts = splits.setdefault(task.split, dict(clips=0, ok=0, bad=0))
    counts['clips'] += ok + len(failed)
    counts['ok'] += ok
    counts['bad'] += len(failed)
    failures += [dict(file=f, split=s, reason=r, error=e) for f, s, r, e in failed]
  reasons = collections.Counter(f['reason'].split(':')[0] for f in failures)
  worker_seconds = stats['worker_seconds']
  return dict(
      dataset=name, layout=dataset.layout, config=config.name, geometry=config.geometry(),
      num_classes=len(dataset.classes),
      clips=sum(s['clips'] for s in splits.values()),
      ok=sum(s['ok'] for s in splits.values()), bad=len(failures), splits=splits,
      bad_by_reason=dict(reasons.most_common()), bad_files=failures,
      decode=dict(stats, clips_per_second_per_worker=(
          stats['clips_decoded'] / worker_seconds if worker_seconds else None)))


def write_report(config_dir: str, report: dict) -> str:
  """Writes prepare_report.json and .txt into `config_dir`; returns the .json path."""
  path = os.path.join(config_dir, REPORT_NAME)
  with open(path + '.json.tmp', 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  os.replace(path + '.json.tmp', path + '.json')
  lines = [summary(report), '', 'file\tsplit\treason']
  lines += [f"{f['file']}\t{f['split']}\t{f['reason']}" for f in report['bad_files']]
  with open(path + '.txt', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return path + '.json'


def read_report(config_dir: str) -> dict | None:
  """The report saved in DATA_DIR/NAME/CONFIG, or None."""
  path = os.path.join(config_dir, REPORT_NAME + '.json')
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def summary(report: dict) -> str:
  """A few lines: clips per split, bad files per reason, decode speed."""
  lines = [f"{report['dataset']} ({report['config']}, {report['layout']} layout, "
           f"{report['num_classes']} classes): {report['ok']} of {report['clips']} clips "
           f"decoded, {report['bad']} bad"]
  for split, c in report['splits'].items():
    lines.append(f"  {split:<10} {c['ok']:>8} ok {c['bad']:>8} bad")
  if report['bad_by_reason']:
    lines.append('bad files by reason:')
    lines += [f'  {n:>8}  {reason}' for reason, n in report['bad_by_reason'].items()]
  d = report['decode']
  speed = d['clips_per_second_per_worker']
  where = f"with {d['workers']} workers" if d['workers'] else 'in the main process'
  lines.append(f"decoded {d['clips_decoded']} clips in {d['chunks_decoded']} chunks "
               f"({d['chunks_reused']} chunks reused) {where} in {d['wall_seconds']:.1f} s" +
               (f': {speed:.2f} clips/s per worker' if speed else ''))
  return '\n'.join(lines)


@contextlib.contextmanager
def _exclusive(config_dir: str):
  """Holds DATA_DIR/NAME/CONFIG/.prepare.lock; the OS releases it if the process dies."""
  with open(os.path.join(config_dir, '.prepare.lock'), 'w', encoding='utf-8') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      raise PrepareError(f'{config_dir}: another prepare run is working on this dataset') from e
    yield


def _clean_leftovers(config_dir: str, decoded_dir: str) -> None:
  """Removes what a killed run leaves: partial chunks, markers, tfds' incomplete builds."""
  for path in glob.glob(os.path.join(decoded_dir, '*.npz.tmp*')) + glob.glob(
      os.path.join(decoded_dir, '*.decoding')):
    os.remove(path)
  for path in glob.glob(os.path.join(config_dir, 'incomplete.*')):
    shutil.rmtree(path, ignore_errors=True)


def prepare(dataset: layouts.Dataset, *, data_dir: str, name: str,
            config: builders.ClipsConfig, workers: int, chunk_size: int = 32,
            keep_decoded: bool = False, progress: bool = True,
            decode_fn: Callable = clips_builder.decode_item) -> dict:
  """Decodes `dataset` at `config`'s geometry and builds DATA_DIR/NAME/CONFIG/VERSION.

  Returns the report (see `make_report`) with 'dataset_dir' and 'report' (its path) added.
  A dataset already built is not touched: its saved report comes back with
  'already_prepared' True (delete DATA_DIR/NAME/CONFIG to prepare it again).
  """
  builders.check_name(name)
  config_dir = os.path.join(data_dir, name, config.name)
  decoded_dir = os.path.join(config_dir, 'decoded')
  os.makedirs(decoded_dir, exist_ok=True)
  with _exclusive(config_dir):
    with contextlib.suppress(builders.NotPreparedError):
      dataset_dir = builders.find_prepared(data_dir, name, config)
      report = read_report(config_dir) or {}
      return dict(report, dataset_dir=dataset_dir, already_prepared=True,
                  report=os.path.join(config_dir, REPORT_NAME + '.json'))
    _clean_leftovers(config_dir, decoded_dir)
    tasks = plan_chunks(dataset, config, decoded_dir, chunk_size, decode_fn)
    stats = decode_all(tasks, workers, progress=progress)
    report = make_report(tasks, name=name, dataset=dataset, config=config, stats=stats)
    report_path = write_report(config_dir, report)
    if not report['ok']:
      raise PrepareError(f'no clip of {name} could be decoded: see {report_path}')
    chunks = {}
    for task in tasks:
      with np.load(task.path, allow_pickle=False) as chunk:
        if len(chunk['key']):  # A split of bad files only gets no (empty) shards.
          chunks.setdefault(task.split, []).append(task.path)
    builder = clips_builder.make_builder(name, config, data_dir, classes=dataset.classes,
                                         layout=dataset.layout, chunks=chunks)
    with tfds_compat.spill_without_tensorflow():
      builder.download_and_prepare()
    if not keep_decoded:
      shutil.rmtree(decoded_dir)
  return dict(report, dataset_dir=os.fspath(builder.data_dir), already_prepared=False,
              report=report_path)


def prepare_with_beam(dataset: layouts.Dataset, *, data_dir: str, name: str,
                      config: builders.ClipsConfig, beam_options: str) -> str:
  """Builds DATA_DIR/NAME/CONFIG/VERSION with Apache Beam; returns the dataset's directory.

  The clips are decoded on the Beam workers (clips_builder.ClipsBuilder with `items`), so
  VIDEOS must be readable at the same path there, and DATA_DIR too (a shared or cloud file
  system that tfds' epath reads, e.g. gs://). `beam_options` is Beam's command line, e.g.
  '--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp'. Bad files
  are skipped and counted in Beam's metrics (namespace 'bad_files', one counter per
  reason) instead of a report; there is no chunk-level resume (Beam retries failed work).
  """
  import shlex  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  beam = tfds.core.lazy_imports.apache_beam  # An ImportError says to pip install apache-beam.
  options = beam.options.pipeline_options.PipelineOptions(shlex.split(beam_options))
  builder = clips_builder.make_builder(
      name, config, data_dir, classes=dataset.classes, layout=dataset.layout,
      items={split: dataset.split_items(split) for split in dataset.splits()})
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(beam_options=options))
  return os.fspath(builder.data_dir)
