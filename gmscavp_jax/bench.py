"""Measures training speed, input-pipeline throughput, and sampler latency and quality.

  python -m gmscavp_jax.bench --config=configs/msa_msd.py:runlocal
  python -m gmscavp_jax.bench --config=configs/msa_msd.py:runlocal --profile=/tmp/profile
  python -m gmscavp_jax.bench --workdir=/tmp/msa_msd --sampling
  python -m gmscavp_jax.bench --suite=gpu --config=configs/msa_msd.py --out=report.json

The first prints, for each training phase (on one batch already on the devices, so the step
alone is timed): jit compile time, step time, steps/s, examples/s, the FLOPs of one step (XLA's
cost analysis of the compiled step), achieved TFLOP/s and MFU against the peak of the devices
(the spec sheet for known GPUs and TPUs in the config's train.compute_dtype; on CPU, or an
unknown device, a large matmul timed in the same process, printed first), and peak device
memory (the allocator's peak since start on GPU/TPU; on CPU, XLA's estimate for the step).
With --profile, a few more steps run under jax.profiler.trace and the trace is read back:
the time per op category (matmul/conv, elementwise, layout, ...), per model path, the slowest
ops, and the MFU split into its factors (see profiling.py). Then the grain pipeline's
examples/s alone (with the configured worker processes) and its ratio to the slowest phase:
the pipeline should deliver several times what the step consumes. `--parts` picks which.
Last, the latency of sampling one clip of the configured length (batch 1, the config's
eval.sampler, eval.sample_steps and eval.guidance, as generate samples: guidance other than
0 and 1 makes one denoiser call a step at twice the batch) with freshly initialised params:
the timing does not depend on training, so no workdir is needed. The persistent compilation
cache is off in this mode, so compile times are real compilations.

With --suite=gpu (and --out=REPORT.json), the GPU suite of tools/gpu_suite.py instead: the
train step, the 10 s clip latency of each sampler and the best throughput of the config in
bfloat16, within 8 minutes, into one JSON report; --dry_run runs it on a tiny config.

The second takes a trained workdir and, for each sampler at 10/25/50/100 steps, generates
audio for the first eval.num_generate_clips test videos: per-clip latency (after compiling)
and onset F1 (with recall). It prints a table and writes WORKDIR/bench_sampling.{json,md}.
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
from gmscavp_jax.core import config_validation
from gmscavp_jax.core import phases
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.data import pipeline
from gmscavp_jax.diffusion import samplers as samplers_lib
from gmscavp_jax.evaluators import generation
from gmscavp_jax.infra import perf
from gmscavp_jax.infra import sharding
from gmscavp_jax.tools import gpu_suite
from gmscavp_jax.tools import step_timing

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed train steps (after one warm-up step).')
_BATCHES = flags.DEFINE_integer('pipeline_batches', 150, 'Timed pipeline batches.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir (for --sampling).')
_SAMPLING = flags.DEFINE_bool('sampling', False, 'Benchmark the samplers of --workdir.')
_SAMPLE_STEPS = flags.DEFINE_list('sample_steps', ['10', '25', '50', '100'],
                                  'Sampling step counts to compare.')
_SAMPLERS = flags.DEFINE_list('samplers', list(samplers_lib.DIFFUSION_SAMPLERS),
                              'Samplers to compare (euler,heun for a flow run).')
_PROFILE = flags.DEFINE_string(
    'profile', None, 'Also trace a few train steps of each phase with jax.profiler into this '
    'directory (TensorBoard / XProf) and print where their time goes.')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 3, 'Traced steps with --profile.')
_PARTS = flags.DEFINE_list('parts', ['train', 'pipeline', 'sampling'],
                           'What to measure: the train step, the input pipeline, the latency '
                           'of sampling one clip (a full-size clip takes minutes on a CPU).')
_LATENCY_REPEATS = flags.DEFINE_integer('latency_repeats', 5,
                                        'Timed samplings of one clip (after one warm-up).')
_GUIDANCE = flags.DEFINE_list('guidance', [], 'Guidance scales to compare '
                              '(default: the config eval.guidance).')
_SUITE = flags.DEFINE_enum('suite', None, ['gpu'], 'Run a prepared suite instead: gpu = '
                          'tools/gpu_suite.py, one JSON report (--out) within 8 minutes.')
_OUT = flags.DEFINE_string('out', 'gpu_bench.json', 'Where --suite writes its JSON report.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, '--suite on a tiny config (a CPU check).')


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


def _tflops(x: float | None) -> str:
  # Significant digits: a CPU's 0.006 TFLOP/s and an H100's 400 both keep four.
  return '     n/a' if x is None else f'{x / 1e12:8.4g}'


def _print_step(phase: phases.Phase, step: dict, peak: float) -> None:
  """Prints one phase's measurements from time_train_step."""
  use = perf.utilisation(step['flops'], step['step_s'], peak)
  mem = step['memory']
  print(f"[{phase}] jit compile time     {step['compile_s']:8.2f} s")
  print(f"[{phase}] train step           {step['step_s'] * 1e3:8.1f} ms")
  print(f"[{phase}] train steps/s        {step['steps_per_sec']:8.2f}")
  print(f"[{phase}] train examples/s     {step['examples_per_sec']:8.1f}")
  print(f"[{phase}] TFLOP per step       {_tflops(step['flops'])}  (XLA cost analysis)")
  print(f"[{phase}] achieved TFLOP/s     {_tflops(use['flops_per_sec'])}")
  print(f"[{phase}] MFU                  " +
        ('     n/a' if use['mfu'] is None else f"{100 * use['mfu']:7.2f}%"))
  if mem['source'] == 'device':
    note = (f"allocator peak since start, device 0; XLA's estimate for this step "
            f"{step_timing.gib(mem['estimate_bytes']).strip()} GiB")
  else:
    note = "XLA's estimate for this step, per device: the device reports no peak"
  print(f"[{phase}] peak device memory   {step_timing.gib(mem['bytes'])} GiB  ({note})", flush=True)
  if 'profile' in step:
    print(f'[{phase}] profile of {_PROFILE_STEPS.value} traced steps (trace in '
          f'{os.path.join(_PROFILE.value, phase)}):')
    print(step['profile'].report(), flush=True)


