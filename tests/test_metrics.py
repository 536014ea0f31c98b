"""Retrieval metrics on similarity matrices with known answers; onset detection and
hit-rate on hand-made cases and the synthetic benchmark."""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph

from configs import common
from gmscavp_jax.data import audio
from gmscavp_jax.data import synthetic
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


# Onset detection and CMMD's hit-rate.


def _rates(detected, reference, tolerance):
  out = metrics.onset_hit_rate(detected, reference, tolerance)
  return out['hit_rate'], out['precision'], out['f1']


def test_hit_rate_is_one_to_one():
  # Two detections near one reference count once: recall 100, precision 50.
  hit, precision, f1 = _rates([np.array([0.98, 1.02])], [np.array([1.0])], 0.05)
  assert (hit, precision) == (100.0, 50.0) and f1 == pytest.approx(200 / 3)
  # One detection between two references serves only one of them.
  assert _rates([np.array([1.05])], [np.array([1.0, 1.1])], 0.1)[:2] == (50.0, 100.0)
  # A greedy "nearest reference first" would pair 0.05 with 0.1 and lose 0.0; the
  # maximum matching pairs 0.0-0.05 and 0.1-0.15.
  assert _rates([np.array([0.05, 0.15])], [np.array([0.0, 0.1])], 0.06)[0] == 100.0


def test_hit_rate_tolerance_is_inclusive():
  ref = [np.array([1.0])]
  assert _rates([np.array([1.1])], ref, 0.1)[0] == 100.0  # 1.1 - 1.0 is 0.1 + 9e-17.
  assert _rates([np.array([0.9])], ref, 0.1)[0] == 100.0
  assert _rates([np.array([1.1001])], ref, 0.1)[0] == 0.0
  assert _rates([np.array([1.0])], ref, 0.0)[0] == 100.0


def test_hit_rate_aggregates_over_clips_and_handles_empty_lists():
  detected = [np.array([0.5]), np.array([]), np.array([0.2, 1.9])]
  reference = [np.array([0.52, 1.0]), np.array([0.3]), np.array([])]
  out = metrics.onset_hit_rate(detected, reference, 0.05)
  assert out['num_hits'] == 1 and out['num_reference'] == 3 and out['num_detected'] == 3
  assert out['hit_rate'] == pytest.approx(100 / 3) and out['precision'] == pytest.approx(100 / 3)
  assert _rates([np.array([])], [np.array([])], 0.1) == (0.0, 0.0, 0.0)
  assert _rates([np.array([0.1])], [np.array([])], 0.1) == (0.0, 0.0, 0.0)
  assert _rates([], [], 0.1) == (0.0, 0.0, 0.0)


def test_hit_rate_matches_maximum_bipartite_matching():
  rng = np.random.default_rng(0)
  for _ in range(200):
    det = rng.uniform(0, 1, rng.integers(0, 8))
    ref = rng.uniform(0, 1, rng.integers(0, 8))
    close = np.abs(ref[:, None] - det[None, :]) <= 0.08
    matching = scipy.sparse.csgraph.maximum_bipartite_matching(
        scipy.sparse.csr_matrix(close.astype(np.int8)), perm_type='column')
    expected = int((matching >= 0).sum())
    assert metrics.onset_hit_rate([det], [ref], 0.08)['num_hits'] == expected


def test_hit_rate_rejects_bad_input():
  with pytest.raises(ValueError, match='one per clip'):
    metrics.onset_hit_rate([np.zeros(1)], [], 0.1)
  with pytest.raises(ValueError, match='padding'):
    metrics.onset_hit_rate([np.zeros(1)], [np.array([0.5, -1.0])], 0.1)


def test_detect_onsets_finds_clicks_on_their_frames():
  sr, hop = 8000, 200
  waveform = 0.003 * np.random.default_rng(0).standard_normal(2 * sr).astype(np.float32)
  times = np.array([0.3, 0.8, 1.05, 1.6])
  for t in times:  # Decaying 1 kHz bursts.
    n = np.arange(800)
    waveform[int(t * sr):int(t * sr) + 800] += (0.5 * np.sin(2 * np.pi * 1000 * n / sr) *
                                                np.exp(-n / 200.0)).astype(np.float32)
  log_mel = np.asarray(audio.log_mel_spectrogram(
      waveform, sample_rate=sr, n_fft=400, win_length=400, hop_length=hop, n_mels=128,
      fmin=0.0, fmax=4000.0, log_floor=1e-5))
  strength = metrics.onset_strength(log_mel)
  assert strength.shape == (80,) and strength[0] == 0.0 and strength.min() >= 0.0
  found = metrics.detect_onsets(log_mel, sr / hop)
  assert found.shape == (4,)
  np.testing.assert_allclose(found, times, atol=1.01 * hop / sr)  # Within a frame.
  silent = np.full((80, 128), np.log(1e-5))
  assert metrics.detect_onsets(silent, 40.0).shape == (0,)


