"""The MSD denoiser (eq. 6): a 2D UNet over the log-mel "image", conditioned on video scales.

x (B,Ta,F) noisy normalised log-mel, t (B,) timestep, video scales [(B,T_l,S_l,D)]_l from the
pyramid (l = 0 the finest, the last the clip level with T_L = 1) -> (B,Ta,F) eps or v.

The video condition enters three ways (DESIGN §3):
- global: the clip-level embedding (coarsest scale, mean over tokens) is added to the
  timestep embedding, which every residual block receives;
- cross-attention: every level with attention attends to the tokens of one video scale
  (`level_scales`), flattened to (B,T_l*S_l,D) with scale, time and space embeddings;
- aligned (optional): the finest scale's per-frame features are resampled onto the UNet's
  time grid and added to the stem output, a direct path for onset timing.

Classifier-free guidance: `drop_condition` (B,) replaces the whole condition of an example by
learned null parameters, and `video_scales=None` is the same as dropping every example. The
nulls live in spaces whose size the UNet knows (the timestep embedding, the stem width, each
cross-attention's value space), so the unconditional model needs no video shapes.

Time is axis 1 everywhere: the UNet works on (B,Ta',F',C). `dtype` is the compute dtype;
parameters are float32 and the output is float32 whatever `dtype` is.
"""

import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmscavp_jax.models import layers

Dtype = Any

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
  """Centres of `num_steps` steps of `stride` frames each, as fractions of a clip of `length`.

  Audio step i at a level with stride s covers frames [i*s, (i+1)*s) of a clip of Ta frames;
  video frame j of T_l covers [j/T_l, (j+1)/T_l) of the clip. Using centres (not starts)
  makes the two coincide when they cover the same span at different resolutions. Padded
  audio steps get fractions >= 1.
  """
  return ((np.arange(num_steps, dtype=np.float32) + 0.5) * stride / length).astype(np.float32)


def clip_time_encoding(num_steps: int, stride: float, length: float) -> np.ndarray:
  """(num_steps, CLIP_TIME_DIM) sinusoidal encoding of each step's position in the clip.

  The one function that places both audio steps and video frames in the clip, so that the
  same instant gets the same code on both sides of the cross-attention.
  """
  frac = clip_time_fractions(num_steps, stride, length)
  return sinusoidal_embedding(frac * np.float32(CLIP_TIME_SCALE), CLIP_TIME_DIM)


def linear_resample_matrix(num_out: int, out_stride: float, length: float,
                           num_in: int) -> np.ndarray:
  """(num_out, num_in) linear interpolation from `num_in` frames onto a grid of audio steps.

  Output step i (centre at fraction (i+0.5)*out_stride/length of the clip, as in
  `clip_time_fractions`) interpolates the two video frames whose centres surround it, clamped
  at the clip edges (padded steps repeat the last frame).
  """
  frac = clip_time_fractions(num_out, out_stride, length)
  u = np.clip(frac * num_in - 0.5, 0.0, num_in - 1.0)
  lo = np.floor(u).astype(np.int64)
  hi = np.minimum(lo + 1, num_in - 1)
  w = (u - lo).astype(np.float32)
  m = np.zeros((num_out, num_in), np.float32)
  m[np.arange(num_out), lo] += 1.0 - w
  m[np.arange(num_out), hi] += w
  return m


def unpatchify(x: jnp.ndarray, patch: tuple[int, int]) -> jnp.ndarray:
  """Inverse of `layers.Patchify`'s reshape for one channel: (B,X,Y,p*q) -> (B,X*p,Y*q)."""
  chex.assert_rank(x, 4)
  b, sx, sy, _ = x.shape
  p, q = patch
  chex.assert_axis_dimension(x, 3, p * q)
  x = x.reshape(b, sx, sy, p, q).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, sx * p, sy * q)


def _conv3x3(features: int, dtype: Dtype, name: str, zero_init: bool = False) -> nn.Conv:
  kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return nn.Conv(features, (3, 3), dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init, name=name)


def _dense(features: int, dtype: Dtype, name: str, zero_init: bool = False,
           use_bias: bool = True) -> nn.Dense:
  kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                  use_bias=use_bias, name=name)


