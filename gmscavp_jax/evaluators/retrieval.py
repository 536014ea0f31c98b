"""Video<->audio retrieval over the test split (DESIGN §5): embed all, similarity, recall@k,
and beside it the timing-blind ceiling (`timing_blind_ceiling`)."""

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
from gmscavp_jax.evaluators import intervals
from gmscavp_jax.evaluators import metrics as metrics_lib

EMBEDDINGS_FILE = 'test_embeddings.npz'


def descriptors(labels: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
  """What a timing-blind oracle knows of each clip: (N,) row ids, equal iff two clips have the
  same descriptor.

  Args:
    labels: (N,K) multi-hot of each clip's (sounding) classes.
    visible: (N,K) multi-hot of the classes on screen, or None where the dataset does not say
      (a prepared real set): then the descriptor is the labelled classes alone, which for a
      single-label set is the label.
  """
  rows = np.asarray(labels) > 0
  if visible is not None:
    rows = np.concatenate([rows, np.asarray(visible) > 0], axis=1)
  return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)


def timing_blind_ceiling(descriptor: np.ndarray, ks=(1, 5, 10), name: str = 'ceiling') -> dict:
  """Exact expected R@k (percent) of an oracle that knows each clip's descriptor, not timing.

  Every test clip i has a descriptor d_i (`descriptors`: its set of sounding classes and its
  set of visible classes). For a query i the oracle ranks the n_i = |{j : d_j = d_i}|
  candidates with the query's descriptor first, in a uniformly random order, then the rest.
  Its true pair is one of those n_i, at each place with probability 1 / n_i, so its expected
  R@k is min(1, k / n_i) exactly (no sampling); the ceiling is the mean over the N clips. At
  k = 1 each group of n clips adds n * 1/n = 1, so R@1 = (number of distinct descriptors) / N.
  "Same descriptor" is symmetric and every clip is once a query and once a candidate in each
  direction, so v2a and a2v have the same ceiling: one key, `retrieval/ceiling_R@{k}`, serves
  both. A model above it knows more of each clip than its classes (timing, motion); one
  below it ranks worse than the classes alone would.

  Args:
    descriptor: (N,) ids (ints or strings), one per test clip.
    ks: the k of each R@k.
    name: the key's name: 'ceiling' for the descriptor of `descriptors`, 'class_ceiling' for
      the label alone (the oracle that knows only each clip's first class).
  Returns:
    {f'retrieval/{name}_R@{k}': percent} for each k.
  """
  _, inverse, counts = np.unique(np.asarray(descriptor), return_inverse=True,
                                 return_counts=True)
  group = counts[inverse.reshape(-1)].astype(np.float64)  # n_i per clip.
  return {f'retrieval/{name}_R@{k}': 100.0 * float(np.mean(np.minimum(1.0, k / group)))
          for k in ks}


def test_split_ceiling(config: ml_collections.ConfigDict) -> dict:
  """`ceiling_metrics` of the clips the retrieval metric uses (the first eval.num_test_clips
  of the test split), read from the dataset source without a model: what a run of `config`
  will report beside its R@k (eval.top_k), before training it."""
  source = pipeline.make_source(config, 'test')
  fields = ('label', 'labels', 'visible')
  records = [source[i] for i in range(config.eval.num_test_clips)]
  emb = {k: np.stack([r[k] for r in records]) for k in fields if k in records[0]}
  return ceiling_metrics(emb, config.eval.top_k)


def embed_split(batches, mesh: Mesh, embed) -> dict:
  """`RetrievalEvaluator.embed_test_split` over `batches` (an eval loader's local batches)
  with `embed` (a global batch {'frames', 'waveform'} -> video (B,E), audio (B,E)): the
  rows whose `valid` is False (`pipeline.PaddedSource`'s padding) are left out."""
  parts = {'video': [], 'audio': [], 'index': [], 'label': [], 'labels': []}
  for local in batches:
    batch = sharding.global_batch(mesh, pipeline.select(local, ('frames', 'waveform')))
    video, audio = embed(batch)
    parts['video'].append(np.asarray(video))
    parts['audio'].append(np.asarray(audio))
    # The labels stay on the host; gather them the same way the batch was laid out.
    for key in ('index', 'label', 'labels', 'visible', 'valid'):
      if key in local:
        parts.setdefault(key, []).append(np.asarray(multihost_utils.process_allgather(
            local[key], tiled=True)))
  emb = {k: np.concatenate(v) for k, v in parts.items()}
  valid = emb.pop('valid', None)
  return emb if valid is None else {k: v[valid] for k, v in emb.items()}


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
    """Returns {'video': (N,E), 'audio': (N,E), 'index': (N,), 'label': (N,), 'labels': (N,K)}
    as numpy, and 'visible' (N,K) when the dataset's clips have it (the synthetic world).

    N = eval.num_test_clips, whatever eval.batch_size: the loader pads the last batch and
    the padding is dropped here, before any metric sees it."""
    return embed_split(pipeline.eval_loader(self._config), self._mesh,
                       functools.partial(self._embed, params))

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
    """Scores retrieval; returns (metrics dict, embeddings dict with 'similarity' (N,N)).

    The metrics are `metrics.retrieval_metrics` with `recall_intervals`, and, of the same
    clips, `ceiling_metrics`.
    """
    emb = self.embed_test_split(params)
    emb['similarity'] = emb['video'] @ emb['audio'].T
    results = metrics_lib.retrieval_metrics(emb['similarity'], self._config.eval.top_k)
    results.update(recall_intervals(emb['similarity'], self._config.eval.top_k))
    results.update(ceiling_metrics(emb, self._config.eval.top_k))
    return results, emb


def recall_intervals(sim: np.ndarray, ks=(1, 5, 10)) -> dict:
  """95% bootstrap intervals over queries of R@k both ways for a (N,N) similarity:
  retrieval/{v2a,a2v}_R@{k}_ci95_{low,high}. The candidates stay all N clips; only which
  queries are asked is resampled."""
  out = {}
  for name, ranks in (('v2a', metrics_lib.positive_ranks(sim)),
                      ('a2v', metrics_lib.positive_ranks(np.asarray(sim).T))):
    for k in ks:
      hit = 100.0 * (ranks <= k)
      out.update(intervals.interval_keys(f'retrieval/{name}_R@{k}',
                                         lambda i, h=hit: float(np.mean(h[i])), len(ranks)))
  return out


def ceiling_metrics(emb: dict, ks=(1, 5, 10)) -> dict:
  """`retrieval/ceiling_R@{k}` and `retrieval/class_ceiling_R@{k}` (percent) of the clips of
  `emb` ('labels' (N,K), optional 'visible' (N,K), 'label' (N,)): see `timing_blind_ceiling`.

  ceiling: the oracle knows each clip's sounding and visible classes; on a prepared set
  without visible classes, its labelled classes alone (then it is the class-only ceiling).
  class_ceiling: the oracle knows only the label (the first class).
  """
  return {**timing_blind_ceiling(descriptors(emb['labels'], emb.get('visible')), ks),
          **timing_blind_ceiling(emb['label'], ks, name='class_ceiling')}


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
