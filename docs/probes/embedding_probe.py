"""Linear probe of a workdir's test embeddings: does the clip embedding name the source?

  python docs/probes/embedding_probe.py WORKDIR [WORKDIR ...]   (needs scikit-learn)

Reads WORKDIR/test_embeddings.npz (written by every evaluation: 'video' and 'audio' (N,D)
concatenated scales, 'label' (N,) the first sounding class), fits a logistic regression on
the first 3/4 of the clips and prints its accuracy on the rest for the class, its shape
(class % 4 in the synthetic world) and its colour (class // 4). Chance: 1/16, ~1/4, ~1/4.
"""

import sys

import numpy as np
from sklearn.linear_model import LogisticRegression


def main(paths):
  for path in paths:
    z = np.load(f'{path}/test_embeddings.npz')
    label, cut = z['label'], 3 * len(z['label']) // 4
    row = []
    for modality in ('video', 'audio'):
      x = (z[modality] - z[modality].mean(0)) / (z[modality].std(0) + 1e-6)
      for name, target in (('class', label), ('shape', label % 4), ('colour', label // 4)):
        clf = LogisticRegression(max_iter=2000, C=0.1).fit(x[:cut], target[:cut])
        row.append(f'{modality}/{name} {100 * clf.score(x[cut:], target[cut:]):.1f}')
    print(path, ' '.join(row))


if __name__ == '__main__':
  main(sys.argv[1:])