def _select(drop: jnp.ndarray | None, null: jnp.ndarray, value: jnp.ndarray) -> jnp.ndarray:
  """Per example: `null` where drop[b] else `value`. drop (B,); value (B,...); null broadcasts.

  A select, so a dropped example's gradient w.r.t. `value` is exactly zero.
  """
  if drop is None:
    return value
  mask = drop.reshape((-1,) + (1,) * (value.ndim - 1))
  return jnp.where(mask, null.astype(value.dtype), value)


class ResBlock(nn.Module):
  """Residual block with embedding injection: (B,X,Y,C), emb (B,E) -> (B,X,Y,features).

  GN -> silu -> conv3x3, plus a Dense projection of the (already activated) embedding, then
  GN -> silu -> conv3x3; the skip is the identity or a 1x1 projection when C != features.
  """
  features: int
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank([x, emb], [4, 2])
    chex.assert_equal_shape_prefix([x, emb], 1)
    h = nn.silu(layers.group_norm(self.num_groups, self.dtype, 'norm1')(x))
    h = _conv3x3(self.features, self.dtype, 'conv1')(h)
    h = h + _dense(self.features, self.dtype, 'emb_proj')(emb)[:, None, None, :]
    h = nn.silu(layers.group_norm(self.num_groups, self.dtype, 'norm2')(h))
    h = _conv3x3(self.features, self.dtype, 'conv2')(h)
    skip = x if x.shape[-1] == self.features else _dense(self.features, self.dtype, 'skip')(x)
    return skip.astype(self.dtype) + h


def _split_heads(x: jnp.ndarray, num_heads: int) -> jnp.ndarray:
  """(B,L,C) -> (B,L,H,C/H), the layout of jax.nn.dot_product_attention."""
  b, n, c = x.shape
  if c % num_heads:
    raise ValueError(f'width {c} is not divisible by num_heads={num_heads}')
  return x.reshape(b, n, num_heads, c // num_heads)


class SelfAttention(nn.Module):
  """Pre-norm multi-head self-attention over all (time x mel) positions: (B,X,Y,C) -> same.

  The output projection is zero-initialised, so a new block starts as the identity.
  """
  num_heads: int
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    b, sx, sy, c = x.shape
    h = layers.group_norm(self.num_groups, self.dtype, 'norm')(x).reshape(b, sx * sy, c)
    q, k, v = jnp.split(_dense(3 * c, self.dtype, 'qkv')(h), 3, axis=-1)
    o = jax.nn.dot_product_attention(*(_split_heads(a, self.num_heads) for a in (q, k, v)))
    o = _dense(c, self.dtype, 'out', zero_init=True)(o.reshape(b, sx * sy, c))
    return x.astype(self.dtype) + o.reshape(x.shape)


class CrossAttention(nn.Module):
  """Pre-norm cross-attention from audio positions to video tokens: (B,X,Y,C) -> same.

  `context` (B,N,D) are prepared video tokens (`VideoTokens`), or None for the unconditional
  model. Queries get the clip-time encoding of their time step (`query_time`, (X,
  CLIP_TIME_DIM)) so that they can match the video tokens' encoding of the same instant.
  A dropped example attends to one learned null token: its keys are all equal (zero), so
  its attention output is exactly the null value, the same as for context=None. The output
  projection is zero-initialised.
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, query_time: jnp.ndarray, context: jnp.ndarray | None,
               drop: jnp.ndarray | None = None) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    b, sx, sy, c = x.shape
    chex.assert_shape(query_time, (sx, CLIP_TIME_DIM))
    h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name='norm')(x)
    pos = _dense(c, self.dtype, 'query_time', use_bias=False)(query_time)
    h = (h + pos[None, :, None, :]).reshape(b, sx * sy, c)
    q = _split_heads(_dense(c, self.dtype, 'q')(h), self.num_heads)
    null_value = self.param('null_value', nn.initializers.normal(0.02), (c,), jnp.float32)
    null_value = _split_heads(null_value.astype(self.dtype)[None, None], self.num_heads)
    if context is None:
      k = jnp.zeros((b, 1, self.num_heads, c // self.num_heads), self.dtype)
      v = jnp.broadcast_to(null_value, k.shape)
    else:
      chex.assert_rank(context, 3)
      chex.assert_axis_dimension(context, 0, b)
      k = _split_heads(_dense(c, self.dtype, 'k')(context), self.num_heads)
      v = _split_heads(_dense(c, self.dtype, 'v')(context), self.num_heads)
      k = _select(drop, jnp.zeros((), self.dtype), k)
      v = _select(drop, null_value, v)
    o = jax.nn.dot_product_attention(q, k, v)
    o = _dense(c, self.dtype, 'out', zero_init=True)(o.reshape(b, sx * sy, c))
    return x.astype(self.dtype) + o.reshape(x.shape)


class VideoTokens(nn.Module):
  """One video scale (B,T_l,S_l,D) -> cross-attention tokens (B,T_l*S_l,D), token (t, s).

  Adds a learned scale embedding (D,), a learned time embedding (T_l,D), a learned spatial
  embedding (S_l,D) and a Dense of the clip-time encoding shared with the audio queries,
  then LayerNorm (pyramid embeddings have no fixed scale). The learned shapes follow the
  video given at init, so initialise the UNet with video scales, not None.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(video, 4)
    b, t, s, d = video.shape
    init = nn.initializers.normal(0.02)
    scale_emb = self.param('scale_embedding', init, (d,), jnp.float32)
    time_emb = self.param('time_embedding', init, (t, d), jnp.float32)
    space_emb = self.param('space_embedding', init, (s, d), jnp.float32)
    clip_time = _dense(d, self.dtype, 'clip_time', use_bias=False)(clip_time_encoding(t, 1, t))
    pos = scale_emb + time_emb[:, None, :] + space_emb[None, :, :]
    x = video.astype(self.dtype) + pos.astype(self.dtype) + clip_time[:, None, :]
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name='norm')(x)
    return x.reshape(b, t * s, d)


