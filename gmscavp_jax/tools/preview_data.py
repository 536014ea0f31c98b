r"""Writes preview PNGs of synthetic clips: frames over time above the log-mel spectrogram.

  python -m gmscavp_jax.tools.preview_data --out=/tmp/preview [--num_clips=4 --split=train]

Onset times are drawn as dashed lines across both panels, which share one time axis, so a
reader can check that impacts and flashes line up with sound onsets.
"""

import os

from absl import flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from configs import common  # pylint: disable=g-import-not-at-top
from gmscavp_jax import cli  # pylint: disable=g-import-not-at-top
from gmscavp_jax.data import synthetic

_OUT = flags.DEFINE_string('out', None, 'Folder for the PNGs.', required=True)
_NUM_CLIPS = flags.DEFINE_integer('num_clips', 4, 'How many clips to draw.')
_START = flags.DEFINE_integer('start', 0, 'Index of the first clip.')
_SPLIT = flags.DEFINE_enum('split', 'train', sorted(synthetic.SPLITS), 'Split to draw from.')
_SEED = flags.DEFINE_integer('seed', 0, 'World seed.')
_FULL = flags.DEFINE_bool('full', False, 'Full sizes instead of the runlocal ones.')


def plot_clip(clip: dict[str, np.ndarray], source: synthetic.SyntheticAVSource,
              path: str) -> None:
  """Saves one clip (a `source[i]` dict that has `log_mel`) as a PNG at `path`."""
  frames = clip['frames']  # (T, H, W, 3)
  t_count, size = frames.shape[:2]
  strip = np.concatenate(list(frames), axis=1)  # (H, T*W, 3): frame f spans [f, f+1)/fps.
  log_mel = clip['log_mel']  # (Ta, F)
  hop_seconds = source.audio_cfg.hop_length / source.sample_rate
  onsets = clip['onsets'][:int(clip['num_onsets'])]
  frame_inches = float(np.clip(14.0 / t_count, 0.4, 1.0))  # Keeps frames about square.
  fig, (top, bottom) = plt.subplots(
      2, 1, figsize=(frame_inches * t_count + 1.5, frame_inches + 4.0), sharex=True,
      gridspec_kw=dict(height_ratios=(frame_inches, 3.0)))
  top.imshow(strip, extent=(0.0, source.seconds, 0.0, 1.0), aspect='auto',
             interpolation='nearest')
  top.set_yticks([])
  classes = np.flatnonzero(clip['labels'])
  top.set_title(f'{source.split} clip {int(clip["index"])}: sounding classes '
                f'{classes.tolist()}, {len(onsets)} onsets, {t_count} frames of {size}px')
  bottom.imshow(log_mel.T, origin='lower', aspect='auto', cmap='magma',
                extent=(0.0, log_mel.shape[0] * hop_seconds, 0.0, log_mel.shape[1]))
  bottom.set_ylabel('mel bin')
  bottom.set_xlabel('time (s)')
  for axis in (top, bottom):
    for onset in onsets:
      axis.axvline(onset, color='cyan', linestyle='--', linewidth=1.0)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  config = common.apply_variant(common.base_config(), '' if _FULL.value else 'runlocal')
  config.data.seed = _SEED.value
  source = synthetic.from_config(config, _SPLIT.value, with_log_mel=True)
  os.makedirs(_OUT.value, exist_ok=True)
  for index in range(_START.value, _START.value + _NUM_CLIPS.value):
    path = os.path.join(_OUT.value, f'{_SPLIT.value}_{index:06d}.png')
    plot_clip(source[index], source, path)
    print(f'wrote {path}')


if __name__ == '__main__':
  cli.run(main)
