"""Checks the neural vocoder's config fields (vocoder.*), read only where it is trained or
loaded: a training run never needs them (core/config_validation.py checks the rest)."""

import ml_collections

from gmscavp_jax.core import config_checks
from gmscavp_jax.data import audio
from gmscavp_jax.data import media


def validate_vocoder(config: ml_collections.ConfigDict) -> None:
  """The neural vocoder's fields (read only where it is trained or loaded)."""
  require, v, a = config_checks.require, config.vocoder, config.audio
  for field in ('width', 'num_blocks', 'num_steps', 'num_check_clips'):
    require(v[field] > 0, f'vocoder.{field}', 'a positive integer', v[field])
  for field in ('disc_channels', 'periods'):
    require(len(v[field]) >= 1 and all(k > 0 for k in v[field]), f'vocoder.{field}',
            'a non-empty tuple of positive integers', v[field])
  for field in ('num_scales', 'projections', 'inference_projections'):
    require(v[field] >= 0, f'vocoder.{field}', 'an integer >= 0', v[field])
  d = config.data
  num_frames = audio.num_audio_frames(media.clip_num_samples(d.num_frames, d.fps, a.sample_rate),
                                      a.hop_length)
  require(2 <= v.segment_frames <= num_frames, 'vocoder.segment_frames',
          f'in [2, {num_frames}] (log-mel frames of a clip)', v.segment_frames)
  require(v.batch_size >= 1, 'vocoder.batch_size', 'a positive integer', v.batch_size)
  require(0 <= v.gan_start_step <= v.num_steps, 'vocoder.gan_start_step',
          f'in [0, vocoder.num_steps={v.num_steps}]', v.gan_start_step)
  require(v.learning_rate > 0, 'vocoder.learning_rate', 'a positive rate', v.learning_rate)
  for field in ('mel_weight', 'feature_weight', 'stft_weight'):
    require(v[field] >= 0, f'vocoder.{field}', 'a weight >= 0', v[field])
  require(all(len(s) == 2 and 0 < s[1] <= s[0] for s in v.stft_sizes), 'vocoder.stft_sizes',
          '(n_fft, hop) pairs with 0 < hop <= n_fft', v.stft_sizes)
  require(v.num_check_clips <= config.eval.num_test_clips, 'vocoder.num_check_clips',
          f'at most eval.num_test_clips={config.eval.num_test_clips}', v.num_check_clips)
