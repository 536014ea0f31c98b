"""The timing-blind retrieval ceiling (evaluators/retrieval.py): exact values, the oracle it
stands for, and the synthetic world's `visible` classes it is computed from."""

import itertools

import numpy as np
import pytest

from gmscavp_jax.evaluators import metrics
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.evaluators import suite


def test_groups_of_one_two_and_three_give_the_exact_mean_of_one_over_n():
  # Six clips: one alone, a pair, a triple. R@1 = mean(1, 1/2, 1/2, 1/3, 1/3, 1/3) = 1/2.
  ceiling = retrieval.timing_blind_ceiling(np.array([7, 3, 3, 5, 5, 5]), ks=(1, 2, 5))
  assert ceiling['retrieval/ceiling_R@1'] == pytest.approx(50.0)
  # R@k per query is min(1, k / n_i): R@2 = mean(1, 1, 1, 2/3, 2/3, 2/3) = 5/6.
  assert ceiling['retrieval/ceiling_R@2'] == pytest.approx(100 * 5 / 6)
  assert ceiling['retrieval/ceiling_R@5'] == pytest.approx(100.0)


def test_all_distinct_is_perfect_and_all_equal_is_chance():
  ks = (1, 5)
  distinct = retrieval.timing_blind_ceiling(np.arange(10), ks)
  same = retrieval.timing_blind_ceiling(np.zeros(10, int), ks)
  chance = metrics.retrieval_metrics(np.eye(10), ks)
  assert distinct == {'retrieval/ceiling_R@1': 100.0, 'retrieval/ceiling_R@5': 100.0}
  for k in ks:
    assert same[f'retrieval/ceiling_R@{k}'] == pytest.approx(chance[f'retrieval/chance_R@{k}'])


def test_the_formula_is_the_oracles_expected_recall_in_both_directions():
  """Every ordering of each group (2 x 6 x 1 orders), scored by the real R@k metric: their mean
  is the expected R@k of the oracle, exactly, in both directions."""
  groups = np.array([0, 0, 1, 1, 1, 2])
  n, ks = len(groups), (1, 2, 3)
  members = [np.flatnonzero(groups == g) for g in range(3)]
  runs = []
  for orders in itertools.product(*(itertools.permutations(m) for m in members)):
    place = np.zeros(n)
    for order in orders:
      place[list(order)] = np.arange(len(order))
    # Query (row) x candidate: 10 minus the candidate's place in its group's order when the
    # groups are the same, else 0. retrieval_metrics ranks a2v over the transpose, so the
    # oracle's a2v scores go in as their transpose.
    oracle = np.where(groups[:, None] == groups[None, :], 10.0 - place[None, :], 0.0)
    runs.append({**metrics.retrieval_metrics(oracle, ks),
                 **{k: v for k, v in metrics.retrieval_metrics(oracle.T, ks).items()
                    if k.startswith('retrieval/a2v')}})
  ceiling = retrieval.timing_blind_ceiling(groups, ks)
  for k in ks:
    for d in ('v2a', 'a2v'):
      mean = np.mean([r[f'retrieval/{d}_R@{k}'] for r in runs])
      assert ceiling[f'retrieval/ceiling_R@{k}'] == pytest.approx(mean), (d, k)


def test_descriptors_use_sounding_and_visible_classes_or_the_labels_alone():
  # Clips 0 and 1 sound the same class, but 1 also shows a silent distractor of class 2.
  labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], np.float32)
  visible = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)
  d = retrieval.descriptors(labels, visible)
  assert d.shape == (4,) and d[0] == d[3] and len(set(d.tolist())) == 3
  only = retrieval.descriptors(labels)
  assert only[0] == only[1] == only[3] != only[2]
  emb = {'labels': labels, 'visible': visible, 'label': np.array([0, 0, 1, 0])}
  out = retrieval.ceiling_metrics(emb, ks=(1,))
  assert out['retrieval/ceiling_R@1'] == pytest.approx(100 * (1 / 2 + 1 + 1 + 1 / 2) / 4)
  assert out['retrieval/class_ceiling_R@1'] == pytest.approx(100 * (3 * 1 / 3 + 1) / 4)
  # Without visible classes (a prepared real set) the ceiling is the class-only one.
  del emb['visible']
  out = retrieval.ceiling_metrics(emb, ks=(1,))
  assert out['retrieval/ceiling_R@1'] == out['retrieval/class_ceiling_R@1']


def test_results_md_shows_the_ceilings_beside_retrieval_only_when_measured():
  results = {f'retrieval/{d}_R@{k}': 1.0 * k for d in ('v2a', 'a2v') for k in (1, 5, 10)}
  old = suite.results_markdown(results, 'msa')
  # Evaluated before the ceilings existed: no rows or lines of dashes.
  assert 'ceiling' not in old.lower()
  results.update({f'retrieval/ceiling_R@{k}': 50.0 + k for k in (1, 5, 10)})
  results.update({f'retrieval/class_ceiling_R@{k}': 3.0 * k for k in (1, 5, 10)})
  lines = suite.results_markdown(results, 'msa').splitlines()
  assert '| timing-blind ceiling, either direction | 51.00 | 55.00 | 60.00 | — |' in lines
  assert '| class-only ceiling, either direction | 3.00 | 15.00 | 30.00 | — |' in lines
  assert 'Timing-blind ceiling of R@1 / R@5 / R@10: 51.00 / 55.00 / 60.00.' in lines
