"""Frozen encoders' video features, computed once (train.cache_video_features).

In the generator stage of 'frozen' training (core/phases.py) the encoders do not train, so a
train clip's per-frame video features (T,h,w,C) are the same at every step. With the cache
on, they are computed once when the stage starts, for every clip the stage's remaining steps
will read (pipeline.train_records: the loader's stream is seeded, so they are known ahead),
with the encoders' params at that step, and kept in host memory. Each step's batch then
carries them as 'video_features' in place of the frames, and the step runs the pyramid and
the denoiser without the video encoder (core/steps.py `loss_fn`).

A run resumed inside the stage computes them again from the restored encoders: the same
params and program give the same features, so resume stays exact. The cache holds one
T x h x w x C array per distinct clip, in the compute dtype (32 KB a clip at `:runlocal`,
2 MB at full size in float32): it pays where the steps revisit a small set, fine-tuning on
a folder of one's own clips for many epochs; on a split larger than the steps read it only
moves the video encoder's work ahead of the steps.
"""

import time

from absl import logging
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np

from gmscavp_jax.core import phases
from gmscavp_jax.core import steps
from gmscavp_jax.data import pipeline
from gmscavp_jax.infra import sharding
from gmscavp_jax.models import gmscavp


def applies(config: ml_collections.ConfigDict, step: int) -> bool:
  """Whether train step `step` (1-based) takes cached features instead of frames."""
  return (bool(config.train.cache_video_features)
          and steps.phase_at(config, step) == phases.GENERATOR)


class FeatureCache:
  """Video features of the train clips the generator stage reads, computed on first use."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, models: steps.Models):
    self._config, self._mesh = config, mesh
    self._clips = self._features = None
    self._encode = jax.jit(
        lambda params, frames: models.encoders.apply(
            {'params': params}, frames, method=gmscavp.GMSCAVP.video_features),
        # Params keep their layout (replicated, or the trainer's FSDP shards).
        in_shardings=(None, sharding.batch_sharded(mesh)),
        out_shardings=sharding.replicated(mesh))

  def encode(self, encoder_params, frames: jax.Array) -> jax.Array:
    """Video features (B,T,h,w,C), replicated, of a global batch of frames (B,T,H,W,3)."""
    return self._encode(encoder_params, frames)

  def compute(self, encoder_params, clips: np.ndarray) -> np.ndarray:
    """Features (N,T,h,w,C) of train clips (source indices) `clips` (N,), as numpy on every
    process.

    Global batches of eval.batch_size clips (the last padded by repeating its last clip);
    each process reads its slice of each batch, as the train loader does.
    """
    source = pipeline.make_source(self._config, 'train')
    n, size = len(clips), self._config.eval.batch_size
    local = size // jax.process_count()
    first = local * jax.process_index()
    parts, start = [], time.perf_counter()
    for done, begin in enumerate(range(0, n, size), 1):
      chunk = clips[np.minimum(np.arange(begin, begin + size), n - 1)][first:first + local]
      frames = np.stack([source[int(i)]['frames'] for i in chunk])
      parts.append(np.asarray(self.encode(
          encoder_params, sharding.global_batch(self._mesh, {'frames': frames})['frames'])))
      if done == 1:
        logging.info('caching the video features of %d train clips: %.1f MB in host memory',
                     n, parts[0].nbytes / size * n / 1e6)
      if done % 20 == 0:
        rate = done * size / (time.perf_counter() - start)
        logging.info('video features %d/%d clips  %.1f clips/s  ETA %.0f s', done * size, n,
                     rate, (n - done * size) / rate)
    sharding.sync_processes('video features cached')
    return np.concatenate(parts)[:n]

  def batch_for(self, local_batch: dict, encoder_params, step: int) -> dict:
    """This process's batch of train step `step` with 'video_features' (B_local,T,h,w,C) of
    its clips (by their 'index') in place of 'frames'. The first call computes the features
    of every clip steps `step`..train.num_steps read."""
    if self._features is None:
      self._clips = np.unique(pipeline.train_records(self._config, step,
                                                     self._config.train.num_steps))
      self._features = self.compute(encoder_params, self._clips)
    index = np.asarray(local_batch['index'])
    rows = np.minimum(np.searchsorted(self._clips, index), len(self._clips) - 1)
    if not np.array_equal(self._clips[rows], index):  # The loader's stream is not the one
      raise RuntimeError(                              # pipeline.train_records predicted.
          f'step {step}: train clips {sorted(set(index) - set(self._clips))} have no cached '
          'video features')
    batch = {k: v for k, v in local_batch.items() if k != 'frames'}
    batch['video_features'] = self._features[rows]
    return batch
