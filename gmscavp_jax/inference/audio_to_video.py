"""Gives a sound moving pictures with the a2v denoiser of a trained workdir (the library side
of `generate --direction=a2v`; bidirectional diffusion).

The audio comes from a test clip, a video's audio track or an audio file (WAV or anything
PyAV decodes), resampled to the config's rate and cut to the clip length from
`start_seconds`. Writes NAME_frames.mp4 (the generated low-resolution frames, upscaled for
viewing, beside the real ones when they are known, with the audio as soundtrack) and
NAME_strip.png (generated frames above the real ones, sound onsets marked when known).
"""

import os

import numpy as np

from gmscavp_jax.core import bidirectional
from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from gmscavp_jax.evaluators import a2v_generation
from gmscavp_jax.inference import video_to_audio
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import plotting

# The mp4 is upscaled (nearest neighbour) to at least this height, so players show pixels.
VIEW_SIZE = 128


def load_audio_clip(config, *, audio: str | None, video: str | None, test_index: int | None,
                    start_seconds: float = 0.0) -> dict:
  """The clip to animate: name, waveform (S,), frames (T,H,W,3) or None, onsets or None."""
  if audio is None:
    clip = video_to_audio.load_clip(config, video=video, test_index=test_index,
                                    start_seconds=start_seconds)
    if clip['waveform'] is None:
      raise media.MediaError(video, 'has no audio track to generate frames from')
    return clip
  waveform = media.read_audio(audio, sample_rate=config.audio.sample_rate,
                              num_samples=video_to_audio.num_samples(config),
                              start_seconds=start_seconds)
  return {'name': os.path.splitext(os.path.basename(audio))[0], 'frames': None,
          'waveform': waveform, 'onsets': None}


def check_bidirectional(config, workdir: str) -> None:
  """A ConfigError unless the run in `workdir` trains an a2v denoiser (before any restore)."""
  if not bidirectional.interval(config):
    raise errors.ConfigError(
        f'config.train.bidirectional_interval=0 in {workdir}: the run trained no '
        'audio->video denoiser; expected a run trained with '
        '--config.train.bidirectional_interval=K (K > 0) for --direction=a2v')


def restore_a2v(workdir: str, config, mesh):
  """(models, params, step) of `workdir`; a ConfigError if it has no trained a2v denoiser."""
  check_bidirectional(config, workdir)
  models, params, step = state_lib.restore_params(workdir, config, mesh)
  if not steps.a2v_trained(config, step):
    raise errors.ConfigError(
        f'config.train.bidirectional_interval={bidirectional.interval(config)}: the '
        f'checkpoint at step {step} in {workdir} has no trained a2v denoiser yet')
  return models, params, step


def upscale(frames: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
  """(T,h,w,3) -> (T,h*f,w*f,3) by pixel repetition, f the smallest factor reaching `size`."""
  factor = max(1, -(-size // frames.shape[1]))
  return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def generate(workdir: str, output_dir: str, *, audio: str | None = None,
             video: str | None = None, test_index: int | None = None,
             start_seconds: float = 0.0, seed: int = 0, **sampler_args) -> dict:
  """Generates frames for one clip's audio; returns the written paths and scores.

  Exactly one of `audio`, `video` and `test_index` names the clip. Sampler arguments as for
  video_to_audio.generate (None: eval.* and a2v.guidance).
  """
  config = config_io.load_config(workdir)
  check_bidirectional(config, workdir)  # Before reading media or checkpoints.
  clip = load_audio_clip(config, audio=audio, video=video, test_index=test_index,
                         start_seconds=start_seconds)
  _, mesh, models, params, step = state_lib.restore_workdir(workdir, config, restore_a2v)
  generator = sampling.FrameGenerator(config, mesh, models)
  generated = generator.generate(params, clip['waveform'][None], seed=seed, **sampler_args)
  real = None if clip['frames'] is None else generator.real_frames(clip['frames'][None])

  os.makedirs(output_dir, exist_ok=True)
  base = os.path.join(output_dir, clip['name'])
  view = upscale(generated[0])
  if real is not None:  # Generated | real, with a white bar between them.
    bar = np.full(view.shape[:2] + (max(2, view.shape[2] // 32), 3), 255, np.uint8)
    view = np.concatenate([view, bar, upscale(real[0])], axis=2)
  media_writing.write_video(base + '_frames.mp4', view, config.data.fps,
                            waveform=clip['waveform'], sample_rate=config.audio.sample_rate)
  onsets = None if clip['onsets'] is None else [clip['onsets']]
  plotting.frame_strip(generated, base + '_strip.png',
                       f'{config.experiment} step {step}: frames for the audio of '
                       f'{clip["name"]}',
                       real=real, fps=config.data.fps, onsets=onsets)
  out = {'mp4': base + '_frames.mp4', 'png': base + '_strip.png', 'step': step,
         'image_size': config.a2v.image_size}
  if real is not None:
    scores = a2v_generation.frame_scores(generated, real, onsets, config)
    out.update(psnr=scores['gen_a2v/psnr'], mse=scores['gen_a2v/mse'])
  return out
