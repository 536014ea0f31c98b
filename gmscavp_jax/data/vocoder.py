"""Griffin-Lim phase reconstruction in JAX: the embedded default vocoder (DESIGN §3).

Log-mel -> power (the mel filterbank's pseudo-inverse) -> magnitude -> waveform by fast
Griffin-Lim (Perraudin, Balazs & Søndergaard, 2013): alternate projections between "has the
target magnitude" and "is the STFT of some signal", extrapolated with a momentum term, which
converges in far fewer iterations than plain Griffin-Lim (momentum 0). The STFT is the front
end's own (audio.stft / audio.istft), so a reconstruction's log-mel is directly comparable
with the input's. Everything is jittable; the iteration count is static and the loop is a
lax.fori_loop, so compile time does not grow with it.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from gmscavp_jax.data import audio

# Larger log-mels are clipped before exp: a sampler can overshoot, and exp(> 88) is inf in
# float32, which would turn the whole waveform into NaN. e^30 is already ~1e13 in power.
MAX_LOG_MEL = 30.0


def _unit_phase(spectrum: jax.Array) -> jax.Array:
  """spectrum / |spectrum| (complex, same shape), with exact zeros mapped to 0 (not NaN)."""
  tiny = jnp.finfo(spectrum.real.dtype).tiny
  return spectrum / jnp.maximum(jnp.abs(spectrum), tiny).astype(spectrum.dtype)


@functools.partial(
    jax.jit, static_argnames=('n_fft', 'win_length', 'hop_length', 'num_iters'))
def griffin_lim_magnitude(magnitude: jax.Array, *, n_fft: int, win_length: int,
                          hop_length: int, num_iters: int = 32, momentum: float = 0.99,
                          rng: jax.Array | None = None) -> jax.Array:
  """Fast Griffin-Lim from a linear STFT magnitude: (..., Ta, K) -> (..., Ta * hop) float32.

  Args:
    magnitude: |STFT| in the front end's convention (audio.stft), K = n_fft // 2 + 1, >= 0.
    n_fft, win_length, hop_length: the STFT that made `magnitude`.
    num_iters: projection iterations (static); 0 returns the inverse of the initial guess.
    momentum: Perraudin et al.'s alpha; 0 is plain Griffin-Lim, 0.99 their recommendation.
    rng: PRNG key for uniform random initial phases; None starts from zero phase.
  Returns:
    The waveform whose `stft` magnitude approximates `magnitude`, float32, in the amplitude
    units of the spectrum (no normalisation).
  """
  magnitude = jnp.asarray(magnitude, jnp.float32)
  stft = functools.partial(audio.stft, n_fft=n_fft, win_length=win_length,
                           hop_length=hop_length)
  istft = functools.partial(audio.istft, n_fft=n_fft, win_length=win_length,
                            hop_length=hop_length)
  if rng is None:
    phase = jnp.ones(magnitude.shape, jnp.complex64)
  else:
    angle = jax.random.uniform(rng, magnitude.shape, jnp.float32, 0.0, 2.0 * jnp.pi)
    phase = jax.lax.complex(jnp.cos(angle), jnp.sin(angle))

  def body(_, carry):
    extrapolated, previous = carry
    # Project onto the target magnitude, then onto consistent spectrograms.
    consistent = stft(istft(magnitude * _unit_phase(extrapolated)))
    return consistent + momentum * (consistent - previous), consistent

  # With `previous` = 0 the first step is (1 + momentum) x the projection: the same phase.
  extrapolated, _ = jax.lax.fori_loop(0, num_iters, body,
                                      (magnitude * phase, jnp.zeros_like(phase)))
  return istft(magnitude * _unit_phase(extrapolated))


def linear_power(log_mel: jax.Array, *, sample_rate: int, n_fft: int, n_mels: int,
                 fmin: float, fmax: float) -> jax.Array:
  """Linear STFT power (..., Ta, n_fft // 2 + 1) float32 of a log-mel (..., Ta, F): the mel
  filterbank's pseudo-inverse of exp(log_mel), clipped at 0 (log-mels above MAX_LOG_MEL,
  a sampler's overshoot, are clipped first). Griffin-Lim's magnitude and the neural
  vocoder's prior."""
  log_mel = jnp.asarray(log_mel, jnp.float32)
  if log_mel.shape[-1] != n_mels:
    raise ValueError(f'log_mel has {log_mel.shape[-1]} mel bins, expected n_mels={n_mels}')
  filterbank = audio.mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
  return audio.mel_to_linear_power(jnp.exp(jnp.minimum(log_mel, MAX_LOG_MEL)),
                                   filterbank=filterbank)


@functools.partial(
    jax.jit,
    static_argnames=('sample_rate', 'n_fft', 'win_length', 'hop_length', 'n_mels', 'fmin',
                     'fmax', 'num_iters'))
def griffin_lim(log_mel: jax.Array, *, sample_rate: int, n_fft: int, win_length: int,
                hop_length: int, n_mels: int, fmin: float, fmax: float, num_iters: int = 32,
                momentum: float = 0.99, rng: jax.Array | None = None) -> jax.Array:
  """Waveform from a log-mel spectrogram: (B, Ta, F) or (Ta, F) -> (B, Ta*hop) or (Ta*hop,).

  Inverts `audio.log_mel_spectrogram` with the same settings: power = pinv-mel(exp(log_mel))
  clipped at 0, magnitude = sqrt(power), then `griffin_lim_magnitude` (any leading batch
  dimensions). float32 throughout. The log floor needs no inverse (exp of the floor is a
  near-silent power); an all-floor input gives low-level noise, never NaN. The output is not
  normalised: its level is that of the signal the log-mel came from (media_writing.write_wav
  rescales only if it would clip).

  Args:
    log_mel: natural log of mel power, F = n_mels.
    sample_rate, n_fft, win_length, hop_length, n_mels, fmin, fmax: the front end's settings.
    num_iters, momentum, rng: as in `griffin_lim_magnitude`.
  """
  power = linear_power(log_mel, sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels,
                       fmin=fmin, fmax=fmax)
  return griffin_lim_magnitude(jnp.sqrt(power), n_fft=n_fft, win_length=win_length,
                               hop_length=hop_length, num_iters=num_iters,
                               momentum=momentum, rng=rng)


def griffin_lim_from_config(log_mel: jax.Array, audio_cfg: ml_collections.ConfigDict,
                            num_iters: int = 32, rng: jax.Array | None = None) -> jax.Array:
  """`griffin_lim` with the fields of `config.audio`: (..., Ta, F) -> (..., Ta * hop)."""
  return griffin_lim(log_mel, num_iters=int(num_iters), rng=rng,
                     **audio.frontend_kwargs(audio_cfg))
