"""Timings the benchmarks share: the jitted train step and the sampling of clips.

`python -m gmscavp_jax.bench` prints them; the GPU suite (tools/gpu_suite.py) writes them
into its JSON report. Both time compiled programs on inputs already on the devices, after a
warm-up call, and wait for the devices (`jax.block_until_ready`) only around the timed calls.
"""

import functools
import os
import time

import jax
import numpy as np

from gmscavp_jax.core import feature_cache
from gmscavp_jax.core import msd
from gmscavp_jax.core import phases
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.data import pipeline
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.infra import perf
from gmscavp_jax.infra import profiling
from gmscavp_jax.infra import sharding

# Timed calls of the sampling latency `bench` reports (after one warm-up; the median).
LATENCY_REPEATS = 5


def gib(x: int | None) -> str:
  """Bytes as GiB in a column of 8 characters ('n/a' when unknown)."""
  return '     n/a' if x is None else f'{x / 2**30:8.3f}'


def time_train_step(config, mesh, num_steps: int, phase: phases.Phase, peak: float,
                    profile_dir: str | None = None, profile_steps: int = 3) -> dict:
  """Compile time, steady-state speed, FLOPs and memory of the jitted train step of `phase`.

  The step runs `num_steps` times (after one warm-up) on one global batch of
  config.train.batch_size clips already on `mesh`, the state donated from step to step.
  Returns {'compile_s', 'step_s', 'steps_per_sec', 'examples_per_sec', 'flops' (the step's
  total over the mesh: XLA counts one device's partition; None if unknown), 'memory'
  (perf.peak_memory)}. With `profile_dir`, 'profile' is the profiling.Breakdown of
  `profile_steps` traced steps against `peak` FLOP/s.

  Raises:
    MemoryError: the device ran out of memory (RESOURCE_EXHAUSTED) in the warm-up step.
  """
  models, txs, state = state_lib.build(config, mesh)
  step_fn = state_lib.jit_train_step(models, txs, config, mesh, phase,
                                     state_lib.layout_of(state))
  # One batch from an in-process loader: worker processes would compete with the step.
  one_batch = config.copy_and_resolve_references()
  one_batch.data.worker_count = 0
  batch = sharding.global_batch(mesh, pipeline.select(next(iter(pipeline.train_loader(one_batch)))))
  if phase == phases.GENERATOR and config.train.cache_video_features:
    # The step as it runs on cached features (core/feature_cache.py): no video encoder.
    features = feature_cache.FeatureCache(config, mesh, models).encode(
        state.params['encoders'], batch.pop('frames'))
    batch['video_features'] = jax.device_put(features, sharding.batch_sharded(mesh))
  rng = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  try:
    state, metrics = compiled(state, batch, rng)  # Warm-up.
    jax.block_until_ready(metrics)
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise MemoryError(
        f'[{phase}] the train step at global batch {config.train.batch_size} needs about '
        f"{gib(perf.compiled_memory_bytes(compiled)).strip()} GiB per device (XLA's "
        'estimate) and the device ran out: lower --config.train.batch_size, set '
        '--config.train.remat=full, or shard params with --config.mesh.fsdp') from e
  t0 = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / num_steps
  flops = perf.compiled_flops(compiled)
  result = {'compile_s': compile_s, 'step_s': step_s, 'steps_per_sec': 1 / step_s,
            'examples_per_sec': config.train.batch_size / step_s,
            'flops': None if flops is None else flops * mesh.size,
            'memory': perf.peak_memory(compiled, mesh.devices.flat[0])}
  if profile_dir:
    carry = [state]

    def run_once():  # The state is donated: each step takes the last one's.
      carry[0], step_metrics = compiled(carry[0], batch, rng)
      return step_metrics

    result['profile'] = profiling.profile(run_once, compiled.as_text(), profile_steps,
                                          peak, os.path.join(profile_dir, phase))
  return result


def sampling_params(config, mesh) -> tuple:
  """(models, params) freshly initialised on `mesh`, for timing samplers: the work per step
  does not depend on the params' values."""
  models, _, state = state_lib.build(config, mesh)
  return models, state.params  # The optimizer state is not needed to sample.


def time_sampling_latency(config, mesh, sampler: str | None = None,
                          num_steps: int | None = None,
                          repeats: int = LATENCY_REPEATS, *, batch_size: int = 1,
                          built: tuple | None = None) -> dict:
  """Seconds to generate the log-mels of `batch_size` clips with eval.guidance (and
  eval.guidance_interval), after compiling.

  Args:
    config: the experiment config (its data.num_frames / data.fps give the clip length).
    mesh: the device mesh the params are initialised on.
    sampler: a sampler name; None: the config's eval.sampler (what generate uses).
    num_steps: sampler steps, one denoiser call each (at twice the batch with guidance
      other than 0 and 1 inside eval.guidance_interval: guidance_lib.BatchedDenoiser); None:
      eval.sample_steps.
    repeats: timed calls after one warm-up; the median is reported.
    batch_size: clips per call (zero frames (B,T,H,W,3)).
    built: (models, params) from `sampling_params`, to share one initialisation between
      calls; None: initialised here.

  Returns:
    {'sampler', 'num_steps', 'guidance', 'guidance_interval', 'denoiser_calls' (model
    evaluations per clip, samplers.denoiser_calls), 'batch_size', 'clip_s',
    'compile_s', 'latency_s' (the median seconds per call), 'clips_per_sec', 'repeats'}.
  """
  models, params = built or sampling_params(config, mesh)
  guidance, interval = config.eval.guidance, tuple(config.eval.guidance_interval)
  sampler = sampler or config.eval.sampler
  num_steps = num_steps or config.eval.sample_steps
  sample = jax.jit(functools.partial(sampling.sample_step, models=models, config=config,
                                     sampler=sampler, num_steps=num_steps, guidance=guidance,
                                     guidance_interval=interval))
  frames, _ = steps.dummy_inputs(config, batch_size=batch_size)
  rng = jax.random.key(0)
  t0 = time.perf_counter()
  inputs = {'frames': frames}
  compiled = sample.lower(params, inputs, rng).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(params, inputs, rng))  # Warm-up.
  times = []
  for i in range(repeats):
    key = jax.random.fold_in(rng, i)
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, inputs, key))
    times.append(time.perf_counter() - t0)
  latency_s = float(np.median(times))
  calls = samplers.denoiser_calls(msd.alpha_bar(config), objective=config.diffusion.objective,
                                  sampler=sampler, num_steps=num_steps,
                                  guidance_scale=guidance, guidance_interval=interval)
  return {'sampler': sampler, 'num_steps': num_steps, 'guidance': guidance,
          'guidance_interval': guidance_lib.interval_json(interval), 'denoiser_calls': calls,
          'batch_size': batch_size, 'clip_s': config.data.num_frames / config.data.fps,
          'compile_s': compile_s, 'latency_s': latency_s,
          'clips_per_sec': batch_size / latency_s, 'repeats': repeats}
