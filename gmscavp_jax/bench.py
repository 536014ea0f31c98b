"""Measures training speed and input-pipeline throughput for a config.

  python -m gmscavp_jax.bench --config=configs/msa.py:runlocal

Prints jit compile time, train steps/s and examples/s (on one batch already on the devices,
so the step alone is timed), and the grain pipeline's examples/s alone (with the configured
worker processes), and their ratio: the pipeline should deliver several times what the step
consumes.
"""

import gc
import itertools
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from gmscavp_jax import cli
from gmscavp_jax import config_validation
from gmscavp_jax import sharding
from gmscavp_jax import train
from gmscavp_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed train steps (after one warm-up step).')
_BATCHES = flags.DEFINE_integer('pipeline_batches', 150, 'Timed pipeline batches.')
flags.mark_flag_as_required('config')


def time_train_step(config, mesh, num_steps: int) -> dict:
  """Compile time and steady-state speed of the jitted train step."""
  model, tx, state = train.build(config, mesh)
  step_fn = train.jit_train_step(model, tx, config, mesh)
  # One batch from an in-process loader: worker processes would compete with the step.
  one_batch = config.copy_and_resolve_references()
  one_batch.data.worker_count = 0
  batch = sharding.global_batch(mesh, pipeline.select(next(iter(pipeline.train_loader(one_batch)))))
  rng = jax.random.key(0)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  state, metrics = compiled(state, batch, rng)  # Warm-up.
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / num_steps
  return {'compile_s': compile_s, 'step_s': step_s, 'steps_per_sec': 1 / step_s,
          'examples_per_sec': config.train.batch_size / step_s}


def time_pipeline(config, num_batches: int) -> dict:
  """Steady-state examples/s of the train loader alone.

  The first batches (two per worker) are taken before the clock starts: they include the
  workers' start-up, and timing few batches after a pause would only measure full buffers.
  """
  it = iter(pipeline.train_loader(config))
  for batch in itertools.islice(it, max(1, 2 * config.data.worker_count)):
    del batch
  t0 = time.perf_counter()
  for batch in itertools.islice(it, num_batches):
    del batch
  elapsed = time.perf_counter() - t0
  del it  # Stops the workers before anything else is timed.
  gc.collect()
  return {'pipeline_examples_per_sec': num_batches * config.train.batch_size / elapsed}


def main(argv):
  del argv
  cli.setup()
  config = _CONFIG.value
  mesh = sharding.make_mesh()
  config_validation.validate(config, num_devices=mesh.size)
  print(f'config {config.experiment}, {mesh.size} {jax.devices()[0].platform} device(s), '
        f'global batch {config.train.batch_size}, data workers {config.data.worker_count}')
  # Each phase runs alone: the pipeline's workers are stopped before the step is timed.
  data = time_pipeline(config, _BATCHES.value)
  step = time_train_step(config, mesh, _STEPS.value)
  print(f"jit compile time          {step['compile_s']:8.2f} s")
  print(f"train step                {step['step_s'] * 1e3:8.1f} ms")
  print(f"train steps/s             {step['steps_per_sec']:8.2f}")
  print(f"train examples/s          {step['examples_per_sec']:8.1f}")
  ratio = data['pipeline_examples_per_sec'] / step['examples_per_sec']
  print(f"pipeline examples/s       {data['pipeline_examples_per_sec']:8.1f}")
  print(f"pipeline / train ratio    {ratio:8.2f}x")


if __name__ == '__main__':
  app.run(main)
