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

import functools
from typing import Any, Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gmscavp_jax.models import clip_time
from gmscavp_jax.models import layers
from gmscavp_jax.models import unet_blocks as blocks

Dtype = Any

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
    video_frames: T, the video frames per clip that the scales pool, which places video
      tokens and audio steps on one clip-time axis (clip_time.clip_time_fractions);
      None: the finest scale's length.
    dtype: compute dtype; parameters and the output are float32.
    num_label_classes: K > 0 turns on the label oracle (unet.label_condition): the clip's
      multi-hot classes (B,K) join the global condition; 0 = off (no extra params).
    pixel_skip: add g * x to the prediction, g (B,F) a zero-initialised projection of the
      embedding (one coefficient per mel bin): a per-pixel path from the input to the output
      that a patch stem with as many pixels as channels lacks (unet.pixel_skip).
  """
  widths: Sequence[int]
  attention_levels: Sequence[int]
  level_scales: Sequence[int]
  blocks_per_level: int = 2
  num_groups: int = 8
  num_heads: int = 4
  stem_patch: tuple[int, int] = (1, 1)
  aligned_conditioning: bool = True
  video_frames: int | None = None
  dtype: Dtype = jnp.float32
  remat: str = 'none'  # jax.checkpoint policy of the ResBlocks (layers.remat).
  num_label_classes: int = 0
  pixel_skip: bool = False

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
               drop_condition: jnp.ndarray | None = None,
               labels: jnp.ndarray | None = None) -> jnp.ndarray:
    """Predicts eps or v for x (B,Ta,F) at timesteps t (B,) (index, int or float).

    Args:
      x: (B,Ta,F) noisy normalised log-mel.
      t: (B,) diffusion timestep in steps (e.g. 0..999), integer or float.
      video_scales: [(B,T_l,S_l,D)] for l = 0 (finest) .. L-1 (clip level), or None for the
        unconditional model (same as drop_condition all True).
      drop_condition: optional (B,) bool; True replaces that example's condition by the
        learned nulls (classifier-free guidance).
      labels: (B,K) multi-hot true classes, required with num_label_classes = K > 0 whenever
        video_scales are given (the label oracle); dropped with the rest of the condition.

    Returns:
      (B,Ta,F) float32.
    """
    self._check_config()
    chex.assert_rank([x, t], [3, 1])
    chex.assert_equal_shape_prefix([x, t], 1)
    video_scales, drop_condition = blocks.check_condition(
        x, video_scales, self.level_scales, drop_condition, 'video')
    dt = self.dtype
    if self.num_label_classes and video_scales is not None:
      if labels is None:
        raise ValueError(f'the label oracle (num_label_classes={self.num_label_classes}) '
                         'needs labels (B,K) beside the video condition')
      chex.assert_shape(labels, (x.shape[0], self.num_label_classes))
    else:
      labels = None
    # Timestep embedding (ADM: 4x the first width) plus the global clip-level condition.
    emb = blocks.condition_embedding(self, t, blocks.clip_condition(video_scales, dt),
                                     drop_condition, self.widths[0], dt, labels)
    context = blocks.cross_attention_contexts(video_scales, self.level_scales,
                                              self.attention_levels, dt, self.video_frames)
    h = self._stem(x, video_scales, drop_condition)
    h = blocks.unet_trunk(
        h, emb, widths=self.widths, attention_levels=self.attention_levels,
        blocks_per_level=self.blocks_per_level, num_groups=self.num_groups, dtype=dt,
        res_block=layers.remat(blocks.ResBlock, self.remat),
        attention=functools.partial(self._attention, context=context,
                                    drop_condition=drop_condition, length=x.shape[1]),
        down=lambda width, name: layers.Downsample2D(width, self.num_groups, dt, name=name),
        up=lambda width, name: blocks.Upsample(width, dt, name=name))
    out = self._read_out(h, x.shape)
    if self.pixel_skip:
      gain = blocks.dense(x.shape[-1], dt, 'pixel_skip', zero_init=True)(emb)
      out = out + (gain[:, None, :] * x.astype(dt)).astype(jnp.float32)
    return out

  # The parts of __call__ are nowrap: their ops stay in the module's profiler scope, so
  # profiles attribute them to the blocks by name (infra/profiling).
  @nn.nowrap
  def _stem(self, x: jnp.ndarray, video_scales: list[jnp.ndarray] | None,
            drop_condition: jnp.ndarray | None) -> jnp.ndarray:
    """x (B,Ta,F) -> patch features (B,Ta',F',widths[0]), plus the aligned condition."""
    b, ta, f = x.shape
    st, sf = tuple(self.stem_patch)
    n, dt = len(self.widths), self.dtype
    # Pad (zeros = the mean of normalised log-mel) to whole patches at the coarsest level.
    mult_t, mult_f = st * 2**(n - 1), sf * 2**(n - 1)
    h = jnp.pad(x.astype(dt), [(0, 0), (0, -ta % mult_t), (0, -f % mult_f)])[..., None]
    h = layers.Patchify(self.widths[0], (st, sf), dt, name='stem')(h)
    if self.aligned_conditioning:
      # Per-frame features of the finest scale on the stem's time grid, added at every mel
      # bin: onsets in the video become onsets in the audio without going through attention.
      aligned = blocks.aligned_condition(
          self, None if video_scales is None else video_scales[0], drop_condition,
          h.shape[1], st, ta, self.widths[0], dt, b, self.video_frames)
      h = h + aligned[:, :, None, :]
    return h

  @nn.nowrap
  def _attention(self, h: jnp.ndarray, level: int, prefix: str, *, context: Callable,
                 drop_condition: jnp.ndarray | None, length: int) -> jnp.ndarray:
    """Self-attention, then cross-attention to context(level), of h (B,Ta',F',C) at `level`
    (queries carry the clip time of their step in a clip of `length` input frames)."""
    stride = self.stem_patch[0] * 2**level  # Input frames per time step at this level.
    query_time = clip_time.clip_time_encoding(h.shape[1], stride, length)
    h = blocks.SelfAttention(self.num_heads, self.num_groups, self.dtype,
                             name=f'{prefix}_self_attn')(h)
    return blocks.CrossAttention(self.num_heads, self.dtype, name=f'{prefix}_cross_attn')(
        h, query_time, context(level), drop_condition)

  @nn.nowrap
  def _read_out(self, h: jnp.ndarray, shape: tuple[int, int, int]) -> jnp.ndarray:
    """Features (B,Ta',F',widths[0]) -> the prediction (B,Ta,F) float32, `shape` = x's."""
    st, sf = tuple(self.stem_patch)
    b, ta, f = shape
    # Zero-initialised output (standard for diffusion): the untrained model predicts 0. A 1x1
    # conv, so each position's patch is a linear read-out of its features (as DiT's final
    # layer); a 3x3 here cost ~13% of a runlocal step and the ResBlocks already see context.
    h = nn.silu(layers.group_norm(self.num_groups, self.dtype, 'norm_out')(h))
    h = blocks.dense(st * sf, self.dtype, 'out_proj', zero_init=True)(h)
    out = blocks.unpatchify(h, (st, sf))[:, :ta, :f].astype(jnp.float32)
    chex.assert_shape(out, (b, ta, f))
    return out


