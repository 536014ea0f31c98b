"""The alignment classifier: is this audio in time with this video? (evaluators' Align Acc)
and its noise-aware twin that steers sampling towards aligned audio (double guidance).

Both reuse the project's encoders with their own widths and weights; the evaluators and the
guide share code, never parameters.
"""

import chex
import flax.linen as nn
import jax.numpy as jnp

from gmscavp_jax.models import clip_time
from gmscavp_jax.models import encoders

# Width of the sinusoidal code of the diffusion timestep that the noisy classifier reads.
_TIME_DIM = 64


class AlignmentClassifier(nn.Module):
  """(frames (B,T,H,W,3), log-mel (B,Ta,F)) -> (B,) logit of "temporally aligned".

  Both modalities become (B,T,C) on the video frame grid; a temporal conv head reads their
  concatenation and product frame by frame, so a shift of a few frames is visible to it.
  Methods `video_features` / `audio_features` / `head` let training encode a video once for
  its positive and its negative audio.
  """
  video_patch: int
  video_widths: tuple[int, ...]
  audio_widths: tuple[int, ...]
  blocks_per_stage: int
  num_groups: int
  num_frames: int

  def setup(self):
    width = self.video_widths[-1]
    self.video = encoders.VideoEncoder(self.video_patch, self.video_widths,
                                       self.blocks_per_stage, self.num_groups)
    self.audio = encoders.AudioEncoder(self.audio_widths, self.blocks_per_stage,
                                       self.num_groups, self.num_frames)
    self.video_proj = nn.Dense(width)
    self.audio_proj = nn.Dense(width)
    self.norm_v, self.norm_a = nn.LayerNorm(), nn.LayerNorm()
    self.conv1 = nn.Conv(width, (3,))
    self.conv2 = nn.Conv(width, (3,))
    self.out = nn.Dense(1)

  def video_features(self, frames: jnp.ndarray) -> jnp.ndarray:
    """(B,T,H,W,3) -> (B,T,C)."""
    return self.norm_v(self.video_proj(self.video(frames).mean(axis=(2, 3))))

  def audio_features(self, log_mel: jnp.ndarray) -> jnp.ndarray:
    """(B,Ta,F) -> (B,T,C)."""
    return self.norm_a(self.audio_proj(self.audio(log_mel)))

  def head(self, video: jnp.ndarray, audio: jnp.ndarray) -> jnp.ndarray:
    """(B,T,C) x (B,T,C) -> (B,) logits."""
    chex.assert_equal_shape([video, audio])
    x = jnp.concatenate([video, audio, video * audio], axis=-1)
    x = nn.gelu(self.conv1(x))
    x = nn.gelu(self.conv2(x))
    return self.out(x.mean(axis=1))[:, 0]

  def __call__(self, frames: jnp.ndarray, log_mel: jnp.ndarray) -> jnp.ndarray:
    return self.head(self.video_features(frames), self.audio_features(log_mel))



class NoisyAlignmentClassifier(nn.Module):
  """(frames (B,T,H,W,3), x_t (B,Ta,F) noisy normalised log-mel, t (B,) timestep) -> (B,)
  logit of "aligned": `align`, an `AlignmentClassifier`, whose audio features also carry t,
  trained on diffused audio (Diff-Foley's alignment classifier for double guidance)."""
  align: AlignmentClassifier

  @nn.compact
  def __call__(self, frames: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(t, 1)
    video = self.align.video_features(frames)
    code = clip_time.sinusoidal_embedding(t.astype(jnp.float32), _TIME_DIM)
    audio = self.align.audio_features(x_t) + nn.Dense(video.shape[-1], name='time')(code)[:, None]
    return self.align.head(video, audio)
