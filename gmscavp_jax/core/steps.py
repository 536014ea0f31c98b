"""Pure steps: train state, optimizers, the joint loss, train and embedding steps.

Everything here is a function of arrays and config; `train.py` jits these with shardings.
The params are {'encoders': GMSCAVP params, 'denoiser': UNet params} (and 'video_denoiser',
the a2v denoiser of bidirectional.py, with train.bidirectional_interval = k > 0), each with
its own optimizer, so a training phase (core/phases.py) updates exactly the groups it trains
(Table 3). Every k-th step of the 'joint' or 'generator' stage also trains the a2v denoiser
(`train_phase`), which in 'joint' reaches the audio encoder unless a2v.stop_gradient.

L_MSD itself (eq. 7, the label oracle, CMMD's contrastive term) is in core/msd.py; the
sampling step, in core/sampling.py.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gmscavp_jax.core import bidirectional
from gmscavp_jax.core import ema
from gmscavp_jax.core import msd
from gmscavp_jax.core import phases
from gmscavp_jax.core import train_state
from gmscavp_jax.data import audio
from gmscavp_jax.data import media
from gmscavp_jax.data import negatives
from gmscavp_jax.losses import contrastive
from gmscavp_jax.models import alignment
from gmscavp_jax.models import gmscavp
from gmscavp_jax.models import pyramid
from gmscavp_jax.models import unet as unet_lib
from gmscavp_jax.models import video_unet

class Models(NamedTuple):
  """The Flax modules: encoders + pyramid (GMSCAVP), the MSD denoiser (UNet) and, with
  bidirectional training, the a2v denoiser (VideoUNet; None when it is off)."""
  encoders: gmscavp.GMSCAVP
  denoiser: unet_lib.UNet
  video_denoiser: video_unet.VideoUNet | None = None


def build_guide(config: ml_collections.ConfigDict) -> alignment.NoisyAlignmentClassifier:
  """The alignment guide of double guidance, sized like the evaluators (config.evaluator)."""
  v = config.evaluator
  return alignment.NoisyAlignmentClassifier(alignment.AlignmentClassifier(
      v.video_patch, tuple(v.video_widths), tuple(v.audio_widths), v.blocks_per_stage,
      v.num_groups, config.data.num_frames))


def build_models(config: ml_collections.ConfigDict) -> Models:
  """Both modules from the config, in its train.compute_dtype (params stay float32) and
  train.remat policy."""
  dtype = jnp.dtype(config.train.compute_dtype)
  remat = config.train.remat
  return Models(gmscavp.build_model(config, dtype, remat),
                unet_lib.build_unet(config, dtype=dtype, remat=remat),
                video_unet.build_video_unet(config, dtype, remat,
                                            mel_frames=num_mel_frames(config))
                if bidirectional.interval(config) else None)


def phase_at(config: ml_collections.ConfigDict, step: int) -> phases.Phase:
  """The stage (a phase without a2v) that takes optimizer step `step` (1-based)."""
  if config.diffusion.training == 'joint':
    return phases.JOINT
  end = phases.encoder_stage_end(config)
  if end is not None and step > end:
    return phases.GENERATOR
  return phases.CONTRASTIVE


def generator_trained(config: ml_collections.ConfigDict, step: int) -> bool:
  """Whether the denoiser has been trained by the end of step `step`."""
  # The generator trains from step 1 ('joint') or only in the last stage ('frozen').
  return step >= 1 and phase_at(config, step).msd


def train_phase(config: ml_collections.ConfigDict, step: int) -> phases.Phase:
  """The compiled step that takes step `step`: `phase_at`'s stage, with a2v on the steps
  that also train the a2v denoiser (step % bidirectional_interval == 0)."""
  phase, k = phase_at(config, step), bidirectional.interval(config)
  if k and step % k == 0 and phase.msd:
    return phase.with_a2v()
  return phase


def a2v_trained(config: ml_collections.ConfigDict, step: int) -> bool:
  """Whether the a2v denoiser has taken an update by the end of step `step`."""
  k = bidirectional.interval(config)
  if not k or config.diffusion.training not in ('joint', 'frozen'):
    return False
  # Its first update: step k ('joint'), or the first multiple of k after the encoder stage.
  end = phases.encoder_stage_end(config)
  first = k if end is None else (end // k + 1) * k
  return step >= first


def make_optimizer(train_cfg: ml_collections.ConfigDict, num_steps: int,
                   lr_scale: float = 1.0) -> optax.GradientTransformation:
  """Adam (AdamW if weight_decay > 0), warmup + cosine decay over `num_steps` to a peak of
  learning_rate * lr_scale, clipping. The schedule counts this optimizer's updates, so a group
  trained only in a later phase starts its warmup when that phase starts."""
  peak = train_cfg.learning_rate * lr_scale
  if train_cfg.lr_schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=train_cfg.warmup_steps,
        decay_steps=max(train_cfg.decay_steps or num_steps, train_cfg.warmup_steps + 1),
        end_value=peak * train_cfg.end_lr_fraction)
  else:
    lr = optax.join_schedules([optax.linear_schedule(0.0, peak, max(train_cfg.warmup_steps, 1)),
                               optax.constant_schedule(peak)], [train_cfg.warmup_steps])
  if train_cfg.weight_decay > 0:
    opt = optax.adamw(lr, weight_decay=train_cfg.weight_decay)
  else:
    opt = optax.adam(lr)
  if train_cfg.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), opt)
  return opt


def make_optimizers(config: ml_collections.ConfigDict) -> dict:
  """{'encoders': tx, 'denoiser': tx} (and 'video_denoiser' with bidirectional training),
  each decaying over the steps that train its group."""
  total, end = config.train.num_steps, phases.encoder_stage_end(config)
  if end is not None:
    steps = {'encoders': end, 'denoiser': total - end}
  else:
    steps = {'encoders': total, 'denoiser': total}
  scale = {'encoders': config.train.encoder_lr_scale}
  txs = {k: make_optimizer(config.train, n, scale.get(k, 1.0)) for k, n in steps.items()}
  every = bidirectional.interval(config)
  if every:
    # One a2v update every `every` steps of the denoiser's phase: its warmup and decay are
    # counted in those updates, so they span the same steps as the denoiser's.
    a2v_train = config.train.copy_and_resolve_references()
    a2v_train.warmup_steps //= every
    if a2v_train.decay_steps:
      a2v_train.decay_steps = max(a2v_train.decay_steps // every, a2v_train.warmup_steps + 1)
    txs['video_denoiser'] = make_optimizer(a2v_train, max(steps['denoiser'] // every, 1))
  return txs


def num_mel_frames(config: ml_collections.ConfigDict) -> int:
  """Ta: log-mel frames of one clip (num_frames / fps seconds at the configured hop)."""
  d, a = config.data, config.audio
  return audio.num_audio_frames(media.clip_num_samples(d.num_frames, d.fps, a.sample_rate),
                                a.hop_length)


def dummy_inputs(config: ml_collections.ConfigDict, batch_size: int = 1):
  """Zero frames (B,T,H,W,3) uint8 and log-mel (B,Ta,F) of the configured sizes."""
  d, a = config.data, config.audio
  frames = jnp.zeros((batch_size, d.num_frames, d.image_size, d.image_size, 3), jnp.uint8)
  return frames, jnp.zeros((batch_size, num_mel_frames(config), a.n_mels))


def dummy_video_scales(config: ml_collections.ConfigDict, batch_size: int = 1) -> list:
  """Zero video scales [(B, T_l, g_l^2, D)] with the pyramid's shapes (to init the UNet)."""
  m = config.model
  return [jnp.zeros((batch_size, config.data.num_frames // p, g * g, m.embed_dim))
          for p, g in zip(m.scale_pools, m.scale_grids)]


def init_params(config: ml_collections.ConfigDict, models: Models, rng: jax.Array) -> dict:
  """Fresh params {group: params} of every group from `rng`."""
  enc_rng, den_rng = jax.random.split(rng)
  frames, mel = dummy_inputs(config)
  params = {
      'encoders': models.encoders.init(enc_rng, frames, mel)['params'],
      'denoiser': models.denoiser.init(den_rng, mel, jnp.zeros((1,), jnp.int32),
                                       dummy_video_scales(config),
                                       labels=msd.oracle_labels({'labels': jnp.zeros(
                                           (1, config.data.num_classes))}, config))['params'],
  }
  if models.video_denoiser is not None:
    # A key of its own (the split above is unchanged): the other groups start as without it.
    size = config.a2v.image_size
    low_res = jnp.zeros((1, config.data.num_frames, size, size, 3))
    audio_scales = [x[:, :, :1] for x in dummy_video_scales(config)]
    params['video_denoiser'] = models.video_denoiser.init(
        jax.random.fold_in(rng, 2), low_res, jnp.zeros((1,), jnp.int32),
        audio_scales)['params']
  return params


def init_state(config: ml_collections.ConfigDict, models: Models, txs: dict,
               rng: jax.Array) -> train_state.TrainState:
  """Fresh params of every group from `rng` (`init_params`) and their optimizer states."""
  params = init_params(config, models, rng)
  opt_state = {k: txs[k].init(params[k]) for k in params}
  step = jnp.zeros((), jnp.int32)
  if config.train.ema_decay > 0:
    return train_state.EmaTrainState(step=step, params=params, opt_state=opt_state,
                                     ema_params=jax.tree.map(jnp.copy, params))
  return train_state.TrainState(step=step, params=params, opt_state=opt_state)


def log_mel(batch: dict, config: ml_collections.ConfigDict) -> jax.Array:
  """Log-mel (B,Ta,F) of the batch's waveforms (B,S), computed on device."""
  return audio.log_mel_from_config(batch['waveform'], config.audio)


def normalise_mel(mel: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """Log-mel -> the denoiser's data space, about zero mean and unit scale."""
  return (mel - config.diffusion.mel_mean) / config.diffusion.mel_std


def denormalise_mel(x: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
  """The denoiser's data space -> log-mel (inverse of `normalise_mel`)."""
  return x * config.diffusion.mel_std + config.diffusion.mel_mean


# Folded into the step's key for the hue negatives: a stream apart from the others, so
# turning them on leaves every other draw of the step unchanged.
_HUE_STREAM = 0x68756573


def hue_negatives(enc: dict, frames: jax.Array, rng: jax.Array, *, models: Models,
                  config: ml_collections.ConfigDict) -> list[jax.Array] | None:
  """The video scales [(B,T_l,S_l,D)] of each clip's frames (B,T,H,W,3) with their hue
  turned (negatives.hue_rotate, loss.hue_negative_angles), L_MSA's same-timing negatives;
  None when loss.hue_negatives is off. The gradient flows through them into the video
  encoder, as through any negative of the contrastive loss."""
  if not config.loss.hue_negatives:
    return None
  turned, _ = negatives.hue_rotate(jax.random.fold_in(rng, _HUE_STREAM), frames,
                                   tuple(config.loss.hue_negative_angles))
  return models.encoders.apply(enc, turned, method=gmscavp.GMSCAVP.embed_video)


def loss_fn(params, batch: dict, rng: jax.Array, *, models: Models,
            config: ml_collections.ConfigDict, phase: phases.Phase,
            step: jax.Array | int = 0) -> tuple[jax.Array, dict]:
  """The phase's loss of one global batch (contrastive negatives span the whole batch) at
  training step `step` (the terms with a schedule read it)."""
  # A generator-stage batch may carry the frozen encoders' cached 'video_features'
  # (B,T,h,w,C, core/feature_cache.py) in place of its frames.
  chex.assert_rank(batch.get('frames', batch.get('video_features')), 5)
  chex.assert_rank(batch['waveform'], 2)
  mel = log_mel(batch, config)
  enc = {'params': params['encoders']}
  total, metrics = jnp.zeros((), jnp.float32), {}
  if phase.msa:
    out = models.encoders.apply(enc, batch['frames'], mel)
    weights = tuple(config.loss.scale_weights) or None
    msa, msa_metrics = contrastive.msa_loss(
        out['audio'], out['video'], out['temperature'],
        scale_weights=None if weights is None else jnp.asarray(weights, jnp.float32),
        adaptive_weights=config.loss.adaptive_weights,
        adaptive_temperature=config.loss.adaptive_temperature,
        adaptive_stop_gradient=config.loss.adaptive_stop_gradient,
        video_negatives=hue_negatives(enc, batch['frames'], rng, models=models, config=config))
    total += config.loss.msa_weight * msa
    metrics.update(msa_metrics)
    if config.loss.cross_time_weight > 0:
      l = config.loss.cross_time_scale
      cross, metrics['acc_cross_time'] = contrastive.cross_time_loss(
          out['audio'][l], out['video'][l], out['temperature'][l])
      metrics['loss/cross_time'] = cross
      # loss.cross_time_steps > 0: on only while the encoders choose what to keep.
      on = (step < config.loss.cross_time_steps) if config.loss.cross_time_steps else True
      total += jnp.where(on, config.loss.cross_time_weight, 0.0) * cross
    if config.loss.video_class_weight > 0:
      bce = optax.sigmoid_binary_cross_entropy(out['video_class_logits'], batch['labels'])
      metrics['loss/video_class'] = bce.mean()
      total += config.loss.video_class_weight * metrics['loss/video_class']
    video, features = out['video'], out['video_features']
  else:
    features = batch.get('video_features')
    if features is None:
      features = models.encoders.apply(enc, batch['frames'],
                                       method=gmscavp.GMSCAVP.video_features)
    video = models.encoders.apply(enc, features, method=gmscavp.GMSCAVP.video_scales)
  if phase.msd:
    if phase.stage == 'generator' or config.diffusion.stop_gradient:
      video = jax.lax.stop_gradient(video)
    negative = None
    # Static: weight 0 compiles no negative at all.
    if config.loss.cdiff_weight > 0:
      negative = msd.negative_video_scales(params['encoders'], features, rng, models=models,
                                       config=config)
    msd_value, msd_metrics = msd.msd_loss(
        params['denoiser'], video, normalise_mel(mel, config), rng, models=models,
        config=config, negative_scales=negative, labels=msd.oracle_labels(batch, config))
    total += config.loss.msd_weight * msd_value
    metrics.update({f'loss/{k}': v for k, v in msd_metrics.items()})
  if phase.a2v:
    # The joint stage has the audio scales already; the generator stage's encoders are frozen.
    aud = out['audio'] if phase.stage == 'joint' else models.encoders.apply(
        enc, mel, method=gmscavp.GMSCAVP.embed_audio)
    if phase.stage == 'generator' or config.a2v.stop_gradient:
      aud = jax.lax.stop_gradient(aud)
    n = config.a2v.batch_size or batch['frames'].shape[0]
    a2v, a2v_metrics = bidirectional.a2v_loss(
        params['video_denoiser'], [x[:n] for x in aud], batch['frames'][:n],
        jax.random.fold_in(rng, 1), denoiser=models.video_denoiser, config=config)
    total += config.a2v.loss_weight * a2v
    metrics.update({f'loss/{k}': v for k, v in a2v_metrics.items()})
  metrics['loss'] = total
  return total, metrics


def train_step(state: train_state.TrainState, batch: dict, rng: jax.Array, *, models: Models,
               txs: dict, config: ml_collections.ConfigDict, phase: phases.Phase,
               gather: Callable[[Any], Any] | None = None
               ) -> tuple[train_state.TrainState, dict]:
  """One update of the groups `phase` trains; returns the new state and scalar metrics.

  A step whose loss or gradient norm is not finite changes neither params nor optimizer
  state (metric train/skipped = 1). `gather` lays the params out for the forward pass
  (FSDP: all-gathered whole from their shards; None keeps them as they are).
  """
  step_rng = jax.random.fold_in(rng, state.step)
  trained = phase.groups
  params_in = state.params if gather is None else gather(state.params)

  def loss_of(trainable):
    return loss_fn({**params_in, **trainable}, batch, step_rng, models=models,
                   config=config, phase=phase, step=state.step)

  (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(
      {k: params_in[k] for k in trained})
  grad_norms = {k: optax.tree.norm(grads[k]) for k in trained}
  # One scalar decides: a non-finite gradient anywhere makes its global norm non-finite.
  finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(jnp.stack(list(grad_norms.values()))))
  keep = lambda new, old: jnp.where(finite, new, old)
  params, opt_state = dict(state.params), dict(state.opt_state)
  for k in trained:
    updates, new_opt = txs[k].update(grads[k], state.opt_state[k], state.params[k])
    new_params = optax.apply_updates(state.params[k], updates)
    params[k] = jax.tree.map(keep, new_params, state.params[k])
    opt_state[k] = jax.tree.map(keep, new_opt, state.opt_state[k])
    metrics[f'grad_norm/{k}'] = grad_norms[k]
    metrics[f'param_norm/{k}'] = optax.tree.norm(params[k])
  metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if state.ema_params is not None:
    new_state = new_state.replace(ema_params=ema.ema_step(
        state.ema_params, state.opt_state, params, phase, keep, config.train.ema_decay))
  return new_state, {f'train/{k}': v for k, v in metrics.items()}


def embed_step(params, batch: dict, *, models: Models,
               config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Retrieval embeddings (B,E) of a batch's videos and audios (DESIGN §3), unit norm."""
  enc = {'params': params['encoders']}
  video = models.encoders.apply(enc, batch['frames'], method=gmscavp.GMSCAVP.embed_video)
  aud = models.encoders.apply(enc, log_mel(batch, config), method=gmscavp.GMSCAVP.embed_audio)
  e = config.eval
  return tuple(pyramid.retrieval_embedding(x, e.retrieval_scale, e.retrieval_pooling)
               for x in (video, aud))
