"""Video<->audio retrieval over the test split (DESIGN §5): embed all, similarity, recall@k."""

import functools
import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmscavp_jax.infra import sharding
from gmscavp_jax.core import steps
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import metrics as metrics_lib

EMBEDDINGS_FILE = 'test_embeddings.npz'


class RetrievalEvaluator:
  """Embeds the first `eval.num_test_clips` test clips and scores retrieval both ways."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, models: steps.Models):
    self._config, self._mesh = config, mesh
    self._embed = jax.jit(
        functools.partial(steps.embed_step, models=models, config=config),
        # Params keep the layout they come with (replicated, or the trainer's FSDP shards).
        in_shardings=(None, sharding.batch_sharded(mesh)),
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

  def embed_clips(self, params, frames: np.ndarray,
                  waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N,E) of videos (N,T,H,W,3) and audios (N,S) from outside the split.

    The N clips are padded to a multiple of the device count, so each query size reuses one
    compiled program.
    """
    n, ndev = len(frames), self._mesh.size
    size = -(-n // ndev) * ndev
    batch = {'frames': sharding.padded_host_batch(self._mesh, frames, size),
             'waveform': sharding.padded_host_batch(self._mesh, waveform, size)}
    video, audio = self._embed(params, batch)
    return np.asarray(video)[:n], np.asarray(audio)[:n]

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


def _hits(emb: dict, candidates: np.ndarray, query: np.ndarray, top_k: int) -> list[dict]:
  """The top-k rows of `candidates` (N,E) by cosine with `query` (E,), best first."""
  idx, scores = metrics_lib.top_k(candidates @ query, top_k)
  return [{'clip': int(emb['index'][i]), 'score': float(s), 'label': int(emb['label'][i])}
          for i, s in zip(idx, scores)]


def answer_query(emb: dict, test_index: int, top_k: int, direction: str) -> dict:
  """Top-k of the other modality for test clip `test_index`, from `embed_test_split` output.

  Returns {'query', 'query_label', 'step', 'v2a': [{'clip', 'score', 'label'}, ...], 'a2v':
  [...]} (only the directions asked for), best first.
  """
  n = len(emb['video'])
  if not 0 <= test_index < n:
    raise ValueError(
        f'--test_index={test_index}: expected 0 <= index < {n} (eval.num_test_clips)')
  queries = {'v2a': (emb['video'], emb['audio']), 'a2v': (emb['audio'], emb['video'])}
  out = {'query': test_index, 'query_label': int(emb['label'][test_index]),
         'step': int(emb['step'])}
  for name, (query, candidates) in queries.items():
    if direction in (name, 'both'):
      out[name] = _hits(emb, candidates, query[test_index], top_k)
  return out


def answer_embedding_query(emb: dict, top_k: int, *, video: np.ndarray | None = None,
                           audio: np.ndarray | None = None) -> dict:
  """Top-k test clips for a query from outside the split: its video embedding (E,) ranks
  the split's audios ('v2a'), its audio embedding (E,) the split's videos ('a2v').

  Returns {'step', 'v2a': [{'clip', 'score', 'label'}, ...] (with `video`), 'a2v': [...]
  (with `audio`)}, best first.
  """
  out = {'step': int(emb['step'])}
  if video is not None:
    out['v2a'] = _hits(emb, emb['audio'], video, top_k)
  if audio is not None:
    out['a2v'] = _hits(emb, emb['video'], audio, top_k)
  return out
