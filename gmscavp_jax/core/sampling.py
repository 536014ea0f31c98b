"""Sampling from the trained denoisers: the sampling step (`sample_step`: the video encoded once,
then every sampler step), one compiled program per sampler setting, mapped over host inputs in
chunks laid out on the mesh.

`Generator` (the MSD video->audio path) is what evaluators, commands and the demo compose;
`FrameGenerator` is its audio->video counterpart for bidirectional runs. Both sample with the
params they are given: a trained state's are `train_state.inference_params` (the weights'
EMA with train.ema_decay > 0), which `state.restore_params` restores.
"""

import functools
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmscavp_jax.core import bidirectional
from gmscavp_jax.core import msd
from gmscavp_jax.core import steps
from gmscavp_jax.data import audio
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding
from gmscavp_jax.models import gmscavp


def sample_step(params, inputs: dict, rng: jax.Array, *, models: steps.Models,
                config: ml_collections.ConfigDict, sampler: str, num_steps: int,
                guidance: float, eta: float = 0.0, align_guidance: float = 0.0,
                guidance_interval: tuple[float, ...] = ()) -> jax.Array:
  """Log-mels (B,Ta,F) generated for videos inputs['frames'] (B,T,H,W,3) by the MSD
  denoiser (inputs['labels'] (B,K) too for the label oracle, see `msd.oracle_labels`): the
  video encoded once (`encode_video`), then every sampler step on its scales
  (`sample_from_video`).

  With inputs['known_mel'] (B,Ta,F) log-mel and inputs['known_mask'] (B,Ta) in [0, 1], the
  mel frames where the mask is 1 are inpainted: kept as given, the rest generated knowing
  them (samplers.Known); a long video's windows continue each other this way.
  align_guidance > 0 adds double guidance: the gradient of the alignment guide's
  (`steps.build_guide`, params['guide']) log-probability that x_t is aligned with the video,
  times align_guidance.
  `sampler`, `num_steps`, `guidance` and `guidance_interval` are static (one compiled program
  per setting); guidance 1 runs the conditional model alone, other guidance both halves in one
  UNet call (outside `guidance_interval`, the conditional model alone).
  """
  video = encode_video(params, inputs['frames'], models=models)
  return sample_from_video(params, video, inputs, rng, models=models, config=config,
                           sampler=sampler, num_steps=num_steps, guidance=guidance, eta=eta,
                           align_guidance=align_guidance, guidance_interval=guidance_interval)


def encode_video(params, frames: jax.Array, *, models: steps.Models) -> list[jax.Array]:
  """The video scales [(B,T_l,S_l,D)] of frames (B,T,H,W,3) uint8 (encoder and pyramid)."""
  chex.assert_rank(frames, 5)
  return models.encoders.apply({'params': params['encoders']}, frames,
                               method=gmscavp.GMSCAVP.embed_video)


