"""Pure steps: train state, optimizer, loss, train step and embedding step.

Everything here is a function of arrays and config; `train.py` jits these with shardings.
"""

import functools
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gmscavp_jax.data import audio
from gmscavp_jax.losses import contrastive
from gmscavp_jax.models import gmscavp
from gmscavp_jax.models import pyramid


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds of the model: step, params and optimizer state."""
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam (AdamW if weight_decay > 0) with warmup + cosine decay and global-norm clipping."""
  if train_cfg.lr_schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_cfg.learning_rate,
        warmup_steps=train_cfg.warmup_steps,
        decay_steps=train_cfg.decay_steps or train_cfg.num_steps,
        end_value=train_cfg.learning_rate * train_cfg.end_lr_fraction)
  else:
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, train_cfg.learning_rate, max(train_cfg.warmup_steps, 1)),
         optax.constant_schedule(train_cfg.learning_rate)], [train_cfg.warmup_steps])
  if train_cfg.weight_decay > 0:
    opt = optax.adamw(lr, weight_decay=train_cfg.weight_decay)
  else:
    opt = optax.adam(lr)
  if train_cfg.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), opt)
  return opt


def dummy_inputs(config: ml_collections.ConfigDict, batch_size: int = 1):
  """Zero frames (B,T,H,W,3) uint8 and log-mel (B,Ta,F) of the configured sizes."""
  d, a = config.data, config.audio
  num_samples = round(d.num_frames / d.fps * a.sample_rate)
  frames = jnp.zeros((batch_size, d.num_frames, d.image_size, d.image_size, 3), jnp.uint8)
  log_mel = jnp.zeros((batch_size, audio.num_audio_frames(num_samples, a.hop_length), a.n_mels))
  return frames, log_mel


def init_state(config: ml_collections.ConfigDict, model: gmscavp.GMSCAVP,
               tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Fresh params from `rng` and the optimizer state for them (step 0)."""
  params = model.init(rng, *dummy_inputs(config))['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def log_mel(batch: dict, config: ml_collections.ConfigDict) -> jax.Array:
  """Log-mel (B,Ta,F) of the batch's waveforms (B,S), computed on device."""
  return audio.log_mel_from_config(batch['waveform'], config.audio)


def loss_fn(params, batch: dict, rng: jax.Array, *, model: gmscavp.GMSCAVP,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """L_MSA of one global batch (negatives span the whole batch, on every device)."""
  del rng  # MSA is deterministic; the generative losses of later issues draw from it.
  chex.assert_rank(batch['frames'], 5)
  chex.assert_rank(batch['waveform'], 2)
  out = model.apply({'params': params}, batch['frames'], log_mel(batch, config))
  weights = tuple(config.loss.scale_weights) or None
  loss, metrics = contrastive.msa_loss(
      out['audio'], out['video'], out['temperature'],
      scale_weights=None if weights is None else jnp.asarray(weights, jnp.float32),
      adaptive_weights=config.loss.adaptive_weights,
      adaptive_temperature=config.loss.adaptive_temperature,
      adaptive_stop_gradient=config.loss.adaptive_stop_gradient)
  return loss, {'loss': loss, **metrics}


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: gmscavp.GMSCAVP,
               tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch; returns the new state and scalar metrics."""
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, config=config),
                               has_aux=True)
  (_, metrics), grads = grad_fn(state.params, batch, step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['grad_norm'] = optax.tree.norm(grads)
  metrics['param_norm'] = optax.tree.norm(params)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {f'train/{k}': v for k, v in metrics.items()}


def embed_step(params, batch: dict, *, model: gmscavp.GMSCAVP,
               config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Retrieval embeddings (B,E) of a batch's videos and audios (DESIGN §3), unit norm."""
  video = model.apply({'params': params}, batch['frames'], method=gmscavp.GMSCAVP.embed_video)
  aud = model.apply({'params': params}, log_mel(batch, config),
                    method=gmscavp.GMSCAVP.embed_audio)
  scale = config.eval.retrieval_scale
  return (pyramid.retrieval_embedding(video, scale), pyramid.retrieval_embedding(aud, scale))
