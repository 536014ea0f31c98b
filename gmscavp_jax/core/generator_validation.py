"""Checks of the generators' fields: the MSD denoiser and its objective (unet.*, diffusion.*),
contrastive diffusion (loss.cdiff_*) and the audio-to-video denoiser (a2v.*).

Part of `config_validation.validate`, which calls these after the data, audio, model and
contrastive-loss checks.
"""

import ml_collections

from gmscavp_jax.core import config_checks
from gmscavp_jax.data import negatives
from gmscavp_jax.diffusion import objectives
from gmscavp_jax.diffusion import samplers

require = config_checks.require
_require_widths = config_checks.require_widths


def validate_generator(config: ml_collections.ConfigDict, num_scales: int) -> None:
  """The UNet, diffusion and generator-training fields."""
  u, d, l = config.unet, config.diffusion, config.loss
  widths = tuple(u.widths)
  _require_widths(widths, 'unet.widths', u.num_groups, 'unet.num_groups')
  require(all(0 <= i < len(widths) for i in u.attention_levels), 'unet.attention_levels',
           f'level indices below {len(widths)}', u.attention_levels)
  require(len(u.level_scales) == len(widths) and
           all(0 <= s < num_scales for s in u.level_scales), 'unet.level_scales',
           f'one video scale index in [0, {num_scales}) per UNet level ({len(widths)})',
           u.level_scales)
  require(len(u.stem_patch) == 2 and all(p >= 1 for p in u.stem_patch), 'unet.stem_patch',
           'a (time, mel) pair of positive patch sizes', u.stem_patch)
  require(u.num_heads >= 1 and all(w % u.num_heads == 0 for w in widths), 'unet.num_heads',
           f'a divisor of every unet width {widths}', u.num_heads)
  require(u.blocks_per_level >= 1, 'unet.blocks_per_level', 'a positive integer',
           u.blocks_per_level)
  for name in ('label_condition', 'pixel_skip'):
    require(isinstance(u[name], bool), f'unet.{name}', 'True or False', u[name])
  require(u.batch_chunk >= -1, 'unet.batch_chunk',
          '0 (the whole batch), a chunk size N > 0, or -1 (auto)', u.batch_chunk)
  require(d.training in ('joint', 'frozen', 'none'), 'diffusion.training',
           "'joint', 'frozen' or 'none'", d.training)
  if d.training == 'frozen':
    # The contrastive stage's length (phases.encoder_stage_end); longer than train.num_steps
    # is allowed.
    # 0 (the generator stage from step 1, encoders frozen) needs encoders trained elsewhere.
    if config.train.init_from:
      require(d.encoder_steps >= 0, 'diffusion.encoder_steps',
               'a length >= 0 of the contrastive stage (0: fine-tune the denoiser alone on '
               'the encoders of train.init_from)', d.encoder_steps)
    else:
      require(d.encoder_steps > 0, 'diffusion.encoder_steps',
               'a positive length of the contrastive stage (0 only with train.init_from)',
               d.encoder_steps)
  cache = config.train.cache_video_features
  require(isinstance(cache, bool), 'train.cache_video_features', 'True or False', cache)
  if cache:
    # The cache replaces the frames of generator-stage batches: the a2v denoiser needs them,
    # and a mixture's records do not say which of its sources' clips they are.
    require(d.training == 'frozen', 'train.cache_video_features',
             f"False with diffusion.training={d.training!r} (only 'frozen' training has a "
             'stage whose encoders do not change)', cache)
    require(not config.train.bidirectional_interval and not config.data.mixture,
             'train.cache_video_features', 'False with train.bidirectional_interval > 0 or '
             'a data.mixture (their steps need the frames)', cache)
  require(d.schedule in ('linear', 'cosine'), 'diffusion.schedule', "'linear' or 'cosine'",
           d.schedule)
  require(d.num_timesteps >= 2, 'diffusion.num_timesteps', 'at least 2', d.num_timesteps)
  require(d.prediction in ('eps', 'v'), 'diffusion.prediction', "'eps' or 'v'",
           d.prediction)
  require(d.terminal_weight >= 0, 'diffusion.terminal_weight', 'lambda_T >= 0',
           d.terminal_weight)
  require(d.min_snr_gamma >= 0, 'diffusion.min_snr_gamma', 'gamma >= 0 (0 = off)',
           d.min_snr_gamma)
  require(0 <= d.condition_dropout < 1, 'diffusion.condition_dropout', 'a probability in [0, 1)',
           d.condition_dropout)
  require(d.mel_std > 0, 'diffusion.mel_std', 'a positive scale', d.mel_std)
  _validate_objective(config)
  require(l.msa_weight >= 0 and l.msd_weight >= 0, 'loss.msd_weight',
           'non-negative loss weights', (l.msa_weight, l.msd_weight))


