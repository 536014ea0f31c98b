"""The preparation benchmark: decode clips/s per worker, and grain's examples/s from shards.

`python -m gmscavp_jax.prepare --benchmark` calls `run`: it prepares a few clips into a
temporary directory (videos of the synthetic benchmark rendered at the geometry, or a given
dataset's first clips), prints the decode speed, then times a shuffled grain DataLoader
reading the ArrayRecord shards that the build wrote.
"""

import dataclasses
import itertools
import os
import tempfile
import time

import grain.python as grain

from configs import common
from gmscavp_jax.data import builders
from gmscavp_jax.data.prepare import layouts
from gmscavp_jax.data.prepare import preparation
from gmscavp_jax.data.prepare import render


def render_synthetic_videos(folder: str, config: builders.ClipsConfig,
                            num_clips: int) -> layouts.Dataset:
  """Renders `num_clips` synthetic train clips at the geometry of `config` into `folder`
  with render.render_vggsound_layout; returns them as a vggsound-layout Dataset."""
  experiment = common.base_config()
  experiment.data.update(num_frames=config.num_frames, fps=config.fps,
                         image_size=config.image_size)
  experiment.audio.sample_rate = config.sample_rate
  render.render_vggsound_layout(experiment, folder, num_train=num_clips, num_test=0,
                                progress=False)
  return layouts.load('vggsound', os.path.join(folder, render.VIDEO_DIR),
                      os.path.join(folder, render.CSV_NAME))


def time_grain(dataset_dir: str, *, batch_size: int, num_batches: int, workers: int,
               split: str = 'train') -> float:
  """Examples/s of a shuffled, endless grain DataLoader over a split's ArrayRecord shards.

  Two batches per worker are read before the clock starts: worker start-up is not
  throughput. Batches are dicts of (batch_size, ...) numpy arrays (PreparedSource fields).
  """
  source = builders.PreparedSource(dataset_dir, split, max_onsets=1)
  loader = grain.DataLoader(
      data_source=source,
      sampler=grain.IndexSampler(num_records=len(source), shuffle=True, num_epochs=None,
                                 seed=0),
      operations=[grain.Batch(batch_size, drop_remainder=True)], worker_count=workers)
  it = iter(loader)
  for _ in itertools.islice(it, 2 * max(workers, 1)):
    pass
  t0 = time.perf_counter()
  for _ in itertools.islice(it, num_batches):
    pass
  return num_batches * batch_size / (time.perf_counter() - t0)


def run(config: builders.ClipsConfig, dataset: layouts.Dataset | None = None, *,
        num_clips: int, workers: int, chunk_size: int, batch_size: int, num_batches: int,
        grain_workers: int) -> dict:
  """Prepares `num_clips` clips (of `dataset`, else synthetic ones) in a temporary directory
  and prints the speeds; returns {'decode_clips_per_second', 'clips_per_second_per_worker',
  'grain_examples_per_second'}."""
  with tempfile.TemporaryDirectory(prefix='gmscavp_prepare_bench_') as tmp:
    if dataset is None:
      print(f'rendering {num_clips} synthetic clips ({config.description}) ...', flush=True)
      dataset = render_synthetic_videos(os.path.join(tmp, 'videos'), config, num_clips)
    dataset = dataclasses.replace(dataset, items=dataset.items[:num_clips])
    report = preparation.prepare(dataset, data_dir=os.path.join(tmp, 'data'),
                                 name='prepare_benchmark', config=config, workers=workers,
                                 chunk_size=chunk_size)
    d = report['decode']
    print(preparation.summary(report))
    result = dict(decode_clips_per_second=d['clips_decoded'] / d['wall_seconds'],
                  clips_per_second_per_worker=d['clips_per_second_per_worker'])
    # The wall rate includes starting the worker processes; the per-worker rate is clips
    # over the time workers spent decoding, what a long run converges to.
    print(f"decode: {result['decode_clips_per_second']:.2f} clips/s with {workers} workers "
          f"(wall clock), {result['clips_per_second_per_worker']:.2f} clips/s per worker "
          f'(busy time), {config.description}')
    result['grain_examples_per_second'] = time_grain(
        report['dataset_dir'], batch_size=batch_size, num_batches=num_batches,
        workers=grain_workers)
    print(f"grain: {result['grain_examples_per_second']:.1f} examples/s from the ArrayRecord "
          f'shards (batch {batch_size}, {grain_workers} workers)', flush=True)
  return result
