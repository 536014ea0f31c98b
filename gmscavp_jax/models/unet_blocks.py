"""Building blocks of the denoisers (models/unet.py, models/video_unet.py): embeddings, the
condition paths, ResBlock, attention.

`dtype` is the compute dtype; parameters are always float32.
"""

from typing import Any, Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.models import attention
from gmscavp_jax.models import clip_time
from gmscavp_jax.models import conv
from gmscavp_jax.models import layers

Dtype = Any


def unpatchify(x: jnp.ndarray, patch: tuple[int, int]) -> jnp.ndarray:
  """Inverse of `layers.Patchify`'s reshape for one channel: (B,X,Y,p*q) -> (B,X*p,Y*q)."""
  chex.assert_rank(x, 4)
  b, sx, sy, _ = x.shape
  p, q = patch
  chex.assert_axis_dimension(x, 3, p * q)
  x = x.reshape(b, sx, sy, p, q).transpose(0, 1, 3, 2, 4)
  return x.reshape(b, sx * p, sy * q)


def conv3x3(features: int, dtype: Dtype, name: str, zero_init: bool = False) -> conv.Conv3x3:
  kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return conv.Conv3x3(features, dtype=dtype, kernel_init=kernel_init, name=name)


def dense(features: int, dtype: Dtype, name: str, zero_init: bool = False,
           use_bias: bool = True) -> nn.Dense:
  kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.lecun_normal()
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                  use_bias=use_bias, name=name)


def select_null(drop: jnp.ndarray | None, null: jnp.ndarray, value: jnp.ndarray) -> jnp.ndarray:
  """Per example: `null` where drop[b] else `value`. drop (B,); value (B,...); null broadcasts.

  A select, so a dropped example's gradient w.r.t. `value` is exactly zero.
  """
  if drop is None:
    return value
  mask = drop.reshape((-1,) + (1,) * (value.ndim - 1))
  return jnp.where(mask, null.astype(value.dtype), value)


def check_condition(x: jnp.ndarray, scales: Sequence[jnp.ndarray] | None,
                    level_scales: Sequence[int], drop: jnp.ndarray | None, modality: str
                    ) -> tuple[list[jnp.ndarray] | None, jnp.ndarray | None]:
  """Checks a denoiser's condition against its input x (B,...); returns (scales, drop).

  `scales` [(B,T_l,S_l,D)] of the conditioning `modality` ('video' or 'audio') must hold
  every scale in `level_scales`; drop (B,) comes back as bool, or None when `scales` is None
  (the unconditional model drops everything anyway).
  """
  if scales is None:
    return None, None
  scales = list(scales)
  chex.assert_rank(scales, 4)
  chex.assert_equal_shape_prefix([x] + scales, 1)
  bad = [l for l in level_scales if not -len(scales) <= l < len(scales)]
  if bad:
    raise ValueError(f'level_scales {bad} are not among the {len(scales)} {modality} scales')
  if drop is not None:
    chex.assert_shape(drop, (x.shape[0],))
    drop = drop.astype(bool)
  return scales, drop


def clip_condition(scales: Sequence[jnp.ndarray] | None, dtype: Dtype) -> jnp.ndarray | None:
  """The clip-level embedding (B,D): the last (coarsest) scale's mean over its tokens."""
  return None if scales is None else scales[-1].astype(dtype).mean(axis=(1, 2))


def cross_attention_contexts(scales: Sequence[jnp.ndarray] | None, level_scales: Sequence[int],
                             attention_levels: Sequence[int], dtype: Dtype,
                             samples: int | None = None) -> Callable[[int], jnp.ndarray | None]:
  """context(level) -> the tokens (B,T_l*S_l,D) that `level` cross-attends to, or None.

  The tokens of each scale that a level with attention (one in `attention_levels`, or the
  middle block at the last level) attends to are made once, by `VideoTokens` modules named
  tokens_{l} in the calling module; `samples` is the condition's samples per clip (see
  `VideoTokens`).
  """
  if scales is None:
    return lambda level: None
  attended = sorted(set(attention_levels) | {len(level_scales) - 1})
  tokens = {}
  for l in sorted({level_scales[i] % len(scales) for i in attended}):
    tokens[l] = VideoTokens(dtype, samples, name=f'tokens_{l}')(scales[l])
  return lambda level: tokens[level_scales[level] % len(scales)]


