"""Bidirectional diffusion (papers/002): the audio->video side, as pure functions.

The a2v denoiser (models/video_unet.py) generates a clip's T frames at a2v.image_size^2
conditioned on the audio scales of the shared audio encoder. It generates pixels, not video
features, so its output can be looked at and compared with the real frames: no decoder
exists from the pyramid's features back to pixels. With train.bidirectional_interval = k > 0,
every k-th step of the phases that train a generator also trains it (steps.train_phase);
k = 0 builds no a2v params and compiles no a2v code.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmscavp_jax.data import audio
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import objectives
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.diffusion import schedules
from gmscavp_jax.models import encoders
from gmscavp_jax.models import gmscavp

def interval(config: ml_collections.ConfigDict) -> int:
  """train.bidirectional_interval: every k-th step trains the a2v denoiser (0 = never)."""
  return int(config.train.bidirectional_interval)


def low_res_frames(frames: jax.Array, size: int) -> jax.Array:
  """Frames (B,T,H,W,3) uint8 (or float in [0,1]) -> (B,T,size,size,3) float32 in [-1, 1].

  Area averaging over (H/size) x (W/size) blocks, the exact downsampling (no aliasing of
  small moving objects); H and W must be multiples of `size`.
  """
  b, t, h, w, c = frames.shape
  if h % size or w % size:
    raise ValueError(f'frames of {h}x{w} do not divide into {size}x{size} blocks')
  x = encoders.frames_to_float(jnp.asarray(frames), jnp.float32)
  return x.reshape(b, t, size, h // size, size, w // size, c).mean(axis=(3, 5))


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Frames in [-1, 1] (clipped) -> uint8 [0, 255], same shape."""
  return np.round((np.clip(np.asarray(x, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(
      np.uint8)


def a2v_loss(params, audio_scales: list, frames: jax.Array, rng: jax.Array, *,
             denoiser: Any, config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """Eq. 7 for the a2v denoiser: frames (B,T,H,W,3) given audio scales [(B,T_l,1,D)].

  The same objective (diffusion.objective), schedule, prediction, terminal weight and
  condition dropout as the MSD loss. Metrics: a2v_loss, a2v_mse (and a2v_mse_terminal with
  the diffusion objective).
  """
  d = config.diffusion
  drop_rng, loss_rng = jax.random.split(rng)
  x0 = low_res_frames(frames, config.a2v.image_size)
  drop = jax.random.bernoulli(drop_rng, d.condition_dropout, (x0.shape[0],))

  def denoise(x_t, t):
    return denoiser.apply({'params': params}, x_t, t, audio_scales, drop_condition=drop)

  if d.objective == 'flow':
    loss, metrics = objectives.flow_loss(denoise, x0, loss_rng, num_timesteps=d.num_timesteps,
                                         t_sampling=d.flow_t_sampling)
  else:
    loss, metrics = objectives.diffusion_loss(
        denoise, x0, loss_rng, schedules.alpha_bar(d.schedule, d.num_timesteps),
        prediction=d.prediction, terminal_weight=d.terminal_weight)
  return loss, {k.replace('msd', 'a2v'): v for k, v in metrics.items()}


def sample_frames(params, waveform: jax.Array, rng: jax.Array, *, models: Any,
                  config: ml_collections.ConfigDict, sampler: str, num_steps: int,
                  guidance: float, eta: float = 0.0,
                  guidance_interval: tuple[float, ...] = ()) -> jax.Array:
  """Frames (B,T,s,s,3) in [-1, 1] generated for waveforms (B,S) by the a2v denoiser.

  `models` is a steps.Models with a video_denoiser; `params` holds its 'encoders' and
  'video_denoiser'. `sampler`, `num_steps` and `guidance` are static; predicted clean frames
  are clipped to the pixel range at every step (samplers.sample's clip_x0).
  """
  mel = audio.log_mel_from_config(waveform, config.audio)
  aud = models.encoders.apply({'params': params['encoders']}, mel,
                              method=gmscavp.GMSCAVP.embed_audio)

  def denoise(x, t, conditional):
    return models.video_denoiser.apply({'params': params['video_denoiser']}, x, t,
                                       aud if conditional else None)

  def denoise_masked(x, t, conditional):  # x: the batch stacked n times, one call.
    tiled = guidance_lib.tile_batch(aud, x.shape[0] // waveform.shape[0])
    return models.video_denoiser.apply({'params': params['video_denoiser']}, x, t, tiled,
                                       drop_condition=~conditional)

  size, d = config.a2v.image_size, config.diffusion
  noise_rng, sample_rng = jax.random.split(rng)
  x_T = jax.random.normal(noise_rng, (waveform.shape[0], config.data.num_frames, size, size, 3))
  return samplers.sample_objective(guidance_lib.BatchedDenoiser(denoise, denoise_masked), x_T,
                                   sample_rng,
                                   schedules.alpha_bar(d.schedule, d.num_timesteps),
                                   objective=d.objective, sampler=sampler, num_steps=num_steps,
                                   prediction=d.prediction, guidance_scale=guidance, eta=eta,
                                   clip_x0=1.0, guidance_interval=guidance_interval)
