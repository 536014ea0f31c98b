"""The GPU benchmark suite: one bounded run, one JSON report (docs/speed.md, "GPU benchmark suite").

  python -m gmscavp_jax.bench --suite=gpu --config=configs/msa_msd.py --out=report.json
  python -m gmscavp_jax.bench --suite=gpu --config=configs/msa_msd.py --out=r.json --dry_run
  launch/gpu_bench.sh configs/msa_msd.py report.json

On the config in train.compute_dtype=bfloat16, in this order:
1. train: each compiled train step the run takes (tools/step_timing.time_train_step), at the
   config's global batch, halved after each RESOURCE_EXHAUSTED until one fits: compile s, step
   ms, MFU against the spec-sheet peak of infra/perf.py (null, with a note, on a device the
   table lacks, such as a CPU), peak memory.
2. latency: one clip (batch 1) with each sampler of the objective at eval.sample_steps and
   eval.guidance, the default eval.sampler first.
3. throughput: clips/s of the default sampler at batch 1 (the latency run) and each of
   `throughput_batches` while they fit, then the other samplers at its best batch.
A time budget guards the whole: an item starts only when its estimated time (the duration of
the item like it before, scaled to its batch) fits in what is left, else it is listed under
'skipped' with the reason, so the suite ends within the budget plus start-up.

--dry_run runs the same code on the config shrunk to a tiny model (DRY_RUN_OVERRIDES), with
few steps and batch sizes 1-2: a check, on a CPU, that the suite and its report work.
"""

import dataclasses
import datetime
import gc
import json
import os
import time

import jax
import ml_collections

from configs import common
from gmscavp_jax.core import config_validation
from gmscavp_jax.core import steps
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import samplers as samplers_lib
from gmscavp_jax.infra import perf
from gmscavp_jax.infra import sharding
from gmscavp_jax.tools import gpu_environment
from gmscavp_jax.tools import step_timing

REPORT_VERSION = 1
COMPUTE_DTYPE = 'bfloat16'


@dataclasses.dataclass(frozen=True)
class Settings:
  """How much the suite measures.

  train_steps: timed train steps per batch size (after one warm-up step).
  repeats: timed sampler calls per measurement (after one warm-up); the median is reported.
  throughput_batches: the batch sizes (> 1, ascending) tried for the default sampler.
  budget_s: seconds the suite may take, start-up excluded (8 minutes less a margin).
  first_estimate_s: the time assumed for an item with nothing like it measured before.
  other_samplers: also time the objective's samplers other than eval.sampler (the dry run
    times only the default: the others run the same code, and each costs a compile).
  """
  train_steps: int = 10
  repeats: int = 3
  throughput_batches: tuple = (4, 16, 64)
  budget_s: float = 420.0
  first_estimate_s: float = 30.0
  other_samplers: bool = True


# A budget no dry run reaches, even compiling cold on a busy CPU (275 s on 2 shared cores).
DRY_RUN_SETTINGS = Settings(train_steps=2, repeats=1, throughput_batches=(2,), budget_s=900.0,
                            first_estimate_s=0.0, other_samplers=False)

# The tiny model of --dry_run, on top of the config's :runlocal variant: 8 frames of 32x32,
# two scales, one stage per encoder and a one-level UNet with one attention head of 16,
# two sampler steps, a global batch of 2: the smallest models, as in the test suite's
# checks that hold at any size, since the dry run checks the suite's code, not a model.
DRY_RUN_OVERRIDES = {
    'data': dict(num_frames=8, image_size=32, worker_count=0),
    'model': dict(video_widths=(8,), audio_widths=(8,), embed_dim=16, scale_pools=(1, 8),
                  scale_grids=(1, 1)),
    'unet': dict(widths=(16,), attention_levels=(0,), level_scales=(0,), num_heads=1,
                 stem_patch=(2, 8)),
    'a2v': dict(image_size=8, widths=(16, 32), stem_patch=2, batch_size=0, num_heads=2),
    'train': dict(batch_size=2),
    'eval': dict(sample_steps=2),
}


