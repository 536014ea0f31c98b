"""Gives one video a soundtrack with the MSD denoiser of a trained workdir (the library
side of the generate CLI; the demo and tests call it too).

The video is decoded (PyAV) to the config's frame rate, size and clip length; a longer video
uses the window starting at `start_seconds`. Writes NAME.wav (audio by the chosen vocoder:
the dataset's neural vocoder or Griffin-Lim, evaluators/vocoders.py),
NAME_spectrogram.png (generated beside the real log-mel, when the clip has audio) and
NAME.mp4 (the video with the generated soundtrack).
"""

from collections.abc import Callable
import os

from absl import logging
import jax
import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import guide_training
from gmscavp_jax.evaluators import metrics
from gmscavp_jax.evaluators import vocoders
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import plotting


def num_samples(config) -> int:
  """Audio samples (S) in one clip of the config's length."""
  return media.clip_num_samples(config.data.num_frames, config.data.fps,
                                config.audio.sample_rate)


def load_clip(config, *, video: str | None, test_index: int | None,
              start_seconds: float = 0.0) -> dict:
  """The clip to score: frames (T,H,W,3) uint8, waveform (S,) or None, onsets or None."""
  if video is not None:
    frames = media.read_video_clip(video, num_frames=config.data.num_frames, fps=config.data.fps,
                                   image_size=config.data.image_size,
                                   start_seconds=start_seconds)
    try:
      waveform = media.read_audio(video, sample_rate=config.audio.sample_rate,
                                  num_samples=num_samples(config), start_seconds=start_seconds)
    except media.MediaError as e:
      logging.info('no reference audio: %s', e)
      waveform = None
    name = os.path.splitext(os.path.basename(video))[0]
    return {'name': name, 'frames': frames, 'waveform': waveform, 'onsets': None}
  source = pipeline.make_source(config, 'test')
  if not 0 <= test_index < len(source):
    raise errors.ConfigError(
        f'--test_index={test_index}: expected a clip index in [0, {len(source)})')
  record = source[test_index]
  return {'name': f'test{test_index:05d}', 'frames': record['frames'],
          'waveform': record['waveform'],
          'onsets': (record['onsets'][:int(record['num_onsets'])]
                     if config.data.name == 'synthetic' else None)}  # Real clips: no truth.


