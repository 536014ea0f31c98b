"""Multi-scale pyramid (eq. 2) and the retrieval embedding built from it.

Scale l (0-based here, l = 0 the finest) pools time by `scale_pools[l]` and pools video space
to a g_l x g_l grid, then projects each modality into the shared D-dim space with its own head:
video (B,T,h,w,C) -> [(B,T_l,S_l,D)]_l,  audio (B,T,C) -> [(B,T_l,1,D)]_l,
with T_l = T / scale_pools[l] and S_l = g_l^2.
"""

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.models import layers

Dtype = Any


def _adaptive_pool_matrix(size: int, grid: int) -> np.ndarray:
  """(grid, size) averaging matrix of adaptive average pooling (PyTorch's bin edges)."""
  m = np.zeros((grid, size), np.float32)
  for i in range(grid):
    start, end = (i * size) // grid, -(-((i + 1) * size) // grid)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool_2d(x: jnp.ndarray, grid: int) -> jnp.ndarray:
  """Adaptive average pooling of (B,T,h,w,C) to (B,T,grid*grid,C), tokens in row-major order.

  Works for any h, w >= grid (bins overlap when the size is not a multiple of the grid).
  """
  chex.assert_rank(x, 5)
  b, t, h, w, c = x.shape
  if grid > min(h, w):
    raise ValueError(f'spatial grid {grid} is finer than the feature map {h}x{w}')
  mh = jnp.asarray(_adaptive_pool_matrix(h, grid), x.dtype)
  mw = jnp.asarray(_adaptive_pool_matrix(w, grid), x.dtype)
  y = jnp.einsum('ih,jw,bthwc->btijc', mh, mw, x)
  return y.reshape(b, t, grid * grid, c)


