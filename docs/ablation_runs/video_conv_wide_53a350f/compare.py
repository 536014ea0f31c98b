"""The overlapping video stem with wide stages (model.video_stem='conv', model.video_widths=
(32, 64)) against the :runlocal default of 53a350f (patchify stem, (16, 32)), 3 seeds of
msa_msd:runlocal each at 1200 steps: mean ± std, the 95% Welch interval of the difference
(bold when it excludes 0) and the paired difference per seed (same seed: same data order).
The default's runs are Table 3's msa_msd (../table3_53a350f/).

  python docs/ablation_runs/video_conv_wide_53a350f/compare.py   # from the repository root
"""
import os
import sys

sys.path.insert(0, os.getcwd())
from gmscavp_jax.tools import runs  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(os.path.dirname(HERE), 'table3_53a350f', 'msa_msd-runlocal-seed{}')
KEYS = runs.COMPARED_KEYS


def load_conv_wide():
  """Generation from `evaluate` (conv_wide_eval_seedS), retrieval from the trainer."""
  gen = [key for key in KEYS if key[0].startswith('gen/')]
  retrieval = [key for key in KEYS if key not in gen]
  return {**runs.seed_values(os.path.join(HERE, 'conv_wide_eval_seed{}'), gen),
          **runs.seed_values(os.path.join(HERE, 'conv_wide_train_seed{}'), retrieval)}


def main():
  print('\n'.join(runs.comparison_table(load_conv_wide(), runs.seed_values(BASE), KEYS,
                                        'default (patchify, (16, 32))', 'conv stem, (32, 64)')))


if __name__ == '__main__':
  main()
