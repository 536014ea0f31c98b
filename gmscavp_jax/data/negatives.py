"""Misaligned negatives of paired clips (CMMD, papers/002, §2.2 "Creating Negative Samples").

Given a batch of one modality's time series `x` of shape (B, L, ...) with time on axis 1
(waveforms (B, S), log-mels (B, Ta, F), video features (B, T, ...)), a negative of example b
no longer matches its partner in the other modality:

  - shift: x[b] moved earlier or later in time (circularly; CMMD uses a few hundred ms),
  - segment_swap: x[b] with the part before or after a split point taken from another
    example, concatenate(other_left, x_right) or concatenate(x_left, other_right),
  - random_swap: another example of the batch outright.

"Another example" is x[partner[b]] for a derangement `partner`, so it is never b itself.
Pure jax.numpy and jit-compatible: shapes and the arguments of `make_negatives` other than
`rng` and `x` are static. Shared by the alignment classifier (evaluators, on waveforms) and
CMMD's contrastive diffusion loss (steps.py, on per-frame video features).

`hue_rotate` makes the other kind: a negative with the positive's exact timing and another
look (frames whose hue is turned), for L_MSA's same-timing negatives (loss.hue_negatives).
"""

import math

import jax
import jax.numpy as jnp

KINDS = ('shift', 'segment_swap', 'random_swap')


def derangement(rng: jax.Array, batch_size: int) -> jax.Array:
  """(B,) int32 permutation with no fixed point: partner[b] != b for every b.

  A random permutation's elements are chained in one cycle, other[perm[i]] = perm[i + 1]
  (cyclically): uniform over the (B - 1)! cyclic permutations, a subset of derangements.
  """
  if batch_size < 2:
    raise ValueError(f'batch_size={batch_size}: a derangement needs at least 2 examples '
                     '(no other example to pair with)')
  perm = jax.random.permutation(rng, batch_size).astype(jnp.int32)
  return jnp.zeros(batch_size, jnp.int32).at[perm].set(jnp.roll(perm, -1))


def shift_steps(min_seconds: float, max_seconds: float, rate: float) -> tuple[int, int]:
  """A shift range in seconds -> (min_shift, max_shift) time steps at `rate` steps/s.

  Rounded to the nearest step, at least 1: a shift must move the series.
  """
  return (max(1, int(round(min_seconds * rate))), max(1, int(round(max_seconds * rate))))


def _per_example(values: jax.Array, ndim: int) -> jax.Array:
  """(B, L) -> (B, L, 1, ...) with `ndim` axes, to broadcast against x."""
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def temporal_shift(x: jax.Array, shift: jax.Array) -> jax.Array:
  """Circular shift of each example along time: out[b, t] = x[b, (t - shift[b]) % L].

  Args:
    x: (B, L, ...) time series.
    shift: (B,) integer steps; positive moves the signal later in time.
  Returns:
    (B, L, ...) shifted series.
  """
  batch, length = x.shape[:2]
  source = (jnp.arange(length)[None, :] - jnp.asarray(shift)[:, None]) % length  # (B, L)
  return x[jnp.arange(batch)[:, None], source]


def segment_swap(x: jax.Array, other: jax.Array, split: jax.Array,
                 other_first: jax.Array) -> jax.Array:
  """Splice of two series at a per-example split point.

  out[b, t] = other[b, t] if (t < split[b]) == other_first[b] else x[b, t], i.e.
  concatenate(other_left, x_right) where other_first, else concatenate(x_left, other_right).

  Args:
    x, other: (B, L, ...) series.
    split: (B,) int, first time step of the right piece.
    other_first: (B,) bool, whether the left piece comes from `other`.
  Returns:
    (B, L, ...) spliced series.
  """
  left = jnp.arange(x.shape[1])[None, :] < jnp.asarray(split)[:, None]  # (B, L)
  take_other = left == jnp.asarray(other_first)[:, None]
  return jnp.where(_per_example(take_other, x.ndim), other, x)


def random_swap(x: jax.Array, partner: jax.Array) -> jax.Array:
  """Another example in place of each: (B, L, ...) x[partner], partner (B,) int."""
  return x[partner]


