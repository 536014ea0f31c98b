"""The overlapping video stem with wide stages (model.video_stem='conv', model.video_widths=
(32, 64)) against the :runlocal default of 53a350f (patchify stem, (16, 32)), 3 seeds of
msa_msd:runlocal each at 1200 steps: mean ± std, the 95% Welch interval of the difference
(bold when it excludes 0) and the paired difference per seed (same seed: same data order).
The default's runs are Table 3's msa_msd (../table3_53a350f/).

  python docs/ablation_runs/video_conv_wide_53a350f/compare.py   # from the repository root
"""
import json
import os
import sys

sys.path.insert(0, os.getcwd())
from gmscavp_jax.tools import runs  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(os.path.dirname(HERE), 'table3_53a350f', 'msa_msd-runlocal-seed{}')
KEYS = [('gen/class_acc', 'class acc %', 1), ('gen/kld', 'KLD', 2), ('gen/fad', 'FAD', 2),
        ('gen/align_acc', 'Align Acc %', 1), ('gen/onset_f1@100ms', 'onset F1@100ms %', 1),
        ('gen/onset_precision@100ms', 'onset precision@100ms %', 1),
        ('gen/onset_recall@100ms', 'onset recall@100ms %', 1),
        ('gen/sync_offset_abs_s', 'sync offset, mean abs s', 3),
        ('retrieval/v2a_R@1', 'v2a R@1 %', 1), ('retrieval/a2v_R@1', 'a2v R@1 %', 1)]


def read(path):
  return json.load(open(os.path.join(path, 'results.json')))


def load_base():
  runs_ = [read(BASE.format(s)) for s in range(3)]
  return {k: [float(r[k]) for r in runs_] for k, _, _ in KEYS}


def load_conv_wide():
  """Generation from `evaluate` (conv_wide_eval_seedS), retrieval from the trainer."""
  out = {}
  for s in range(3):
    for part in ('eval', 'train'):
      r = read(os.path.join(HERE, f'conv_wide_{part}_seed{s}'))
      for k, _, _ in KEYS:
        if k.startswith('gen/') == (part == 'eval'):
          out.setdefault(k, []).append(float(r[k]))
  return out


def main():
  print('\n'.join(runs.comparison_table(load_conv_wide(), load_base(), KEYS,
                                        'default (patchify, (16, 32))', 'conv stem, (32, 64)')))


if __name__ == '__main__':
  main()
