"""Video and audio encoders f_v, f_a (eq. 1), trained from scratch.

Both put time on the same grid of T video frames, so the pyramid can pool the two modalities
with the same factors: video (B,T,H,W,3) -> (B,T,h,w,C); audio (B,Ta,F) -> (B,T,C).
"""

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gmscavp_jax.models import layers

Dtype = Any


def frames_to_float(frames: jnp.ndarray, dtype: Dtype = jnp.float32) -> jnp.ndarray:
  """Maps frames to [-1, 1]: integer frames are read as [0, 255], float frames as [0, 1].

  The only place where pixel normalisation happens (the tf.image.convert_image_dtype
  convention), so the data pipeline may hand over either uint8 or float frames.
  """
  if jnp.issubdtype(frames.dtype, jnp.integer):
    return frames.astype(dtype) * (2.0 / 255.0) - 1.0
  return frames.astype(dtype) * 2.0 - 1.0


def resample_time(x: jnp.ndarray, num_frames: int) -> jnp.ndarray:
  """Resamples (B,Ta,C) features to (B,T,C) with T = num_frames.

  Average pooling when Ta is a multiple of T (each video frame gets exactly its audio
  frames); otherwise linear interpolation with an antialiasing filter, which for Ta > T is a
  triangle-weighted average over each frame's neighbourhood.
  """
  chex.assert_rank(x, 3)
  b, ta, c = x.shape
  if ta == num_frames:
    return x
  if ta % num_frames == 0:
    return x.reshape(b, num_frames, ta // num_frames, c).mean(axis=2)
  return jax.image.resize(x, (b, num_frames, c), method='linear', antialias=True)


class VideoEncoder(nn.Module):
  """(2+1)D conv ResNet: frames (B,T,H,W,3) uint8 or float -> features (B,T,h,w,C).

  h = ceil(H / patch / 2^(len(widths)-1)), C = widths[-1]; H and W must be multiples of
  `patch` (stages pad odd sizes). Time is kept at T (no temporal stride: the pyramid does all
  temporal pooling, so every scale sees frame-accurate features).

  The stem reduces H and W by `patch`: 'patchify' embeds non-overlapping patch x patch
  blocks with one linear map; 'conv' (ConvStem) adds an overlapping stride-2 conv, so an
  object's outline is seen whole wherever the patch grid cuts it.
  """
  patch: int
  widths: Sequence[int]
  blocks_per_stage: int
  num_groups: int
  stem: str = 'patchify'  # 'patchify' or 'conv' (config model.video_stem).
  dtype: Dtype = jnp.float32
  remat: str = 'none'  # jax.checkpoint policy of the residual blocks (layers.remat).

  @nn.compact
  def __call__(self, frames: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(frames, 5)
    chex.assert_axis_dimension(frames, -1, 3)
    b, t = frames.shape[:2]
    x = frames_to_float(frames, self.dtype)
    if self.stem == 'conv':
      x = ConvStem(self.widths[0], self.patch, self.dtype, name='stem')(x)
    else:
      stem = layers.Patchify(self.widths[0], (self.patch, self.patch), self.dtype, name='stem')
      x = layers.per_frame(stem, x)
    for i, width in enumerate(self.widths):
      if i > 0:
        down = layers.Downsample2D(width, self.num_groups, self.dtype, name=f'down{i}')
        x = layers.per_frame(down, x)
      for j in range(self.blocks_per_stage):
        block = layers.remat(layers.ResBlock2Plus1D, self.remat)
        x = block(self.num_groups, self.dtype, name=f'stage{i}_block{j}')(x)
    # A final norm so the features handed to the pyramid have a controlled scale.
    x = nn.gelu(layers.group_norm(self.num_groups, self.dtype, 'norm_out')(x))
    chex.assert_shape(x, (b, t, None, None, self.widths[-1]))
    return x


class ConvStem(nn.Module):
  """Overlapping stem: (B,T,H,W,3) -> (B,T,H/patch,W/patch,features), patch even.

  A (patch/2)-patchify, gelu, then one 3x3 stride-2 conv: each output sees a 3*patch/2
  pixel window that overlaps its neighbours', so a small object's outline reaches one
  feature whole wherever the grid cuts it (a patch-sized patchify splits it). The conv is
  written as im2col (the 9 strided views concatenated on channels) and one Dense: XLA:CPU
  runs the backward pass of a strided conv over every frame several times slower.
  """
  features: int
  patch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 5)
    if self.patch % 2:
      raise ValueError(f'an overlapping stem needs an even patch, got {self.patch}')
    half = self.patch // 2
    x = layers.per_frame(layers.Patchify(self.features, (half, half), self.dtype,
                                         name='patchify'), x)
    x = nn.gelu(x)
    h, w = x.shape[2] // 2, x.shape[3] // 2
    padded = jnp.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
    views = [padded[:, :, dy:dy + 2 * h:2, dx:dx + 2 * w:2] for dy in range(3) for dx in range(3)]
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32,
                    name='conv')(jnp.concatenate(views, axis=-1))


class AudioEncoder(nn.Module):
  """2D conv ResNet over the log-mel "image": (B,Ta,F) -> (B,T,C), C = widths[-1].

  GroupNorm right after the stem conv normalises each clip, so raw log-power input needs no
  dataset statistics. Frequency is mean-pooled at the end and time resampled to T frames.
  """
  widths: Sequence[int]
  blocks_per_stage: int
  num_groups: int
  num_frames: int  # T, the video frame count the output is resampled to.
  # (time, freq) patch of the patchifying stem. Mel bins are many and smooth across
  # neighbours, so a wide frequency patch buys most of the speed at little cost (the patch
  # embedding itself is lossless for p*q <= widths[0]).
  stem_patch: tuple[int, int] = (2, 16)
  dtype: Dtype = jnp.float32
  remat: str = 'none'  # jax.checkpoint policy of the residual blocks (layers.remat).

  @nn.compact
  def __call__(self, log_mel: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(log_mel, 3)
    b = log_mel.shape[0]
    x = log_mel.astype(self.dtype)[..., None]
    st, sf = self.stem_patch
    # Pad the high side up to whole patches by repeating the edge: a zero would be a loud
    # frame in log-power units.
    x = jnp.pad(x, [(0, 0), (0, -x.shape[1] % st), (0, -x.shape[2] % sf), (0, 0)], mode='edge')
    x = layers.Patchify(self.widths[0], (st, sf), self.dtype, name='stem')(x)
    x = layers.group_norm(self.num_groups, self.dtype, 'stem_norm')(x)
    for i, width in enumerate(self.widths):
      if i > 0:
        x = layers.Downsample2D(width, self.num_groups, self.dtype, name=f'down{i}')(x)
      for j in range(self.blocks_per_stage):
        block = layers.remat(layers.ResBlock2D, self.remat)
        x = block(self.num_groups, self.dtype, name=f'stage{i}_block{j}')(x)
    x = nn.gelu(layers.group_norm(self.num_groups, self.dtype, 'norm_out')(x))
    x = resample_time(x.mean(axis=2), self.num_frames)
    chex.assert_shape(x, (b, self.num_frames, self.widths[-1]))
    return x
