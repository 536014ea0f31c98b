"""Checks a resolved config before any work starts, with one clear message per problem.

ml_collections already rejects unknown fields and wrong types on the command line
(`--config.train.batch_sise=8` fails there); this module checks values and the relations
between fields that a type cannot express.
"""

import os
import re

import ml_collections

from gmscavp_jax.core import config_checks
from gmscavp_jax.core import generator_validation
from gmscavp_jax.data import mixture
from gmscavp_jax.diffusion import guidance
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.infra import errors
from gmscavp_jax.models import pyramid

COMPUTE_DTYPES = ('float32', 'bfloat16')
REMAT_POLICIES = ('none', 'full', 'save_dots')
# The checks' primitives (core/config_checks.py), by the short names used below.
require = config_checks.require
_require_widths = config_checks.require_widths


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises errors.ConfigError naming the first invalid field of `config`.

  Args:
    config: the resolved experiment config (configs/common.py fields).
    num_devices: if given, batch sizes must divide over this many devices.
  """
  num_scales = len(tuple(config.model.scale_pools))
  _validate_data(config)
  _validate_mixture(config)
  _validate_audio(config.audio)
  _validate_model(config)
  _validate_contrastive_loss(config.loss, [config.data.num_frames // p
                                          for p in config.model.scale_pools])
  generator_validation.validate_generator(config, num_scales=num_scales)
  generator_validation.validate_contrastive_diffusion(config)
  generator_validation.validate_a2v(config, num_scales=num_scales)
  _validate_train(config.train)
  _validate_mesh(config.mesh)
  _validate_eval(config, num_scales)
  if num_devices is not None:
    _validate_device_split(config, num_devices)


def _validate_data(config: ml_collections.ConfigDict) -> None:
  """data.*: the dataset and the clip geometry."""
  d = config.data
  require(d.name == 'synthetic' or bool(d.data_dir), 'data.data_dir',
           f'a directory for the prepared dataset {d.name!r}', d.data_dir)
  # Prepared datasets are checked against their files when the pipeline opens them.
  require(isinstance(d.name, str) and re.fullmatch(r'[a-z][a-z0-9_]*', d.name) is not None,
           'data.name', "'synthetic' or the lower_snake_case name of a prepared dataset",
           d.name)
  for field in ('num_frames', 'image_size', 'num_classes', 'num_train_clips', 'max_onsets'):
    require(d[field] > 0, f'data.{field}', 'a positive integer', d[field])
  require(isinstance(d.seed, int) and d.seed >= 0, 'data.seed', 'an integer >= 0', d.seed)
  require(d.fps > 0, 'data.fps', 'a positive frame rate', d.fps)
  require(d.worker_count >= 0, 'data.worker_count', 'an integer >= 0', d.worker_count)


def _validate_audio(a: ml_collections.ConfigDict) -> None:
  """audio.*: the log-mel front end."""
  require(a.sample_rate > 0, 'audio.sample_rate', 'a positive rate in Hz', a.sample_rate)
  require(0 < a.win_length <= a.n_fft, 'audio.win_length', f'in (0, n_fft={a.n_fft}]',
           a.win_length)
  require(0 < a.hop_length, 'audio.hop_length', 'a positive hop', a.hop_length)
  require(0 <= a.fmin < a.fmax <= a.sample_rate / 2, 'audio.fmax',
           f'fmin < fmax <= sample_rate/2 = {a.sample_rate / 2}', a.fmax)
  require(a.log_floor > 0, 'audio.log_floor', 'a positive floor', a.log_floor)


def _validate_model(config: ml_collections.ConfigDict) -> None:
  """model.*: the encoders and the pyramid's scales, which must fit the clip."""
  d, m = config.data, config.model
  pools, grids = tuple(m.scale_pools), tuple(m.scale_grids)
  require(len(pools) >= 1, 'model.scale_pools', 'at least one scale', pools)
  require(all(p > 0 and d.num_frames % p == 0 for p in pools), 'model.scale_pools',
           f'pool factors that divide data.num_frames={d.num_frames}', pools)
  require(list(pools) == sorted(set(pools)), 'model.scale_pools',
           'strictly increasing pool factors (fine to coarse)', pools)
  require(pools[-1] == d.num_frames, 'model.scale_pools',
           f'the last (coarsest) pool equal to data.num_frames={d.num_frames} (clip level)',
           pools)
  require(len(grids) == len(pools), 'model.scale_grids',
           f'one grid per scale ({len(pools)})', grids)
  require(all(g >= 1 for g in grids), 'model.scale_grids', 'grids >= 1', grids)
  require(m.pyramid in ('pool', 'conv'), 'model.pyramid', "'pool' or 'conv'", m.pyramid)
  require(d.image_size % m.video_patch == 0, 'model.video_patch',
           f'a divisor of data.image_size={d.image_size}', m.video_patch)
  require(m.video_stem in ('patchify', 'conv'), 'model.video_stem', "'patchify' or 'conv'",
           m.video_stem)
  if m.video_stem == 'conv':
    require(m.video_patch % 2 == 0, 'model.video_patch',
             "an even patch with model.video_stem='conv'", m.video_patch)
  require(m.embed_dim > 0, 'model.embed_dim', 'a positive width', m.embed_dim)
  for field in ('video_widths', 'audio_widths'):
    _require_widths(m[field], f'model.{field}', m.num_groups, 'model.num_groups',
                    allow_empty=True)


