"""unet.pixel_skip against the same code without it, 3 seeds of msa_msd:runlocal: mean ± std,
the 95% Welch interval of the difference (bold when it excludes 0) and the paired difference
per seed (same seed: same data order and the same initial values of every other parameter).

  python docs/ablation_runs/pixel_skip_e862e14/compare.py   # from the repository root
"""
import json
import os
import sys

sys.path.insert(0, os.getcwd())
from gmscavp_jax.tools import runs  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.abspath(__file__))
KEYS = [('gen/class_acc', 'class acc %', 1), ('gen/kld', 'KLD', 2), ('gen/fad', 'FAD', 2),
        ('gen/align_acc', 'Align Acc %', 1), ('gen/onset_f1@100ms', 'onset F1@100ms %', 1),
        ('gen/onset_precision@100ms', 'onset precision@100ms %', 1),
        ('gen/onset_recall@100ms', 'onset recall@100ms %', 1),
        ('gen/onset_f1@50ms', 'onset F1@50ms %', 1),
        ('gen/sync_offset_abs_s', 'sync offset, mean abs s', 3),
        ('retrieval/v2a_R@1', 'v2a R@1 %', 1), ('retrieval/a2v_R@1', 'a2v R@1 %', 1)]


def load(arm):
  """{metric: [seed 0, 1, 2]}: generation from `evaluate`, retrieval from the trainer."""
  out = {}
  for s in range(3):
    for part in ('eval', 'train'):
      r = json.load(open(os.path.join(ROOT, f'{arm}_{part}_seed{s}', 'results.json')))
      for k, _, _ in KEYS:
        if k.startswith('gen/') == (part == 'eval'):
          out.setdefault(k, []).append(float(r[k]))
  return out


def main():
  print('\n'.join(runs.comparison_table(load('pixel_skip'), load('base'), KEYS, 'base',
                                        'pixel_skip', per_seed=False)))


if __name__ == '__main__':
  main()
