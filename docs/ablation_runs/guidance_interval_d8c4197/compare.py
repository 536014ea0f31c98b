"""The guidance-interval arms against arm A (10 steps, every step guided): Welch 95% intervals
over seeds and the paired difference per checkpoint.

  python docs/ablation_runs/guidance_interval_d8c4197/compare.py   # from the repository root
"""
import json
import os
import sys

sys.path.insert(0, os.getcwd())
from gmscavp_jax.tools import runs  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.abspath(__file__))
ARMS = {'A': 'steps10_all', 'B': 'steps10_0.28-5.42', 'C': 'steps5_0.28-5.42',
        'D': 'steps5_all', 'E': 'steps10_1-inf', 'F': 'steps5_1-inf'}
KEYS = [('gen/class_acc', 'class acc %', 1), ('gen/kld', 'KLD', 2), ('gen/fad', 'FAD', 2),
        ('gen/fad_inf', 'FAD-inf', 2), ('gen/align_acc', 'Align Acc %', 1),
        ('gen/onset_f1@100ms', 'onset F1@100ms %', 1),
        ('gen/sync_offset_abs_s', 'sync offset, mean abs s', 3)]


def load(arm):
  """{metric: {seed: value}} of one arm's per-seed results.json."""
  out = {}
  for s in range(3):
    p = os.path.join(ROOT, f'seed{s}_{ARMS[arm]}', 'results.json')
    if os.path.exists(p):
      r = json.load(open(p))
      for k, _, _ in KEYS:
        out.setdefault(k, {})[s] = float(r[k])
  return out


def main():
  data = {a: load(a) for a in ARMS}
  print('| metric | ' + ' | '.join(f'{a}: {ARMS[a]}' for a in ARMS) + ' | '
        + ' | '.join(f'{a} − A [95% Welch]; paired' for a in 'BCDEF') + ' |')
  print('| --- ' * (2 * len(ARMS)) + '|')
  for k, label, d in KEYS:
    cells = []
    for a in ARMS:
      v = list(data[a].get(k, {}).values())
      cells.append(runs.mean_std_cell(v, d) if len(v) > 1 else '—')
    for a in 'BCDEF':
      x, y = data[a].get(k, {}), data['A'].get(k, {})
      seeds = sorted(set(x) & set(y))
      if len(seeds) < 2:
        cells.append('—')
        continue
      cells.append(runs.compared_cells([x[s] for s in seeds], [y[s] for s in seeds], d)[2])
    print(f'| {label} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
