"""Where the time of one clip goes, stage by stage (issue 22): decode, encoder, sampler,
vocoder, write.

  python -m gmscavp_jax.tools.clip_breakdown --config=configs/msa_msd.py:runlocal --out=/tmp/bd
  python -m gmscavp_jax.tools.clip_breakdown --config=configs/msa_msd.py --out=/tmp/bd_full \
      --repeats=1 --end_to_end=false

One clip of the config's length at batch 1, with freshly initialised params (the work does
not depend on training), through the real inference path (`video_to_audio.Soundtracker` and
`sampling.sample_step`'s two halves): the video decoded with PyAV (`video_to_audio.load_clip`;
a synthetic test clip rendered to mp4 when --video is not given), the video encoder and
pyramid (`sampling.encode_video`), the sampler's steps on its scales (`sampling.sample_from_video`,
the config's eval.* settings unless --sampler/--steps/--guidance/--guidance_interval), the
vocoder (--vocoder, 'auto': Griffin-Lim unless the dataset's neural vocoder is trained) and
the files (`Soundtracker.write_outputs`: spectrogram PNG, WAV, mp4). Each stage is compiled (jitted
stages ahead of time, so compiling is timed apart), run once to warm, then timed --repeats
times (best and median). --end_to_end also times whole requests (`Soundtracker.write` after
the decode), warmed once, against the sum of the stages.

It checks the program as well: tracing `sampling.sample_step` counts the video encoder's calls
(intercepted at trace time; it must be one) and the UNet's calls per sampler step with
their batch, and the jaxpr shows that no loop of the program takes the frames, so the
encoder runs once per request, never per step. Writes OUT/breakdown.json and .md; prints
the table. The persistent compilation cache is not used, so compile times are real.
"""

import functools
import json
import os
import statistics
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.extend
from ml_collections import config_flags
import numpy as np

from gmscavp_jax import cli
from gmscavp_jax.core import msd
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import synthetic
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.inference import video_to_audio
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding
from gmscavp_jax.models import gmscavp
from gmscavp_jax.models import unet as unet_lib



def _define_flags() -> dict:
  """The command's flags, defined only when this module runs as a command: the tests import
  it beside tools that define flags of the same names (--out, --sampler)."""
  defined = {
      'config': config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                                lock_config=True),
      'video': flags.DEFINE_string('video', None, 'A video to decode (default: synthetic '
                                   'test clip 0 of the config, rendered to '
                                   'OUT/synthetic_clip.mp4).'),
      'out': flags.DEFINE_string('out', None, 'Output folder (created if needed).'),
      'repeats': flags.DEFINE_integer('repeats', 3,
                                      'Timed runs of each stage (after one warm-up).'),
      'end_to_end': flags.DEFINE_bool('end_to_end', True, 'Also time whole requests (one '
                                      'more warm-up and --repeats runs of the sampler).'),
      'sampler': cli.define_sampler_flags(),
      'vocoder': cli.define_vocoder_flag(),
      'evaluator_dir': cli.define_evaluator_dir_flag(),
  }
  flags.mark_flags_as_required(['config', 'out'])
  return defined


STAGES = ('decode', 'encoder', 'sampler', 'vocoder', 'write')


def _load() -> float:
  """The 1-minute load average (the cores are shared: timings scale with it)."""
  return os.getloadavg()[0]


def time_stage(run, repeats: int, compile_fn=None) -> tuple[dict, object]:
  """Times `run()` (its result blocked on); returns ({'compile_s' (compile_fn(), None
  without it), 'warm_s' (the first run), 'best_s', 'median_s', 'runs_s' (the `repeats` timed
  runs)}, the first run's result)."""
  out = {'compile_s': None}
  if compile_fn is not None:
    t0 = time.perf_counter()
    compile_fn()
    out['compile_s'] = time.perf_counter() - t0
  times = []
  for i in range(repeats + 1):
    t0 = time.perf_counter()
    result = jax.block_until_ready(run())
    times.append(time.perf_counter() - t0)
    if i == 0:
      first = result
  out.update(warm_s=times[0], best_s=min(times[1:]), median_s=statistics.median(times[1:]),
             runs_s=times[1:])
  return out, first


def time_jitted(jitted, args: tuple, repeats: int) -> tuple[dict, object]:
  """`time_stage` of jitted(*args), compiled ahead of time (so compiling is timed apart)."""
  compiled = []
  return time_stage(lambda: compiled[0](*args), repeats,
                    lambda: compiled.append(jitted.lower(*args).compile()))


def synthetic_video(config, path: str) -> str:
  """Writes synthetic test clip 0 of `config` (frames and true audio) as an mp4 at `path`."""
  clip = synthetic.from_config(config, 'test')[0]
  media_writing.write_video(path, clip['frames'], config.data.fps, waveform=clip['waveform'],
                            sample_rate=config.audio.sample_rate)
  return path


