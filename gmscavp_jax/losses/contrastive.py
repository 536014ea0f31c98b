"""MSA loss (eq. 3-5): per-scale symmetric InfoNCE over segments with adaptive time weights.

Arrays in, arrays out. Inputs are global (batch-sharded) arrays: the (B*T_l, B*T_l) logits
matmul makes XLA gather the other devices' segments, so negatives span the global batch
without any explicit collective here. With one scale of T_l = 1 this is CAVP's clip-level
symmetric InfoNCE.
"""

from typing import Sequence

import chex
import jax
import jax.numpy as jnp


def segment_embeddings(x: jnp.ndarray) -> jnp.ndarray:
  """(B,T_l,S_l,D) scale features -> (B,T_l,D) unit-norm segment embeddings (mean over S)."""
  chex.assert_rank(x, 4)
  m = x.astype(jnp.float32).mean(axis=2)
  # rsqrt of a floored squared norm: finite gradient even for an all-zero segment.
  return m * jax.lax.rsqrt(jnp.maximum(jnp.sum(m * m, axis=-1, keepdims=True), 1e-12))


def _scale_loss(audio: jnp.ndarray, video: jnp.ndarray, temperature: jnp.ndarray,
                video_negative: jnp.ndarray | None, *, adaptive_weights: bool,
                adaptive_temperature: float,
                adaptive_stop_gradient: bool) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """One scale: (B,T_l,D) unit-norm audio/video segments (and optionally one extra video
  negative per segment, (B,T_l,D)) -> (loss, {'acc_a2v': in-batch top-1 accuracy, and with
  the negative 'acc_hue': how often the audio prefers its true video to it})."""
  b, t, _ = audio.shape
  n = b * t
  a, v = audio.reshape(n, -1), video.reshape(n, -1)
  # Each (clip, segment) is a sample: negatives are other clips (semantic contrast) and the
  # same clip at other times (temporal contrast).
  logits = jnp.einsum('nd,md->nm', a, v) / temperature
  pos = jnp.diagonal(logits)
  a2v = jax.nn.logsumexp(logits, axis=1) - pos
  v2a = jax.nn.logsumexp(logits, axis=0) - pos
  metrics = {}
  if video_negative is not None:
    # One more candidate for each audio segment: its own clip's video negative (same timing).
    neg = jnp.sum(video_negative.reshape(n, -1) * a, axis=-1) / temperature
    a2v = jnp.logaddexp(a2v + pos, neg) - pos
    metrics['acc_hue'] = (pos > neg).mean()
  per_segment = (0.5 * (a2v + v2a)).reshape(b, t)
  if adaptive_weights:
    # Eq. 5: softmax over time of each segment's own audio-video cosine similarity.
    sim = jnp.sum(audio * video, axis=-1) / adaptive_temperature
    w = jax.nn.softmax(sim, axis=1)
    if adaptive_stop_gradient:
      w = jax.lax.stop_gradient(w)
    # Scaled by T_l so uniform weights are exactly 1 (the plain mean over segments).
    per_segment = per_segment * (t * w)
  metrics['acc_a2v'] = (jnp.argmax(logits, axis=1) == jnp.arange(n)).mean()
  return per_segment.mean(), metrics