# unet.batch_chunk = -1: chunks of this many examples on a single CPU device (the best of 4,
# 8, 16 and the whole batch of 32 for the runlocal step, docs/speed.md), the whole batch on
# accelerators, whose kernels want the batch.
AUTO_CPU_CHUNK = 8


def batch_chunk(setting: int) -> int:
  """Examples per UNet call for unet.batch_chunk = `setting`: 0 the whole batch, N > 0
  chunks of N, -1 (auto) `AUTO_CPU_CHUNK` on one CPU device and the whole batch otherwise."""
  if setting == -1:
    return AUTO_CPU_CHUNK if jax.default_backend() == 'cpu' and jax.device_count() == 1 else 0
  return setting


def apply_in_chunks(apply_fn: Callable, chunk: int, x: jnp.ndarray, t: jnp.ndarray,
                    video_scales: Sequence[jnp.ndarray] | None, **per_example) -> jnp.ndarray:
  """apply_fn(x, t, video_scales, **per_example) -> (B,Ta,F), called on consecutive chunks of
  `chunk` examples (the last may be shorter) and concatenated; one call when chunk is 0 or
  >= B. `per_example` holds the (B,...) keyword arrays (drop_condition, labels) or None.

  The UNet mixes no examples (GroupNorm and attention are per example), so the output is the
  same function of each example; only the program differs. On a CPU a chunk's activations
  stay in cache: the runlocal training step at batch 32 in chunks of 8 took 92 ms against
  116 ms in one call (docs/speed.md). Its gradient is the sum of the chunks' gradients.
  """
  b = x.shape[0]
  if not chunk or chunk >= b:
    return apply_fn(x, t, video_scales, **per_example)
  outs = []
  for start in range(0, b, chunk):
    part = lambda a, s=start: None if a is None else a[s:s + chunk]
    scales = None if video_scales is None else [part(v) for v in video_scales]
    outs.append(apply_fn(part(x), part(t), scales,
                         **{k: part(v) for k, v in per_example.items()}))
  return jnp.concatenate(outs)


def build_unet(config: ml_collections.ConfigDict, dtype: Dtype = jnp.float32,
               remat: str = 'none') -> UNet:
  """UNet from config.unet.*; `dtype` is the compute dtype (parameters stay float32),
  `remat` the jax.checkpoint policy of its ResBlocks (layers.remat)."""
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
      video_frames=config.data.num_frames,
      dtype=dtype,
      remat=remat,
      num_label_classes=config.data.num_classes if u.label_condition else 0,
      pixel_skip=u.pixel_skip,
  )
