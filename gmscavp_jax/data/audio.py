"""Log-mel spectrograms in JAX, matching librosa's defaults, and their inverses (DESIGN §3).

The front end is: centred frames (zero padding of n_fft // 2 on each side), a periodic Hann
window, |rfft|^2 power, a Slaney-scale, Slaney-normalised mel filterbank, then
log(max(mel, log_floor)). librosa with `center=True` gives 1 + S // hop frames; we keep the
first S // hop so that 10 s at 8 kHz with a 200-sample hop is exactly 400 frames.

Precision: in float32 the result is within 1e-4 of librosa on the synthetic clips (<= 4.2e-5
over 20 of them), but XLA's float32 FFT leaks ~1e-7 x the peak into every bin, so a loud
pure tone over weak noise can differ by ~2e-4 in bins just above `log_floor`. Under x64 with
float64 input the same code computes in float64 and matches to ~1e-7.

The inverses (`istft`, `mel_to_linear_power`) feed the Griffin-Lim vocoder in vocoder.py.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Slaney's (Auditory Toolbox) mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = np.log(6.4) / 27.0

# istft floors the window-sum-square at this fraction of its peak (see istft).
_WSS_FLOOR = 1e-3


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
  """Frequencies in Hz -> Slaney mels (librosa.hz_to_mel with htk=False), any shape."""
  hz = np.asarray(hz, np.float64)
  mel = hz / _SLANEY_F_SP
  log_part = _SLANEY_MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _SLANEY_MIN_LOG_HZ) / (
      _SLANEY_LOGSTEP)
  return np.where(hz >= _SLANEY_MIN_LOG_HZ, log_part, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
  """Slaney mels -> frequencies in Hz (librosa.mel_to_hz with htk=False), any shape."""
  mel = np.asarray(mel, np.float64)
  hz = mel * _SLANEY_F_SP
  log_part = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mel - _SLANEY_MIN_LOG_MEL))
  return np.where(mel >= _SLANEY_MIN_LOG_MEL, log_part, hz)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                   fmax: float) -> np.ndarray:
  """Triangular mel filters, (n_fft // 2 + 1, n_mels) float32.

  Same as `librosa.filters.mel(...).T` with its defaults (htk=False, norm='slaney'): band
  edges equally spaced on the Slaney mel scale, each triangle divided by its width in Hz so
  that every filter has the same area.
  """
  if n_mels <= 0 or n_fft <= 0:
    raise ValueError(f'n_mels={n_mels} and n_fft={n_fft} must be positive')
  if not 0.0 <= fmin < fmax <= sample_rate / 2:
    raise ValueError(f'need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, '
                     f'fmax={fmax}, sample_rate={sample_rate}')
  fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (K,)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (F+2,)
  widths = np.diff(edges)  # (F+1,)
  ramps = edges[:, None] - fft_freqs[None, :]  # (F+2, K)
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))  # (F, K)
  weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
  return np.ascontiguousarray(weights.T, dtype=np.float32)


def periodic_hann(win_length: int, n_fft: int) -> np.ndarray:
  """Periodic Hann window of `win_length`, zero-padded at both ends to (n_fft,) float64."""
  if not 0 < win_length <= n_fft:
    raise ValueError(f'need 0 < win_length <= n_fft, got {win_length} and {n_fft}')
  n = np.arange(win_length)
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
  left = (n_fft - win_length) // 2
  return np.pad(window, (left, n_fft - win_length - left))


def num_audio_frames(num_samples: int, hop_length: int) -> int:
  """Ta, the number of log-mel frames for S = `num_samples` samples: S // hop_length."""
  return int(num_samples) // int(hop_length)


def _frame(padded: jax.Array, num_frames: int, n_fft: int, hop_length: int) -> jax.Array:
  """(..., P) -> (..., Ta, n_fft) overlapping frames starting every `hop_length` samples."""
  if n_fft % hop_length == 0:
    # Fast path (the usual n_fft = 2 * hop): cut into hop-sized blocks and put r shifted
    # views side by side; only slices and a reshape, no gather.
    r = n_fft // hop_length
    blocks = padded[..., :(num_frames + r - 1) * hop_length]
    blocks = blocks.reshape(blocks.shape[:-1] + (num_frames + r - 1, hop_length))
    return jnp.concatenate([blocks[..., j:j + num_frames, :] for j in range(r)], axis=-1)
  index = (np.arange(num_frames)[:, None] * hop_length + np.arange(n_fft)[None, :])
  return padded[..., index]


@functools.partial(jax.jit, static_argnames=('n_fft', 'win_length', 'hop_length'))
def stft(waveform: jax.Array, *, n_fft: int, win_length: int, hop_length: int) -> jax.Array:
  """Complex STFT of the front end: (..., S) waveforms -> (..., Ta, n_fft // 2 + 1).

  Centred frames (n_fft // 2 zeros on each side), every `hop_length` samples, times a
  periodic Hann window of `win_length`; Ta = S // hop_length (librosa's last centred frame
  dropped). Complex64 for float32 input (complex128 for float64 under x64).
  """
  waveform = jnp.asarray(waveform)
  if not jnp.issubdtype(waveform.dtype, jnp.floating):
    waveform = waveform.astype(jnp.float32)
  num_frames = num_audio_frames(waveform.shape[-1], hop_length)
  if num_frames < 1:
    raise ValueError(f'waveform of {waveform.shape[-1]} samples is shorter than one hop '
                     f'({hop_length})')
  pad = n_fft // 2
  padded = jnp.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(pad, pad)])
  frames = _frame(padded, num_frames, n_fft, hop_length)  # (..., Ta, n_fft)
  frames = frames * jnp.asarray(periodic_hann(win_length, n_fft), waveform.dtype)
  return jnp.fft.rfft(frames, n=n_fft, axis=-1)


