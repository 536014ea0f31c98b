"""Does the generator copy its training audio? Nearest training clips in the evaluator embedding.

For each generated clip, the distance to its nearest training clip is set against how close
real audio the model never saw comes to the training set: the threshold is the smallest
nearest-training distance over the reference test clips (the disjoint half R). A generated
clip closer to a training clip than any of those real test clips is flagged as memorised.
The real audio of the generated clips' own videos (G, also unseen) is scored the same way,
so a reader sees how often unseen real audio crosses the threshold (about 1 / (|R| + 1) of
the clips by chance).
"""

import numpy as np


def nearest(queries: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Euclidean nearest neighbour of each of (N,D) queries among (M,D) candidates:
  (distances (N,), indices (N,))."""
  q, c = (np.asarray(a, np.float64) for a in (queries, candidates))
  squared = (q * q).sum(1)[:, None] - 2.0 * q @ c.T + (c * c).sum(1)[None, :]
  index = np.argmin(squared, axis=1)
  return np.sqrt(np.maximum(squared[np.arange(len(q)), index], 0.0)), index


def memorisation(generated: np.ndarray, real: np.ndarray, reference: np.ndarray,
                 train: np.ndarray) -> tuple[dict, dict]:
  """The memorisation check on evaluator embeddings.

  Args:
    generated: (N,D) embeddings of the generated audio.
    real: (N,D) of the real audio of the same N test videos.
    reference: (M,D) of the real audio of the reference test clips (sets the threshold).
    train: (T,D) of training clips' real audio.
  Returns:
    (results, details). results: gen/memorised_share and ref/gt/memorised_share (percent
    of clips nearer a training clip than the threshold), memorisation/threshold,
    gen/train_distance (median distance to the nearest training clip) and
    gen/train_over_test_distance (median over generated clips of that distance over the
    distance to the nearest reference test clip: below 1, the audio is nearer the training
    set than the test set). details: 'train_index' (N,) nearest training clip of each
    generated clip and 'order' (N,) generated clips from the most to the least suspect.
  """
  threshold = float(nearest(reference, train)[0].min())
  gen_train, index = nearest(generated, train)
  gen_test = nearest(generated, reference)[0]
  real_train = nearest(real, train)[0]
  ratio = gen_train / np.maximum(gen_test, 1e-12)
  results = {
      'gen/memorised_share': 100.0 * float(np.mean(gen_train < threshold)),
      'ref/gt/memorised_share': 100.0 * float(np.mean(real_train < threshold)),
      'memorisation/threshold': threshold,
      'gen/train_distance': float(np.median(gen_train)),
      'gen/train_over_test_distance': float(np.median(ratio)),
  }
  return results, {'train_index': index, 'order': np.argsort(ratio, kind='stable')}
