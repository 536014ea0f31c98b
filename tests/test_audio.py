"""Tests of the JAX log-mel front end against librosa (the test oracle, DESIGN §2-3)."""

import jax
import librosa
import numpy as np
import pytest

from configs import common
from gmscavp_jax.data import audio
from gmscavp_jax.data import synthetic

SR = 8000
PARAMS = dict(sample_rate=SR, n_fft=400, win_length=400, hop_length=200, n_mels=128,
              fmin=0.0, fmax=4000.0, log_floor=1e-5)


def _librosa_log_mel(y, *, sample_rate, n_fft, win_length, hop_length, n_mels, fmin, fmax,
                     log_floor):
  """librosa's log-mel of (S,) float64 `y`, (Ta, F), minus the last centred frame."""
  mel = librosa.feature.melspectrogram(
      y=np.asarray(y, np.float64), sr=sample_rate, n_fft=n_fft, hop_length=hop_length,
      win_length=win_length, window='hann', center=True, pad_mode='constant', power=2.0,
      n_mels=n_mels, fmin=fmin, fmax=fmax)
  return np.log(np.maximum(mel, log_floor)).T[:len(y) // hop_length]


def _synthetic_waveform(index=0):
  source = synthetic.SyntheticAVSource(split='test', num_clips=4, seed=0, num_frames=16,
                                       fps=8.0, image_size=16, sample_rate=SR)
  return source[index]['waveform']


def _sine_plus_noise(seed=1):
  t = np.arange(2 * SR) / SR
  rng = np.random.default_rng(seed)
  return (0.9 * np.sin(2 * np.pi * 440.0 * t) + 0.01 * rng.standard_normal(t.size)).astype(
      np.float32)


def test_mel_filterbank_matches_librosa():
  ours = audio.mel_filterbank(SR, 400, 128, 0.0, 4000.0)
  ref = librosa.filters.mel(sr=SR, n_fft=400, n_mels=128, fmin=0.0, fmax=4000.0).T
  assert ours.shape == (201, 128) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize('index', [0, 1, 2])
def test_log_mel_matches_librosa_float32_on_synthetic_clips(index):
  # float32 is enough on the benchmark's clips: measured max |diff| <= 4.2e-5 over 20 clips.
  y = _synthetic_waveform(index)
  ours = np.asarray(audio.log_mel_spectrogram(y, **PARAMS))
  ref = _librosa_log_mel(y, **PARAMS)
  assert ours.shape == ref.shape == (80, 128)
  assert np.abs(ours - ref).max() <= 1e-4


def test_log_mel_matches_librosa_x64_on_sine_plus_noise():
  # A loud pure tone over weak noise is the hard case: XLA's float32 FFT leaks about
  # 1e-7 x the peak into every bin, and bins just above the floor then differ by up to
  # ~2.3e-4 in log (librosa's numpy FFT is float64-accurate). float32 cannot meet 1e-4
  # here, so this check runs under x64, where the same code computes in float64.
  y = _sine_plus_noise()
  with jax.enable_x64(True):
    ours = audio.log_mel_spectrogram(y.astype(np.float64), **PARAMS)
    assert ours.dtype == np.float64
    ours = np.asarray(ours)
  ref = _librosa_log_mel(y, **PARAMS)
  assert np.abs(ours - ref).max() <= 1e-4


def test_log_mel_float32_error_on_sine_plus_noise_is_bounded():
  # The float32 figure the comment above gives, kept honest.
  y = _sine_plus_noise()
  ours = np.asarray(audio.log_mel_spectrogram(y, **PARAMS))
  assert np.abs(ours - _librosa_log_mel(y, **PARAMS)).max() <= 5e-4


def test_log_mel_gather_path_and_short_window_match_librosa():
  # n_fft not a multiple of the hop takes the gather path; win_length < n_fft is centre-padded.
  params = dict(PARAMS, n_fft=400, win_length=320, hop_length=160, n_mels=64, fmax=3800.0)
  y = _synthetic_waveform(1)
  ours = np.asarray(audio.log_mel_spectrogram(y, **params))
  ref = _librosa_log_mel(y, **params)
  assert ours.shape == ref.shape == (100, 64)
  assert np.abs(ours - ref).max() <= 1e-4


def test_batched_shapes_and_consistency():
  rng = np.random.default_rng(0)
  y = rng.uniform(-0.5, 0.5, (2, 3, 4100)).astype(np.float32)  # Not a multiple of the hop.
  out = audio.log_mel_spectrogram(y, **PARAMS)
  assert out.shape == (2, 3, audio.num_audio_frames(4100, 200), 128) == (2, 3, 20, 128)
  assert out.dtype == np.float32
  single = audio.log_mel_spectrogram(y[1, 2], **PARAMS)
  np.testing.assert_allclose(np.asarray(out[1, 2]), np.asarray(single), atol=1e-5)


def test_jit_matches_no_jit():
  y = np.stack([_synthetic_waveform(0), _sine_plus_noise()])
  jitted = np.asarray(jax.jit(lambda w: audio.log_mel_spectrogram(w, **PARAMS))(y))
  with jax.disable_jit():
    eager = np.asarray(audio.log_mel_spectrogram(y, **PARAMS))
  np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-4)


def test_log_mel_from_config_uses_audio_fields():
  config = common.base_config()
  config.audio.n_mels = 32
  y = _synthetic_waveform(0)
  out = audio.log_mel_from_config(y, config.audio)
  expected = audio.log_mel_spectrogram(y, **dict(PARAMS, n_mels=32))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
  assert out.shape == (80, 32)


def test_silence_is_log_floor():
  out = np.asarray(audio.log_mel_spectrogram(np.zeros(800, np.float32), **PARAMS))
  np.testing.assert_allclose(out, np.log(1e-5), rtol=1e-6)


def test_too_short_waveform_raises():
  with pytest.raises(ValueError, match='shorter than one hop'):
    audio.log_mel_spectrogram(np.zeros(100, np.float32), **PARAMS)
