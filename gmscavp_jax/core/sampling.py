"""Sampling from the trained denoisers: one compiled program per sampler setting, mapped over
host inputs in chunks laid out on the mesh.

`Generator` (the MSD video->audio path) is what evaluators, commands and the demo compose.
"""

import functools
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmscavp_jax.infra import sharding


def sampler_settings(eval_cfg: ml_collections.ConfigDict, sampler: str | None = None,
                     num_steps: int | None = None, guidance: float | None = None,
                     eta: float | None = None) -> dict:
  """{'sampler', 'num_steps', 'guidance', 'eta'}, each None replaced by its eval.* default."""
  return {'sampler': sampler or eval_cfg.sampler,
          'num_steps': num_steps or eval_cfg.sample_steps,
          'guidance': eval_cfg.guidance if guidance is None else guidance,
          'eta': eval_cfg.eta if eta is None else eta}


def jit_sampler(sample_fn, mesh: Mesh, **static):
  """sample_fn(params, inputs, rng, **static) jitted for `mesh`: inputs split over the batch
  axes, output replicated, params in the layout they come with (replicated, or the
  trainer's FSDP shards)."""
  repl = sharding.replicated(mesh)
  return jax.jit(functools.partial(sample_fn, **static),
                 in_shardings=(None, sharding.batch_sharded(mesh), repl), out_shardings=repl)


class ChunkedSampler:
  """A jitted sampler (see `jit_sampler`) mapped over host inputs in chunks.

  Chunks hold max_chunk rows (fewer, rounded up to the device count, when N is smaller), are
  split over the mesh's batch axes, and the last is padded by repeating its last row, so every
  chunk reuses one program, compiled ahead of time per chunk shape: sampling time is then
  measured apart from compiling.
  """

  def __init__(self, jitted, mesh: Mesh):
    self._jitted, self._mesh, self._executables = jitted, mesh, {}

  def __call__(self, params, inputs: np.ndarray, max_chunk: int,
               seed: int) -> tuple[np.ndarray, dict]:
    """Outputs for `inputs` (N, ...) concatenated back to (N, ...) numpy, chunk i sampled with
    fold_in(key(seed), i); and {'compile_seconds' (0 when compiled before), 'seconds' (sampling
    every chunk, without compiling)}."""
    n, ndev = len(inputs), self._mesh.size
    chunk = min(max_chunk, -(-n // ndev) * ndev)
    out, timing = [], {'compile_seconds': 0.0, 'seconds': 0.0}
    for i, start in enumerate(range(0, n, chunk)):
      part = inputs[start:start + chunk]
      batch = sharding.padded_host_batch(self._mesh, part, chunk)
      rng = jax.random.fold_in(jax.random.key(seed), i)
      if batch.shape not in self._executables:
        t0 = time.perf_counter()
        self._executables[batch.shape] = self._jitted.lower(params, batch, rng).compile()
        timing['compile_seconds'] += time.perf_counter() - t0
      t0 = time.perf_counter()
      out.append(np.asarray(self._executables[batch.shape](params, batch, rng))[:len(part)])
      timing['seconds'] += time.perf_counter() - t0
    return np.concatenate(out), timing
