"""Does the video encoder itself still see the source, or only its projection heads lose it?

  python docs/probes/video_trunk_probe.py WORKDIR [WORKDIR ...]   (needs scikit-learn)

Runs the workdir's video encoder on the first 512 test clips of its (synthetic) world and
probes, as embedding_probe.py does (logistic regression, 384 clips fit, 128 scored; the first
sounding class, its shape, its colour; chance ~6 / ~31 / ~33 %), two features: the encoder's
per-frame output (B,T,h,w,C) averaged over time and space, before any pyramid head, and the
pyramid's clip-level scale (the denoiser's global condition). It also prints the trunk's hue
sensitivity: how far the trunk mean of a clip moves when every pixel's hue turns by 90, 180
or 270 degrees (negatives.hue_rotate), over the mean distance between two different clips'
trunk means (64 clips): near 0, the encoder is blind to colour. Run from the repository root.
"""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from embedding_probe import probe  # pylint: disable=g-import-not-at-top,wrong-import-position
from gmscavp_jax.core import state as state_lib  # pylint: disable=g-import-not-at-top
from gmscavp_jax.data import negatives  # pylint: disable=g-import-not-at-top
from gmscavp_jax.evaluators import generation  # pylint: disable=g-import-not-at-top
from gmscavp_jax.models import gmscavp  # pylint: disable=g-import-not-at-top

NUM_CLIPS, BATCH = 512, 64


def features(workdir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[float]]:
  """(trunk means (N,C), clip-level condition (N,D), first sounding class (N,), step, hue
  sensitivity at 90 / 180 / 270 degrees)."""
  config, _, models, params, step = state_lib.restore_workdir(
      workdir, restore=state_lib.restore_generator)
  clips = generation.test_clips(config, NUM_CLIPS)
  enc = {'params': params['encoders']}

  @jax.jit
  def encode(frames):
    trunk = models.encoders.apply(enc, frames, method=gmscavp.GMSCAVP.video_features)
    scales = models.encoders.apply(enc, trunk, method=gmscavp.GMSCAVP.video_scales)
    return trunk.mean(axis=(1, 2, 3)), scales[-1].mean(axis=(1, 2))

  out = [encode(clips['frames'][i:i + BATCH]) for i in range(0, NUM_CLIPS, BATCH)]
  trunk, clip = (np.concatenate([np.asarray(o[k]) for o in out]) for k in (0, 1))
  first = trunk[:BATCH]
  between = np.linalg.norm(first - np.roll(first, 1, axis=0), axis=1).mean()
  hue = []
  for angle in (90.0, 180.0, 270.0):
    turned, _ = negatives.hue_rotate(jax.random.key(0), clips['frames'][:BATCH], (angle,))
    moved = np.asarray(encode(turned)[0])
    hue.append(float(np.linalg.norm(moved - first, axis=1).mean() / between))
  return trunk, clip, clips['label'], step, hue


def main(paths):
  for path in paths:
    trunk, clip, label, step, hue = features(path)
    print(f'{path} (step {step}) trunk hue sensitivity at 90 / 180 / 270 degrees: '
          + ' / '.join(f'{h:.2f}' for h in hue))
    for name, x in (('trunk mean', trunk), ('clip-level scale', clip)):
      scores = ' '.join(f'{k} {v:.1f}' for k, v in probe(x, label).items())
      print(f'{path} (step {step}) {name}: {scores}')


if __name__ == '__main__':
  main(sys.argv[1:])
