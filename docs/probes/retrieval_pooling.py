"""Retrieval of trained workdirs scored two ways: clip means (timing-blind) and time-aligned
segments (`eval.retrieval_pooling`), all scales and each scale alone.

  python docs/probes/retrieval_pooling.py ROOT    (ROOT holds CONFIG-runlocal-seedS workdirs,
                                                   as tools/ablation writes them)

Restores each workdir's newest checkpoint, embeds its test split with the package's
`RetrievalEvaluator` under each pooling, and prints one row per workdir, then per config the
mean ± std over seeds of R@1 both ways with the 95% Welch interval of the difference of
'segments' to 'clip' pooling. Writes ROOT/retrieval_pooling.json.
"""

import collections
import json
import os
import re
import sys

from absl import flags
import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.tools import runs

KEYS = ('retrieval/v2a_R@1', 'retrieval/a2v_R@1')


def score(workdir: str) -> dict:
  """{'clip': (v2a, a2v), 'segments': ..., 'segments/scaleL': ...} R@1 of one workdir."""
  config = config_io.load_config(workdir)
  config.data.worker_count = 0
  _, mesh, models, params, step = state_lib.restore_workdir(workdir, config)
  out = {'step': step}
  num_scales = len(config.model.scale_pools)
  settings = [('clip', -1), ('segments', -1)] + [('segments', l) for l in range(num_scales)]
  for pooling, scale in settings:
    config.eval.retrieval_pooling, config.eval.retrieval_scale = pooling, scale
    results, _ = retrieval.RetrievalEvaluator(config, mesh, models).run(params)
    name = pooling if scale < 0 else f'{pooling}/scale{scale}'
    out[name] = [round(results[k], 2) for k in KEYS]
  return out


def main(root: str):
  flags.FLAGS(['retrieval_pooling'])  # grain reads absl flags
  rows = {}
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if re.fullmatch(r'\w+-runlocal-seed\d+', name) and os.path.isfile(
        os.path.join(path, 'config.json')):
      rows[name] = score(path)
      print(name, json.dumps(rows[name]), flush=True)
  with open(os.path.join(root, 'retrieval_pooling.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  by_config = collections.defaultdict(list)
  for name, row in rows.items():
    by_config[name.split('-runlocal-')[0]].append(row)
  print('| config | clip v2a / a2v R@1 | segments v2a / a2v R@1 | segments - clip (95% Welch) |')
  print('| --- | --- | --- | --- |')
  for config, seeds in by_config.items():
    cells = []
    for pooling in ('clip', 'segments'):
      cells.append(' / '.join(
          f'{np.mean([s[pooling][i] for s in seeds]):.1f} ± '
          f'{np.std([s[pooling][i] for s in seeds], ddof=1):.1f}' for i in range(2)))
    diffs = []
    for i in range(2):
      low, high = runs.difference_interval([s['segments'][i] for s in seeds],
                                           [s['clip'][i] for s in seeds])
      diffs.append(f'[{low:+.1f}, {high:+.1f}]')
    print(f'| {config} ({len(seeds)} seeds) | {cells[0]} | {cells[1]} | {" / ".join(diffs)} |')


if __name__ == '__main__':
  main(sys.argv[1])