def trace_counts(params, inputs: dict, rng, *, models, config, settings: dict) -> dict:
  """How `sampling.sample_step` of `settings` runs the networks, read while tracing it.

  {'encoder_calls': GMSCAVP.embed_video calls in the program, 'unet_calls_per_step': UNet
  calls traced in the sampler's step (the loop body is traced once; with a guidance interval
  its lax.cond traces the guided call and the conditional one, of which each step runs one),
  'unet_batch': the batch of each, 'loops_taking_frames': loops (scan/while) whose inputs
  include the frames (B,T,H,W,3) uint8 (0: the encoder cannot run inside the sampler's loop)}.
  """
  encoder, unet = [], []

  def count(next_fun, args, kwargs, context):
    if isinstance(context.module, gmscavp.GMSCAVP) and context.method_name == 'embed_video':
      encoder.append(1)
    if isinstance(context.module, unet_lib.UNet) and context.method_name == '__call__':
      unet.append(args[0].shape[0])
    return next_fun(*args, **kwargs)

  fn = functools.partial(sampling.sample_step, models=models, config=config, **settings)
  with nn.intercept_methods(count):
    jaxpr = jax.make_jaxpr(fn)(params, inputs, rng)
  frames = inputs['frames']
  return {'encoder_calls': len(encoder), 'unet_calls_per_step': len(unet),
          'unet_batch': sorted(set(unet)),
          'loops_taking_frames': _loops_taking(jaxpr.jaxpr, frames.shape, frames.dtype)}


