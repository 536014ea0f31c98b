"""Table 3 at the defaults of 53a350f (pixel skip, guidance 2, 5 sampler steps guided above
noise level 1) against the last table (table3_x4_5f32c1d, msa_msd from encoder_lr_3996981:
no pixel skip, guidance 5, 10 fully guided steps): per config, mean ± std over 3 seeds and
the 95% Welch interval of new - old (bold when it excludes 0).

  python docs/ablation_runs/table3_53a350f/compare.py   # from the repository root
"""
import json
import os
import sys

sys.path.insert(0, os.getcwd())
from gmscavp_jax.tools import runs  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.dirname(HERE)
CONFIGS = ('cavp', 'msa', 'msd', 'msa_msd')
KEYS = [('gen/class_acc', 'class acc', 1), ('gen/kld', 'KLD', 2), ('gen/fad', 'FAD', 2),
        ('gen/align_acc', 'Align Acc', 1), ('gen/onset_f1@100ms', 'onset F1@100', 1),
        ('gen/onset_precision@100ms', 'onset precision@100', 1),
        ('retrieval/v2a_R@1', 'v2a R@1', 1), ('retrieval/a2v_R@1', 'a2v R@1', 1)]


def old_dir(name, seed):
  if name == 'msa_msd':
    return os.path.join(RUNS, 'encoder_lr_3996981', f'msa_msd_x4_seed{seed}')
  return os.path.join(RUNS, 'table3_x4_5f32c1d', f'{name}-runlocal-seed{seed}')


def load(path):
  return json.load(open(os.path.join(path, 'results.json')))


def table(new_dir, old_dir, against='then'):
  """Prints the table: new_dir(name, seed) and old_dir(name, seed) are the runs' folders."""
  print('| config | ' + ' | '.join(label for _, label, _ in KEYS) + ' |')
  print('| --- ' * (len(KEYS) + 1) + '|')
  for name in CONFIGS:
    new = [load(new_dir(name, s)) for s in range(3)]
    old = [load(old_dir(name, s)) for s in range(3)]
    now, diff = [], []
    for k, _, d in KEYS:
      x, y = [float(r[k]) for r in new], [float(r[k]) for r in old]
      now.append(runs.mean_std_cell(x, d))
      diff.append(runs.difference_cell(x, y, d))
    print(f'| {name}, now | ' + ' | '.join(now) + ' |')
    print(f'| {name}, now - {against} | ' + ' | '.join(diff) + ' |')


def main():
  table(lambda name, seed: os.path.join(HERE, f'{name}-runlocal-seed{seed}'), old_dir)


if __name__ == '__main__':
  main()
