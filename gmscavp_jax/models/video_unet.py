"""The a2v denoiser (bidirectional diffusion): a (2+1)D UNet over low-resolution frames,
conditioned on the audio scales of the shared audio encoder.

x (B,T,h,w,3) noisy frames in [-1, 1] (the clip's T frames, area-downsampled to h x w),
t (B,) timestep, audio scales [(B,T_l,1,D)]_l from `GMSCAVP.embed_audio` (l = 0 the finest,
the last the clip level) -> (B,T,h,w,3) eps or v.

It mirrors the MSD UNet (models/unet.py) with the roles of the modalities swapped, and uses
the same blocks (models/unet_blocks.py):
- global: the clip-level audio embedding is added to the timestep embedding;
- cross-attention: levels in `attention_levels` attend from every (frame, pixel) position to
  the tokens of audio scale `level_scales[i]`, with the clip-time encoding of each frame;
- aligned (optional): the finest audio scale's per-frame features are added at every pixel of
  their frame, a direct path from sound onsets to visual events.
Levels halve the frames' height and width but never time: T is short (16 at :runlocal) and
frame-accurate timing is what the audio can tell the video. ResBlocks are (2+1)D (a 3x3 conv
of each frame, then a width-3 conv over time) with GroupNorm over the whole clip.

Classifier-free guidance as in the UNet: `drop_condition` (B,) or audio_scales=None select
learned nulls. `dtype` is the compute dtype; params and the output are float32.
"""

import functools
from typing import Any, Callable, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from gmscavp_jax.models import clip_time
from gmscavp_jax.models import layers
from gmscavp_jax.models import unet_blocks as blocks

Dtype = Any