def _validate_contrastive_loss(l: ml_collections.ConfigDict, segments: list[int]) -> None:
  """loss.*: L_MSA's scale weights, temperatures, hue negatives and cross-time term, and the
  video class head's weight; `segments` holds each scale's T_l."""
  num_scales = len(segments)
  require(len(l.scale_weights) in (0, num_scales), 'loss.scale_weights',
           f'empty or one weight per scale ({num_scales})', l.scale_weights)
  require(0 < l.temperature_min <= l.temperature_init <= l.temperature_max,
           'loss.temperature_init', 'temperature_min <= temperature_init <= temperature_max',
           (l.temperature_min, l.temperature_init, l.temperature_max))
  require(l.adaptive_temperature > 0, 'loss.adaptive_temperature', 'a positive tau_w',
           l.adaptive_temperature)
  require(l.video_class_weight >= 0, 'loss.video_class_weight', 'a weight >= 0',
           l.video_class_weight)
  angles = tuple(l.hue_negative_angles)
  require(bool(angles) and all(0 < a < 360 for a in angles), 'loss.hue_negative_angles',
          'one or more hue turns in (0, 360) degrees', angles)
  require(l.cross_time_weight >= 0, 'loss.cross_time_weight', 'a weight >= 0',
          l.cross_time_weight)
  require(l.cross_time_steps >= 0, 'loss.cross_time_steps', 'a step count >= 0 (0 = every step)',
          l.cross_time_steps)
  if l.cross_time_weight > 0:
    require(0 <= l.cross_time_scale < num_scales and segments[l.cross_time_scale] >= 2,
            'loss.cross_time_scale', f'a scale with 2 or more segments (T_l per scale: '
            f'{tuple(segments)})', l.cross_time_scale)


def _validate_train(t: ml_collections.ConfigDict) -> None:
  """train.*: steps, batch, optimizer, logging and the compiled program's precision."""
  require(t.num_steps > 0, 'train.num_steps', 'a positive step count', t.num_steps)
  require(t.batch_size > 0, 'train.batch_size', 'a positive global batch', t.batch_size)
  require(t.learning_rate > 0, 'train.learning_rate', 'a positive rate', t.learning_rate)
  require(t.encoder_lr_scale > 0, 'train.encoder_lr_scale', 'a positive factor',
           t.encoder_lr_scale)
  require(t.lr_schedule in ('cosine', 'constant'), 'train.lr_schedule',
           "'cosine' or 'constant'", t.lr_schedule)
  require(t.warmup_steps >= 0, 'train.warmup_steps', 'an integer >= 0', t.warmup_steps)
  require(t.decay_steps is None or t.decay_steps > t.warmup_steps, 'train.decay_steps',
           f'unset or > warmup_steps={t.warmup_steps}', t.decay_steps)
  require(t.grad_clip_norm >= 0, 'train.grad_clip_norm', '>= 0 (0 disables)', t.grad_clip_norm)
  require(0.0 <= t.ema_decay < 1.0, 'train.ema_decay', 'a decay in [0, 1) (0 = no EMA)',
           t.ema_decay)
  for field in ('log_every_steps', 'checkpoint_every_steps', 'eval_every_steps',
                'keep_checkpoints', 'max_skipped_steps'):
    require(t[field] > 0, f'train.{field}', 'a positive integer', t[field])
  require(t.compute_dtype in COMPUTE_DTYPES, 'train.compute_dtype', f'one of {COMPUTE_DTYPES}',
           t.compute_dtype)
  require(t.remat in REMAT_POLICIES, 'train.remat', f'one of {REMAT_POLICIES}', t.remat)
  require(not t.init_from or os.path.isfile(os.path.join(t.init_from, 'config.json')),
           'train.init_from', "'' or the workdir of a training run (with config.json)",
           t.init_from)


def _validate_mesh(mesh: ml_collections.ConfigDict) -> None:
  """mesh.*: the device mesh's axis sizes and the FSDP threshold."""
  for field in ('data', 'fsdp'):
    require(mesh[field] == -1 or mesh[field] >= 1, f'mesh.{field}',
             '-1 (the devices the other axis leaves) or a positive size', mesh[field])
  require(mesh.fsdp_min_size >= 0, 'mesh.fsdp_min_size', 'an integer >= 0',
           mesh.fsdp_min_size)


