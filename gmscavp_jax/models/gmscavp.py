"""GMS-CAVP module: both encoders + the multi-scale pyramid + learnable per-scale temperatures.

The module knows nothing about devices or sharding: `core/steps.py` builds it and applies it
inside pure steps, and whoever runs those steps (the trainer, the evaluators, inference) jits
them with shardings. The denoisers are separate modules: models/unet.py (MSD, conditioned on
the video scales) and models/video_unet.py (a2v, conditioned on the audio scales).
"""

import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from gmscavp_jax.models import encoders
from gmscavp_jax.models import pyramid as pyramid_lib

Dtype = Any


class GMSCAVP(nn.Module):
  """frames (B,T,H,W,3), log_mel (B,Ta,F) -> multi-scale embeddings and temperatures.

  `__call__` returns {'video': [(B,T_l,S_l,D)] * L, 'video_features': (B,T,h,w,C) (what the
  pyramid pooled), 'audio': [(B,T_l,1,D)] * L, 'temperature': (L,)}. `embed_video` /
  `embed_audio` run one modality alone (retrieval, MSD conditioning); `video_features` and
  `video_scales` are embed_video's two halves; `temperatures` returns only the clipped
  temperatures. Parameters are float32; `dtype` is the compute dtype of the encoders and
  heads (embeddings are float32).
  """
  video_patch: int
  video_widths: Sequence[int]
  audio_widths: Sequence[int]
  blocks_per_stage: int
  num_groups: int
  embed_dim: int
  scale_pools: Sequence[int]
  scale_grids: Sequence[int]
  num_frames: int
  pyramid_mode: str = 'pool'
  temperature_init: float = 0.07
  temperature_min: float = 0.01
  temperature_max: float = 1.0
  audio_stem_patch: tuple[int, int] = (2, 16)
  video_stem: str = 'patchify'
  # K > 0: a linear head on the clip-level video embedding predicts the clip's sounding
  # classes (loss.video_class_weight); 0 = no head, no params.
  num_label_classes: int = 0
  dtype: Dtype = jnp.float32
  remat: str = 'none'  # jax.checkpoint policy of the encoders' residual blocks.

  def setup(self):
    self.video_encoder = encoders.VideoEncoder(
        patch=self.video_patch, widths=tuple(self.video_widths),
        blocks_per_stage=self.blocks_per_stage, num_groups=self.num_groups,
        stem=self.video_stem, dtype=self.dtype, remat=self.remat)
    self.audio_encoder = encoders.AudioEncoder(
        widths=tuple(self.audio_widths), blocks_per_stage=self.blocks_per_stage,
        num_groups=self.num_groups, num_frames=self.num_frames,
        stem_patch=tuple(self.audio_stem_patch), dtype=self.dtype, remat=self.remat)
    self.pyramid = pyramid_lib.Pyramid(
        embed_dim=self.embed_dim, scale_pools=tuple(self.scale_pools),
        scale_grids=tuple(self.scale_grids), mode=self.pyramid_mode, dtype=self.dtype)
    num_scales = len(self.scale_pools)
    self.log_temperature = self.param(
        'log_temperature',
        lambda _, shape: jnp.full(shape, math.log(self.temperature_init), jnp.float32),
        (num_scales,))
    if self.num_label_classes:
      self.video_class_head = nn.Dense(self.num_label_classes, dtype=jnp.float32,
                                       param_dtype=jnp.float32)

  def video_class_logits(self, video: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """[(B,T_l,S_l,D)] video scales -> (B,K) logits of the sounding classes (clip level)."""
    return self.video_class_head(video[-1].astype(jnp.float32).mean(axis=(1, 2)))

  def temperatures(self) -> jnp.ndarray:
    """Per-scale tau (L,), clipped to [temperature_min, temperature_max].

    A straight clip in log space, as CLIP clamps its logit scale: outside the bounds the
    gradient w.r.t. log_temperature is zero, so a temperature that hits a bound stays there
    until other parameters move the loss (the stored parameter itself is not clipped).
    """
    log_t = jnp.clip(self.log_temperature, math.log(self.temperature_min),
                     math.log(self.temperature_max))
    return jnp.exp(log_t)

  def embed_video(self, frames: jnp.ndarray) -> list[jnp.ndarray]:
    """frames (B,T,H,W,3) uint8 in [0,255] or float in [0,1] -> [(B,T_l,S_l,D)] * L."""
    return self.video_scales(self.video_features(frames))

  def video_features(self, frames: jnp.ndarray) -> jnp.ndarray:
    """frames (B,T,H,W,3) -> the video encoder's per-frame features (B,T,h,w,C)."""
    chex.assert_axis_dimension(frames, 1, self.num_frames)
    return self.video_encoder(frames)

  def video_scales(self, features: jnp.ndarray) -> list[jnp.ndarray]:
    """Per-frame features (B,T,h,w,C) -> the pyramid's [(B,T_l,S_l,D)] * L (e.g. of features
    made misaligned: the contrastive diffusion loss's negative conditions)."""
    return self.pyramid.video(features)

  def embed_audio(self, log_mel: jnp.ndarray) -> list[jnp.ndarray]:
    """log_mel (B,Ta,F) -> [(B,T_l,1,D)] * L (audio time resampled to T video frames)."""
    return self.pyramid.audio(self.audio_encoder(log_mel))

  def __call__(self, frames: jnp.ndarray, log_mel: jnp.ndarray) -> dict[str, Any]:
    chex.assert_equal_shape_prefix([frames, log_mel], 1)
    features = self.video_features(frames)
    video = self.video_scales(features)
    out = {
        'video': video,
        'video_features': features,
        'audio': self.embed_audio(log_mel),
        'temperature': self.temperatures(),
    }
    if self.num_label_classes:
      out['video_class_logits'] = self.video_class_logits(video)
    return out


def build_model(config: ml_collections.ConfigDict, dtype: Dtype = jnp.float32,
                remat: str = 'none') -> GMSCAVP:
  """GMSCAVP from config.model.*, config.loss.temperature_* and config.data.num_frames.

  `dtype` is the compute dtype (e.g. jnp.bfloat16); parameters stay float32. `remat` is the
  jax.checkpoint policy of the residual blocks (layers.remat).
  """
  m, l = config.model, config.loss
  return GMSCAVP(
      video_patch=m.video_patch,
      video_widths=tuple(m.video_widths),
      audio_widths=tuple(m.audio_widths),
      blocks_per_stage=m.blocks_per_stage,
      num_groups=m.num_groups,
      embed_dim=m.embed_dim,
      scale_pools=tuple(m.scale_pools),
      scale_grids=tuple(m.scale_grids),
      num_frames=config.data.num_frames,
      pyramid_mode=m.pyramid,
      audio_stem_patch=tuple(m.audio_stem_patch),
      video_stem=m.video_stem,
      num_label_classes=config.data.num_classes if l.video_class_weight > 0 else 0,
      temperature_init=l.temperature_init,
      temperature_min=l.temperature_min,
      temperature_max=l.temperature_max,
      dtype=dtype,
      remat=remat,
  )
