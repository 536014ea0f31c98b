"""Pictures of results: similarity matrices and loss curves (matplotlib, Agg backend)."""

import io

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def _to_rgb(fig) -> np.ndarray:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100)
  plt.close(fig)
  buf.seek(0)
  return plt.imread(buf, format='png')[..., :3]


def similarity_matrix(sim: np.ndarray, path: str, title: str, max_clips: int = 128) -> np.ndarray:
  """Saves the (N, N) video x audio similarity matrix as a PNG; returns it as (H, W, 3) uint8.

  Only the first `max_clips` rows/columns are drawn so the diagonal stays visible.
  """
  n = min(len(sim), max_clips)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  im = ax.imshow(sim[:n, :n], cmap='viridis', interpolation='nearest')
  ax.set_xlabel('audio clip')
  ax.set_ylabel('video clip')
  ax.set_title(f'{title} (first {n} of {len(sim)} test clips)', fontsize=9)
  fig.colorbar(im, ax=ax, label='cosine similarity')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return (_to_rgb(fig) * 255).astype(np.uint8)


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