def _overlap_add(frames: jax.Array, hop_length: int, length: int) -> jax.Array:
  """(..., Ta, n_fft) frames placed every `hop_length` samples and summed -> (..., length)."""
  num_frames, n_fft = frames.shape[-2:]
  lead = frames.shape[:-2]
  if n_fft % hop_length == 0:
    # Inverse of `_frame`'s fast path: frame k's j-th hop-sized block lands on output block
    # k + j, so r shifted (padded) copies summed do it without a scatter.
    r = n_fft // hop_length
    blocks = frames.reshape(lead + (num_frames, r, hop_length))
    no_pad = [(0, 0)] * len(lead)
    out = sum(
        jnp.pad(blocks[..., j, :], no_pad + [(j, r - 1 - j), (0, 0)]) for j in range(r))
    out = out.reshape(lead + ((num_frames + r - 1) * hop_length,))
  else:
    index = np.arange(num_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
    out = jnp.zeros(lead + (int(index.max()) + 1,), frames.dtype).at[..., index].add(frames)
  if out.shape[-1] < length:
    out = jnp.pad(out, [(0, 0)] * len(lead) + [(0, length - out.shape[-1])])
  return out[..., :length]


@functools.partial(jax.jit, static_argnames=('n_fft', 'win_length', 'hop_length'))
def istft(spectrum: jax.Array, *, n_fft: int, win_length: int, hop_length: int) -> jax.Array:
  """Inverse of `stft`: (..., Ta, n_fft // 2 + 1) complex -> (..., Ta * hop_length) real.

  Least-squares inverse (Griffin & Lim): windowed overlap-add divided by the window's sum of
  squares, then the centre padding removed. For the `stft` of a signal it gives the signal
  back, bar the last few samples: they are covered only by the falling edge of the last
  window (`stft` drops librosa's final frame), where the window-sum-square tends to 0.
  Dividing by it would amplify the inconsistencies of a Griffin-Lim spectrum without bound,
  so it is floored at 1e-3 of its peak: the last ~2.8 ms (22 samples for a 400-sample Hann
  window) fade out instead.
  """
  spectrum = jnp.asarray(spectrum)
  num_frames = spectrum.shape[-2]
  if spectrum.shape[-1] != n_fft // 2 + 1:
    raise ValueError(f'spectrum has {spectrum.shape[-1]} bins, expected n_fft // 2 + 1 = '
                     f'{n_fft // 2 + 1}')
  window = periodic_hann(win_length, n_fft)
  frames = jnp.fft.irfft(spectrum, n=n_fft, axis=-1)  # (..., Ta, n_fft)
  dtype = frames.dtype
  frames = frames * jnp.asarray(window, dtype)
  pad, length = n_fft // 2, num_frames * hop_length
  signal = _overlap_add(frames, hop_length, pad + length)[..., pad:]
  # The window-sum-square is data independent: numpy, once per trace.
  wss = np.zeros(max(pad + length, (num_frames - 1) * hop_length + n_fft))
  for k in range(num_frames):
    wss[k * hop_length:k * hop_length + n_fft] += window**2
  wss = wss[pad:pad + length]
  wss = np.maximum(wss, _WSS_FLOOR * wss.max())
  return signal / jnp.asarray(wss, dtype)


def mel_to_linear_power(mel_power: jax.Array, *, filterbank: np.ndarray) -> jax.Array:
  """Approximate inverse of the mel projection: (..., Ta, F) -> (..., Ta, n_fft // 2 + 1).

  Multiplies by the Moore-Penrose pseudo-inverse of `filterbank` ((K, F) numpy, as from
  `mel_filterbank`), the least-squares (minimum-norm) power spectrum whose mel projection
  is `mel_power`, and clips the negative powers that least squares leaves at 0. `filterbank`
  must be concrete: its pinv is computed with numpy once per call or jit trace.
  """
  inverse = np.linalg.pinv(np.asarray(filterbank, np.float64))  # (F, K)
  mel_power = jnp.asarray(mel_power)
  if not jnp.issubdtype(mel_power.dtype, jnp.floating):
    mel_power = mel_power.astype(jnp.float32)
  if mel_power.shape[-1] != inverse.shape[0]:
    raise ValueError(f'mel_power has {mel_power.shape[-1]} mel bins but the filterbank has '
                     f'{inverse.shape[0]}')
  power = jnp.matmul(mel_power, jnp.asarray(inverse, mel_power.dtype),
                     precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(power, 0.0)


@functools.partial(
    jax.jit,
    static_argnames=('sample_rate', 'n_fft', 'win_length', 'hop_length', 'n_mels', 'fmin',
                     'fmax', 'log_floor'))
def log_mel_spectrogram(waveform: jax.Array, *, sample_rate: int, n_fft: int,
                        win_length: int, hop_length: int, n_mels: int, fmin: float,
                        fmax: float, log_floor: float) -> jax.Array:
  """Log-mel spectrogram of (..., S) waveforms -> (..., Ta, F), Ta = S // hop, F = n_mels.

  Matches librosa.feature.melspectrogram(center=True, pad_mode='constant', power=2.0,
  window='hann') followed by log(max(., log_floor)), minus librosa's last frame. Jitted with
  every setting static; any leading batch dimensions. Computes in the waveform's float dtype
  (float32 unless it is float64 under x64).
  """
  spectrum = stft(waveform, n_fft=n_fft, win_length=win_length, hop_length=hop_length)
  dtype = spectrum.real.dtype
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)  # (..., Ta, K)
  filters = jnp.asarray(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax), dtype)
  # HIGHEST: TPUs would otherwise multiply in bf16 and miss the 1e-4 match with librosa.
  mel = jnp.matmul(power, filters, precision=jax.lax.Precision.HIGHEST)  # (..., Ta, F)
  return jnp.log(jnp.maximum(mel, log_floor))


def frontend_kwargs(audio_cfg: ml_collections.ConfigDict) -> dict:
  """The STFT and mel settings of `config.audio` as keyword arguments (no log_floor)."""
  return dict(sample_rate=int(audio_cfg.sample_rate), n_fft=int(audio_cfg.n_fft),
              win_length=int(audio_cfg.win_length), hop_length=int(audio_cfg.hop_length),
              n_mels=int(audio_cfg.n_mels), fmin=float(audio_cfg.fmin),
              fmax=float(audio_cfg.fmax))


def log_mel_from_config(waveform: jax.Array,
                        audio_cfg: ml_collections.ConfigDict) -> jax.Array:
  """`log_mel_spectrogram` with the fields of `config.audio`: (..., S) -> (..., Ta, F)."""
  return log_mel_spectrogram(waveform, log_floor=float(audio_cfg.log_floor),
                             **frontend_kwargs(audio_cfg))