def _validate_eval(config: ml_collections.ConfigDict, num_scales: int) -> None:
  """eval.*: the test split, retrieval, and the generation the trainer's evaluation runs."""
  e = config.eval
  require(e.num_test_clips > 0, 'eval.num_test_clips', 'a positive integer', e.num_test_clips)
  # Any size: the last batch of the test split is padded and the padding left out of every
  # metric (pipeline.eval_loader).
  require(e.batch_size > 0, 'eval.batch_size', 'a positive global batch', e.batch_size)
  require(-1 <= e.retrieval_scale < num_scales, 'eval.retrieval_scale',
           f'-1 (all scales) or a scale index below {num_scales}', e.retrieval_scale)
  require(e.retrieval_pooling in pyramid.POOLINGS, 'eval.retrieval_pooling',
           f'one of {pyramid.POOLINGS}', e.retrieval_pooling)

  require(0 <= e.num_generate_clips <= e.num_test_clips, 'eval.num_generate_clips',
           f'in [0, eval.num_test_clips={e.num_test_clips}]', e.num_generate_clips)
  require(0 <= e.num_summary_clips <= e.num_generate_clips, 'eval.num_summary_clips',
           f'in [0, eval.num_generate_clips={e.num_generate_clips}]', e.num_summary_clips)
  require(e.sampler in samplers.SAMPLERS, 'eval.sampler', f'one of {samplers.SAMPLERS}',
           e.sampler)
  require(0 < e.sample_steps <= config.diffusion.num_timesteps, 'eval.sample_steps',
           f'in [1, diffusion.num_timesteps={config.diffusion.num_timesteps}]', e.sample_steps)
  require(e.guidance >= 0, 'eval.guidance', 'a guidance scale >= 0', e.guidance)
  try:
    guidance.check_guidance_interval(e.guidance_interval)
    interval_ok = True
  except (TypeError, ValueError):
    interval_ok = False
  require(interval_ok, 'eval.guidance_interval',
          '() (every step) or (lo, hi) with 0 <= lo < hi, hi None or inf for no upper bound',
          e.guidance_interval)
  require(e.eta >= 0, 'eval.eta', 'a DDIM eta >= 0', e.eta)
  require(e.griffin_lim_iters > 0, 'eval.griffin_lim_iters', 'a positive integer',
           e.griffin_lim_iters)


def _validate_device_split(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Both global batches split evenly over `num_devices`."""
  t, e = config.train, config.eval
  require(t.batch_size % num_devices == 0, 'train.batch_size',
           f'a multiple of the device count ({num_devices})', t.batch_size)
  require(e.batch_size % num_devices == 0, 'eval.batch_size',
           f'a multiple of the device count ({num_devices})', e.batch_size)


def validate_evaluation(config: ml_collections.ConfigDict) -> None:
  """The evaluate command's fields: eval.num_metric_clips and the evaluator networks.

  Not part of `validate`: training does not depend on them, and a run trained with a small
  test split should not fail for a setting only the evaluate command reads.
  """
  e, v = config.eval, config.evaluator
  require(2 <= e.num_metric_clips and 2 * e.num_metric_clips <= e.num_test_clips,
           'eval.num_metric_clips',
           f'in [2, eval.num_test_clips / 2 = {e.num_test_clips // 2}] (FAD compares against '
           'the next as many test clips)', e.num_metric_clips)
  require(e.num_memorisation_clips >= 0, 'eval.num_memorisation_clips',
           'a number of training clips >= 0 (0: no memorisation check)',
           e.num_memorisation_clips)
  for field in ('video_widths', 'audio_widths'):
    _require_widths(tuple(v[field]), f'evaluator.{field}', v.num_groups, 'num_groups')
  require(config.data.image_size % v.video_patch == 0, 'evaluator.video_patch',
           f'a divisor of data.image_size={config.data.image_size}', v.video_patch)
  for field in ('blocks_per_stage', 'embed_dim', 'num_steps', 'batch_size', 'num_check_clips'):
    require(v[field] > 0, f'evaluator.{field}', 'a positive integer', v[field])
  require(v.batch_size >= 2, 'evaluator.batch_size', 'at least 2 (negatives pair clips)',
           v.batch_size)
  require(v.num_check_clips <= e.num_test_clips, 'evaluator.num_check_clips',
           f'at most eval.num_test_clips={e.num_test_clips}', v.num_check_clips)
  require(v.learning_rate > 0, 'evaluator.learning_rate', 'a positive rate', v.learning_rate)
  seconds = config.data.num_frames / config.data.fps
  require(0 < v.min_shift_seconds <= v.max_shift_seconds < seconds,
           'evaluator.max_shift_seconds',
           f'min_shift_seconds <= max_shift_seconds < the clip length ({seconds:g} s)',
           (v.min_shift_seconds, v.max_shift_seconds))


def _validate_mixture(config: ml_collections.ConfigDict) -> None:
  """data.mixture: parseable, and every prepared dataset in it has a data_dir."""
  d = config.data
  spec = d.mixture
  require(isinstance(spec, str), 'data.mixture', "a string (NAME[OPTIONS]:WEIGHT,...)", spec)
  try:
    entries = mixture.parse(spec)
  except ValueError as e:
    raise errors.ConfigError(f'config.data.mixture={spec!r}: {e}') from e
  for entry in entries:
    require(entry.name == 'synthetic' or bool(entry.data_dir or d.data_dir), 'data.mixture',
             f'a data_dir for the prepared dataset {entry.name!r} (its [data_dir=...] option '
             'or data.data_dir)', spec)
