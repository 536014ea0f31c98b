"""Where each step of the denoisers lies in the clip: one time axis shared by video frames and
log-mel frames, its fixed sinusoidal code (the cross-attention's "position in the clip"), and
the linear resampling of video-rate condition tokens onto audio steps.

NumPy on static shapes, so the codes and matrices are constants of the jitted program
(`sinusoidal_embedding` also takes traced timesteps).
"""

import math

import jax.numpy as jnp
import numpy as np

# Width of the fixed sinusoidal "position in the clip" encoding shared by audio queries and
# video tokens; each side maps it to its own width with a learned Dense.
CLIP_TIME_DIM = 64
# The clip-time encoding is the sinusoid of (fraction of the clip) * CLIP_TIME_SCALE: its
# fastest component has a period of 2*pi/100 ~ 1/16 of the clip (about one video frame at
# runlocal sizes), its slowest is nearly constant over the clip.
CLIP_TIME_SCALE = 100.0


def sinusoidal_embedding(x: jnp.ndarray | np.ndarray, dim: int,
                         max_period: float = 10_000.0) -> jnp.ndarray | np.ndarray:
  """Transformer/DDPM sinusoidal embedding: (...,) -> (..., dim), [cos | sin] halves.

  Frequencies are geometric from 1 down to 1/max_period (radians per unit of x). `dim` must
  be even. Computed in float32 (timesteps up to ~1000 lose phase in bfloat16). A NumPy input
  gives a NumPy result, so embeddings of static positions are constants, not traced ops.
  """
  if dim % 2:
    raise ValueError(f'sinusoidal embedding width {dim} must be even')
  xp = np if isinstance(x, np.ndarray) else jnp
  half = dim // 2
  freqs = xp.exp(-math.log(max_period) * xp.arange(half, dtype=xp.float32) / half)
  angles = xp.asarray(x, xp.float32)[..., None] * freqs
  return xp.concatenate([xp.cos(angles), xp.sin(angles)], axis=-1).astype(xp.float32)


def clip_time_fractions(num_steps: int, stride: float, length: float) -> np.ndarray:
  """Times of `num_steps` steps as fractions of the clip; step i pools samples
  [i*stride, (i+1)*stride) of a grid of `length` samples per clip.

  Sample k of either grid is the instant k / length of the clip, not an interval: video frame
  j is the picture at j / fps, and log-mel frame k is centred at sample k * hop (the STFT is
  centred, audio.stft). A step that pools `stride` samples (a stem patch, a downsampled level,
  a pooled pyramid scale, or an audio encoder step, which resamples Ta/T mel frames to one
  video frame) is at the mean of their instants: ((i + 0.5) * stride - 0.5) / length. So
  video frame j and mel frame j * Ta / T are the same instant j / T, and a pooled step sits
  between the samples it pools. `stride` may be fractional (Ta / T_l); padded steps of the
  audio grid get fractions near or above 1.
  """
  steps = np.arange(num_steps, dtype=np.float64)
  return (((steps + 0.5) * stride - 0.5) / length).astype(np.float32)


def clip_time_encoding(num_steps: int, stride: float, length: float) -> np.ndarray:
  """(num_steps, CLIP_TIME_DIM) sinusoidal encoding of each step's position in the clip.

  The one function that places both audio steps and video frames in the clip (at
  `clip_time_fractions`), so that the same instant gets the same code on both sides of the
  cross-attention.
  """
  frac = clip_time_fractions(num_steps, stride, length)
  return sinusoidal_embedding(frac * np.float32(CLIP_TIME_SCALE), CLIP_TIME_DIM)


def linear_resample_matrix(num_out: int, out_stride: float, length: float, num_in: int,
                           in_samples: int | None = None) -> np.ndarray:
  """(num_out, num_in) linear interpolation from `num_in` condition tokens onto audio steps.

  Output step i is at `clip_time_fractions(num_out, out_stride, length)[i]`; input token j,
  one of `num_in` pooled evenly from `in_samples` samples per clip (None: num_in), at
  `clip_time_fractions(num_in, in_samples / num_in, in_samples)[j]`. Each output
  interpolates the two inputs whose times surround it, clamped at the clip edges (padded
  steps repeat the last input).
  """
  frac = clip_time_fractions(num_out, out_stride, length).astype(np.float64)
  in_samples = num_in if in_samples is None else in_samples
  first = float(clip_time_fractions(1, in_samples / num_in, in_samples)[0])
  u = np.clip((frac - first) * num_in, 0.0, num_in - 1.0)  # Inputs are 1 / num_in apart.
  lo = np.floor(u).astype(np.int64)
  hi = np.minimum(lo + 1, num_in - 1)
  w = (u - lo).astype(np.float32)
  m = np.zeros((num_out, num_in), np.float32)
  m[np.arange(num_out), lo] += 1.0 - w
  m[np.arange(num_out), hi] += w
  return m
