"""Pure metrics on numpy arrays (no model, no data): retrieval recall@k and ranks."""

from collections.abc import Sequence

import numpy as np


def positive_ranks(sim: np.ndarray) -> np.ndarray:
  """1-based rank of each row's own pair (the diagonal) among its row's scores.

  Args:
    sim: (N, N) similarities, row i = query i, column j = candidate j; (i, i) is the only
      positive (CAV-MAE protocol).
  Returns:
    (N,) int ranks; ties count against the positive (a constant row ranks it last).
  """
  sim = np.asarray(sim, np.float64)
  if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
    raise ValueError(f'similarity matrix must be square (N, N), got shape {sim.shape}')
  positive = np.diag(sim)[:, None]
  # Candidates scoring at least as high as the positive, itself excluded.
  ahead = (sim >= positive).sum(axis=1) - 1
  return ahead + 1


def retrieval_metrics(sim: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
  """R@k (percent) and median rank both ways for a (N, N) video x audio similarity matrix.

  Keys: `retrieval/v2a_R@k`, `retrieval/a2v_R@k`, `retrieval/chance_R@k`,
  `retrieval/median_rank_v2a`, `retrieval/median_rank_a2v`, `retrieval/num_clips`.
  """
  n = len(sim)
  out = {'retrieval/num_clips': float(n)}
  for name, ranks in (('v2a', positive_ranks(sim)), ('a2v', positive_ranks(np.asarray(sim).T))):
    for k in ks:
      out[f'retrieval/{name}_R@{k}'] = 100.0 * float(np.mean(ranks <= k))
    out[f'retrieval/median_rank_{name}'] = float(np.median(ranks))
  for k in ks:
    out[f'retrieval/chance_R@{k}'] = 100.0 * min(k, n) / n
  return out


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices and values of the k highest of (N,) scores, best first."""
  k = min(k, len(scores))
  idx = np.argsort(-np.asarray(scores), kind='stable')[:k]
  return idx, np.asarray(scores)[idx]
