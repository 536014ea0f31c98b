"""Retrieval metrics on similarity matrices with known answers."""

import numpy as np
import pytest

from gmscavp_jax.evaluators import metrics


def test_identity_gives_perfect_recall():
  out = metrics.retrieval_metrics(np.eye(20), ks=(1, 5))
  assert out['retrieval/v2a_R@1'] == 100.0 and out['retrieval/a2v_R@1'] == 100.0
  assert out['retrieval/median_rank_v2a'] == 1.0
  assert out['retrieval/chance_R@1'] == pytest.approx(5.0)
  assert out['retrieval/chance_R@5'] == pytest.approx(25.0)


def test_hand_built_ranks_both_ways():
  # Row i = video i, column j = audio j.
  sim = np.array([[0.9, 0.1, 0.0],   # video 0: own audio first.
                  [0.8, 0.5, 0.1],   # video 1: own audio second.
                  [0.7, 0.6, 0.2]])  # video 2: own audio third.
  np.testing.assert_array_equal(metrics.positive_ranks(sim), [1, 2, 3])
  # Audio 0 is scored highest by video 0 (0.9) -> rank 1; audio 1: 0.5 vs 0.1, 0.6 -> 2;
  # audio 2: 0.2 vs 0.0, 0.1 -> 1.
  np.testing.assert_array_equal(metrics.positive_ranks(sim.T), [1, 2, 1])
  out = metrics.retrieval_metrics(sim, ks=(1, 2))
  assert out['retrieval/v2a_R@1'] == pytest.approx(100 / 3)
  assert out['retrieval/v2a_R@2'] == pytest.approx(200 / 3)
  assert out['retrieval/a2v_R@1'] == pytest.approx(200 / 3)
  assert out['retrieval/median_rank_v2a'] == 2.0


def test_ties_count_against_the_positive():
  np.testing.assert_array_equal(metrics.positive_ranks(np.ones((4, 4))), [4, 4, 4, 4])


def test_random_similarities_are_near_chance():
  sim = np.random.default_rng(0).normal(size=(2000, 2000))
  out = metrics.retrieval_metrics(sim, ks=(10,))
  assert abs(out['retrieval/v2a_R@10'] - out['retrieval/chance_R@10']) < 0.5


def test_non_square_is_rejected():
  with pytest.raises(ValueError, match='square'):
    metrics.positive_ranks(np.zeros((3, 4)))


def test_top_k_best_first():
  idx, vals = metrics.top_k(np.array([0.1, 0.9, 0.5]), 2)
  np.testing.assert_array_equal(idx, [1, 2])
  np.testing.assert_allclose(vals, [0.9, 0.5])
