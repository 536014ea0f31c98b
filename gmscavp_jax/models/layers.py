"""Shared building blocks: (2+1)D and 2D residual blocks, a downsampler, a projection head.

Every block is pre-activation (GroupNorm -> gelu -> conv) with an identity skip, so the
residual stream is never normalised away and deep stacks start close to the identity.
GroupNorm statistics are per example (never across the batch), which keeps contrastive
negatives independent of how the batch is split over devices.

`dtype` is the compute dtype; parameters are always float32.
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# What a rematerialised block keeps for the backward pass (config train.remat).
_REMAT_POLICIES = {'full': None, 'save_dots': jax.checkpoint_policies.checkpoint_dots}


def remat(block_cls: type[nn.Module], policy: str) -> type[nn.Module]:
  """`block_cls` under jax.checkpoint: 'none' (unchanged), 'full' (recompute everything in
  the backward pass) or 'save_dots' (keep matmul outputs, recompute the rest).

  Callers pass an explicit `name=` to every block, so param paths are the same with and
  without remat and checkpoints load across the switch.
  """
  if policy == 'none':
    return block_cls
  return nn.remat(block_cls, policy=_REMAT_POLICIES[policy])


def per_frame(fn, x: jnp.ndarray) -> jnp.ndarray:
  """Applies a (N,H,W,C) -> (N,H',W',C') function to every frame of (B,T,H,W,C)."""
  b, t = x.shape[:2]
  y = fn(x.reshape((b * t,) + x.shape[2:]))
  return y.reshape((b, t) + y.shape[1:])


def group_norm(num_groups: int, dtype: Dtype, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm over all non-batch axes of each group (per example, per clip for video)."""
  return nn.GroupNorm(num_groups=num_groups, dtype=dtype, param_dtype=jnp.float32, name=name)


class SpatialConv(nn.Module):
  """Per-frame 2D conv: (B,T,H,W,C) -> (B,T,H',W',features).

  Frames are folded into the batch so XLA runs an ordinary 2D convolution.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  padding: str = 'SAME'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 5)
    b, t = x.shape[:2]
    y = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                padding=self.padding, dtype=self.dtype, param_dtype=jnp.float32,
                name='conv')(x.reshape((b * t,) + x.shape[2:]))
    return y.reshape((b, t) + y.shape[1:])


class TemporalConv(nn.Module):
  """Per-pixel 'SAME' 1D conv over time: (B,T,H,W,C) -> (B,T,H,W,features).

  Written as im2col (the k shifted copies concatenated on channels) and one matmul: XLA:CPU
  computes the kernel gradient of a (k,1) convolution over a huge batch ~5-10x slower than
  the matmul's, and time is short, so the k-fold copy is cheap.
  """
  features: int
  kernel: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 5)
    t, c = x.shape[1], x.shape[-1]
    k = self.kernel
    w = self.param('kernel', nn.initializers.lecun_normal(), (k, c, self.features),
                   jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    lo = (k - 1) // 2
    xp = jnp.pad(x.astype(self.dtype), [(0, 0), (lo, k - 1 - lo), (0, 0), (0, 0), (0, 0)])
    cols = jnp.concatenate([xp[:, i:i + t] for i in range(k)], axis=-1)
    y = jnp.dot(cols, w.reshape(k * c, self.features).astype(self.dtype))
    return y + bias.astype(self.dtype)


class Patchify(nn.Module):
  """Non-overlapping patch embedding on the axes after the batch: (B,X,Y,C) -> (B,X/p,Y/q,F).

  Exactly a conv with kernel = stride = (p,q), written as a reshape and one Dense, whose
  gradients are plain matmuls (fast on every backend). Sizes must be multiples of the patch.
  """
  features: int
  patch: tuple[int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    b, sx, sy, c = x.shape
    p, q = self.patch
    if sx % p or sy % q:
      raise ValueError(f'input {sx}x{sy} is not a multiple of the patch {p}x{q}')
    x = x.reshape(b, sx // p, p, sy // q, q, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, sx // p, sy // q, p * q * c)
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32, name='proj')(x)


class ResBlock2Plus1D(nn.Module):
  """(2+1)D residual block: x + TConv3(gelu(GN(SConv3x3(gelu(GN(x)))))). (B,T,H,W,C) -> same.

  The spatial 3x3 conv and the temporal 3 conv factorise a 3x3x3 conv with fewer parameters
  and an extra nonlinearity in between (R(2+1)D).
  """
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 5)
    c = x.shape[-1]
    h = nn.gelu(group_norm(self.num_groups, self.dtype, 'norm_s')(x))
    h = SpatialConv(c, 3, dtype=self.dtype, name='spatial')(h)
    h = nn.gelu(group_norm(self.num_groups, self.dtype, 'norm_t')(h))
    h = TemporalConv(c, 3, self.dtype, name='temporal')(h)
    return x + h


class ResBlock2D(nn.Module):
  """2D residual block: x + Conv3x3(gelu(GN(Conv3x3(gelu(GN(x)))))). (B,Ta,F,C) -> same."""
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    c = x.shape[-1]
    h = nn.gelu(group_norm(self.num_groups, self.dtype, 'norm1')(x))
    h = nn.Conv(c, (3, 3), dtype=self.dtype, param_dtype=jnp.float32, name='conv1')(h)
    h = nn.gelu(group_norm(self.num_groups, self.dtype, 'norm2')(h))
    h = nn.Conv(c, (3, 3), dtype=self.dtype, param_dtype=jnp.float32, name='conv2')(h)
    return x + h


class Downsample2D(nn.Module):
  """Pre-activated 2x2 stride-2 conv ("patch merging"): (B,X,Y,C) -> (B,X/2,Y/2,features).

  A 2x2 kernel sees every input position exactly once at half the cost of a strided 3x3.
  Odd sizes are zero-padded on the high side.
  """
  features: int
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    h = nn.gelu(group_norm(self.num_groups, self.dtype, 'norm')(x))
    h = jnp.pad(h, [(0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0)])
    return Patchify(self.features, (2, 2), self.dtype, name='merge')(h)


class ProjectionHead(nn.Module):
  """LayerNorm + 2-layer MLP into the shared space: (..., C) -> (..., out_dim).

  The LayerNorm puts features of every scale on one footing before projection, so the head
  does not depend on how the residual stream grew with depth or pooling.
  """
  out_dim: int
  hidden_dim: int | None = None  # Defaults to out_dim.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name='norm')(x)
    h = nn.Dense(self.hidden_dim or self.out_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name='fc1')(h)
    h = nn.gelu(h)
    return nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=jnp.float32, name='fc2')(h)
