"""A small GAN vocoder of the HiFi-GAN family (Kong, Kim & Bae, 2020): log-mel -> waveform.

The generator is Vocos' (see `Generator`): it predicts the STFT frame by frame and leaves the
inverse STFT to the caller. HiFi-GAN's own generator, upsampling convolutions at the sample
rate, took 3x longer per step at :runlocal on a 2-core CPU (92 vs 32 ms, reconstruction loss
alone) and learned slower. The discriminator is HiFi-GAN's pair: period discriminators (the
waveform folded into rows of p samples, 2D convs along time) and scale discriminators (1D
grouped convs on the waveform and its 2x, 4x average-pooled versions). Every sub-discriminator returns (logits, features) so the trainer
can add feature matching (losses/gan.py). Plain convolutions (no weight norm): the trainer
clips gradients.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

_SLOPE = 0.1  # HiFi-GAN's leaky ReLU slope (the discriminators').


def _leaky(x: jnp.ndarray) -> jnp.ndarray:
  return nn.leaky_relu(x, _SLOPE)


class ConvNeXtBlock(nn.Module):
  """(B,Ta,D) -> (B,Ta,D): depthwise conv, LayerNorm, 4x pointwise MLP, a learned layer scale
  (starting small, so a deep stack starts near the identity), plus the input."""
  kernel: int = 7

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    y = nn.Conv(d, (self.kernel,), padding='SAME', feature_group_count=d, name='depthwise')(x)
    y = nn.LayerNorm(name='norm')(y)
    y = nn.Dense(4 * d, name='expand')(y)
    y = nn.Dense(d, name='project')(nn.gelu(y))
    scale = self.param('scale', nn.initializers.constant(1.0 / 8), (d,))
    return x + scale * y


class Generator(nn.Module):
  """Normalised log-mel (B,Ta,F) -> (log-magnitude correction, phase), each (B,Ta,K), of the
  waveform's STFT, K = n_fft / 2 + 1.

  The Vocos design (Siuzdenko, 2023) trained the HiFi-GAN way: ConvNeXt blocks at the frame
  rate predict each frame's STFT and the caller inverts it. As in FreeV (Lv et al., 2024) the
  magnitude is a correction to the caller's prior (the mel filterbank's pseudo-inverse), so
  the network's work is the phase. The head starts at zero: no correction, zero phase.
  Every layer runs at the log-mel frame rate, not the sample rate, so it trains on a CPU.

  Attributes:
    num_bins: K, the STFT's bins (n_fft // 2 + 1).
    width: the blocks' channels.
    num_blocks: ConvNeXt blocks.
  """
  num_bins: int
  width: int
  num_blocks: int

  @nn.compact
  def __call__(self, mel: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    chex.assert_rank(mel, 3)
    x = nn.LayerNorm(name='norm_in')(nn.Conv(self.width, (7,), padding='SAME', name='pre')(mel))
    for i in range(self.num_blocks):
      x = ConvNeXtBlock(name=f'block{i}')(x)
    x = nn.Dense(2 * self.num_bins, kernel_init=nn.initializers.zeros, name='head')(
        nn.LayerNorm(name='norm_out')(x))
    correction, phase = jnp.split(x, 2, axis=-1)
    chex.assert_shape(phase, mel.shape[:2] + (self.num_bins,))
    return correction, phase


class PeriodDiscriminator(nn.Module):
  """Waveform (B,S) -> (logits (B,N), features): the signal folded into (S/p, p) rows."""
  period: int
  channels: tuple[int, ...]

  @nn.compact
  def __call__(self, wave: jnp.ndarray):
    b, s = wave.shape
    pad = (-s) % self.period
    x = jnp.pad(wave, ((0, 0), (0, pad)), mode='reflect')
    x = x.reshape(b, -1, self.period, 1)
    features = []
    for i, c in enumerate(self.channels):
      x = _leaky(nn.Conv(c, (5, 1), strides=(3, 1), padding=((2, 2), (0, 0)),
                         name=f'conv{i}')(x))
      features.append(x)
    x = _leaky(nn.Conv(self.channels[-1], (5, 1), padding='SAME', name='last')(x))
    features.append(x)
    x = nn.Conv(1, (3, 1), padding='SAME', name='logits')(x)
    return x.reshape(b, -1), features


class ScaleDiscriminator(nn.Module):
  """Waveform (B,S) -> (logits (B,N), features): strided grouped 1D convs over time."""
  channels: tuple[int, ...]

  @nn.compact
  def __call__(self, wave: jnp.ndarray):
    x = wave[..., None]
    features = []
    x = _leaky(nn.Conv(self.channels[0], (15,), padding='SAME', name='first')(x))
    features.append(x)
    for i, c in enumerate(self.channels[1:]):
      groups = max(1, min(c, x.shape[-1]) // 4)
      x = _leaky(nn.Conv(c, (41,), strides=(4,), feature_group_count=groups, padding='SAME',
                         name=f'conv{i}')(x))
      features.append(x)
    x = _leaky(nn.Conv(self.channels[-1], (5,), padding='SAME', name='last')(x))
    features.append(x)
    x = nn.Conv(1, (3,), padding='SAME', name='logits')(x)
    return x[..., 0], features


class Discriminator(nn.Module):
  """Every sub-discriminator's (logits, features) on waveforms (B,S): the period ones for
  each of `periods`, then the scale ones on the signal average-pooled 1x, 2x, 4x, ..."""
  periods: tuple[int, ...]
  num_scales: int
  channels: tuple[int, ...]

  @nn.compact
  def __call__(self, wave: jnp.ndarray) -> list:
    chex.assert_rank(wave, 2)
    outs = [PeriodDiscriminator(p, tuple(self.channels), name=f'period{p}')(wave)
            for p in self.periods]
    x = wave
    for i in range(self.num_scales):
      if i:
        x = nn.avg_pool(x[..., None], (4,), strides=(2,), padding='SAME')[..., 0]
      outs.append(ScaleDiscriminator(tuple(self.channels), name=f'scale{i}')(x))
    return outs