def bench_training(config, parts=('train', 'pipeline', 'sampling')) -> None:
  """Prints each phase's step speed, FLOP/s, MFU and memory, the pipeline's throughput,
  and the sampling latency of one clip (those of them named in `parts`)."""
  unknown = set(parts) - {'train', 'pipeline', 'sampling'}
  if unknown:
    raise app.UsageError(f'--parts: {sorted(unknown)} unknown; expected train, pipeline, '
                         'sampling')
  mesh = sharding.mesh_from_config(config)
  config_validation.validate(config, num_devices=mesh.size)
  compute_dtype = config.train.compute_dtype
  print(f'config {config.experiment}, {mesh.size} {jax.devices()[0].platform} device(s) '
        f'({jax.devices()[0].device_kind}), global batch {config.train.batch_size}, '
        f'compute dtype {compute_dtype}, data workers {config.data.worker_count}')
  slowest = None
  if 'train' in parts:
    peak = perf.peak_flops(compute_dtype, list(mesh.devices.flat))
    print(f'peak compute              {_tflops(peak.flops_per_sec)} TFLOP/s  ({peak.source})',
          flush=True)
    # Every compiled step the run takes, bidirectional ('+a2v') steps included.
    for phase in sorted({steps.train_phase(config, s)
                         for s in range(1, config.train.num_steps + 1)}):
      step = step_timing.time_train_step(config, mesh, _STEPS.value, phase,
                                         peak.flops_per_sec, _PROFILE.value,
                                         _PROFILE_STEPS.value)
      _print_step(phase, step, peak.flops_per_sec)
      slowest = min(slowest or np.inf, step['examples_per_sec'])
  # Each part runs alone: the pipeline's workers are stopped before anything else is timed.
  if 'pipeline' in parts:
    data = time_pipeline(config, _BATCHES.value)
    print(f"pipeline examples/s       {data['pipeline_examples_per_sec']:8.1f}")
    if slowest:
      print(f"pipeline / train ratio    {data['pipeline_examples_per_sec'] / slowest:8.2f}x "
            '(slowest phase)', flush=True)
  if 'sampling' in parts:
    lat = step_timing.time_sampling_latency(config, mesh, repeats=_LATENCY_REPEATS.value)
    print(f"sampling one {lat['clip_s']:g} s clip ({config.data.num_frames} frames at "
          f"{config.data.fps:g} fps), batch 1, {lat['sampler']} {lat['num_steps']} steps, "
          f"guidance {lat['guidance']:g} ({lat['denoiser_calls']} denoiser calls), freshly "
          'initialised params (timing only)')
    print(f"sampling jit compile time {lat['compile_s']:8.2f} s")
    print(f"sampling latency per clip {lat['latency_s'] * 1e3:8.1f} ms  (median of "
          f"{lat['repeats']}; {lat['clip_s'] / lat['latency_s']:.2f}x real time)")


