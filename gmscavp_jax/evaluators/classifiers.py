"""The evaluator networks of DESIGN §5: an audio classifier and an alignment classifier.

- AudioClassifier: log-mel (B,Ta,F) -> class logits (B,K) and an embedding (B,E). Its class
  posterior gives KLD; its embedding gives FAD (the role PaSST / VGGish play on real data).
- AlignmentClassifier: (frames (B,T,H,W,3), log-mel (B,Ta,F)) -> one logit per pair, > 0 when
  the audio is judged temporally aligned with the video (Diff-Foley's Align Acc), trained on
  real pairs against shifted / segment-swapped / swapped audio (data/negatives.py).

Both reuse the project's encoders with their own, smaller widths and their own weights: an
evaluator shares no parameters with the models it scores. `EvaluatorSet` applies trained
params to numpy arrays of any length in fixed-size, device-sharded chunks.
"""

import functools
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmscavp_jax.infra import sharding
from gmscavp_jax.core import steps
from gmscavp_jax.data import negatives
from gmscavp_jax.models import encoders
from gmscavp_jax.models.alignment import AlignmentClassifier


class AudioClassifier(nn.Module):
  """log-mel (B,Ta,F) -> {'logits': (B,K), 'embedding': (B,E)}."""
  widths: tuple[int, ...]
  blocks_per_stage: int
  num_groups: int
  num_frames: int
  embed_dim: int
  num_classes: int

  @nn.compact
  def __call__(self, log_mel: jnp.ndarray) -> dict:
    chex.assert_rank(log_mel, 3)
    x = encoders.AudioEncoder(self.widths, self.blocks_per_stage, self.num_groups,
                              self.num_frames, name='encoder')(log_mel)
    # The embedding is linear (before the nonlinearity): Gaussian fits suit it best.
    embedding = nn.Dense(self.embed_dim, name='embedding')(x.mean(axis=1))
    logits = nn.Dense(self.num_classes, name='logits')(nn.gelu(embedding))
    return {'logits': logits, 'embedding': embedding}


class Classifiers(NamedTuple):
  audio: AudioClassifier
  align: AlignmentClassifier


def build(config: ml_collections.ConfigDict) -> Classifiers:
  """Both evaluator modules, sized by `config.evaluator` and the dataset's fields."""
  v, t = config.evaluator, config.data.num_frames
  return Classifiers(
      AudioClassifier(tuple(v.audio_widths), v.blocks_per_stage, v.num_groups, t,
                      v.embed_dim, config.data.num_classes),
      AlignmentClassifier(v.video_patch, tuple(v.video_widths), tuple(v.audio_widths),
                          v.blocks_per_stage, v.num_groups, t))


def init_params(config: ml_collections.ConfigDict, models: Classifiers, rng: jax.Array):
  """{'audio': params, 'align': params} of freshly initialised evaluators."""
  frames, mel = steps.dummy_inputs(config)
  audio_rng, align_rng = jax.random.split(rng)
  return {'audio': models.audio.init(audio_rng, mel)['params'],
          'align': models.align.init(align_rng, frames, mel)['params']}


class EvaluatorSet:
  """Trained evaluators applied to numpy arrays, in sharded chunks of `chunk` examples."""

  def __init__(self, config: ml_collections.ConfigDict, params: Any, mesh: Mesh,
               chunk: int | None = None):
    self.config, self.params, self._mesh = config, params, mesh
    self._models = build(config)
    ndev = mesh.size
    self._chunk = -(-(chunk or config.eval.batch_size) // ndev) * ndev
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    self._audio = jax.jit(self._apply_audio, in_shardings=(repl, batch_sh),
                          out_shardings=repl)
    self._align = jax.jit(self._apply_align, in_shardings=(repl, batch_sh, batch_sh),
                          out_shardings=repl)

  def _apply_audio(self, params, log_mel):
    return self._models.audio.apply({'params': params['audio']}, log_mel)

  def _apply_align(self, params, frames, log_mel):
    return jax.nn.sigmoid(self._models.align.apply({'params': params['align']}, frames,
                                                   log_mel))

  def _chunked(self, fn, *arrays) -> Any:
    """Runs fn(params, *chunks) over the leading axis, padding the last chunk."""
    n, outs = len(arrays[0]), []
    for start in range(0, n, self._chunk):
      parts = [a[start:start + self._chunk] for a in arrays]
      pad = self._chunk - len(parts[0])
      if pad:
        parts = [np.concatenate([p, np.repeat(p[-1:], pad, axis=0)]) for p in parts]
      batch = [jax.device_put(p, sharding.batch_sharded(self._mesh)) for p in parts]
      out = jax.device_get(fn(self.params, *batch))
      outs.append(jax.tree.map(lambda x, keep=len(parts[0]) - pad: x[:keep], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  def audio(self, log_mel: np.ndarray) -> dict:
    """{'logits': (N,K), 'embedding': (N,E)} of log-mels (N,Ta,F)."""
    return self._chunked(self._audio, np.asarray(log_mel, np.float32))

  def aligned_prob(self, frames: np.ndarray, log_mel: np.ndarray) -> np.ndarray:
    """(N,) probability that each (video, audio) pair is aligned."""
    if len(frames) != len(log_mel):
      raise ValueError(f'{len(frames)} videos for {len(log_mel)} audios; need pairs')
    return self._chunked(self._align, frames, np.asarray(log_mel, np.float32))


def top1_in_labels(logits: np.ndarray, labels: np.ndarray) -> float:
  """Percent of clips whose top class is one of their true classes ((N,K) multi-hot)."""
  pred = np.argmax(logits, axis=-1)
  return 100.0 * float(np.mean(np.asarray(labels)[np.arange(len(pred)), pred] > 0))


@functools.partial(jax.jit, static_argnames=('min_shift', 'max_shift', 'kinds'))
def make_negative_waveforms(rng, waveform, *, min_shift: int, max_shift: int, kinds: tuple):
  """Negatives (B,S) of real waveforms (B,S) and what made them (data/negatives.py)."""
  return negatives.make_negatives(rng, waveform, min_shift=min_shift, max_shift=max_shift,
                                  kinds=kinds)


def shift_samples(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """evaluator.{min,max}_shift_seconds in waveform samples."""
  return negatives.shift_steps(config.evaluator.min_shift_seconds,
                               config.evaluator.max_shift_seconds, config.audio.sample_rate)