def test_onset_hit_rate_on_the_synthetic_benchmark():
  # Detections on the real log-mel of 32 runlocal-sized test clips (2 s, 8 kHz, 40 frames/s)
  # against their true onsets, and against the onsets of the next clip (shuffled).
  # Measured: hit-rate 90.5 at both +-50 and +-100 ms (precision 93.8); shuffled 16.4 at
  # +-50 ms and 30.2 at +-100 ms. Most misses are onsets closer together than a frame or two
  # (7 of the 116 are < 50 ms from another): one detection matches only one of them.
  source = synthetic.SyntheticAVSource(split='test', num_clips=32, seed=0, num_frames=16,
                                       fps=8.0, image_size=64, sample_rate=8000,
                                       audio_cfg=common.base_config().audio)
  clips = [source[i] for i in range(len(source))]
  detected = [metrics.detect_onsets(c['log_mel'], 8000 / 200) for c in clips]
  reference = [c['onsets'][:c['num_onsets']] for c in clips]
  shuffled = reference[1:] + reference[:1]
  for tolerance in (0.05, 0.1):
    real = metrics.onset_hit_rate(detected, reference, tolerance)
    other = metrics.onset_hit_rate(detected, shuffled, tolerance)
    assert real['hit_rate'] > 85 and real['precision'] > 85
    assert other['hit_rate'] < 45
    assert real['hit_rate'] - other['hit_rate'] > 40


def test_onset_scores_without_true_onsets_use_the_real_audio():
  # A prepared (real) dataset has no true onset times: the onsets detected in each clip's
  # real audio become the reference, so real audio scored as "generated" hits all of them.
  from gmscavp_jax.evaluators import generation  # pylint: disable=g-import-not-at-top
  source = synthetic.SyntheticAVSource(split='test', num_clips=8, seed=0, num_frames=16,
                                       fps=8.0, image_size=64, sample_rate=8000,
                                       audio_cfg=common.base_config().audio)
  real = np.stack([source[i]['log_mel'] for i in range(8)])
  truth = [source[i]['onsets'][:source[i]['num_onsets']] for i in range(8)]
  with_truth = generation.onset_scores(real, real, truth, 40.0)
  assert with_truth['gen/onset_hit@100ms'] == with_truth['gen/onset_hit@100ms_real'] > 85
  detected = generation.onset_scores(real, real, None, 40.0)
  assert 'gen/onset_hit@100ms_real' not in detected
  assert detected['gen/onset_hit@100ms'] == detected['gen/onset_precision@100ms'] == 100.0
  assert detected['gen/onset_hit@100ms_shuffled'] < 60


def _impulses(frames: np.ndarray, shape: tuple) -> np.ndarray:
  """A (Ta, F) log-mel that is silent except for full-band impulses at `frames`."""
  mel = np.full(shape, -10.0, np.float32)
  mel[frames] = 0.0
  return mel


def test_onset_f1_is_not_fooled_by_onsets_everywhere():
  # The headline is F1: recall alone (CMMD's hit-rate) gives a click every 50 ms 100 at
  # +-100 ms, above real audio. Measured on these 32 clips (40 frames/s): clicks recall 100,
  # precision 9.3, F1 17.0; the real audio F1 92.1 (both tolerances); impulses at random
  # frames, as many as the clip's true onsets, F1 22.4 / 30.5 at +-50 / +-100 ms.
  from gmscavp_jax.evaluators import generation  # pylint: disable=g-import-not-at-top
  source = synthetic.SyntheticAVSource(split='test', num_clips=32, seed=0, num_frames=16,
                                       fps=8.0, image_size=64, sample_rate=8000,
                                       audio_cfg=common.base_config().audio)
  clips = [source[i] for i in range(len(source))]
  real = np.stack([c['log_mel'] for c in clips])
  truth = [c['onsets'][:c['num_onsets']] for c in clips]
  shape = real.shape[1:]
  clicks = np.stack([_impulses(np.arange(0, shape[0], 2), shape) for _ in clips])
  rng = np.random.default_rng(0)
  scattered = np.stack([_impulses(rng.choice(shape[0], len(t), replace=False), shape)
                        for t in truth])
  score = {name: generation.onset_scores(mel, real, truth, 40.0)
           for name, mel in (('real', real), ('clicks', clicks), ('random', scattered))}
  for ms in (50, 100):
    f1 = {name: s[f'gen/onset_f1@{ms}ms'] for name, s in score.items()}
    assert score['clicks'][f'gen/onset_recall@{ms}ms'] > 95
    assert score['clicks'][f'gen/onset_precision@{ms}ms'] < 15
    assert f1['clicks'] < 25 and f1['random'] < 40 and f1['real'] > 85
    assert score['real'][f'gen/onset_f1@{ms}ms_real'] == f1['real']
    for s in score.values():  # The hit-rate is the recall under its older name.
      assert s[f'gen/onset_hit@{ms}ms'] == s[f'gen/onset_recall@{ms}ms']
  # The true onsets themselves, as detections: every ratio is 100.
  exact = metrics.onset_hit_rate(truth, truth, 0.05)
  assert exact['f1'] == exact['precision'] == exact['hit_rate'] == 100.0