def temporal_avg_pool(x: jnp.ndarray, pool: int) -> jnp.ndarray:
  """Mean over non-overlapping windows of `pool` steps on axis 1: (B,T,...) -> (B,T/pool,...)."""
  b, t = x.shape[:2]
  if t % pool:
    raise ValueError(f'temporal pool {pool} does not divide T={t}')
  return x.reshape((b, t // pool, pool) + x.shape[2:]).mean(axis=2)


class TemporalDownsample(nn.Module):
  """Temporal pyramid step: (B,T,S,C) -> (B,T/pool,S,C).

  mode 'pool': average pooling (temporal pyramid pooling). mode 'conv': a learned conv with
  kernel = stride = pool ("multi-resolution convolutions"), applied after spatial pooling so
  its cost does not grow with the feature map.
  """
  pool: int
  mode: str = 'pool'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    if self.mode == 'pool':
      return temporal_avg_pool(x, self.pool)
    if self.mode == 'conv':
      if x.shape[1] % self.pool:
        raise ValueError(f'temporal pool {self.pool} does not divide T={x.shape[1]}')
      return nn.Conv(x.shape[-1], (self.pool, 1), strides=(self.pool, 1), padding='VALID',
                     dtype=self.dtype, param_dtype=jnp.float32, name='conv')(x)
    raise ValueError(f"pyramid mode {self.mode!r} is unknown; expected 'pool' or 'conv'")


class Pyramid(nn.Module):
  """Video (B,T,h,w,Cv) and audio (B,T,Ca) -> (video list, audio list), one entry per scale.

  Video scale l: (B,T_l,S_l,D); audio scale l: (B,T_l,1,D); outputs are float32 whatever
  the compute dtype, so losses and retrieval see full-precision embeddings.
  """
  embed_dim: int
  scale_pools: Sequence[int]
  scale_grids: Sequence[int]
  mode: str = 'pool'
  dtype: Dtype = jnp.float32

  def setup(self):
    if len(self.scale_pools) != len(self.scale_grids):
      raise ValueError(f'scale_pools {tuple(self.scale_pools)} and scale_grids '
                       f'{tuple(self.scale_grids)} must have one entry per scale')
    n = len(self.scale_pools)
    kw = dict(mode=self.mode, dtype=self.dtype)
    self.video_time = [TemporalDownsample(p, **kw) for p in self.scale_pools]
    self.audio_time = [TemporalDownsample(p, **kw) for p in self.scale_pools]
    # Separate heads per modality and scale (flax names them video_heads_0, ...).
    self.video_heads = [layers.ProjectionHead(self.embed_dim, dtype=self.dtype)
                        for _ in range(n)]
    self.audio_heads = [layers.ProjectionHead(self.embed_dim, dtype=self.dtype)
                        for _ in range(n)]

  def _check_time(self, t: int) -> None:
    bad = [p for p in self.scale_pools if t % p]
    if bad:
      raise ValueError(f'scale_pools {bad} do not divide T={t}')

  def video(self, feats: jnp.ndarray) -> list[jnp.ndarray]:
    """(B,T,h,w,C) -> [(B,T_l,S_l,D)] for l = 0..L-1."""
    chex.assert_rank(feats, 5)
    b, t = feats.shape[:2]
    self._check_time(t)
    out = []
    for l, (p, g) in enumerate(zip(self.scale_pools, self.scale_grids)):
      x = self.video_time[l](adaptive_avg_pool_2d(feats, g))
      x = self.video_heads[l](x).astype(jnp.float32)
      chex.assert_shape(x, (b, t // p, g * g, self.embed_dim))
      out.append(x)
    return out

  def audio(self, feats: jnp.ndarray) -> list[jnp.ndarray]:
    """(B,T,C) -> [(B,T_l,1,D)] for l = 0..L-1."""
    chex.assert_rank(feats, 3)
    b, t = feats.shape[:2]
    self._check_time(t)
    out = []
    for l, p in enumerate(self.scale_pools):
      x = self.audio_time[l](feats[:, :, None, :])
      x = self.audio_heads[l](x).astype(jnp.float32)
      chex.assert_shape(x, (b, t // p, 1, self.embed_dim))
      out.append(x)
    return out

  def __call__(self, video: jnp.ndarray,
               audio: jnp.ndarray) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
    return self.video(video), self.audio(audio)


POOLINGS = ('segments', 'clip')


def _unit(x: jnp.ndarray) -> jnp.ndarray:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def retrieval_embedding(scales: Sequence[jnp.ndarray], scale_index: int = -1,
                        pooling: str = 'segments') -> jnp.ndarray:
  """Per-clip retrieval embedding from one modality's scales [(B,T_l,S_l,D)] -> (B,E), unit
  norm, so that a dot product of two is the similarity retrieval ranks by.

  pooling 'segments': per scale, each of the T_l segments' mean over S_l, L2-normalised, laid
  end to end and divided by sqrt(T_l) (E_l = T_l*D): a dot product is the mean over time of
  the cosines of time-aligned segments, the similarity the MSA loss trains (eq. 3), so the
  score sees when things happen. 'clip': the clip mean over T_l and S_l, L2-normalised
  (E_l = D): timing-blind (DESIGN §3's first choice; it discards what the fine scales learn).
  The two agree for a scale with T_l = 1.
  scale_index < 0 concatenates all L scales and divides by sqrt(L) (a dot product is the
  average of the per-scale similarities); scale_index >= 0 returns that scale alone.
  """
  if scale_index >= len(scales):
    raise ValueError(f'scale_index {scale_index} >= number of scales {len(scales)}')
  if pooling not in POOLINGS:
    raise ValueError(f'pooling {pooling!r}: expected one of {POOLINGS}')
  chosen = scales if scale_index < 0 else [scales[scale_index]]
  embs = []
  for s in chosen:
    chex.assert_rank(s, 4)
    s = s.astype(jnp.float32)
    if pooling == 'clip':
      embs.append(_unit(s.mean(axis=(1, 2))))
    else:
      b, t = s.shape[:2]
      embs.append(_unit(s.mean(axis=2)).reshape(b, -1) / jnp.sqrt(float(t)))
  return jnp.concatenate(embs, axis=-1) / jnp.sqrt(float(len(chosen)))
