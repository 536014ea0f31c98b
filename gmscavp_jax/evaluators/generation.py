"""Video-to-audio generation on the test split, scored by onset F1 (DESIGN §5).

The evaluator generates log-mels for the first `eval.num_generate_clips` test videos with
the configured sampler, detects sound onsets in them, and scores those against the clips'
true onset times. Two references frame the number:
- shuffled: the same generated audio scored against the onsets of *another* clip (audio
  generated from a shuffled video); what timing-blind audio scores.
- real: onsets detected in the real audio; what the detector reaches on perfect audio.
A prepared (real) dataset has no true onset times: there the reference is the onsets
detected in each clip's real audio (CondFoleyGen's protocol), and `real` is left out.
"""

import os

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmscavp_jax.core import sampling
from gmscavp_jax.core import steps
from gmscavp_jax.data import pipeline
from gmscavp_jax.data import vocoder
from gmscavp_jax.evaluators import metrics
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import plotting

TOLERANCES_MS = (50, 100)


def frame_rate(config: ml_collections.ConfigDict) -> float:
  """Log-mel frames per second."""
  return config.audio.sample_rate / config.audio.hop_length


def test_clips(config: ml_collections.ConfigDict, num_clips: int, start: int = 0,
               split: str = 'test') -> dict:
  """Test clips [start, start + num_clips) as numpy: frames (N,T,H,W,3), waveform (N,S),
  label (N,), labels (N,K) multi-hot, index (N,), visible and flashing (N,K) where the
  dataset has them (the synthetic world), onsets (a list of N arrays of true onset
  times in seconds; None for a prepared dataset, whose clips have none). `split` 'train'
  gives training clips instead (the overfit check of `evaluate --split=train`)."""
  source = pipeline.make_source(config, split)
  if start + num_clips > len(source):
    raise errors.ConfigError(f'{num_clips} clips from clip {start} of the {split!r} split: '
                             f'expected at most {len(source)} clips in all')
  records = [source[i] for i in range(start, start + num_clips)]
  out = {k: np.stack([r[k] for r in records])
         for k in ('frames', 'waveform', 'label', 'labels', 'index')}
  for k in ('visible', 'flashing'):  # The synthetic world's, for the video-oracle row.
    if k in records[0]:
      out[k] = np.stack([r[k] for r in records])
  out['onsets'] = ([r['onsets'][:int(r['num_onsets'])] for r in records]
                   if config.data.name == 'synthetic' else None)
  return out


def first(onsets: list | None, k: int) -> list | None:
  """The first `k` onset lists of `onsets`, or None when there are none (prepared data)."""
  return None if onsets is None else onsets[:k]


def onset_scores(generated: np.ndarray, real: np.ndarray, onsets: list | None,
                 rate: float, prefix: str = 'gen', tolerances_ms=TOLERANCES_MS) -> dict:
  """Onset F1, precision and recall (percent) of generated log-mels (N,Ta,F) against `onsets`.

  Keys, per tolerance T in `tolerances_ms`: gen/onset_f1@Tms (the headline: recall alone
  rewards audio that is all onsets), gen/onset_precision@Tms, gen/onset_recall@Tms and
  gen/onset_hit@Tms (the same recall under CMMD's name, which older results and DESIGN use);
  F1 and hit-rate with suffix `_shuffled` (clip i's audio scored against clip i+1's onsets)
  and `_real` (onsets detected in the real log-mels `real`). `onsets` None (no true times):
  the reference is the onsets detected in `real`, and there is no `_real` key. `prefix`
  replaces 'gen'; any (N,steps,features) arrays at `rate` steps per second work, e.g. frames
  (N,T,h*w*3) at the frame rate.
  """
  detected = [metrics.detect_onsets(m, rate) for m in generated]
  detected_real = [metrics.detect_onsets(m, rate) for m in real]
  has_truth = onsets is not None
  onsets = onsets if has_truth else detected_real
  shuffled_ref = onsets[1:] + onsets[:1]
  out = {}
  for ms in tolerances_ms:
    tol = ms / 1000
    out.update(onset_keys(f'{prefix}/onset', f'@{ms}ms',
                          metrics.onset_hit_rate(detected, onsets, tol)))
    controls = {'_shuffled': (detected, shuffled_ref)}
    if has_truth:
      controls['_real'] = (detected_real, onsets)
    for suffix, (det, ref) in controls.items():
      score = metrics.onset_hit_rate(det, ref, tol)
      out[f'{prefix}/onset_f1@{ms}ms{suffix}'] = score['f1']
      out[f'{prefix}/onset_hit@{ms}ms{suffix}'] = score['hit_rate']
  return out


