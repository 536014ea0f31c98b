"""Gives one video a soundtrack with the MSD denoiser of a trained workdir (the library
side of the generate CLI; the demo and tests call it too).

The video is decoded (PyAV) to the config's frame rate, size and clip length; a longer video
uses the window starting at `start_seconds`. Writes NAME.wav (Griffin-Lim audio),
NAME_spectrogram.png (generated beside the real log-mel, when the clip has audio) and
NAME.mp4 (the video with the generated soundtrack).
"""

import os

from absl import logging
import jax
import numpy as np

from gmscavp_jax import config_validation
from gmscavp_jax import plotting
from gmscavp_jax import sharding
from gmscavp_jax import train
from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.data import vocoder
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import metrics


def load_clip(config, *, video: str | None, test_index: int | None,
              start_seconds: float = 0.0) -> dict:
  """The clip to score: frames (T,H,W,3) uint8, waveform (S,) or None, onsets or None."""
  if video is not None:
    frames = media.read_video_clip(video, num_frames=config.data.num_frames, fps=config.data.fps,
                                   image_size=config.data.image_size,
                                   start_seconds=start_seconds)
    num_samples = round(config.data.num_frames / config.data.fps * config.audio.sample_rate)
    try:
      waveform = media.read_audio(video, sample_rate=config.audio.sample_rate,
                                  num_samples=num_samples, start_seconds=start_seconds)
    except media.MediaError as e:
      logging.info('no reference audio: %s', e)
      waveform = None
    name = os.path.splitext(os.path.basename(video))[0]
    return {'name': name, 'frames': frames, 'waveform': waveform, 'onsets': None}
  source = pipeline.make_source(config, 'test')
  if not 0 <= test_index < len(source):
    raise config_validation.ConfigError(
        f'--test_index={test_index}: expected a clip index in [0, {len(source)})')
  record = source[test_index]
  return {'name': f'test{test_index:05d}', 'frames': record['frames'],
          'waveform': record['waveform'],
          'onsets': (record['onsets'][:int(record['num_onsets'])]
                     if config.data.name == 'synthetic' else None)}  # Real clips: no truth.


def generate(workdir: str, output_dir: str, *, video: str | None = None,
             test_index: int | None = None, start_seconds: float = 0.0, seed: int = 0,
             **sampler_args) -> dict:
  """Generates a soundtrack for one clip; returns the written paths and onset counts."""
  config = train.load_config(workdir)
  clip = load_clip(config, video=video, test_index=test_index, start_seconds=start_seconds)
  mesh = sharding.mesh_from_config(config)
  models, params, step = train.restore_generator(workdir, config, mesh)
  evaluator = generation.GenerationEvaluator(config, mesh, models)
  mel = evaluator.generate(params, clip['frames'][None], seed=seed, **sampler_args)
  wave = np.asarray(vocoder.griffin_lim_from_config(
      mel, config.audio, num_iters=config.eval.griffin_lim_iters,
      rng=jax.random.key(seed)))[0]

  os.makedirs(output_dir, exist_ok=True)
  base = os.path.join(output_dir, clip['name'])
  rate = generation.frame_rate(config)
  real = None if clip['waveform'] is None else evaluator.real_log_mel(clip['waveform'][None])
  onsets = None if clip['onsets'] is None else [clip['onsets']]
  plotting.spectrograms(mel, base + '_spectrogram.png',
                        f'{config.experiment} step {step}: {clip["name"]}', real=real,
                        frame_rate=rate, onsets=onsets)
  media_writing.write_wav(base + '.wav', wave, config.audio.sample_rate)
  media_writing.write_video(base + '.mp4', clip['frames'], config.data.fps, waveform=wave,
                    sample_rate=config.audio.sample_rate)
  out = {'wav': base + '.wav', 'png': base + '_spectrogram.png', 'mp4': base + '.mp4',
         'step': step, 'detected_onsets': metrics.detect_onsets(mel[0], rate).tolist()}
  if clip['onsets'] is not None:
    out['true_onsets'] = np.asarray(clip['onsets']).tolist()
    out['onset_hit@100ms'] = metrics.onset_hit_rate(
        [np.asarray(out['detected_onsets'])], [clip['onsets']], 0.1)['hit_rate']
  return out
