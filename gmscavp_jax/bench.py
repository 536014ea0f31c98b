"""Measures training speed, input-pipeline throughput, and sampler latency and quality.

  python -m gmscavp_jax.bench --config=configs/msa_msd.py:runlocal
  python -m gmscavp_jax.bench --workdir=/tmp/msa_msd --sampling

The first prints jit compile time, train steps/s and examples/s per training phase (on one
batch already on the devices, so the step alone is timed), and the grain pipeline's
examples/s alone (with the configured worker processes), and their ratio: the pipeline
should deliver several times what the step consumes.

The second takes a trained workdir and, for each sampler at 10/25/50/100 steps, generates
audio for the first eval.num_generate_clips test videos: per-clip latency (after compiling)
and onset hit-rate. It prints a table and writes WORKDIR/bench_sampling.{json,md}.
"""

import gc
import itertools
import json
import os
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from gmscavp_jax import cli
from gmscavp_jax import config_validation
from gmscavp_jax import sharding
from gmscavp_jax import steps
from gmscavp_jax import train
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import generation

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed train steps (after one warm-up step).')
_BATCHES = flags.DEFINE_integer('pipeline_batches', 150, 'Timed pipeline batches.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (for --sampling).')
_SAMPLING = flags.DEFINE_bool('sampling', False, 'Benchmark the samplers of --workdir.')
_SAMPLE_STEPS = flags.DEFINE_list('sample_steps', ['10', '25', '50', '100'],
                                  'Sampling step counts to compare.')
_SAMPLERS = flags.DEFINE_list('samplers', list(config_validation.SAMPLERS),
                              'Samplers to compare.')
_GUIDANCE = flags.DEFINE_list('guidance', [], 'Guidance scales to compare '
                              '(default: the config eval.guidance).')


def time_train_step(config, mesh, num_steps: int, phase: str) -> dict:
  """Compile time and steady-state speed of the jitted train step of `phase`."""
  models, txs, state = train.build(config, mesh)
  step_fn = train.jit_train_step(models, txs, config, mesh, phase)
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


def bench_training(config) -> None:
  """Prints pipeline throughput and the step speed of each phase the config trains."""
  mesh = sharding.make_mesh()
  config_validation.validate(config, num_devices=mesh.size)
  print(f'config {config.experiment}, {mesh.size} {jax.devices()[0].platform} device(s), '
        f'global batch {config.train.batch_size}, data workers {config.data.worker_count}')
  # Each part runs alone: the pipeline's workers are stopped before the step is timed.
  data = time_pipeline(config, _BATCHES.value)
  phases = sorted({steps.phase_at(config, s) for s in (1, config.train.num_steps)})
  slowest = None
  for phase in phases:
    step = time_train_step(config, mesh, _STEPS.value, phase)
    print(f"[{phase}] jit compile time     {step['compile_s']:8.2f} s")
    print(f"[{phase}] train step           {step['step_s'] * 1e3:8.1f} ms")
    print(f"[{phase}] train steps/s        {step['steps_per_sec']:8.2f}")
    print(f"[{phase}] train examples/s     {step['examples_per_sec']:8.1f}")
    slowest = min(slowest or np.inf, step['examples_per_sec'])
  ratio = data['pipeline_examples_per_sec'] / slowest
  print(f"pipeline examples/s       {data['pipeline_examples_per_sec']:8.1f}")
  print(f"pipeline / train ratio    {ratio:8.2f}x (slowest phase)")


def bench_sampling(workdir: str, step_counts: list[int], samplers: list[str],
                   guidances: list[float]) -> list[dict]:
  """Latency and onset hit-rate of each sampler x steps x guidance on the last checkpoint."""
  config = train.load_config(workdir)
  mesh = sharding.make_mesh()
  models, params, ckpt_step = train.restore_params(workdir, config, mesh)
  evaluator = generation.GenerationEvaluator(config, mesh, models)
  clips = generation.test_clips(config, config.eval.num_generate_clips)
  real = evaluator.real_log_mel(clips['waveform'])
  rate = generation.frame_rate(config)
  print(f'{workdir}: checkpoint {ckpt_step}, {len(real)} test clips, {mesh.size} '
        f'{jax.devices()[0].platform} device(s)')
  rows = []
  for sampler, num_steps, guidance in itertools.product(
      samplers, step_counts, guidances or [config.eval.guidance]):
    kwargs = dict(sampler=sampler, num_steps=num_steps, guidance=guidance)
    # The first pass compiles (same chunk shapes as the timed pass); the second is timed.
    evaluator.generate(params, clips['frames'], **kwargs)
    t0 = time.perf_counter()
    mel = evaluator.generate(params, clips['frames'], **kwargs)
    seconds = time.perf_counter() - t0
    scores = generation.onset_scores(mel, real, clips['onsets'], rate)
    rows.append({'sampler': sampler, 'steps': num_steps, 'guidance': guidance,
                 'ms_per_clip': 1e3 * seconds / len(mel),
                 'onset_hit@100ms': scores['gen/onset_hit@100ms'],
                 'onset_hit@50ms': scores['gen/onset_hit@50ms'],
                 'onset_hit@100ms_shuffled': scores['gen/onset_hit@100ms_shuffled']})
    print('  '.join(f'{k} {v:.2f}' if isinstance(v, float) else f'{k} {v}'
                    for k, v in rows[-1].items()), flush=True)
  lines = ['| sampler | steps | guidance | ms / clip | onset hit@100ms | hit@50ms | '
           'shuffled hit@100ms |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  lines += [f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['ms_per_clip']:.1f} | "
            f"{r['onset_hit@100ms']:.1f} | {r['onset_hit@50ms']:.1f} | "
            f"{r['onset_hit@100ms_shuffled']:.1f} |" for r in rows]
  print('\n'.join(lines))
  with open(os.path.join(workdir, 'bench_sampling.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(workdir, 'bench_sampling.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return rows


def main(argv):
  del argv
  cli.setup()
  if _SAMPLING.value:
    if not _WORKDIR.value:
      raise app.UsageError('--sampling needs --workdir of a trained run')
    cli.run_or_explain(bench_sampling, _WORKDIR.value, [int(s) for s in _SAMPLE_STEPS.value],
                       _SAMPLERS.value, [float(g) for g in _GUIDANCE.value])
  else:
    if _CONFIG.value is None:
      raise app.UsageError('give --config=configs/NAME.py[:VARIANT] (or --workdir --sampling)')
    bench_training(_CONFIG.value)


if __name__ == '__main__':
  app.run(main)