def make_negatives(rng: jax.Array, x: jax.Array, *, min_shift: int, max_shift: int,
                   min_split_fraction: float = 0.25,
                   kinds: tuple[str, ...] = KINDS) -> tuple[jax.Array, dict]:
  """One random negative per example, of a kind drawn uniformly from `kinds`.

  Per example: a shift of magnitude uniform in [min_shift, max_shift] steps with a random
  sign, a split point uniform in [min_split_fraction * L, (1 - min_split_fraction) * L] (kept
  within [1, L - 1] so both pieces are non-empty), a fair coin for which piece comes from
  the partner, and a partner from `derangement`. All of these are drawn whatever the kind,
  so `info` is always complete; every kind's negative is computed and one kept per example.

  Args:
    rng: PRNG key.
    x: (B, L, ...) time series, time on axis 1, B >= 2.
    min_shift, max_shift: shift magnitude range in time steps, 0 < min <= max < L.
    min_split_fraction: in (0, 0.5], how far from either end the split point stays.
    kinds: non-empty subset of KINDS, in any order.
  Returns:
    negatives: (B, L, ...) like x.
    info: {'kind': (B,) int32 index into `kinds`, 'shift': (B,) signed int32,
      'split': (B,) int32, 'other_first': (B,) bool, 'partner': (B,) int32}.
  """
  kinds = tuple(kinds)
  if not kinds or len(set(kinds)) != len(kinds) or not set(kinds) <= set(KINDS):
    raise ValueError(f'kinds={kinds} must be a non-empty subset of {KINDS} without repeats')
  if x.ndim < 2:
    raise ValueError(f'x must be (B, L, ...) with time on axis 1, got shape {x.shape}')
  batch, length = x.shape[:2]
  if not 0 < min_shift <= max_shift < length:
    raise ValueError(f'min_shift={min_shift}, max_shift={max_shift}: need '
                     f'0 < min_shift <= max_shift < L={length} (time steps of axis 1)')
  if not 0 < min_split_fraction <= 0.5:
    raise ValueError(f'min_split_fraction={min_split_fraction} must be in (0, 0.5]')
  # Integer split range; rounding inwards, then clamping, keeps both pieces non-empty.
  split_lo = max(1, math.ceil(min_split_fraction * length))
  split_hi = min(length - 1, math.floor((1 - min_split_fraction) * length))
  if split_lo > split_hi:
    raise ValueError(f'min_split_fraction={min_split_fraction} leaves no split point in '
                     f'[1, L - 1] for L={length}')

  keys = jax.random.split(rng, 6)
  kind = jax.random.randint(keys[0], (batch,), 0, len(kinds), jnp.int32)
  magnitude = jax.random.randint(keys[1], (batch,), min_shift, max_shift + 1, jnp.int32)
  shift = jnp.where(jax.random.bernoulli(keys[2], shape=(batch,)), magnitude, -magnitude)
  split = jax.random.randint(keys[3], (batch,), split_lo, split_hi + 1, jnp.int32)
  other_first = jax.random.bernoulli(keys[4], shape=(batch,))
  partner = derangement(keys[5], batch)

  other = random_swap(x, partner)
  candidates = {
      'shift': lambda: temporal_shift(x, shift),
      'segment_swap': lambda: segment_swap(x, other, split, other_first),
      'random_swap': lambda: other,
  }
  negatives = candidates[kinds[0]]()
  for index, name in enumerate(kinds[1:], start=1):  # Static loop over at most 3 kinds.
    negatives = jnp.where(_per_example(kind == index, x.ndim), candidates[name](), negatives)
  info = dict(kind=kind, shift=shift, split=split, other_first=other_first, partner=partner)
  return negatives, info


def _rgb_to_hsv(rgb: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(..., 3) RGB in [0, 1] -> hue in [0, 1), saturation, value, each (...)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value, low = rgb.max(axis=-1), rgb.min(axis=-1)
  delta = value - low
  safe = jnp.where(delta > 0, delta, 1.0)
  # The sector of the largest channel, and the position inside it (colorsys's formula).
  hue = jnp.where(r >= value, (g - b) / safe,
                  jnp.where(g >= value, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  hue = jnp.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
  saturation = jnp.where(value > 0, delta / jnp.where(value > 0, value, 1.0), 0.0)
  return hue, saturation, value


def _hsv_to_rgb(hue: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
  """Hue in [0, 1), saturation, value (...) -> (..., 3) RGB in [0, 1]."""
  k = (jnp.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
  return value[..., None] * (1.0 - saturation[..., None] *
                             jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))


def hue_rotate(rng: jax.Array, frames: jax.Array,
               angles: tuple[float, ...]) -> tuple[jax.Array, jax.Array]:
  """Each clip's frames with every pixel's hue turned by one angle drawn from `angles`.

  The same motion, the same shapes, the same flashes, another colour: used as the hardest
  video negative of L_MSA (loss.hue_negatives), a clip whose timing is exactly the
  positive's, so an audio segment can tell it from its own video only by what the sounding
  source looks like. Saturation and value are kept (grey pixels do not change).

  Args:
    rng: PRNG key.
    frames: (B, T, H, W, 3) uint8 in [0, 255] or float in [0, 1].
    angles: degrees, each in (0, 360); one is drawn uniformly per clip.
  Returns:
    (B, T, H, W, 3) rotated frames of frames' dtype, and the (B,) angles in degrees.
  """
  if not angles or not all(0 < a < 360 for a in angles):
    raise ValueError(f'angles={tuple(angles)}: need one or more hue turns in (0, 360) degrees')
  integer = jnp.issubdtype(frames.dtype, jnp.integer)
  rgb = frames.astype(jnp.float32) / (255.0 if integer else 1.0)
  turn = jnp.asarray(angles, jnp.float32)[
      jax.random.randint(rng, (frames.shape[0],), 0, len(angles))]
  hue, saturation, value = _rgb_to_hsv(rgb)
  hue = (hue + turn.reshape((-1,) + (1,) * (hue.ndim - 1)) / 360.0) % 1.0
  out = _hsv_to_rgb(hue, saturation, value)
  if integer:
    out = jnp.round(out * 255.0)
  return out.astype(frames.dtype), turn