def _validate_objective(config: ml_collections.ConfigDict) -> None:
  """diffusion.objective, diffusion.flow_t_sampling and the eval.sampler that matches them."""
  d = config.diffusion
  require(d.objective in samplers.OBJECTIVE_SAMPLERS, 'diffusion.objective',
           f'one of {tuple(samplers.OBJECTIVE_SAMPLERS)}', d.objective)
  require(d.flow_t_sampling in objectives.FLOW_T_SAMPLINGS, 'diffusion.flow_t_sampling',
           f'one of {objectives.FLOW_T_SAMPLINGS}', d.flow_t_sampling)
  allowed = samplers.OBJECTIVE_SAMPLERS[d.objective]
  require(config.eval.sampler in allowed, 'eval.sampler',
           f'one of {allowed} with diffusion.objective={d.objective!r}', config.eval.sampler)
  if d.objective == 'flow':
    # Flow has no terminal step to weight (eq. 7's lambda_T term).
    require(d.terminal_weight == 0, 'diffusion.terminal_weight',
             "0 with diffusion.objective='flow' (set --config.diffusion.terminal_weight=0)",
             d.terminal_weight)
    require(d.min_snr_gamma == 0, 'diffusion.min_snr_gamma',
             "0 with diffusion.objective='flow' (its t has no SNR schedule)", d.min_snr_gamma)


def validate_contrastive_diffusion(config: ml_collections.ConfigDict) -> None:
  """loss.cdiff_*: the contrastive diffusion term (msd.negative_video_scales)."""
  l, d = config.loss, config.data
  require(l.cdiff_weight >= 0, 'loss.cdiff_weight', 'a weight >= 0 (0 = off)', l.cdiff_weight)
  require(l.cdiff_temperature > 0, 'loss.cdiff_temperature', 'a positive tau',
           l.cdiff_temperature)
  kinds = tuple(l.cdiff_kinds)
  require(len(kinds) >= 1 and len(set(kinds)) == len(kinds) and set(kinds) <= set(
      negatives.KINDS), 'loss.cdiff_kinds', f'a non-empty subset of {negatives.KINDS}', kinds)
  if l.cdiff_weight == 0:
    return
  require(config.diffusion.training != 'none', 'loss.cdiff_weight',
           "0 when diffusion.training='none' (no denoiser to contrast)", l.cdiff_weight)
  require(config.train.batch_size >= 2, 'train.batch_size',
           'at least 2 with loss.cdiff_weight > 0 (negatives pair clips)', config.train.batch_size)
  seconds = d.num_frames / d.fps
  min_shift, max_shift = negatives.shift_steps(l.cdiff_min_shift_seconds,
                                               l.cdiff_max_shift_seconds, d.fps)
  require(0 < l.cdiff_min_shift_seconds <= l.cdiff_max_shift_seconds
           and max_shift < d.num_frames, 'loss.cdiff_max_shift_seconds',
           f'0 < cdiff_min_shift_seconds <= cdiff_max_shift_seconds, shorter than the clip '
           f'({seconds:g} s) by at least a frame at data.fps={d.fps:g} (shifts of '
           f'{min_shift}..{max_shift} of {d.num_frames} frames)',
           (l.cdiff_min_shift_seconds, l.cdiff_max_shift_seconds))


def validate_a2v(config: ml_collections.ConfigDict, num_scales: int) -> None:
  """train.bidirectional_interval and, when it is on, the a2v denoiser's fields."""
  k = config.train.bidirectional_interval
  require(isinstance(k, int) and k >= 0, 'train.bidirectional_interval',
           'an integer >= 0 (0 = off: no audio->video denoiser)', k)
  if not k:
    return
  require(config.diffusion.training in ('joint', 'frozen'), 'train.bidirectional_interval',
           f"0 with diffusion.training={config.diffusion.training!r} (the a2v denoiser "
           "trains beside the MSD denoiser: 'joint' or 'frozen')", k)
  a, image = config.a2v, config.data.image_size
  widths = tuple(a.widths)
  _require_widths(widths, 'a2v.widths', a.num_groups, 'a2v.num_groups')
  require(a.num_heads >= 1 and all(w % a.num_heads == 0 for w in widths), 'a2v.num_heads',
           f'a divisor of every a2v width {widths}', a.num_heads)
  require(all(0 <= i < len(widths) for i in a.attention_levels), 'a2v.attention_levels',
           f'level indices below {len(widths)}', a.attention_levels)
  require(len(a.level_scales) in (0, len(widths)) and
           all(0 <= s < num_scales for s in a.level_scales), 'a2v.level_scales',
           f'empty or one audio scale index in [0, {num_scales}) per level ({len(widths)})',
           a.level_scales)
  require(a.blocks_per_level >= 1, 'a2v.blocks_per_level', 'a positive integer',
           a.blocks_per_level)
  require(a.stem_patch >= 1 and 3 * a.stem_patch**2 <= widths[0], 'a2v.stem_patch',
           f'a patch side p >= 1 with 3 p^2 <= a2v.widths[0]={widths[0]}', a.stem_patch)
  mult = a.stem_patch * 2**(len(widths) - 1)
  require(a.image_size > 0 and image % a.image_size == 0 and a.image_size % mult == 0,
           'a2v.image_size', f'a divisor of data.image_size={image} and a multiple of '
           f'stem_patch * 2^(levels-1) = {mult}', a.image_size)
  require(a.loss_weight >= 0, 'a2v.loss_weight', 'a non-negative weight', a.loss_weight)
  require(0 <= a.batch_size <= config.train.batch_size, 'a2v.batch_size',
           f'0 (the whole batch) or at most train.batch_size={config.train.batch_size}',
           a.batch_size)
  require(a.guidance >= 0, 'a2v.guidance', 'a guidance scale >= 0', a.guidance)
  require(0 <= a.num_eval_clips <= config.eval.num_test_clips, 'a2v.num_eval_clips',
           f'in [0, eval.num_test_clips={config.eval.num_test_clips}]', a.num_eval_clips)