def condition_embedding(module: nn.Module, t: jnp.ndarray, clip: jnp.ndarray | None,
                        drop: jnp.ndarray | None, width: int, dtype: Dtype,
                        labels: jnp.ndarray | None = None) -> jnp.ndarray:
  """The activated embedding (B, 4*width) that every ResBlock of a denoiser receives.

  The timestep t (B,)'s sinusoidal embedding through a 2-layer MLP (ADM), plus the global
  condition: a projection of `clip` (B,D), the clip-level embedding of the conditioning
  modality, or the learned null where drop (B,) is True (everywhere when `clip` is None).
  Called inside `module`'s compact method: the params (time_mlp1, time_mlp2, null_global,
  global_norm, global_proj) are `module`'s own. `labels` (B,K), the label oracle's multi-hot
  classes (unet.label_condition), are projected (label_proj) and added to a kept condition.
  """
  emb_dim = 4 * width
  emb = clip_time.sinusoidal_embedding(t, width)
  emb = dense(emb_dim, dtype, 'time_mlp1')(emb)
  emb = dense(emb_dim, dtype, 'time_mlp2')(nn.silu(emb))
  null_global = module.param('null_global', nn.initializers.zeros_init(), (emb_dim,),
                             jnp.float32)
  if clip is None:
    cond = jnp.broadcast_to(null_global.astype(dtype), (t.shape[0], emb_dim))
  else:
    clip = nn.LayerNorm(dtype=dtype, param_dtype=jnp.float32, name='global_norm')(
        clip.astype(dtype))
    cond = dense(emb_dim, dtype, 'global_proj')(clip)
    if labels is not None:
      cond = cond + dense(emb_dim, dtype, 'label_proj')(labels.astype(dtype))
    cond = select_null(drop, null_global, cond)
  return nn.silu(emb + cond)  # Activated once; every ResBlock projects it.


def aligned_condition(module: nn.Module, scale: jnp.ndarray | None, drop: jnp.ndarray | None,
                      num_steps: int, stride: float, length: float, width: int,
                      dtype: Dtype, batch: int, samples: int | None = None) -> jnp.ndarray:
  """(B, num_steps, width): the finest condition scale on the denoiser's time grid.

  `scale` (B,T_0,S,D) (T_0 tokens pooled from `samples` condition samples per clip; None:
  T_0) is averaged over its tokens, normalised, projected to `width` and linearly resampled
  (`clip_time.linear_resample_matrix`) onto `num_steps` steps of `stride` frames each of a clip of
  `length` frames: a direct path for event timing that bypasses attention.
  The learned null where drop (B,) is True (everywhere when `scale` is None). Params
  (null_aligned, aligned_norm, aligned_proj) are `module`'s own.
  """
  null_aligned = module.param('null_aligned', nn.initializers.zeros_init(), (width,),
                              jnp.float32)
  if scale is None:
    return jnp.broadcast_to(null_aligned.astype(dtype), (batch, num_steps, width))
  frames = scale.astype(dtype).mean(axis=2)  # (B,T_0,D)
  frames = nn.LayerNorm(dtype=dtype, param_dtype=jnp.float32, name='aligned_norm')(frames)
  frames = dense(width, dtype, 'aligned_proj')(frames)
  resample = clip_time.linear_resample_matrix(num_steps, stride, length, frames.shape[1], samples)
  aligned = jnp.einsum('st,btc->bsc', jnp.asarray(resample, dtype), frames)
  return select_null(drop, null_aligned, aligned)


def unet_trunk(h: jnp.ndarray, emb: jnp.ndarray, *, widths, attention_levels,
               blocks_per_level: int, num_groups: int, dtype: Dtype, res_block, attention,
               down, up) -> jnp.ndarray:
  """The down / middle / up path both denoisers share, on the stem's output h.

  Down: per level `blocks_per_level` ResBlocks (one skip each, the last after the level's
  attention in `attention_levels`), then `down(width, name)(h)` into the next level; middle:
  ResBlock, attention at the last level, ResBlock; up: mirrored, each ResBlock on the
  concatenated skip, then attention, then `up(width, name)(h)` back to the finer level.
  `attention(h, level, prefix)` applies a level's self- and cross-attention. Modules are
  created (with these names) in the caller's module. Returns the finest level's features.
  """
  n = len(widths)
  skips = []
  for i, width in enumerate(widths):
    if i > 0:
      h = down(width, f'down{i}')(h)
    for j in range(blocks_per_level):
      h = res_block(width, num_groups, dtype, name=f'down{i}_block{j}')(h, emb)
      if i in attention_levels and j == blocks_per_level - 1:
        h = attention(h, i, f'down{i}')
      skips.append(h)

  h = res_block(widths[-1], num_groups, dtype, name='mid_block0')(h, emb)
  h = attention(h, n - 1, 'mid')
  h = res_block(widths[-1], num_groups, dtype, name='mid_block1')(h, emb)

  for i in reversed(range(n)):
    for j in range(blocks_per_level):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = res_block(widths[i], num_groups, dtype, name=f'up{i}_block{j}')(h, emb)
    if i in attention_levels:
      h = attention(h, i, f'up{i}')
    if i > 0:
      h = up(widths[i - 1], f'up{i}_upsample')(h)
  assert not skips
  return h


