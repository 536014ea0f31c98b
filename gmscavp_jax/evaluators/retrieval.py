"""Video<->audio retrieval over the test split (DESIGN §5): embed all, similarity, recall@k."""

import functools
import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmscavp_jax import sharding
from gmscavp_jax import steps
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import metrics as metrics_lib

EMBEDDINGS_FILE = 'test_embeddings.npz'


class RetrievalEvaluator:
  """Embeds the first `eval.num_test_clips` test clips and scores retrieval both ways."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, model):
    self._config, self._mesh = config, mesh
    self._embed = jax.jit(
        functools.partial(steps.embed_step, model=model, config=config),
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
        out_shardings=sharding.replicated(mesh))

  def embed_test_split(self, params) -> dict:
    """Returns {'video': (N,E), 'audio': (N,E), 'index': (N,), 'label': (N,)} as numpy."""
    parts = {'video': [], 'audio': [], 'index': [], 'label': []}
    for local in pipeline.eval_loader(self._config):
      batch = sharding.global_batch(self._mesh, pipeline.select(local, ('frames', 'waveform')))
      video, audio = self._embed(params, batch)
      parts['video'].append(np.asarray(video))
      parts['audio'].append(np.asarray(audio))
      # Index and label stay on the host; gather them the same way the batch was laid out.
      for key in ('index', 'label'):
        parts[key].append(np.asarray(multihost_utils.process_allgather(
            local[key], tiled=True)))
    return {k: np.concatenate(v) for k, v in parts.items()}

  def run(self, params) -> tuple[dict, dict]:
    """Scores retrieval; returns (metrics dict, embeddings dict with 'similarity' (N,N))."""
    emb = self.embed_test_split(params)
    emb['similarity'] = emb['video'] @ emb['audio'].T
    return metrics_lib.retrieval_metrics(emb['similarity'], self._config.eval.top_k), emb


def save_embeddings(workdir: str, step: int, emb: dict) -> str:
  """Writes the test embeddings of `step` so `retrieve` answers queries without re-embedding."""
  path = os.path.join(workdir, EMBEDDINGS_FILE)
  tmp = path + '.tmp.npz'
  np.savez(tmp, step=step, **{k: v for k, v in emb.items() if k != 'similarity'})
  os.replace(tmp, path)
  return path


def load_embeddings(workdir: str) -> dict | None:
  """The saved test embeddings (with their 'step'), or None if none were saved."""
  path = os.path.join(workdir, EMBEDDINGS_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return {k: f[k] for k in f.files}