def msa_loss(audio_scales: Sequence[jnp.ndarray], video_scales: Sequence[jnp.ndarray],
             temperatures: jnp.ndarray, *, scale_weights: Sequence[float] | None = None,
             adaptive_weights: bool = True, adaptive_temperature: float = 0.1,
             adaptive_stop_gradient: bool = True,
             video_negatives: Sequence[jnp.ndarray] | None = None
             ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """L_MSA = sum_l lambda_l L_CL,l over L scales.

  Args:
    audio_scales: L arrays (B,T_l,S_l,D) (audio has S_l = 1).
    video_scales: L arrays (B,T_l,S_l',D), same B, T_l and D as the audio of that scale.
    temperatures: (L,) tau_l; logits are cosine / tau_l.
    scale_weights: lambda_l (L,); None or empty gives 1 for every scale.
    adaptive_weights: weight segment t of clip i by T_l * softmax_t(cos_{l,i,t} / tau_w).
    adaptive_temperature: tau_w of eq. 5.
    adaptive_stop_gradient: treat the adaptive weights as constants.
    video_negatives: None, or L arrays (B,T_l,S_l',D) like video_scales: one more video
      candidate for each audio segment, the scale's embedding of its own clip's negative
      (negatives.hue_rotate: the same timing, another look), in the audio->video softmax.

  Returns:
    (scalar loss, metrics) with metrics 'loss/msa', and per scale l 'loss/scale{l}'
    (L_CL,l before lambda_l), 'temperature/scale{l}', 'acc_a2v/scale{l}' (in-batch top-1)
    and, with video_negatives, 'acc_hue/scale{l}' (true video above its negative).
  """
  num_scales = len(audio_scales)
  if len(video_scales) != num_scales:
    raise ValueError(f'{num_scales} audio scales but {len(video_scales)} video scales')
  chex.assert_shape(temperatures, (num_scales,))
  if scale_weights is None or len(scale_weights) == 0:
    scale_weights = [1.0] * num_scales
  if len(scale_weights) != num_scales:
    raise ValueError(f'{len(scale_weights)} scale_weights for {num_scales} scales')
  temperatures = temperatures.astype(jnp.float32)

  total = jnp.zeros((), jnp.float32)
  metrics = {}
  if video_negatives is not None and len(video_negatives) != num_scales:
    raise ValueError(f'{num_scales} video scales but {len(video_negatives)} video negatives')
  for l, (fa, fv) in enumerate(zip(audio_scales, video_scales)):
    a, v = segment_embeddings(fa), segment_embeddings(fv)
    chex.assert_equal_shape([a, v])
    neg = None if video_negatives is None else segment_embeddings(video_negatives[l])
    loss, scale_metrics = _scale_loss(a, v, temperatures[l], neg,
                                      adaptive_weights=adaptive_weights,
                                      adaptive_temperature=adaptive_temperature,
                                      adaptive_stop_gradient=adaptive_stop_gradient)
    total = total + scale_weights[l] * loss
    metrics[f'loss/scale{l}'] = loss
    metrics[f'temperature/scale{l}'] = temperatures[l]
    metrics.update({f'{k}/scale{l}': x for k, x in scale_metrics.items()})
  metrics['loss/msa'] = total
  return total, metrics


def cross_time_loss(audio: jnp.ndarray, video: jnp.ndarray,
                    temperature: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Symmetric InfoNCE between each clip's audio segments and its video segments half a clip
  away: "what" without "when" (not in the paper; loss.cross_time_weight).

  Audio segment t of clip i is paired with video segment (t + T_l // 2) % T_l of the same clip,
  and contrasted with that segment of every other clip of the batch (the same clip's other
  segments are not candidates, so this never pushes L_MSA's aligned pairs apart). The two
  windows share the sources but not the instants, so timing cannot tell the positive from the
  negatives; what the sources look and sound like can.

  Args:
    audio: (B,T_l,1,D) one scale's audio features, T_l >= 2.
    video: (B,T_l,S_l,D) the same scale's video features.
    temperature: () the scale's tau.
  Returns:
    (scalar loss averaged over segments and both directions, top-1 accuracy of audio -> video).
  """
  a, v = segment_embeddings(audio), segment_embeddings(video)
  chex.assert_equal_shape([a, v])
  b, t, _ = a.shape
  if t < 2:
    raise ValueError(f'the cross-time loss needs a scale with 2 or more segments, got T_l={t}')
  v = jnp.roll(v, -(t // 2), axis=1)  # v[:, s] is now video segment (s + T_l // 2) % T_l.
  logits = jnp.einsum('itd,jtd->tij', a, v) / temperature.astype(jnp.float32)  # (T_l, B, B)
  pos = jnp.diagonal(logits, axis1=1, axis2=2)  # (T_l, B)
  a2v = jax.nn.logsumexp(logits, axis=2) - pos
  v2a = jax.nn.logsumexp(logits, axis=1) - pos
  acc = (jnp.argmax(logits, axis=2) == jnp.arange(b)[None]).mean()
  return 0.5 * (a2v + v2a).mean(), acc