def sample_from_video(params, video: list[jax.Array], inputs: dict, rng: jax.Array, *,
                      models: steps.Models, config: ml_collections.ConfigDict, sampler: str,
                      num_steps: int, guidance: float, eta: float = 0.0,
                      align_guidance: float = 0.0,
                      guidance_interval: tuple[float, ...] = ()) -> jax.Array:
  """`sample_step` given the video scales [(B,T_l,S_l,D)] of inputs['frames']: all steps."""
  frames, labels = inputs['frames'], msd.oracle_labels(inputs, config)

  def denoise(x, t, conditional):
    return models.denoiser.apply({'params': params['denoiser']}, x, t,
                                 video if conditional else None, labels=labels)

  def denoise_masked(x, t, conditional):  # x: the batch stacked n times, one UNet call.
    tiled_video, tiled_labels = guidance_lib.tile_batch((video, labels),
                                                        x.shape[0] // frames.shape[0])
    return models.denoiser.apply({'params': params['denoiser']}, x, t, tiled_video,
                                 drop_condition=~conditional, labels=tiled_labels)

  noise_rng, sample_rng = jax.random.split(rng)
  x_T = jax.random.normal(noise_rng, (frames.shape[0], steps.num_mel_frames(config),
                                      config.audio.n_mels))
  known = None
  if 'known_mel' in inputs:
    chex.assert_equal_shape([inputs['known_mel'], x_T])
    chex.assert_shape(inputs['known_mask'], x_T.shape[:2])
    known = samplers.Known(steps.normalise_mel(inputs['known_mel'], config),
                           jnp.broadcast_to(inputs['known_mask'][..., None], x_T.shape))
  gradient_guide = None
  if align_guidance:
    guide = steps.build_guide(config)

    def log_aligned(x, t):
      logits = guide.apply({'params': params['guide']}, frames, x, t)
      return jnp.sum(jax.nn.log_sigmoid(logits))

    gradient_guide = lambda x, t: align_guidance * jax.grad(log_aligned)(x, t)
  x0 = samplers.sample_objective(guidance_lib.BatchedDenoiser(denoise, denoise_masked), x_T,
                                 sample_rng, msd.alpha_bar(config),
                                 objective=config.diffusion.objective, sampler=sampler,
                                 num_steps=num_steps, prediction=config.diffusion.prediction,
                                 guidance_scale=guidance, eta=eta, known=known,
                                 gradient_guide=gradient_guide,
                                 guidance_interval=guidance_interval)
  return steps.denormalise_mel(x0, config)


def sampler_settings(eval_cfg: ml_collections.ConfigDict, sampler: str | None = None,
                     num_steps: int | None = None, guidance: float | None = None,
                     eta: float | None = None,
                     guidance_interval: tuple[float, ...] | None = None) -> dict:
  """{'sampler', 'num_steps', 'guidance', 'eta', 'guidance_interval'}, each None replaced by
  its eval.* default (the interval as a tuple, () for every step)."""
  interval = eval_cfg.guidance_interval if guidance_interval is None else guidance_interval
  return {'sampler': sampler or eval_cfg.sampler,
          'num_steps': num_steps or eval_cfg.sample_steps,
          'guidance': eval_cfg.guidance if guidance is None else guidance,
          'eta': eval_cfg.eta if eta is None else eta,
          'guidance_interval': guidance_lib.check_guidance_interval(interval)}


def jit_sampler(sample_fn, mesh: Mesh, **static):
  """sample_fn(params, inputs, rng, **static) jitted for `mesh`: inputs split over the batch
  axes, output replicated, params in the layout they come with (replicated, or the
  trainer's FSDP shards)."""
  repl = sharding.replicated(mesh)
  return jax.jit(functools.partial(sample_fn, **static),
                 in_shardings=(None, sharding.batch_sharded(mesh), repl), out_shardings=repl)


class ChunkedSampler:
  """A jitted sampler (see `jit_sampler`) mapped over host inputs in chunks.

  Chunks hold max_chunk rows (fewer, rounded up to the device count, when N is smaller), are
  split over the mesh's batch axes, and the last is padded by repeating its last row, so every
  chunk reuses one program, compiled ahead of time per chunk shape: sampling time is then
  measured apart from compiling.
  """

  def __init__(self, jitted, mesh: Mesh):
    self._jitted, self._mesh, self._executables = jitted, mesh, {}

  def __call__(self, params, inputs, max_chunk: int, seed: int) -> tuple[np.ndarray, dict]:
    """Outputs for `inputs` (an array (N, ...) or a dict of them) concatenated back to
    (N, ...) numpy, chunk i sampled with fold_in(key(seed), i); and {'compile_seconds' (0 when
    compiled before), 'seconds' (sampling every chunk, without compiling)}."""
    n, ndev = len(jax.tree.leaves(inputs)[0]), self._mesh.size
    chunk = min(max_chunk, -(-n // ndev) * ndev)
    out, timing = [], {'compile_seconds': 0.0, 'seconds': 0.0}
    for i, start in enumerate(range(0, n, chunk)):
      part = jax.tree.map(lambda a, s=start: a[s:s + chunk], inputs)
      batch = jax.tree.map(lambda a: sharding.padded_host_batch(self._mesh, a, chunk), part)
      rng = jax.random.fold_in(jax.random.key(seed), i)
      shape = tuple((a.shape, a.dtype) for a in jax.tree.leaves(batch))
      if shape not in self._executables:
        t0 = time.perf_counter()
        self._executables[shape] = self._jitted.lower(params, batch, rng).compile()
        timing['compile_seconds'] += time.perf_counter() - t0
      t0 = time.perf_counter()
      out.append(np.asarray(self._executables[shape](params, batch, rng))[:min(chunk, n - start)])
      timing['seconds'] += time.perf_counter() - t0
    return np.concatenate(out), timing


class Generator:
  """The MSD denoiser's video->audio sampling: log-mels for videos, on `mesh`.

  One compiled `sample_step` per (sampler, num_steps, guidance, eta) setting, kept for
  the Generator's life (the demo reuses them across requests); videos go in chunks of
  eval.batch_size laid out on the mesh (see `ChunkedSampler`).
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, models: steps.Models):
    self._config, self._mesh, self._models = config, mesh, models
    self._compiled = {}
    self._log_mel = jax.jit(functools.partial(audio.log_mel_from_config,
                                              audio_cfg=config.audio))

  def _sampler(self, settings: dict) -> ChunkedSampler:
    """The sampling program of `settings` (one per setting, compiled per chunk shape)."""
    key = tuple(sorted(settings.items()))
    if key not in self._compiled:
      self._compiled[key] = ChunkedSampler(jit_sampler(
          sample_step, self._mesh, models=self._models, config=self._config,
          **settings), self._mesh)
    return self._compiled[key]

  def generate(self, params, frames: np.ndarray, **kwargs) -> np.ndarray:
    """Log-mels (N,Ta,F) generated for videos (N,T,H,W,3); see `generate_timed`."""
    return self.generate_timed(params, frames, **kwargs)[0]

  def generate_timed(self, params, frames: np.ndarray, *, labels: np.ndarray | None = None,
                     known_mel: np.ndarray | None = None,
                     known_mask: np.ndarray | None = None, sampler: str | None = None,
                     num_steps: int | None = None, guidance: float | None = None,
                     eta: float | None = None, seed: int = 0, align_guidance: float = 0.0,
                     guide_params=None,
                     guidance_interval: tuple[float, ...] | None = None
                     ) -> tuple[np.ndarray, dict]:
    """Log-mels (N,Ta,F) generated for videos (N,T,H,W,3); None = the eval.* defaults.

    `labels` (N,K), the clips' true classes, are what the label oracle (unet.label_condition)
    conditions on besides the video; a run without the oracle ignores them. `known_mel`
    (N,Ta,F) log-mel with `known_mask` (N,Ta) in [0, 1] inpaints: the mel frames where the
    mask is 1 come out as given (see `sample_step`). `align_guidance` > 0 adds double
    guidance with the alignment guide's params `guide_params` (evaluators/guide_training.py).

    Videos go in chunks of eval.batch_size (fewer, rounded up to the device count, when N is
    smaller), the last chunk padded, so every chunk reuses one compiled program. Also returns
    {'compile_seconds': compiling that program (0 if it was already), 'seconds': sampling
    every chunk, without the compile}.
    """
    e = self._config.eval
    settings = sampler_settings(e, sampler, num_steps, guidance, eta, guidance_interval)
    if align_guidance:
      if guide_params is None:
        raise ValueError('align_guidance > 0 needs the alignment guide\'s params')
      settings['align_guidance'] = float(align_guidance)
      params = {**params, 'guide': guide_params}
    sample = self._sampler(settings)
    inputs = {'frames': frames}
    if (known_mel is None) != (known_mask is None):
      raise ValueError('known_mel and known_mask go together')
    if known_mel is not None:
      inputs['known_mel'] = np.asarray(known_mel, np.float32)
      inputs['known_mask'] = np.asarray(known_mask, np.float32)
    if self._config.unet.label_condition:
      if labels is None:
        raise errors.ConfigError(
            'unet.label_condition=True is a diagnostic oracle that conditions on each clip\'s '
            'true classes; this video has none (train without it to generate for new videos)')
      inputs['labels'] = np.asarray(labels, np.float32)
    return sample(params, inputs, e.batch_size, seed)

  def real_log_mel(self, waveform: np.ndarray) -> np.ndarray:
    """Log-mels (N,Ta,F) of waveforms (N,S): what the generated ones are compared with."""
    return np.asarray(self._log_mel(waveform))


class FrameGenerator:
  """The a2v denoiser's audio->video sampling (bidirectional runs): low-resolution frames
  for waveforms, on `mesh`, one compiled program per setting as in `Generator`."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, models: steps.Models):
    self._config, self._mesh, self._models = config, mesh, models
    self._compiled = {}

  def generate(self, params, waveform: np.ndarray, *, sampler: str | None = None,
               num_steps: int | None = None, guidance: float | None = None,
               eta: float | None = None, seed: int = 0,
               guidance_interval: tuple[float, ...] | None = None) -> np.ndarray:
    """Frames (N,T,s,s,3) uint8 generated for waveforms (N,S); None = eval.* defaults,
    a2v.guidance and guidance at every step (eval.guidance_interval was measured for the
    audio denoiser only)."""
    c = self._config
    guidance = c.a2v.guidance if guidance is None else guidance
    guidance_interval = () if guidance_interval is None else guidance_interval
    settings = sampler_settings(c.eval, sampler, num_steps, guidance, eta, guidance_interval)
    key = tuple(sorted(settings.items()))
    if key not in self._compiled:
      self._compiled[key] = ChunkedSampler(jit_sampler(
          bidirectional.sample_frames, self._mesh, models=self._models, config=c, **settings),
          self._mesh)
    frames, _ = self._compiled[key](params, np.asarray(waveform, np.float32),
                                    c.eval.batch_size, seed)
    return bidirectional.to_uint8(frames)

  def real_frames(self, frames: np.ndarray) -> np.ndarray:
    """Real frames (N,T,H,W,3) downsampled as the a2v denoiser sees them: (N,T,s,s,3) uint8."""
    return bidirectional.to_uint8(
        bidirectional.low_res_frames(frames, self._config.a2v.image_size))