def bench_sampling(workdir: str, step_counts: list[int], samplers: list[str],
                   guidances: list[float]) -> list[dict]:
  """Latency and onset F1 of each sampler x steps x guidance on the last checkpoint."""
  config, mesh, models, params, ckpt_step = state_lib.restore_workdir(workdir)
  generator = sampling.Generator(config, mesh, models)
  clips = generation.test_clips(config, config.eval.num_generate_clips)
  real = generator.real_log_mel(clips['waveform'])
  rate = generation.frame_rate(config)
  print(f'{workdir}: checkpoint {ckpt_step}, {len(real)} test clips, {mesh.size} '
        f'{jax.devices()[0].platform} device(s)')
  rows = []
  for sampler, num_steps, guidance in itertools.product(
      samplers, step_counts, guidances or [config.eval.guidance]):
    kwargs = dict(sampler=sampler, num_steps=num_steps, guidance=guidance)
    # Timed without the compile (generate_timed compiles before it starts the clock).
    mel, timing = generator.generate_timed(params, clips['frames'], labels=clips['labels'],
                                           **kwargs)
    seconds = timing['seconds']
    scores = generation.onset_scores(mel, real, clips['onsets'], rate)
    rows.append({'sampler': sampler, 'steps': num_steps, 'guidance': guidance,
                 'ms_per_clip': 1e3 * seconds / len(mel),
                 'onset_f1@100ms': scores['gen/onset_f1@100ms'],
                 'onset_f1@50ms': scores['gen/onset_f1@50ms'],
                 'onset_f1@100ms_shuffled': scores['gen/onset_f1@100ms_shuffled'],
                 'onset_hit@100ms': scores['gen/onset_hit@100ms']})
    print('  '.join(f'{k} {v:.2f}' if isinstance(v, float) else f'{k} {v}'
                    for k, v in rows[-1].items()), flush=True)
  lines = ['| sampler | steps | guidance | ms / clip | onset F1@100ms | F1@50ms | '
           'shuffled F1@100ms | recall@100ms |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
  lines += [f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {r['ms_per_clip']:.1f} | "
            f"{r['onset_f1@100ms']:.1f} | {r['onset_f1@50ms']:.1f} | "
            f"{r['onset_f1@100ms_shuffled']:.1f} | {r['onset_hit@100ms']:.1f} |" for r in rows]
  print('\n'.join(lines))
  with open(os.path.join(workdir, 'bench_sampling.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(workdir, 'bench_sampling.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return rows


def main(argv):
  del argv
  out = _OUT.value if _SUITE.value else None  # The suite's report: checked before it runs.
  cli.run_or_explain(cli.check_paths, dirs={'workdir': _WORKDIR.value}, files={'out': out},
                     write_dirs={'profile': _PROFILE.value,
                                 'out': out and os.path.dirname(os.path.abspath(out))})
  cli.setup()
  if _SAMPLING.value:
    if not _WORKDIR.value:
      raise app.UsageError('--sampling needs --workdir of a trained run')
    cli.run_or_explain(bench_sampling, _WORKDIR.value, [int(s) for s in _SAMPLE_STEPS.value],
                       _SAMPLERS.value, [float(g) for g in _GUIDANCE.value])
  else:
    if _CONFIG.value is None:
      raise app.UsageError('give --config=configs/NAME.py[:VARIANT] (or --workdir --sampling)')
    # Compile times should be compilations, not loads from the persistent cache.
    jax.config.update('jax_enable_compilation_cache', False)
    if _SUITE.value == 'gpu':
      cli.run_or_explain(gpu_suite.main, _CONFIG.value, _OUT.value, _DRY_RUN.value)
    else:
      bench_training(_CONFIG.value, _PARTS.value)


if __name__ == '__main__':
  cli.run(main)