class VideoUNet(nn.Module):
  """a2v denoiser: x (B,T,h,w,3), t (B,), audio scales [(B,T_l,1,D)] or None -> same as x.

  Level i has widths[i] channels at 1/(stem_patch * 2^i) of the frames' height and width.
  Down path: per level `blocks_per_level` (2+1)D ResBlocks, then (levels in
  `attention_levels`) self-attention over all of the clip's positions and cross-attention to
  audio scale `level_scales[i]`, then a spatial stride-2 downsample; a middle block; an up
  path that mirrors it with skips. Any h and w work: frames are zero-padded up to a multiple
  of stem_patch * 2^(levels-1) and the output is cropped back.

  Attributes:
    widths: channels per level.
    attention_levels: indices of the levels with self- and cross-attention.
    level_scales: for each level, the index of the audio scale it cross-attends to.
    blocks_per_level: ResBlocks per level on each path.
    num_groups: GroupNorm groups (must divide every width).
    num_heads: attention heads (must divide the widths of attention levels and the last).
    stem_patch: side of the square patch of the patchifying stem, undone at the output;
      3 * stem_patch^2 must not exceed widths[0] (the patch embedding must be lossless).
    aligned_conditioning: add the finest audio scale's per-frame features at every pixel.
    mel_frames: Ta, the log-mel frames per clip that the audio scales pool (an audio scale of
      T_l steps pools Ta / T_l of them a step), which places audio tokens and video frames
      on one clip-time axis (clip_time.clip_time_fractions); None: the finest scale's
      length.
    dtype: compute dtype; parameters and the output are float32.
    remat: jax.checkpoint policy of the ResBlocks (layers.remat).
  """
  widths: Sequence[int]
  attention_levels: Sequence[int]
  level_scales: Sequence[int]
  blocks_per_level: int = 1
  num_groups: int = 8
  num_heads: int = 4
  stem_patch: int = 2
  aligned_conditioning: bool = True
  mel_frames: int | None = None
  dtype: Dtype = jnp.float32
  remat: str = 'none'

  def _check_config(self) -> None:
    n = len(self.widths)
    if n == 0 or len(self.level_scales) != n:
      raise ValueError(f'VideoUNet needs one level_scales entry per level: widths '
                       f'{tuple(self.widths)}, level_scales {tuple(self.level_scales)}')
    bad = [i for i in self.attention_levels if not 0 <= i < n]
    if bad:
      raise ValueError(f'attention_levels {bad} are not levels of widths {tuple(self.widths)}')
    if 3 * self.stem_patch**2 > self.widths[0]:
      raise ValueError(f'stem_patch {self.stem_patch} has {3 * self.stem_patch**2} values per '
                       f'patch, more than widths[0] = {self.widths[0]} features: the output '
                       'could not represent eps')

  @nn.compact
  def __call__(self, x: jnp.ndarray, t: jnp.ndarray,
               audio_scales: Sequence[jnp.ndarray] | None,
               drop_condition: jnp.ndarray | None = None) -> jnp.ndarray:
    """Predicts eps or v for frames x (B,T,h,w,3) at timesteps t (B,).

    Args:
      x: (B,T,h,w,3) noisy frames (clean frames live in [-1, 1]).
      t: (B,) diffusion timestep in steps, integer or float.
      audio_scales: [(B,T_l,S_l,D)] for l = 0 (finest) .. L-1 (clip level), or None for the
        unconditional model (same as drop_condition all True).
      drop_condition: optional (B,) bool; True selects the learned nulls for that example.

    Returns:
      (B,T,h,w,3) float32.
    """
    self._check_config()
    chex.assert_rank([x, t], [5, 1])
    chex.assert_equal_shape_prefix([x, t], 1)
    audio_scales, drop_condition = blocks.check_condition(
        x, audio_scales, self.level_scales, drop_condition, 'audio')
    dt = self.dtype
    emb = blocks.condition_embedding(self, t, blocks.clip_condition(audio_scales, dt),
                                     drop_condition, self.widths[0], dt)
    context = blocks.cross_attention_contexts(audio_scales, self.level_scales,
                                              self.attention_levels, dt, self.mel_frames)
    h = self._stem(x, audio_scales, drop_condition)
    # Resolution changes act on each frame; time is never pooled.
    h = blocks.unet_trunk(
        h, emb, widths=self.widths, attention_levels=self.attention_levels,
        blocks_per_level=self.blocks_per_level, num_groups=self.num_groups, dtype=dt,
        res_block=layers.remat(blocks.ResBlock, self.remat),
        attention=functools.partial(self._attention, context=context,
                                    drop_condition=drop_condition),
        down=lambda width, name: functools.partial(
            layers.per_frame, layers.Downsample2D(width, self.num_groups, dt, name=name)),
        up=lambda width, name: functools.partial(
            layers.per_frame, blocks.Upsample(width, dt, name=name)))
    return self._read_out(h, x.shape)

  # The parts of __call__ are nowrap: their ops stay in the module's profiler scope, so
  # profiles attribute them to the blocks by name (infra/profiling).
  @nn.nowrap
  def _stem(self, x: jnp.ndarray, audio_scales: list[jnp.ndarray] | None,
            drop_condition: jnp.ndarray | None) -> jnp.ndarray:
    """x (B,T,h,w,3) -> patch features (B,T,h',w',widths[0]), plus the aligned condition."""
    b, num_frames, height, width, _ = x.shape
    n, p, dt = len(self.widths), self.stem_patch, self.dtype
    mult = p * 2**(n - 1)
    h = jnp.pad(x.astype(dt), [(0, 0), (0, 0), (0, -height % mult), (0, -width % mult),
                               (0, 0)])
    h = layers.per_frame(layers.Patchify(self.widths[0], (p, p), dt, name='stem'), h)
    if self.aligned_conditioning:
      aligned = blocks.aligned_condition(
          self, None if audio_scales is None else audio_scales[0], drop_condition,
          num_frames, 1, num_frames, self.widths[0], dt, b, self.mel_frames)
      h = h + aligned[:, :, None, None, :]
    return h

  @nn.nowrap
  def _attention(self, h: jnp.ndarray, level: int, prefix: str, *, context: Callable,
                 drop_condition: jnp.ndarray | None) -> jnp.ndarray:
    """Self-attention over all of the clip's positions of h (B,T,h',w',C), then
    cross-attention to context(level)."""
    # Every level keeps all T frames: frame i sits at the same clip time at every level.
    num_frames = h.shape[1]
    query_time = clip_time.clip_time_encoding(num_frames, 1, num_frames)
    # (B,T,h',w',C) as (B,T,h'*w',C): attention's axis 1 is time, as for the audio UNet.
    shape = h.shape
    h = h.reshape(shape[:2] + (shape[2] * shape[3], shape[4]))
    h = blocks.SelfAttention(self.num_heads, self.num_groups, self.dtype,
                             name=f'{prefix}_self_attn')(h)
    h = blocks.CrossAttention(self.num_heads, self.dtype, name=f'{prefix}_cross_attn')(
        h, query_time, context(level), drop_condition)
    return h.reshape(shape)

  @nn.nowrap
  def _read_out(self, h: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
    """Features (B,T,h',w',widths[0]) -> the prediction (B,T,h,w,3) float32, `shape` = x's."""
    b, num_frames, height, width, channels = shape
    p = self.stem_patch
    # Zero-initialised 1x1 read-out of each stem patch's p x p x 3 values (as the UNet's).
    h = nn.silu(layers.group_norm(self.num_groups, self.dtype, 'norm_out')(h))
    h = blocks.dense(p * p * channels, self.dtype, 'out_proj', zero_init=True)(h)
    gh, gw = h.shape[2:4]
    h = h.reshape(b, num_frames, gh, gw, p, p, channels).transpose(0, 1, 2, 4, 3, 5, 6)
    out = h.reshape(b, num_frames, gh * p, gw * p, channels)[:, :, :height, :width]
    out = out.astype(jnp.float32)
    chex.assert_shape(out, shape)
    return out


def build_video_unet(config: ml_collections.ConfigDict, dtype: Dtype = jnp.float32,
                     remat: str = 'none', *, mel_frames: int) -> VideoUNet:
  """VideoUNet from config.a2v.*; `dtype` is the compute dtype (params stay float32),
  `mel_frames` the clip's log-mel frames Ta (core.steps.num_mel_frames: models/ does not read
  the audio front end)."""
  a = config.a2v
  return VideoUNet(
      widths=tuple(a.widths),
      attention_levels=tuple(a.attention_levels),
      level_scales=level_scales(config),
      blocks_per_level=a.blocks_per_level,
      num_groups=a.num_groups,
      num_heads=a.num_heads,
      stem_patch=a.stem_patch,
      aligned_conditioning=a.aligned_conditioning,
      mel_frames=mel_frames,
      dtype=dtype,
      remat=remat,
  )


def level_scales(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """config.a2v.level_scales, or when empty min(i, L-2) for level i of L audio scales."""
  if config.a2v.level_scales:
    return tuple(config.a2v.level_scales)
  num_scales = len(config.model.scale_pools)
  return tuple(min(i, max(num_scales - 2, 0)) for i in range(len(config.a2v.widths)))
