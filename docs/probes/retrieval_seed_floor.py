"""How far apart two seeds' R@1 would be by chance alone, on the same test clips.

  python docs/probes/retrieval_seed_floor.py W0 W1 W2   (workdirs of one config, other seeds)

Reads each workdir's saved test embeddings (test_embeddings.npz, written at its last
evaluation) and scores v2a R@1 per clip (1 if the clip's own audio ranks first). For each
pair of seeds it prints the difference of R@1 and its paired standard error over clips,
sd(hit_a - hit_b) / sqrt(N): the spread two equally good models would show from which clips
each happens to get right. A difference of many SEs is the seeds'; the SE / sqrt(2) is the
seed std that equally good seeds would have on these N clips (the floor under any seed-std
target).
"""

import itertools
import sys

import numpy as np


def hits(workdir: str) -> np.ndarray:
  """(N,) 1.0 where the clip's own audio is the top v2a match."""
  with np.load(f'{workdir}/test_embeddings.npz') as z:
    sim = z['video'] @ z['audio'].T
  return (sim.argmax(axis=1) == np.arange(len(sim))).astype(np.float64)


def main(workdirs):
  per_seed = {w: hits(w) for w in workdirs}
  for w, h in per_seed.items():
    print(f'{w}: v2a R@1 {100 * h.mean():.2f} over {len(h)} clips')
  ses = []
  for a, b in itertools.combinations(workdirs, 2):
    d = per_seed[a] - per_seed[b]
    se = 100 * d.std(ddof=1) / np.sqrt(len(d))
    ses.append(se)
    print(f'{a} - {b}: {100 * d.mean():+.2f} points, paired SE {se:.2f} '
          f'({abs(100 * d.mean()) / se:.1f} SE)')
  print(f'seed std of equally good models on these clips: about {np.mean(ses) / np.sqrt(2):.2f}')


if __name__ == '__main__':
  main(sys.argv[1:])
