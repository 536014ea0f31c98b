"""Audio-to-video generation on the test split (bidirectional diffusion), and its scores.

The a2v denoiser generates low-resolution frames for the audio of the first
`a2v.num_eval_clips` test clips; `frame_scores` compares them with the clips' real frames,
downsampled the same way. Audio fixes the sounding object's class (its look) and when
things happen, not where objects are, so two kinds of score, each beside a control:
- pixels: MSE and PSNR against the real frames, and `_shuffled` against the next clip's
  (what frames that ignore the audio score);
- timing: visual onsets (peaks of the frames' positive pixel flux, e.g. a flash; the onset
  detector of the audio run on (T, h*w*3) "spectrograms" at the frame rate) scored against
  the sound onsets within one frame period, with `_shuffled` (another clip's onsets) and
  `_real` (visual onsets of the real frames: how much of the timing the frames show at all).
"""

import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmscavp_jax.core import sampling
from gmscavp_jax.infra import plotting
from gmscavp_jax.core import steps
from gmscavp_jax.evaluators import generation

PREFIX = 'gen_a2v'


def onset_tolerance_ms(config: ml_collections.ConfigDict) -> int:
  """One frame period in ms: a flash shows from the first frame at or after its sound."""
  return int(round(1000 / config.data.fps))


def frame_scores(generated: np.ndarray, real: np.ndarray, onsets: list | None,
                 config: ml_collections.ConfigDict) -> dict:
  """gen_a2v/* scores of generated frames (N,T,h,w,3) uint8 against real ones (same shape).

  mse (pixels in [0, 1]), psnr (dB, mean over clips), both also `_shuffled` (clip i against
  clip i+1's real frames), and the visual onset F1, precision and recall
  (generation.onset_scores keys under gen_a2v/, at one frame period) against `onsets` (N
  lists of seconds; None: the onsets detected in the real frames are the reference).
  """
  if generated.shape != real.shape or generated.ndim != 5:
    raise ValueError(f'generated {generated.shape} and real {real.shape} frames must both be '
                     '(N,T,h,w,3)')
  gen = generated.astype(np.float64) / 255.0
  ref = real.astype(np.float64) / 255.0
  out = {}
  for suffix, target in (('', ref), ('_shuffled', np.roll(ref, -1, axis=0))):
    mse = ((gen - target)**2).reshape(len(gen), -1).mean(axis=1)
    out[f'{PREFIX}/mse{suffix}'] = float(mse.mean())
    out[f'{PREFIX}/psnr{suffix}'] = float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))
  n, t = generated.shape[:2]
  out.update(generation.onset_scores(
      gen.reshape(n, t, -1), ref.reshape(n, t, -1), onsets, config.data.fps, prefix=PREFIX,
      tolerances_ms=(onset_tolerance_ms(config),)))
  return out


class A2VGenerationEvaluator:
  """Generates frames for test clips' audio with a `sampling.FrameGenerator`, scores them."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, models: steps.Models):
    self._config = config
    self.generator = sampling.FrameGenerator(config, mesh, models)
    self._clips = None

  def run(self, params, step: int, workdir: str, writer, **sampler_args) -> dict:
    """Generates for the first a2v.num_eval_clips test clips' audio; returns gen_a2v/*.

    Also draws the first eval.num_summary_clips (generated above real) into
    plots/generated_frames.png and TensorBoard.
    """
    c = self._config
    if self._clips is None:
      self._clips = generation.test_clips(c, c.a2v.num_eval_clips)
    clips = self._clips
    t0 = time.perf_counter()
    generated = self.generator.generate(params, clips['waveform'], **sampler_args)
    seconds = time.perf_counter() - t0
    real = self.generator.real_frames(clips['frames'])
    results = frame_scores(generated, real, clips['onsets'], c)
    results[f'{PREFIX}/num_clips'] = len(generated)
    results[f'{PREFIX}/seconds_per_clip'] = seconds / len(generated)
    ms = onset_tolerance_ms(c)
    logging.info('step %d a2v generation (%d clips, %.2f s/clip): PSNR %.2f dB (shuffled '
                 'clips %.2f dB), visual onset F1@%dms %.1f%% (shuffled %.1f%%; recall '
                 '%.1f%%)', step, len(generated), results[f'{PREFIX}/seconds_per_clip'],
                 results[f'{PREFIX}/psnr'], results[f'{PREFIX}/psnr_shuffled'], ms,
                 results[f'{PREFIX}/onset_f1@{ms}ms'],
                 results[f'{PREFIX}/onset_f1@{ms}ms_shuffled'],
                 results[f'{PREFIX}/onset_recall@{ms}ms'])
    k = min(c.eval.num_summary_clips, len(generated))
    if jax.process_index() == 0 and k > 0:
      image = plotting.frame_strip(
          generated[:k], os.path.join(workdir, 'plots', 'generated_frames.png'),
          f'{c.experiment}: frames generated from audio vs real, step {step}', real=real[:k],
          fps=c.data.fps, onsets=generation.first(clips['onsets'], k))
      writer.write_image(step, 'generation/a2v_frames', image)
    return results