class Budget:
  """Seconds left of `total_s` since construction, and whether an item fits in them."""

  def __init__(self, total_s: float, clock=time.perf_counter):
    self.total_s, self._clock, self._start = total_s, clock, clock()

  def elapsed(self) -> float:
    return self._clock() - self._start

  def reason_against(self, estimate_s: float) -> str | None:
    """None if an item of about `estimate_s` seconds ends within the budget; else why not."""
    if self.elapsed() + estimate_s <= self.total_s:
      return None
    return (f'time budget: {self.elapsed():.0f} s of {self.total_s:.0f} s used, the item '
            f'needs about {estimate_s:.0f} s')


def suite_config(config: ml_collections.ConfigDict,
                 dry_run: bool = False) -> ml_collections.ConfigDict:
  """A resolved copy of `config` in COMPUTE_DTYPE; with `dry_run`, its :runlocal variant
  shrunk by DRY_RUN_OVERRIDES."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if dry_run:
      config = common.apply_variant(config, 'runlocal')
      for group, fields in DRY_RUN_OVERRIDES.items():
        config[group].update(fields)
    config.train.compute_dtype = COMPUTE_DTYPE
  return config


def out_of_memory(error: BaseException) -> bool:
  """Whether `error` says a device ran out of memory (XLA's RESOURCE_EXHAUSTED)."""
  text = str(error)
  return (isinstance(error, MemoryError) or 'RESOURCE_EXHAUSTED' in text
          or 'Out of memory' in text)


def _train(config, mesh, phase, peak: float | None, settings: Settings, budget: Budget,
           report: dict) -> None:
  """Appends the train step of `phase` at the largest global batch that fits (halving from
  config.train.batch_size) to report['train'], or its reason to report['skipped']."""
  batch, tried = config.train.batch_size, []
  while True:
    t0 = time.perf_counter()
    attempt = config.copy_and_resolve_references()
    attempt.train.batch_size = batch
    try:
      step = step_timing.time_train_step(attempt, mesh, settings.train_steps, phase,
                                         peak or 0.0)
      break
    except Exception as e:  # pylint: disable=broad-except
      if not out_of_memory(e):
        raise
      tried.append({'global_batch': batch, 'error': gpu_environment.short_error(e)})
    gc.collect()
    jax.clear_caches()
    batch //= 2
    why = (budget.reason_against(time.perf_counter() - t0)
           if batch >= mesh.size and batch % mesh.size == 0 else
           f'out of memory down to global batch {batch * 2} ({mesh.size} device(s))')
    if why:
      report['skipped'].append({'item': f'train/{phase}', 'reason': why, 'tried': tried})
      return
  use = (perf.utilisation(step['flops'], step['step_s'], peak) if peak
         else {'flops_per_sec': step['flops'] and step['flops'] / step['step_s'], 'mfu': None})
  note = None if peak else (f'no spec-sheet peak for device kind '
                            f'{mesh.devices.flat[0].device_kind!r} in infra/perf.py PEAK_FLOPS')
  mem = step['memory']
  report['train'].append({
      'phase': str(phase), 'global_batch': batch, 'configured_batch': config.train.batch_size,
      'oom_tried': tried, 'compile_s': step['compile_s'], 'step_ms': 1e3 * step['step_s'],
      'steps_per_sec': step['steps_per_sec'], 'examples_per_sec': step['examples_per_sec'],
      'flops_per_step': step['flops'], 'flops_per_sec': use['flops_per_sec'],
      'peak_flops_per_sec': peak, 'mfu': use['mfu'], 'mfu_note': note,
      'memory_bytes': mem['bytes'], 'memory_source': mem['source'],
      'memory_estimate_bytes': mem['estimate_bytes'], 'timed_steps': settings.train_steps})


def _sample(config, mesh, built, sampler: str, batch_size: int, settings: Settings,
            budget: Budget, estimate_s: float, item: str, report: dict) -> dict | None:
  """One sampler measurement (step_timing.time_sampling_latency) if the budget allows it;
  None, with the reason in report['skipped'], if it does not or the device runs out."""
  why = budget.reason_against(estimate_s)
  if why is None:
    t0 = time.perf_counter()
    try:
      result = step_timing.time_sampling_latency(
          config, mesh, sampler, config.eval.sample_steps, settings.repeats,
          batch_size=batch_size, built=built)
      result['wall_s'] = time.perf_counter() - t0
      return result
    except Exception as e:  # pylint: disable=broad-except
      if not out_of_memory(e):
        raise
      why = f'out of memory at batch {batch_size}: {gpu_environment.short_error(e)}'
      gc.collect()
  report['skipped'].append({'item': item, 'reason': why})
  return None


def _estimate(result: dict, batch_size: int, repeats: int) -> float:
  """Seconds a measurement like `result` would take at `batch_size`: a compile, then the
  warm-up and `repeats` calls, each taking time in proportion to the batch."""
  per_call = result['latency_s'] * batch_size / result['batch_size']
  return result['compile_s'] + (1 + repeats) * per_call


def _throughput_row(sampler: str, tried: list) -> dict:
  best = max(tried, key=lambda r: r['clips_per_sec'])
  return {'sampler': sampler, 'num_steps': best['num_steps'], 'batch_size': best['batch_size'],
          'clips_per_sec': best['clips_per_sec'], 'latency_s': best['latency_s'],
          'compile_s': best['compile_s'],
          'tried': [{'batch_size': r['batch_size'], 'clips_per_sec': r['clips_per_sec']}
                    for r in tried]}


def _sampling(config, mesh, settings: Settings, budget: Budget, report: dict, save) -> None:
  """Fills report['latency'] and report['throughput'] (see the module docstring), calling
  `save()` after each measurement."""
  default = config.eval.sampler
  samplers = [default] + [s for s in samplers_lib.OBJECTIVE_SAMPLERS[
      config.diffusion.objective] if s != default and settings.other_samplers]
  built = step_timing.sampling_params(config, mesh)
  latency, estimate = {}, settings.first_estimate_s
  for sampler in samplers:
    result = _sample(config, mesh, built, sampler, 1, settings, budget, estimate,
                     f'latency/{sampler}', report)
    if result:
      latency[sampler] = result
      estimate = result['wall_s']
      report['latency'].append({**result, 'real_time_factor': result['clip_s'] /
                                result['latency_s']})
    save()
  if default not in latency:
    report['skipped'].append({'item': 'throughput', 'reason': f'no latency for {default}'})
    return
  tried = [latency[default]]
  for batch_size in settings.throughput_batches:
    result = _sample(config, mesh, built, default, batch_size, settings, budget,
                     _estimate(tried[-1], batch_size, settings.repeats),
                     f'throughput/{default}/batch_{batch_size}', report)
    save()
    if result is None:
      break
    tried.append(result)
  report['throughput'].append(_throughput_row(default, tried))
  best = max(tried, key=lambda r: r['clips_per_sec'])
  for sampler in samplers[1:]:
    others = [latency[sampler]] if sampler in latency else []
    if best['batch_size'] > 1:
      result = _sample(config, mesh, built, sampler, best['batch_size'], settings, budget,
                       _estimate(best, best['batch_size'], settings.repeats),
                       f'throughput/{sampler}/batch_{best["batch_size"]}', report)
      others += [result] if result else []
    if others:
      report['throughput'].append(_throughput_row(sampler, others))
    save()


def run_suite(config: ml_collections.ConfigDict, *, dry_run: bool = False,
              settings: Settings | None = None, save=None) -> dict:
  """Runs the suite on `config` (see the module docstring) and returns the report (a dict
  that json.dump writes; fields in docs/speed.md). `save(report)`, if given, is called after
  each item with the report so far ('complete' false), so that a run stopped from outside
  still leaves what it measured."""
  settings = settings or (DRY_RUN_SETTINGS if dry_run else Settings())
  budget = Budget(settings.budget_s)
  config = suite_config(config, dry_run)
  mesh = sharding.mesh_from_config(config)
  config_validation.validate(config, num_devices=mesh.size)
  device = mesh.devices.flat[0]
  per_device = perf.spec_peak_flops(device.device_kind, config.train.compute_dtype,
                                    jax.config.jax_default_matmul_precision)
  report = {
      'suite': 'gpu', 'version': REPORT_VERSION, 'dry_run': dry_run,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      **gpu_environment.environment(mesh),
      'attention': gpu_environment.attention_report(config),
      'settings': dataclasses.asdict(settings),
      'config': json.loads(config.to_json_best_effort()),
      'experiment': config.experiment, 'compute_dtype': config.train.compute_dtype,
      'clip_s': config.data.num_frames / config.data.fps, 'sample_steps':
      config.eval.sample_steps, 'guidance': config.eval.guidance,
      'guidance_interval': guidance_lib.interval_json(config.eval.guidance_interval),
      'train': [], 'latency': [], 'throughput': [], 'skipped': [], 'complete': False,
      'elapsed_s': 0.0,
  }

  def save_so_far():
    report['elapsed_s'] = budget.elapsed()
    if save:
      save(report)

  save_so_far()
  phases = sorted({steps.train_phase(config, s) for s in range(1, config.train.num_steps + 1)})
  for i, phase in enumerate(phases):
    # The first phase always runs; a later one is estimated at the mean of those before.
    estimate = budget.elapsed() / i if i else 0.0
    why = budget.reason_against(estimate)
    if why:
      report['skipped'].append({'item': f'train/{phase}', 'reason': why})
      continue
    _train(config, mesh, phase, per_device and per_device * mesh.size, settings, budget,
           report)
    save_so_far()
  _sampling(config, mesh, settings, budget, report, save_so_far)
  report['complete'] = True
  save_so_far()
  return report


def summary(report: dict) -> str:
  """A few lines of `report` for the terminal."""
  d = report['device']
  lines = [f"{d['count']} x {d['kind']} ({d['platform']}), jax {report['jax_version']}, "
           f"{report['experiment']} in {report['compute_dtype']}"
           f"{', dry run' if report['dry_run'] else ''}, {report['elapsed_s']:.0f} s"]
  for t in report['train']:
    mfu = 'n/a' if t['mfu'] is None else f"{100 * t['mfu']:.1f}%"
    lines.append(f"train {t['phase']}: batch {t['global_batch']}, compile {t['compile_s']:.1f} "
                 f"s, step {t['step_ms']:.1f} ms, MFU {mfu}, memory "
                 f"{step_timing.gib(t['memory_bytes']).strip()} GiB ({t['memory_source']})")
  lines += [f"latency {r['sampler']} {r['num_steps']} steps: {r['latency_s']:.3f} s per "
            f"{r['clip_s']:g} s clip ({r['real_time_factor']:.1f}x real time)"
            for r in report['latency']]
  lines += [f"throughput {r['sampler']}: {r['clips_per_sec']:.2f} clips/s at batch "
            f"{r['batch_size']}" for r in report['throughput']]
  lines += [f"skipped {s['item']}: {s['reason']}" for s in report['skipped']]
  return '\n'.join(lines)


def write_report(report: dict, path: str) -> None:
  """Writes `report` as indented JSON to `path`, whole or not at all (via a temporary file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(report, f, indent=2)
    f.write('\n')
  os.replace(path + '.tmp', path)


def main(config: ml_collections.ConfigDict, out: str, dry_run: bool) -> dict:
  """The suite as `bench --suite=gpu` runs it: runs, prints a summary, writes `out`."""
  report = run_suite(config, dry_run=dry_run, save=lambda r: write_report(r, out))
  print(summary(report))
  print(f'report: {os.path.abspath(out)}', flush=True)
  return report

