"""Pictures of results: similarity matrices and loss curves (matplotlib, Agg backend)."""

import io

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def _save_and_decode(fig, path: str) -> np.ndarray:
  """Renders `fig` once: writes the PNG to `path` and returns it as (H, W, 3) uint8."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  plt.close(fig)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())
  buf.seek(0)
  return (plt.imread(buf, format='png')[..., :3] * 255).astype(np.uint8)


def similarity_matrix(sim: np.ndarray, path: str, title: str, labels: np.ndarray | None = None,
                      max_clips: int = 128) -> np.ndarray:
  """Saves the (N, N) video x audio similarity matrix as a PNG; returns it as (H, W, 3) uint8.

  The first `max_clips` clips are drawn, sorted by their class `labels` (N,) when given, so
  class blocks show as squares and each clip's own pair lies on the diagonal.
  """
  n = min(len(sim), max_clips)
  order = np.arange(n) if labels is None else np.argsort(labels[:n], kind='stable')
  fig, ax = plt.subplots(figsize=(5.5, 5))
  im = ax.imshow(sim[np.ix_(order, order)], cmap='viridis', interpolation='nearest')
  by = ', sorted by class' if labels is not None else ''
  ax.set_xlabel('audio clip')
  ax.set_ylabel('video clip')
  ax.set_title(f'{title}\nfirst {n} of {len(sim)} test clips{by}', fontsize=9)
  fig.colorbar(im, ax=ax, label='cosine similarity')
  fig.tight_layout()
  return _save_and_decode(fig, path)


def loss_curves(rows: list[dict], path: str, keys=('train/loss',)) -> None:
  """Saves a PNG of each key of `rows` (metrics.jsonl rows) against step."""
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for key in keys:
    pts = [(r['step'], r[key]) for r in rows if key in r]
    if pts:
      steps, values = zip(*pts)
      ax.plot(steps, values, label=key)
  ax.set_xlabel('step')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