class Soundtracker:
  """The MSD generator of a trained workdir, restored once; `write` gives clips soundtracks.

  The generate CLI makes one per call; the demo keeps one per server, so its compiled
  samplers are reused across requests. `vocoder` is --vocoder's value ('auto', 'neural' or
  'griffin_lim', see evaluators/vocoders.py); `evaluator_dir` the root it and the alignment
  guide are kept under.
  """

  def __init__(self, workdir: str | None, vocoder: str = 'auto',
               evaluator_dir: str | None = None, restored: state_lib.Restored | None = None):
    """Restores `workdir`'s generator, or runs `restored`'s params when given (workdir None:
    the clip breakdown's freshly initialised params, tools/clip_breakdown.py)."""
    self.workdir = workdir
    self.restored = restored or state_lib.restore_workdir(workdir,
                                                          restore=state_lib.restore_generator)
    self.config, self.mesh, self.models, self.params, self.step = self.restored
    self._generator = sampling.Generator(self.config, self.mesh, self.models)
    self._guide_params, self._evaluator_dir = None, evaluator_dir
    self.vocoder = vocoders.make(self.config, vocoder, evaluator_dir, self.mesh)

  def vocode(self, mel: np.ndarray, seed: int = 0) -> np.ndarray:
    """Waveforms (N, Ta * hop) float32 of log-mels (N,Ta,F) by this soundtracker's vocoder
    (`seed` draws Griffin-Lim's initial phases)."""
    return np.asarray(self.vocoder(mel, rng=jax.random.key(seed)))

  def _with_guide(self, sampler_args: dict) -> dict:
    """`sampler_args` plus the alignment guide's params when align_guidance > 0 (double
    guidance; the guide is trained on first use, then kept beside the evaluators)."""
    if not sampler_args.get('align_guidance'):
      return sampler_args
    if self._guide_params is None:
      self._guide_params = guide_training.load_or_train(self.config, self._evaluator_dir,
                                                        self.mesh)
    return {**sampler_args, 'guide_params': self._guide_params}

  def load_clip(self, *, video: str | None = None, test_index: int | None = None,
                start_seconds: float = 0.0) -> dict:
    """`load_clip` with this workdir's config."""
    return load_clip(self.config, video=video, test_index=test_index,
                     start_seconds=start_seconds)

  def generate_batch(self, frames: np.ndarray, *, seed: int = 0, **kwargs) -> np.ndarray:
    """Log-mels (N,Ta,F) for videos (N,T,H,W,3): `sampling.Generator.generate` with this
    workdir's params (kwargs: its known_mel/known_mask and sampler settings)."""
    return self._generator.generate(self.params, frames, seed=seed, **self._with_guide(kwargs))

  def write(self, clip: dict, output_dir: str, *, seed: int = 0,
            progress: Callable[[str], None] | None = None, **sampler_args) -> dict:
    """Generates a soundtrack for `clip` (`load_clip`'s dict) and writes its files.

    `sampler_args` are `sampling.Generator.generate`'s (None = the config's eval.*);
    `progress(stage)` is called as each stage starts. Returns {'wav', 'png', 'mp4'} (paths),
    'step', 'detected_onsets' (seconds) and, for a clip with true onsets, 'true_onsets' and
    'onset_hit@100ms' (percent).
    """
    report = progress or (lambda stage: None)
    report('sampling')
    mel = self._generator.generate(self.params, clip['frames'][None], seed=seed,
                                   **self._with_guide(sampler_args))
    report('vocoding')
    wave = self.vocode(mel, seed)[0]

    report('writing')
    return self.write_outputs(clip, mel, wave, output_dir)

  def write_outputs(self, clip: dict, mel: np.ndarray, wave: np.ndarray,
                    output_dir: str) -> dict:
    """`write`'s last stage: the files and onsets of `clip` given its generated log-mel mel
    (1,Ta,F) and waveform wave (S,)."""
    config = self.config
    os.makedirs(output_dir, exist_ok=True)
    base = os.path.join(output_dir, clip['name'])
    rate = generation.frame_rate(config)
    real = (None if clip['waveform'] is None
            else self._generator.real_log_mel(clip['waveform'][None]))
    onsets = None if clip['onsets'] is None else [clip['onsets']]
    plotting.spectrograms(mel, base + '_spectrogram.png',
                          f'{config.experiment} step {self.step}: {clip["name"]}', real=real,
                          frame_rate=rate, onsets=onsets)
    media_writing.write_wav(base + '.wav', wave, config.audio.sample_rate)
    media_writing.write_video(base + '.mp4', clip['frames'], config.data.fps, waveform=wave,
                              sample_rate=config.audio.sample_rate)
    out = {'wav': base + '.wav', 'png': base + '_spectrogram.png', 'mp4': base + '.mp4',
           'step': self.step, 'vocoder': self.vocoder.name,
           'detected_onsets': metrics.detect_onsets(mel[0], rate).tolist()}
    if clip['onsets'] is not None:
      out['true_onsets'] = np.asarray(clip['onsets']).tolist()
      out['onset_hit@100ms'] = metrics.onset_hit_rate(
          [np.asarray(out['detected_onsets'])], [clip['onsets']], 0.1)['hit_rate']
    return out


def generate(workdir: str, output_dir: str, *, video: str | None = None,
             test_index: int | None = None, start_seconds: float = 0.0, seed: int = 0,
             vocoder: str = 'auto', evaluator_dir: str | None = None, **sampler_args) -> dict:
  """Generates a soundtrack for one clip; returns `Soundtracker.write`'s paths and onsets."""
  # The clip first: a bad video is reported before the checkpoint is restored.
  clip = load_clip(config_io.load_config(workdir), video=video, test_index=test_index,
                   start_seconds=start_seconds)
  return Soundtracker(workdir, vocoder, evaluator_dir).write(clip, output_dir, seed=seed,
                                                            **sampler_args)
