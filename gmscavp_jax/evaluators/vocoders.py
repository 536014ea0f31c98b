"""Log-mel -> waveform for every command: the dataset's neural vocoder or Griffin-Lim.

`make(config, kind)` gives a `Vocoder`, a callable (..., Ta, F) log-mels -> (..., Ta * hop)
float32 waveforms, by --vocoder's value:
  'neural'       the dataset's GAN vocoder (trained first, with its self-check, if missing);
  'griffin_lim'  fast Griffin-Lim, eval.griffin_lim_iters iterations (data/vocoder.py);
  'auto'         the neural vocoder when it has been trained, else Griffin-Lim (a command
                 never starts a vocoder's training unasked).
"""

import dataclasses
import functools
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmscavp_jax.core import vocoder_validation
from gmscavp_jax.core import steps
from gmscavp_jax.data import vocoder as griffin_lim
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import vocoder_training
from gmscavp_jax.infra import sharding

KINDS = ('auto', 'neural', 'griffin_lim')


@dataclasses.dataclass(frozen=True)
class Vocoder:
  """A named log-mel -> waveform function; `rng` seeds Griffin-Lim's initial phases (the
  neural vocoder is deterministic and ignores it)."""
  name: str
  fn: Callable[..., jax.Array]

  def __call__(self, log_mel, rng: jax.Array | None = None) -> jax.Array:
    """(..., Ta, F) -> (..., Ta * hop) float32."""
    return self.fn(jnp.asarray(log_mel, jnp.float32), rng)


def griffin_lim_vocoder(config: ml_collections.ConfigDict) -> Vocoder:
  """Griffin-Lim with eval.griffin_lim_iters iterations."""
  fn = jax.jit(functools.partial(griffin_lim.griffin_lim_from_config, audio_cfg=config.audio,
                                 num_iters=config.eval.griffin_lim_iters))
  return Vocoder('griffin_lim', lambda mel, rng: fn(mel, rng=rng))


def neural_vocoder(config: ml_collections.ConfigDict, params: dict) -> Vocoder:
  """The GAN generator with `params` and vocoder.inference_projections Griffin-Lim
  projections, on any number of leading dimensions."""

  @jax.jit
  def fn(mel):
    lead = mel.shape[:-2]
    wave = vocoder_training.synthesize(params, mel.reshape((-1,) + mel.shape[-2:]), config,
                                       config.vocoder.inference_projections)
    return wave.reshape(lead + wave.shape[-1:])

  return Vocoder('neural', lambda mel, rng: fn(mel))


def log_mel_distance(config: ml_collections.ConfigDict, vocoder: Vocoder, log_mel: np.ndarray,
                     batch_size: int) -> tuple[float, float]:
  """(mean |log-mel(vocoder(log_mel)) - log_mel| in nats, seconds per clip) over (N,Ta,F).

  Seconds per clip are timed in batches of `batch_size` after a first call that compiles."""
  jax.block_until_ready(vocoder(log_mel[:batch_size], rng=jax.random.key(0)))
  errors, seconds = [], 0.0
  for i in range(0, len(log_mel), batch_size):
    chunk = log_mel[i:i + batch_size]
    t0 = time.perf_counter()
    wave = jax.block_until_ready(vocoder(chunk, rng=jax.random.key(i)))
    seconds += time.perf_counter() - t0
    again = steps.log_mel({'waveform': wave}, config)
    errors.append(np.asarray(jnp.abs(again - chunk).mean(axis=(1, 2))))
  return float(np.mean(np.concatenate(errors))), seconds / len(log_mel)


def self_check(config: ml_collections.ConfigDict, neural: Vocoder) -> dict:
  """Neural vocoder vs Griffin-Lim on the first vocoder.num_check_clips test clips: the
  log-mel distance of the re-analysed waveform to the real log-mel, and seconds per clip."""
  clips = generation.test_clips(config, config.vocoder.num_check_clips)
  real = np.asarray(steps.log_mel({'waveform': clips['waveform']}, config))
  out = {'check/num_clips': len(real)}
  for vocoder in (neural, griffin_lim_vocoder(config)):
    distance, seconds = log_mel_distance(config, vocoder, real, config.eval.batch_size)
    out[f'check/{vocoder.name}/log_mel_l1'] = distance
    out[f'check/{vocoder.name}/seconds_per_clip'] = seconds
  return out


def load_or_train(config: ml_collections.ConfigDict, root: str | None = None,
                  mesh=None) -> tuple[Vocoder, dict]:
  """The dataset's neural vocoder (trained, checked and saved first if missing); (vocoder,
  vocoder.json's summary)."""
  vocoder_validation.validate_vocoder(config)
  if vocoder_training.is_trained(config, root):
    params, summary = vocoder_training.load(config, root)
    return neural_vocoder(config, params), summary
  path = vocoder_training.vocoder_dir(config, root)
  logging.info('no vocoder in %s: training it on the %s train split', path, config.data.name)
  params, summary = vocoder_training.train(config, mesh or sharding.make_mesh())
  vocoder = neural_vocoder(config, params)
  summary.update(self_check(config, vocoder))
  vocoder_training.save(path, config, params, summary)
  logging.info('vocoder saved to %s: log-mel L1 %.3f (Griffin-Lim %.3f) on %d test clips',
               path, summary['check/neural/log_mel_l1'], summary['check/griffin_lim/log_mel_l1'],
               summary['check/num_clips'])
  return vocoder, summary


def make(config: ml_collections.ConfigDict, kind: str = 'auto', root: str | None = None,
         mesh=None) -> Vocoder:
  """The vocoder --vocoder=`kind` names (see the module docstring)."""
  if kind not in KINDS:
    raise ValueError(f'vocoder {kind!r}: expected one of {", ".join(KINDS)}')
  if kind == 'griffin_lim' or (kind == 'auto' and
                               not vocoder_training.is_trained(config, root)):
    if kind == 'auto':
      logging.info('no neural vocoder trained for %s yet: Griffin-Lim (train it with '
                   '--vocoder=neural or gmscavp_jax.tools.train_vocoder)', config.data.name)
    return griffin_lim_vocoder(config)
  return load_or_train(config, root, mesh)[0]