def _loops_taking(jaxpr, shape, dtype) -> int:
  """Loop equations (scan, while), at any depth of `jaxpr`, with an input of shape/dtype."""
  found = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('scan', 'while'):
      found += any(getattr(v.aval, 'shape', None) == tuple(shape) and v.aval.dtype == dtype
                   for v in eqn.invars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _loops_taking(sub, shape, dtype)
  return found


def breakdown(config, out_dir: str, *, video: str | None, repeats: int, end_to_end: bool,
              sampler_args: dict, vocoder: str, evaluator_dir: str | None) -> dict:
  """Times one clip's stages (see the module docstring); returns breakdown.json's dict."""
  os.makedirs(out_dir, exist_ok=True)
  if config.unet.label_condition:
    raise errors.ConfigError('unet.label_condition=True (the label oracle) needs true labels; '
                             'time a config without it')
  result = {'config': config.experiment, 'device': jax.devices()[0].device_kind,
            'num_devices': jax.device_count(), 'load_start': _load(), 'repeats': repeats,
            'clip_s': config.data.num_frames / config.data.fps}
  video = video or synthetic_video(config, os.path.join(out_dir, 'synthetic_clip.mp4'))
  mesh = sharding.mesh_from_config(config)
  models, _, state = state_lib.build(config, mesh)
  params = state.params
  del state  # Only the params sample.
  tracker = video_to_audio.Soundtracker(
      None, vocoder, evaluator_dir,
      restored=state_lib.Restored(config, mesh, models, params, 0))
  settings = sampling.sampler_settings(config.eval, **sampler_args)
  calls = samplers.denoiser_calls(
      msd.alpha_bar(config), objective=config.diffusion.objective,
      sampler=settings['sampler'], num_steps=settings['num_steps'],
      guidance_scale=settings['guidance'], guidance_interval=settings['guidance_interval'])
  result['settings'] = {**settings, 'denoiser_calls': calls, 'vocoder': tracker.vocoder.name,
                        'griffin_lim_iters': config.eval.griffin_lim_iters}
  stages = {}
  stages['decode'], clip = time_stage(
      lambda: tracker.load_clip(video=video), repeats)
  frames = jax.device_put(clip['frames'][None])
  inputs, rng = {'frames': frames}, jax.random.key(0)

  stages['encoder'], scales = time_jitted(
      jax.jit(functools.partial(sampling.encode_video, models=models)), (params, frames), repeats)
  stages['sampler'], mel = time_jitted(
      jax.jit(functools.partial(sampling.sample_from_video, models=models, config=config,
                                **settings)), (params, scales, inputs, rng), repeats)
  mel = np.asarray(mel)
  stages['vocoder'], wave = time_stage(lambda: tracker.vocode(mel, 0), repeats)
  write_dir = os.path.join(out_dir, 'clip')
  stages['write'], _ = time_stage(
      lambda: tracker.write_outputs(clip, mel, np.asarray(wave)[0], write_dir), repeats)
  result['stages'] = stages
  result['sum_median_s'] = sum(stages[s]['median_s'] for s in STAGES)
  result['sum_best_s'] = sum(stages[s]['best_s'] for s in STAGES)
  result['trace'] = trace_counts(params, inputs, rng, models=models, config=config,
                                 settings=settings)
  if end_to_end:
    result['end_to_end'] = time_requests(tracker, video, write_dir, repeats, sampler_args)
  result['load_end'] = _load()
  return result


def time_requests(tracker, video: str, write_dir: str, repeats: int,
                  sampler_args: dict) -> dict:
  """Whole requests (decode, then `Soundtracker.write`), the first a warm-up that compiles
  the Generator's program: {'warm_s', 'best_s', 'median_s', 'runs_s'}."""

  def request():
    clip = tracker.load_clip(video=video)
    return tracker.write(clip, write_dir, seed=0, **sampler_args)

  timing, _ = time_stage(request, repeats)
  del timing['compile_s']
  return timing


def check(result: dict) -> None:
  """Raises AssertionError unless the video encoder runs once per request."""
  trace = result['trace']
  assert trace['encoder_calls'] == 1, f'video encoder traced {trace["encoder_calls"]} times'
  assert trace['loops_taking_frames'] == 0, 'a loop of the sampling program takes the frames'


def table(result: dict) -> str:
  """breakdown.md: the stages' compile, warm-up, best and median seconds, and the checks."""
  s = result['settings']
  lines = [f"One {result['clip_s']:g} s clip of {result['config']} at batch 1 on "
           f"{result['num_devices']} {result['device']} device(s): {s['sampler']} "
           f"{s['num_steps']} steps, guidance {s['guidance']:g}"
           f"{guidance_lib.interval_text(s['guidance_interval'])} ({s['denoiser_calls']} denoiser "
           f"evaluations), vocoder {s['vocoder']} "
           f"({s['griffin_lim_iters']} Griffin-Lim iterations if used); load average "
           f"{result['load_start']:.2f} at the start, {result['load_end']:.2f} at the end.",
           '', '| stage | compile s | first run s | best s | median s | share of median |',
           '| --- | --- | --- | --- | --- | --- |']
  total = result['sum_median_s']
  for name in STAGES:
    st = result['stages'][name]
    comp = '-' if st['compile_s'] is None else f"{st['compile_s']:.2f}"
    lines.append(f"| {name} | {comp} | {st['warm_s']:.3f} | {st['best_s']:.3f} | "
                 f"{st['median_s']:.3f} | {100 * st['median_s'] / total:.1f}% |")
  lines.append(f"| **sum** | | | {result['sum_best_s']:.3f} | {total:.3f} | 100% |")
  if 'end_to_end' in result:
    e = result['end_to_end']
    lines.append(f"| whole request (decode + `Soundtracker.write`) | | {e['warm_s']:.3f} | "
                 f"{e['best_s']:.3f} | {e['median_s']:.3f} | |")
  t = result['trace']
  lines += ['', f"Traced `sample_step`: video encoder calls {t['encoder_calls']} (loops taking "
            f"the frames: {t['loops_taking_frames']}); UNet calls traced in a sampler step "
            f"{t['unet_calls_per_step']} at batch {t['unet_batch']} (with a guidance interval, "
            'the guided and the conditional call, one of which runs). First-run seconds of '
            'the unjitted-ahead stages (decode, vocoder, write) include their compiling.']
  return '\n'.join(lines) + '\n'


def _missing(path: str):
  raise errors.InputError(f'--video={path}: does not exist; expected a video file')


# The command's flags, filled by `_define_flags` when this module runs as a command.
_FLAGS = {}


def main(argv):
  f = _FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  out, video, repeats = f['out'].value, f['video'].value, f['repeats'].value
  if repeats < 1:
    raise app.UsageError(f'--repeats={repeats}: expected >= 1')
  cli.run_or_explain(cli.check_paths, write_dirs={'out': out}, files={'video': video})
  if video and not os.path.exists(video):
    cli.run_or_explain(_missing, video)
  result = cli.run_or_explain(breakdown, f['config'].value, out, video=video, repeats=repeats,
                              end_to_end=f['end_to_end'].value,
                              sampler_args=cli.sampler_args(f['sampler']),
                              vocoder=f['vocoder'].value,
                              evaluator_dir=f['evaluator_dir'].value)
  with open(os.path.join(out, 'breakdown.json'), 'w') as fp:
    json.dump(result, fp, indent=1)
  text = table(result)
  with open(os.path.join(out, 'breakdown.md'), 'w') as fp:
    fp.write(text)
  print(text, flush=True)
  check(result)


if __name__ == '__main__':
  _FLAGS.update(_define_flags())
  cli.run(main)
