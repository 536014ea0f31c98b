"""L_MSD (eq. 6-7): the denoiser's loss given video scales, its misaligned negatives, and the
label oracle's condition.

With loss.cdiff_weight > 0, L_MSD includes CMMD's contrastive diffusion term (eq. 4 in a
bounded form, `msd_loss`). `models` is core/steps.py's Models (encoders, denoiser).
"""

import functools
from typing import Any

import jax
import ml_collections

from gmscavp_jax.data import negatives
from gmscavp_jax.diffusion import objectives
from gmscavp_jax.diffusion import schedules
from gmscavp_jax.models import gmscavp
from gmscavp_jax.models import unet


def alpha_bar(config: ml_collections.ConfigDict) -> jax.Array:
  """The configured noise schedule's cumulative alpha (N,)."""
  return schedules.alpha_bar(config.diffusion.schedule, config.diffusion.num_timesteps)


def oracle_labels(batch: dict, config: ml_collections.ConfigDict) -> jax.Array | None:
  """The label oracle's condition: batch['labels'] (B,K) with unet.label_condition, else None."""
  return batch['labels'] if config.unet.label_condition else None


def msd_loss(denoiser_params, video_scales: list, x0: jax.Array, rng: jax.Array, *,
             models: Any, config: ml_collections.ConfigDict,
             negative_scales: list | None = None,
             labels: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """L_MSD (eq. 7) of normalised log-mels x0 (B,Ta,F) given the video scales (and, for the
  label oracle, the clips' classes `labels` (B,K), see `oracle_labels`).

  With diffusion.objective 'flow', the rectified-flow velocity loss (objectives.flow_loss)
  replaces eq. 7; dropout and the contrastive term are the same.

  Each example's condition is replaced by the learned null with probability
  diffusion.condition_dropout (classifier-free guidance). With `negative_scales` (misaligned
  video scales, see `negative_video_scales`) the loss adds loss.cdiff_weight times CMMD's
  contrastive term on the same x_t, t and noise (diffusion/objectives.py), over the examples
  whose condition was not dropped.
  """
  d = config.diffusion
  drop_rng, loss_rng = jax.random.split(rng)
  drop = jax.random.bernoulli(drop_rng, d.condition_dropout, (x0.shape[0],))

  apply = functools.partial(models.denoiser.apply, {'params': denoiser_params})
  chunk = unet.batch_chunk(config.unet.batch_chunk)

  def denoiser(scales):
    return lambda x_t, t: unet.apply_in_chunks(apply, chunk, x_t, t, scales,
                                               drop_condition=drop, labels=labels)

  contrast = None
  if negative_scales is not None:
    contrast = objectives.Contrast(denoiser(negative_scales), config.loss.cdiff_weight,
                                   config.loss.cdiff_temperature, mask=1.0 - drop)
  if d.objective == 'flow':
    return objectives.flow_loss(denoiser(video_scales), x0, loss_rng,
                                num_timesteps=d.num_timesteps, t_sampling=d.flow_t_sampling,
                                contrast=contrast)
  return objectives.diffusion_loss(denoiser(video_scales), x0, loss_rng, alpha_bar(config),
                                   prediction=d.prediction, terminal_weight=d.terminal_weight,
                                   min_snr_gamma=d.min_snr_gamma, contrast=contrast)


# Folded into the step's key for the negatives: a stream apart from msd_loss's splits, so
# turning the contrastive term on or off leaves every other draw of the step unchanged.
_NEGATIVES_STREAM = 0x63646966


def negative_video_scales(encoder_params, features: jax.Array, rng: jax.Array, *,
                          models: Any, config: ml_collections.ConfigDict) -> list:
  """Misaligned conditions for the contrastive diffusion loss: [(B,T_l,S_l,D)] * L.

  The negatives (data/negatives.py, loss.cdiff_kinds: shifted by loss.cdiff_{min,max}_
  shift_seconds, spliced with, or swapped for another clip) are made of the per-frame video
  features (B,T,h,w,C) and pooled by the pyramid: only the pyramid runs again, and every scale
  sees one consistent misalignment (a shift of the scales themselves would be coarser than a
  frame, or impossible at T_l = 1). No gradient flows back through them: the term trains the
  denoiser to use its condition; aligning the encoders is L_MSA's job, and a gradient here
  would reward features whose misaligned copies mislead the denoiser.
  """
  l = config.loss
  min_shift, max_shift = negatives.shift_steps(l.cdiff_min_shift_seconds,
                                               l.cdiff_max_shift_seconds, config.data.fps)
  misaligned, _ = negatives.make_negatives(
      jax.random.fold_in(rng, _NEGATIVES_STREAM), jax.lax.stop_gradient(features),
      min_shift=min_shift, max_shift=max_shift, kinds=tuple(l.cdiff_kinds))
  scales = models.encoders.apply({'params': encoder_params}, misaligned,
                                 method=gmscavp.GMSCAVP.video_scales)
  return jax.lax.stop_gradient(scales)