class Upsample(nn.Module):
  """Sub-pixel x2 upsampling of (time, mel): (B,X,Y,C) -> (B,2X,2Y,features).

  One Dense to 4*features, rearranged into 2x2 blocks: the transpose of
  `layers.Downsample2D`'s patch merging. At the fine level it costs a ninth of the usual
  nearest-neighbour + 3x3 conv, which on a CPU is a large share of a small UNet's step; the
  ResBlocks that follow mix across the 2x2 block boundaries.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    b, sx, sy, _ = x.shape
    y = _dense(4 * self.features, self.dtype, 'proj')(x)
    y = y.reshape(b, sx, sy, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * sx, 2 * sy, self.features)


class UNet(nn.Module):
  """MSD denoiser: x (B,Ta,F), t (B,), video scales [(B,T_l,S_l,D)] or None -> (B,Ta,F).

  Level i has widths[i] channels at 1/(stem_patch * 2^i) of the input's (time, mel) size.
  Down path: per level `blocks_per_level` ResBlocks, then (levels in `attention_levels`)
  self-attention and cross-attention to video scale `level_scales[i]`, then a stride-2
  downsample; a middle block (ResBlock, self- and cross-attention to scale
  level_scales[-1], ResBlock); an up path that mirrors it, concatenating one down-path
  activation per block. Any Ta and F work: both are zero-padded up to a multiple of
  stem_patch * 2^(levels-1) and the output is cropped back.

  Attributes:
    widths: channels per level.
    attention_levels: indices of the levels with self- and cross-attention.
    level_scales: for each level, the index of the video scale it cross-attends to.
    blocks_per_level: ResBlocks per level on each path.
    num_groups: GroupNorm groups (must divide every width).
    num_heads: attention heads (must divide the widths of attention levels and the last).
    stem_patch: (time, mel) patch of the patchifying stem, undone at the output; its
      size p*q must not exceed widths[0] (the patch embedding must be lossless).
    aligned_conditioning: add the finest scale's per-frame features, resampled onto the
      stem's time grid, to the stem output.
    dtype: compute dtype; parameters and the output are float32.
  """
  widths: Sequence[int]
  attention_levels: Sequence[int]
  level_scales: Sequence[int]
  blocks_per_level: int = 2
  num_groups: int = 8
  num_heads: int = 4
  stem_patch: tuple[int, int] = (1, 1)
  aligned_conditioning: bool = True
  dtype: Dtype = jnp.float32

  def _check_config(self) -> None:
    n = len(self.widths)
    if n == 0:
      raise ValueError('UNet needs at least one level')
    if len(self.level_scales) != n:
      raise ValueError(f'level_scales {tuple(self.level_scales)} must have one entry per '
                       f'level of widths {tuple(self.widths)}')
    bad = [i for i in self.attention_levels if not 0 <= i < n]
    if bad:
      raise ValueError(f'attention_levels {bad} are not levels of widths {tuple(self.widths)}')
    if self.blocks_per_level < 1:
      raise ValueError(f'blocks_per_level must be >= 1, got {self.blocks_per_level}')
    st, sf = tuple(self.stem_patch)
    if st * sf > self.widths[0]:
      # The stem maps each patch to widths[0] features and the output reads a patch back out
      # of them: with fewer features than pixels the prediction is confined to a subspace of
      # each patch, and the rest of the noise can never be predicted.
      raise ValueError(f'stem_patch {(st, sf)} has {st * sf} pixels, more than widths[0] = '
                       f'{self.widths[0]} features: the output could not represent eps')

  @nn.compact
  def __call__(self, x: jnp.ndarray, t: jnp.ndarray,
               video_scales: Sequence[jnp.ndarray] | None,
               drop_condition: jnp.ndarray | None = None) -> jnp.ndarray:
    """Predicts eps or v for x (B,Ta,F) at timesteps t (B,) (index, int or float).

    Args:
      x: (B,Ta,F) noisy normalised log-mel.
      t: (B,) diffusion timestep in steps (e.g. 0..999), integer or float.
      video_scales: [(B,T_l,S_l,D)] for l = 0 (finest) .. L-1 (clip level), or None for the
        unconditional model (same as drop_condition all True).
      drop_condition: optional (B,) bool; True replaces that example's condition by the
        learned nulls (classifier-free guidance).

    Returns:
      (B,Ta,F) float32.
    """
    self._check_config()
    chex.assert_rank([x, t], [3, 1])
    chex.assert_equal_shape_prefix([x, t], 1)
    b, ta, f = x.shape
    n = len(self.widths)
    st, sf = tuple(self.stem_patch)
    act, dt = nn.silu, self.dtype
    if video_scales is not None:
      video_scales = list(video_scales)
      chex.assert_rank(video_scales, 4)
      chex.assert_equal_shape_prefix([x] + video_scales, 1)
      num_scales = len(video_scales)
      bad = [l for l in self.level_scales if not -num_scales <= l < num_scales]
      if bad:
        raise ValueError(f'level_scales {bad} are not among the {num_scales} video scales')
      if drop_condition is not None:
        chex.assert_shape(drop_condition, (b,))
        drop_condition = drop_condition.astype(bool)
    else:
      drop_condition = None  # Everything is dropped anyway.

    # Timestep embedding (ADM: 4x the first width) plus the global clip-level condition.
    emb_dim = 4 * self.widths[0]
    emb = sinusoidal_embedding(t, self.widths[0])
    emb = _dense(emb_dim, dt, 'time_mlp1')(emb)
    emb = _dense(emb_dim, dt, 'time_mlp2')(act(emb))
    null_global = self.param('null_global', nn.initializers.zeros_init(), (emb_dim,),
                             jnp.float32)
    if video_scales is None:
      cond = jnp.broadcast_to(null_global.astype(dt), (b, emb_dim))
    else:
      clip = video_scales[-1].astype(dt).mean(axis=(1, 2))
      clip = nn.LayerNorm(dtype=dt, param_dtype=jnp.float32, name='global_norm')(clip)
      cond = _select(drop_condition, null_global, _dense(emb_dim, dt, 'global_proj')(clip))
    emb = act(emb + cond)  # Activated once; every ResBlock projects it.

    # Cross-attention tokens, prepared once per video scale that some level attends to.
    # Levels with attention: the listed ones and the middle block (at the last level).
    attended = sorted(set(self.attention_levels) | {n - 1})
    tokens = {}
    if video_scales is not None:
      for l in sorted({self.level_scales[i] % len(video_scales) for i in attended}):
        tokens[l] = VideoTokens(dt, name=f'tokens_{l}')(video_scales[l])

    def context(level):
      if video_scales is None:
        return None
      return tokens[self.level_scales[level] % len(video_scales)]

    def attention(h, level, prefix):
      stride = st * 2**level  # Input frames per time step at this level.
      query_time = clip_time_encoding(h.shape[1], stride, ta)
      h = SelfAttention(self.num_heads, self.num_groups, dt, name=f'{prefix}_self_attn')(h)
      return CrossAttention(self.num_heads, dt, name=f'{prefix}_cross_attn')(
          h, query_time, context(level), drop_condition)

    # Pad (zeros = the mean of normalised log-mel) to whole patches at the coarsest level.
    mult_t, mult_f = st * 2**(n - 1), sf * 2**(n - 1)
    h = jnp.pad(x.astype(dt), [(0, 0), (0, -ta % mult_t), (0, -f % mult_f)])[..., None]
    h = layers.Patchify(self.widths[0], (st, sf), dt, name='stem')(h)

    if self.aligned_conditioning:
      # Per-frame features of the finest scale on the stem's time grid, added at every mel
      # bin: onsets in the video become onsets in the audio without going through attention.
      null_aligned = self.param('null_aligned', nn.initializers.zeros_init(),
                                (self.widths[0],), jnp.float32)
      if video_scales is None:
        aligned = jnp.broadcast_to(null_aligned.astype(dt), (b, h.shape[1], self.widths[0]))
      else:
        frames = video_scales[0].astype(dt).mean(axis=2)  # (B,T_0,D)
        frames = nn.LayerNorm(dtype=dt, param_dtype=jnp.float32, name='aligned_norm')(frames)
        frames = _dense(self.widths[0], dt, 'aligned_proj')(frames)
        resample = linear_resample_matrix(h.shape[1], st, ta, frames.shape[1])
        aligned = jnp.einsum('st,btc->bsc', jnp.asarray(resample, dt), frames)
        aligned = _select(drop_condition, null_aligned, aligned)
      h = h + aligned[:, :, None, :]

    # Down path: one skip per ResBlock (the last one after the level's attention).
    skips = []
    for i, width in enumerate(self.widths):
      if i > 0:
        h = layers.Downsample2D(width, self.num_groups, dt, name=f'down{i}')(h)
      for j in range(self.blocks_per_level):
        h = ResBlock(width, self.num_groups, dt, name=f'down{i}_block{j}')(h, emb)
        if i in self.attention_levels and j == self.blocks_per_level - 1:
          h = attention(h, i, f'down{i}')
        skips.append(h)

    h = ResBlock(self.widths[-1], self.num_groups, dt, name='mid_block0')(h, emb)
    h = attention(h, n - 1, 'mid')
    h = ResBlock(self.widths[-1], self.num_groups, dt, name='mid_block1')(h, emb)

    for i in reversed(range(n)):
      width = self.widths[i]
      for j in range(self.blocks_per_level):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = ResBlock(width, self.num_groups, dt, name=f'up{i}_block{j}')(h, emb)
      if i in self.attention_levels:
        h = attention(h, i, f'up{i}')
      if i > 0:
        h = Upsample(self.widths[i - 1], dt, name=f'up{i}_upsample')(h)
    assert not skips

    # Zero-initialised output (standard for diffusion): the untrained model predicts 0. A 1x1
    # conv, so each position's patch is a linear read-out of its features (as DiT's final
    # layer); a 3x3 here cost ~13% of a runlocal step and the ResBlocks already see context.
    h = act(layers.group_norm(self.num_groups, dt, 'norm_out')(h))
    h = _dense(st * sf, dt, 'out_proj', zero_init=True)(h)
    out = unpatchify(h, (st, sf))[:, :ta, :f].astype(jnp.float32)
    chex.assert_shape(out, (b, ta, f))
    return out


def build_unet(config: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> UNet:
  """UNet from config.unet.*; `dtype` is the compute dtype (parameters stay float32)."""
  u = config.unet
  return UNet(
      widths=tuple(u.widths),
      attention_levels=tuple(u.attention_levels),
      level_scales=tuple(u.level_scales),
      blocks_per_level=u.blocks_per_level,
      num_groups=u.num_groups,
      num_heads=u.num_heads,
      stem_patch=tuple(u.stem_patch),
      aligned_conditioning=u.aligned_conditioning,
      dtype=dtype,
  )
