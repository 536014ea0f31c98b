"""The source-keeping levers against the :runlocal default of b2427be, 3 seeds of
msa_msd:runlocal each at 1200 steps, evaluated as the ablation runner does (`evaluate
--guidance=2.0`): mean ± std, the 95% Welch interval of the difference (bold when it excludes
0) and the paired difference per seed (same seed: same data order and init). The default's
runs are Table 3's msa_msd (../table3_b2427be/); hue_negatives-seedS trained with
--config.loss.hue_negatives=True (code of 3edb18f), cross_time-seedS with
--config.loss.cross_time_weight=1.0 and cross_time_0.25-seedS with 0.25 (code of 31da1ad);
cross_time_400-seedS with weight 1.0 and --config.loss.cross_time_steps=400 (code of 0cedd35:
the term on for the first third of the run only); hue_cross_time_400-seedS with those and
--config.loss.hue_negatives=True (code of 0cedd35).

  python docs/ablation_runs/source_levers_31da1ad/compare.py   # from the repository root
"""
import json
import os
import sys

sys.path.insert(0, os.getcwd())
from gmscavp_jax.tools import runs  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(os.path.dirname(HERE), 'table3_b2427be', 'msa_msd-runlocal-seed{}')
ARMS = [('hue negatives', os.path.join(HERE, 'hue_negatives-seed{}')),
        ('cross-time term', os.path.join(HERE, 'cross_time-seed{}')),
        ('cross-time term at 0.25', os.path.join(HERE, 'cross_time_0.25-seed{}')),
        ('cross-time term, first 400 steps', os.path.join(HERE, 'cross_time_400-seed{}')),
        ('hue negatives + cross-time, first 400 steps',
         os.path.join(HERE, 'hue_cross_time_400-seed{}'))]
KEYS = [('gen/class_acc', 'class acc %', 1), ('gen/kld', 'KLD', 2), ('gen/fad', 'FAD', 2),
        ('gen/align_acc', 'Align Acc %', 1), ('gen/onset_f1@100ms', 'onset F1@100ms %', 1),
        ('retrieval/v2a_R@1', 'v2a R@1 %', 1), ('retrieval/a2v_R@1', 'a2v R@1 %', 1)]


def load(pattern):
  rows = [json.load(open(os.path.join(pattern.format(s), 'results.json'))) for s in range(3)]
  return {k: [float(r[k]) for r in rows] for k, _, _ in KEYS}


def main():
  base = load(BASE)
  for name, pattern in ARMS:
    print('\n' + '\n'.join(runs.comparison_table(load(pattern), base, KEYS,
                                                 'default (b2427be)', name)))


if __name__ == '__main__':
  main()