class ResBlock(nn.Module):
  """Residual block with embedding injection: (B,X,Y,C), emb (B,E) -> (B,X,Y,features).

  GN -> silu -> conv3x3, plus a Dense projection of the (already activated) embedding, then
  GN -> silu -> conv3x3; the skip is the identity or a 1x1 projection when C != features.
  A video (B,T,H,W,C) gets the (2+1)D version: conv1 a 3x3 conv of each frame, conv2 a
  temporal conv of width 3 at each pixel, GroupNorm statistics over the whole clip.
  """
  features: int
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, emb: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, {4, 5})
    chex.assert_rank(emb, 2)
    chex.assert_equal_shape_prefix([x, emb], 1)
    if x.ndim == 5:
      conv1 = layers.SpatialConv(self.features, 3, dtype=self.dtype, name='conv1')
      conv2 = layers.TemporalConv(self.features, 3, self.dtype, name='conv2')
    else:
      conv1 = conv3x3(self.features, self.dtype, 'conv1')
      conv2 = conv3x3(self.features, self.dtype, 'conv2')
    h = nn.silu(layers.group_norm(self.num_groups, self.dtype, 'norm1')(x))
    h = conv1(h)
    proj = dense(self.features, self.dtype, 'emb_proj')(emb)
    h = h + proj.reshape(proj.shape[:1] + (1,) * (x.ndim - 2) + proj.shape[1:])
    h = nn.silu(layers.group_norm(self.num_groups, self.dtype, 'norm2')(h))
    h = conv2(h)
    skip = x if x.shape[-1] == self.features else dense(self.features, self.dtype, 'skip')(x)
    return skip.astype(self.dtype) + h


def split_heads(x: jnp.ndarray, num_heads: int) -> jnp.ndarray:
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
    q, k, v = jnp.split(dense(3 * c, self.dtype, 'qkv')(h), 3, axis=-1)
    o = attention.attend(*(split_heads(a, self.num_heads) for a in (q, k, v)))
    o = dense(c, self.dtype, 'out', zero_init=True)(o.reshape(b, sx * sy, c))
    return x.astype(self.dtype) + o.reshape(x.shape)


class CrossAttention(nn.Module):
  """Pre-norm cross-attention from audio positions to video tokens: (B,X,Y,C) -> same.

  `context` (B,N,D) are prepared video tokens (`VideoTokens`), or None for the unconditional
  model. Queries get the clip-time encoding of their time step (`query_time`, (X,
  clip_time.CLIP_TIME_DIM)) so that they can match the video tokens' encoding of the same instant.
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
    chex.assert_shape(query_time, (sx, clip_time.CLIP_TIME_DIM))
    h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name='norm')(x)
    pos = dense(c, self.dtype, 'query_time', use_bias=False)(query_time)
    h = (h + pos[None, :, None, :]).reshape(b, sx * sy, c)
    q = split_heads(dense(c, self.dtype, 'q')(h), self.num_heads)
    null_value = self.param('null_value', nn.initializers.normal(0.02), (c,), jnp.float32)
    null_value = split_heads(null_value.astype(self.dtype)[None, None], self.num_heads)
    if context is None:
      k = jnp.zeros((b, 1, self.num_heads, c // self.num_heads), self.dtype)
      v = jnp.broadcast_to(null_value, k.shape)
    else:
      chex.assert_rank(context, 3)
      chex.assert_axis_dimension(context, 0, b)
      k = split_heads(dense(c, self.dtype, 'k')(context), self.num_heads)
      v = split_heads(dense(c, self.dtype, 'v')(context), self.num_heads)
      k = select_null(drop, jnp.zeros((), self.dtype), k)
      v = select_null(drop, null_value, v)
    o = attention.attend(q, k, v)
    o = dense(c, self.dtype, 'out', zero_init=True)(o.reshape(b, sx * sy, c))
    return x.astype(self.dtype) + o.reshape(x.shape)


class VideoTokens(nn.Module):
  """One scale (B,T_l,S_l,D) -> cross-attention tokens (B,T_l*S_l,D), token (t, s).

  A video scale for the MSD UNet, an audio scale (S_l = 1) for the a2v VideoUNet.

  Adds a learned scale embedding (D,), a learned time embedding (T_l,D), a learned spatial
  embedding (S_l,D) and a Dense of the clip-time encoding shared with the audio queries,
  then LayerNorm (pyramid embeddings have no fixed scale). The learned shapes follow the
  video given at init, so initialise the UNet with video scales, not None.

  Attributes:
    dtype: compute dtype.
    samples: samples per clip of the modality the scale pools (video frames T; log-mel frames
      Ta for audio scales), which places token t at the mean instant of the samples it pools
      (`clip_time.clip_time_fractions` with stride samples / T_l); None: the T_l tokens are the
      samples.
  """
  dtype: Dtype = jnp.float32
  samples: int | None = None

  @nn.compact
  def __call__(self, video: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(video, 4)
    b, t, s, d = video.shape
    init = nn.initializers.normal(0.02)
    scale_emb = self.param('scale_embedding', init, (d,), jnp.float32)
    time_emb = self.param('time_embedding', init, (t, d), jnp.float32)
    space_emb = self.param('space_embedding', init, (s, d), jnp.float32)
    samples = t if self.samples is None else self.samples
    time_code = dense(d, self.dtype, 'clip_time', use_bias=False)(
        clip_time.clip_time_encoding(t, samples / t, samples))
    pos = scale_emb + time_emb[:, None, :] + space_emb[None, :, :]
    x = video.astype(self.dtype) + pos.astype(self.dtype) + time_code[:, None, :]
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
    y = dense(4 * self.features, self.dtype, 'proj')(x)
    y = y.reshape(b, sx, sy, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * sx, 2 * sy, self.features)
