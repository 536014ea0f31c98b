"""Generated-audio class accuracy against the colour the video encoder keeps (probes.csv: the
trunk probe of docs/probes/video_trunk_probe.py and `evaluate`'s class accuracy; the 18 runs
of b2427be, then the source-keeping levers of ../source_levers_31da1ad/, 3 seeds each).

  python docs/ablation_runs/source_keeping_b2427be/plot.py   # writes docs/colour_vs_class.png
"""
import csv
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', '..', 'colour_vs_class.png')


def main():
  rows = list(csv.DictReader(open(os.path.join(HERE, 'probes.csv'))))
  colour = np.array([float(r['trunk_colour']) for r in rows])
  acc = np.array([float(r['class_acc']) for r in rows])
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  styles = {'cavp ': ('s', 'C0'), 'msa ': ('^', 'C1'), 'msd ': ('v', 'C2'), 'msa_msd ': ('o', 'C3')}
  levers = {'hue negatives': ('D', 'C4'), 'cross-time 1.0': ('P', 'C5'),
            'cross-time 0.25': ('X', 'C6'), 'cross-time 1.0 to step 400': ('h', 'C7'),
            'hue negatives + cross-time to step 400': ('*', 'C8')}
  lever_of = lambda r: next((k for k in levers if r['run'].endswith(k)), None)
  for lever, (marker, face) in levers.items():
    pick = [i for i, r in enumerate(rows) if lever_of(r) == lever]
    if pick:
      ax.scatter(colour[pick], acc[pick], marker=marker, s=52, edgecolors='k', facecolors=face,
                 label=f'msa_msd + {lever}')
  for config, (marker, face) in styles.items():
    for enc in ('patchify (16 32)', 'conv (32 64)'):
      pick = [i for i, r in enumerate(rows) if r['run'].startswith(config) and r['encoder'] == enc
              and lever_of(r) is None]
      if pick:  # Hollow markers: the old encoder.
        ax.scatter(colour[pick], acc[pick], marker=marker, s=46, edgecolors='k',
                   facecolors='white' if enc.startswith('patchify') else face,
                   label=f'{config.strip()}, {enc}')
  r = np.corrcoef(colour, acc)[0, 1]
  ax.axvline(33, color='grey', ls=':', lw=1)
  ax.axhline(8.3, color='grey', ls=':', lw=1)
  ax.set_xlabel('video encoder output: colour probe accuracy % (chance ~33)')
  ax.set_ylabel('generated audio: class accuracy % (random class 8.3)')
  ax.set_title(f'The source the audio gets is the colour the encoder kept (r = {r:.2f}, '
               f'{len(rows)} runs)',
               fontsize=9)
  ax.legend(fontsize=7, loc='upper left')
  fig.tight_layout()
  fig.savefig(OUT, dpi=110)
  print(f'wrote {OUT}, r = {r:.3f}')


if __name__ == '__main__':
  main()
