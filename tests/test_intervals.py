"""Bootstrap intervals over clips, FAD-inf, per-clip onset counts, retrieval intervals and the
audio-video offset in seconds."""

import numpy as np
import pytest

from gmscavp_jax.evaluators import intervals
from gmscavp_jax.evaluators import memorisation
from gmscavp_jax.evaluators import metrics
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.evaluators import sync_offset


def test_interval_of_a_rate_matches_the_binomial_one():
  hits = 100.0 * (np.random.default_rng(0).random(400) < 0.3)
  low, high = intervals.bootstrap_interval(lambda i: hits[i].mean(), len(hits))
  p = hits.mean() / 100
  half = 100 * 1.96 * np.sqrt(p * (1 - p) / len(hits))  # Normal approximation: 4.6 points.
  assert low < hits.mean() < high
  np.testing.assert_allclose(high - low, 2 * half, rtol=0.15)
  # Reproducible: the resamples come from a fixed seed.
  assert (low, high) == intervals.bootstrap_interval(lambda i: hits[i].mean(), len(hits))


def test_interval_edges():
  assert all(np.isnan(intervals.bootstrap_interval(lambda i: 1.0, 1)))
  with pytest.raises(ValueError, match='level=1.5'):
    intervals.bootstrap_interval(lambda i: 1.0, 10, level=1.5)
  keys = intervals.interval_keys('gen/x', lambda i: float(len(i)), 5)
  assert keys == {'gen/x_ci95_low': 5.0, 'gen/x_ci95_high': 5.0}


def _shifted_gaussians(num_clips: int, dim: int = 32):
  """Generated embeddings N(mu, I) with |mu|^2 = 1 against a large N(0, I) reference: the
  true Fréchet distance is 1."""
  rng = np.random.default_rng(0)
  reference = rng.normal(size=(4000, dim))
  shift = np.zeros(dim)
  shift[0] = 1.0
  return rng.normal(size=(num_clips, dim)) + shift, reference


def test_fad_inf_removes_the_small_sample_bias():
  generated, reference = _shifted_gaussians(256)
  sizes = (64, 128, 256)
  fad = [metrics.fad(generated[:n], reference) for n in sizes]
  inf = [intervals.fad_inf(generated[:n], reference)['fad_inf'] for n in sizes]
  # FAD falls with the number of clips (measured 6.1, 3.5, 2.3); FAD-inf stays nearer the
  # truth and moves less (-1.1, 0.0, 1.0).
  assert fad[0] > fad[1] > fad[2] > 1.5
  assert abs(inf[-1] - 1.0) < abs(fad[-1] - 1.0) / 2
  assert np.std(inf) < np.std(fad)
  assert intervals.fad_inf(generated[:256], reference)['fad_inf_slope'] > 0
  assert np.isnan(intervals.fad_inf(generated[:3], reference)['fad_inf'])


def test_fad_inf_draws_several_subsets_per_size_to_steady_the_intercept():
  generated, reference = _shifted_gaussians(256)
  spread = {draws: np.std([intervals.fad_inf(generated, reference, draws_per_size=draws,
                                             seed=seed)['fad_inf'] for seed in range(12)])
            for draws in (1, 8)}
  # Which clips land in each subset moves the intercept; averaging 8 draws steadies it
  # (measured over 20 seeds: std 0.116 -> 0.050).
  assert spread[8] < spread[1] / 1.5, spread
  with pytest.raises(ValueError, match='draws_per_size=0'):
    intervals.fad_inf(generated, reference, draws_per_size=0)


def test_fad_interval_is_centred_on_the_fad_of_all_clips():
  generated, reference = _shifted_gaussians(256, dim=16)
  stats = metrics.gaussian_stats(reference)
  point = intervals.fad_to(generated, stats)
  assert point == pytest.approx(metrics.fad(generated, reference))
  low, high = intervals.bootstrap_interval(lambda i: intervals.fad_to(generated[i], stats),
                                           len(generated), num_resamples=200)
  assert low < point < high


def test_onset_counts_sum_to_the_hit_rate():
  detected = [np.array([0.1, 0.5]), np.array([]), np.array([0.9])]
  reference = [np.array([0.12]), np.array([0.3]), np.array([0.7, 0.95])]
  counts = metrics.onset_counts(detected, reference, 0.1)
  np.testing.assert_array_equal(counts, [[1, 1, 2], [0, 1, 0], [1, 2, 1]])
  whole = metrics.onset_hit_rate(detected, reference, 0.1)
  assert metrics.onset_scores_of_counts(counts.sum(axis=0)) == whole
  assert whole['f1'] == pytest.approx(2 * 50 * (200 / 3) / (50 + 200 / 3))


