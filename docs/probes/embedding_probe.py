"""Linear probe of a workdir's test embeddings: does the clip embedding name the source?

  python docs/probes/embedding_probe.py WORKDIR [WORKDIR ...]   (needs scikit-learn)

Reads WORKDIR/test_embeddings.npz (written by every evaluation: 'video' and 'audio' (N,E)
concatenated scales, 'label' (N,) the first sounding class), fits a logistic regression on
the first 3/4 of the clips and prints its accuracy on the rest for the class, its shape
(class % 4 in the synthetic world) and its colour (class // 4). Chance: 1/16, ~1/4, ~1/4.
An embedding of time-aligned segments (eval.retrieval_pooling='segments', WORKDIR/config.json)
is first averaged over time within each scale (the mean of its unit segment vectors, where
'clip' pooling normalises the mean of the raw ones), so the probe reads per-scale clip
features whichever pooling the workdir retrieves with, and fits in seconds, not minutes.
"""

import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression


def per_scale_means(x: np.ndarray, config: dict) -> np.ndarray:
  """(N,E) segment embedding -> (N, L*D) of each scale's mean over its T_l segments."""
  ev, model = config['eval'], config['model']
  if ev.get('retrieval_pooling', 'clip') != 'segments':
    return x
  pools = model['scale_pools'] if ev.get('retrieval_scale', -1) < 0 else [
      model['scale_pools'][ev['retrieval_scale']]]
  lengths = [config['data']['num_frames'] // p for p in pools]
  x = x.reshape(len(x), sum(lengths), -1)
  bounds = np.cumsum([0] + lengths)
  return np.concatenate([x[:, a:b].mean(1) for a, b in zip(bounds[:-1], bounds[1:])], 1)


def probe(x: np.ndarray, label: np.ndarray) -> dict:
  """Held-out accuracy (%) of a logistic regression on features x (N,E), fit on the first
  3/4, for the first sounding class `label` (N,), its shape and its colour."""
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  cut, out = 3 * len(label) // 4, {}
  for name, target in (('class', label), ('shape', label % 4), ('colour', label // 4)):
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x[:cut], target[:cut])
    out[name] = 100 * clf.score(x[cut:], target[cut:])
  return out


def main(paths):
  for path in paths:
    z = np.load(f'{path}/test_embeddings.npz')
    with open(f'{path}/config.json') as f:
      config = json.load(f)
    row = []
    for modality in ('video', 'audio'):
      scores = probe(per_scale_means(z[modality], config), z['label'])
      row += [f'{modality}/{name} {value:.1f}' for name, value in scores.items()]
    print(path, ' '.join(row))


if __name__ == '__main__':
  main(sys.argv[1:])