def onset_keys(stem: str, tolerance: str, score: dict) -> dict:
  """`metrics.onset_hit_rate`'s `score` as results keys STEM_{f1,precision,recall,hit}TOLERANCE
  (e.g. gen/onset_f1@100ms); hit is the recall again, under CMMD's name."""
  return {f'{stem}_f1{tolerance}': score['f1'],
          f'{stem}_precision{tolerance}': score['precision'],
          f'{stem}_recall{tolerance}': score['hit_rate'],
          f'{stem}_hit{tolerance}': score['hit_rate']}


class GenerationEvaluator:
  """Generates audio for test videos with a `sampling.Generator` and scores it."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, models: steps.Models):
    self._config = config
    self.generator = sampling.Generator(config, mesh, models)
    self._clips = None

  def run(self, params, step: int, workdir: str, writer, **sampler_args) -> dict:
    """Generates for the first eval.num_generate_clips test videos; returns gen/* metrics.

    Also draws the first eval.num_summary_clips (generated beside real) into
    plots/generated.png and TensorBoard, with their Griffin-Lim audio.
    """
    c = self._config
    if self._clips is None:
      self._clips = test_clips(c, c.eval.num_generate_clips)
    clips = self._clips
    generated, timing = self.generator.generate_timed(params, clips['frames'],
                                                      labels=clips['labels'], **sampler_args)
    real = self.generator.real_log_mel(clips['waveform'])
    results = onset_scores(generated, real, clips['onsets'], frame_rate(c))
    results['gen/num_clips'] = len(generated)
    results['gen/seconds_per_clip'] = timing['seconds'] / len(generated)
    logging.info('step %d generation (%d clips, %.2f s/clip): onset F1@100ms %.1f%% '
                 '(precision %.1f%%, recall %.1f%%; F1 with shuffled videos %.1f%%, real '
                 'audio %s)', step, len(generated), results['gen/seconds_per_clip'],
                 results['gen/onset_f1@100ms'], results['gen/onset_precision@100ms'],
                 results['gen/onset_recall@100ms'], results['gen/onset_f1@100ms_shuffled'],
                 f"{results['gen/onset_f1@100ms_real']:.1f}%"
                 if 'gen/onset_f1@100ms_real' in results else 'is the reference')
    if jax.process_index() == 0:
      self._summaries(generated, real, clips, step, workdir, writer)
    return results

  def _summaries(self, generated, real, clips, step, workdir, writer) -> None:
    c, k = self._config, self._config.eval.num_summary_clips
    if k <= 0:
      return
    image = plotting.spectrograms(
        generated[:k], os.path.join(workdir, 'plots', 'generated.png'),
        f'{c.experiment}: generated vs real log-mel, step {step}' +
        (' (lines: true onsets)' if clips['onsets'] is not None else ''),
        real=real[:k], frame_rate=frame_rate(c), onsets=first(clips['onsets'], k))
    writer.write_image(step, 'generation/spectrograms', image)
    waves = np.asarray(vocoder.griffin_lim_from_config(
        generated[:k], c.audio, num_iters=c.eval.griffin_lim_iters))
    for i, wave in enumerate(waves):
      peak = max(float(np.abs(wave).max()), 1e-6)
      writer.write_audio(step, f'generation/clip{i}', 0.9 * wave / peak, c.audio.sample_rate)