def test_recall_intervals_bracket_each_recall():
  rng = np.random.default_rng(0)
  video = rng.normal(size=(200, 8))
  sim = video @ (video + rng.normal(size=video.shape)).T
  out = retrieval.recall_intervals(sim, (1, 5))
  recall = metrics.retrieval_metrics(sim, (1, 5))
  for direction in ('v2a', 'a2v'):
    for k in (1, 5):
      key = f'retrieval/{direction}_R@{k}'
      assert out[f'{key}_ci95_low'] < recall[key] < out[f'{key}_ci95_high'], key
  assert len(out) == 8


def _event_pairs(num_clips: int = 12, length: int = 40, rate: float = 20.0):
  """Videos whose only event is at frame e_i and log-mels with one burst at the same frame,
  and an alignment 'classifier' that scores how close the two events are."""
  events = np.random.default_rng(0).integers(0, length, num_clips)
  video = np.zeros((num_clips, length))
  video[np.arange(num_clips), events] = 1.0
  mel = np.zeros((num_clips, length, 4))
  mel[np.arange(num_clips), events] = 5.0

  def aligned_prob(frames, log_mel):
    gap = np.argmax(log_mel.sum(axis=2), axis=1) - np.argmax(frames, axis=1)
    gap = (gap + length // 2) % length - length // 2  # Circular distance.
    return np.exp(-0.5 * gap.astype(float) ** 2)

  return video, mel, aligned_prob, rate


def test_sync_offset_reads_a_known_shift_back():
  video, mel, aligned_prob, rate = _event_pairs()
  estimate = lambda m: sync_offset.estimate_offsets(aligned_prob, video, m, rate)
  np.testing.assert_array_equal(estimate(mel), 0.0)
  late = sync_offset.shift_audio(mel, int(sync_offset.SHIFTED_SECONDS * rate))
  np.testing.assert_allclose(estimate(late), sync_offset.SHIFTED_SECONDS)
  np.testing.assert_allclose(estimate(sync_offset.shift_audio(mel, -6)), -0.3)
  keys = sync_offset.offset_keys('ref/shifted', estimate(late))
  assert keys == {'ref/shifted/sync_offset_abs_s': 0.5, 'ref/shifted/sync_offset_s': 0.5,
                  'ref/shifted/sync_offset_median_abs_s': 0.5}
  # Another clip's audio: off by whatever its event's distance is, far from 0 on average.
  shuffled = estimate(np.roll(mel, 1, axis=0))
  assert np.mean(np.abs(shuffled)) > 0.3
  # A classifier that cannot tell shifts apart reads 0 (ties go to the smallest offset).
  flat = sync_offset.estimate_offsets(lambda f, m: np.ones(len(f)), video, late, rate)
  np.testing.assert_array_equal(flat, 0.0)


def test_shift_grid():
  grid = sync_offset.shift_grid(20.0)
  assert grid[0] == -20 and grid[-1] == 20 and 0 in grid and np.all(np.diff(grid) == 2)
  np.testing.assert_array_equal(sync_offset.shift_grid(5.0), np.arange(-5, 6))  # >= 1 frame.


def test_memorisation_flags_copies_and_not_unseen_real_audio():
  rng = np.random.default_rng(0)
  train, real, reference = (rng.normal(size=(n, 8)) for n in (300, 64, 64))
  # A generator that looks up a training clip's real audio (plus a little noise).
  copies = train[rng.integers(0, 300, 64)] + 0.01 * rng.normal(size=(64, 8))
  results, details = memorisation.memorisation(copies, real, reference, train)
  assert results['gen/memorised_share'] == 100.0
  assert results['gen/train_over_test_distance'] < 0.1
  assert results['ref/gt/memorised_share'] < 10.0  # Unseen real audio: ~1/65 by chance.
  assert results['memorisation/threshold'] == pytest.approx(
      memorisation.nearest(reference, train)[0].min())
  np.testing.assert_array_equal(train[details['train_index']], train[
      np.argmin(((copies[:, None] - train[None]) ** 2).sum(-1), axis=1)])
  # Unseen real audio in the generator's place is not flagged more than chance.
  fresh, _ = memorisation.memorisation(rng.normal(size=(64, 8)), real, reference, train)
  assert fresh['gen/memorised_share'] < 10.0
