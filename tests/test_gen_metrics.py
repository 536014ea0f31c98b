"""Generation metrics (KLD, Fréchet distance / FAD, alignment accuracy) against known answers
and an independent eigendecomposition-based Fréchet distance."""

import numpy as np
import pytest

from gmscavp_jax.evaluators import metrics


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root by eigendecomposition."""
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _textbook_frechet(mu1, s1, mu2, s2) -> float:
  # Tr sqrtm(s1 s2) = Tr sqrtm(sqrt(s1) s2 sqrt(s1)), whose argument is symmetric PSD.
  r1 = _sqrt_psd(s1)
  return float(np.sum((mu1 - mu2)**2) + np.trace(s1 + s2) -
               2 * np.trace(_sqrt_psd(r1 @ s2 @ r1)))


def test_identical_sets_give_zero():
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(200, 8)) * 3.0
  scale = np.trace(np.cov(emb, rowvar=False))
  assert abs(metrics.fad(emb, emb)) < 1e-6 * scale
  probs = metrics.softmax(rng.normal(size=(50, 10)))
  assert abs(metrics.kl_divergence(probs, probs)) < 1e-12
  logits = rng.normal(size=(50, 10))
  assert abs(metrics.kld_from_logits(logits, logits)) < 1e-12


def test_frechet_matches_eigendecomposition():
  rng = np.random.default_rng(1)
  for d in (1, 3, 16):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_textbook_frechet(mu1, s1, mu2, s2), abs=1e-6)
    assert got >= -1e-6


def test_diagonal_closed_form():
  # Diagonal covariances: sum_i (sqrt(a_i) - sqrt(b_i))^2.
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
  got = metrics.frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b))
  assert got == pytest.approx(1.0 + 0.0 + 4.0, abs=1e-9)


def test_pure_mean_shift_gives_squared_norm():
  rng = np.random.default_rng(2)
  sigma = _random_cov(rng, 5)
  mu = rng.normal(size=5)
  delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
  got = metrics.frechet_distance(mu, sigma, mu + delta, sigma)
  assert got == pytest.approx(float(delta @ delta), abs=1e-6)


def test_singular_covariances():
  # 3 samples in 6 dimensions: rank-2 covariances, a singular product scipy still roots.
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
  (mu1, s1), (mu2, s2) = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
  assert metrics.fad(a, b) == pytest.approx(_textbook_frechet(mu1, s1, mu2, s2), abs=1e-6)
  # A rank-1 covariance whose product scipy 1.17's sqrtm turns into nan: the eps * I retry
  # gives the answer up to the offset's effect (~sqrt(eps) on the root).
  u = np.array([[2.0, -1.0, 1.0, -1.0]]).T
  s1 = u @ u.T
  s2 = np.array([[2.0, 1.0, -3.0, 0.0], [1.0, 6.0, -5.0, -1.0], [-3.0, -5.0, 9.0, 2.0],
                 [0.0, -1.0, 2.0, 1.0]])
  zero = np.zeros(4)
  assert metrics.frechet_distance(zero, s1, zero, s2) == pytest.approx(
      _textbook_frechet(zero, s1, zero, s2), rel=1e-3)
  # Zero covariance (constant embeddings): sqrtm(0) is fine, distance is the mean gap.
  assert metrics.fad(np.ones((4, 2)), np.zeros((4, 2))) == pytest.approx(2.0, abs=1e-5)


def test_failed_sqrtm_retries_with_offset(monkeypatch):
  rng = np.random.default_rng(5)
  mu1, mu2 = rng.normal(size=3), rng.normal(size=3)
  s1, s2 = _random_cov(rng, 3), _random_cov(rng, 3)
  eps = 1e-2
  expected = metrics.frechet_distance(mu1, s1 + eps * np.eye(3), mu2, s2 + eps * np.eye(3))
  real_sqrtm, calls = metrics.scipy.linalg.sqrtm, []

  def nan_first(a):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(metrics.scipy.linalg, 'sqrtm', nan_first)
  assert metrics.frechet_distance(mu1, s1, mu2, s2, eps=eps) == pytest.approx(expected,
                                                                              abs=1e-12)
  assert len(calls) == 2
  calls.clear()
  monkeypatch.setattr(metrics.scipy.linalg, 'sqrtm', lambda a: np.full_like(a, np.inf))
  with pytest.raises(ValueError, match='not finite even with eps'):
    metrics.frechet_distance(mu1, s1, mu2, s2)


def test_fad_same_distribution_small_shifted_large():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
  same = metrics.fad(a, b)
  shifted = metrics.fad(a, b + 2.0)  # ||d||^2 = 4 * 2^2 = 16.
  assert 0 <= same < 0.05
  assert shifted == pytest.approx(16.0 + same, abs=0.5)


def test_kld_two_class_closed_form():
  p = np.array([[0.5, 0.5], [0.2, 0.8]])
  q = np.array([[0.9, 0.1], [0.5, 0.5]])
  row0 = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
  row1 = 0.2 * np.log(0.2 / 0.5) + 0.8 * np.log(0.8 / 0.5)
  assert metrics.kl_divergence(p, q) == pytest.approx((row0 + row1) / 2, rel=1e-5)
  # Logits of the same posteriors give the same answer.
  assert metrics.kld_from_logits(np.log(p), np.log(q)) == pytest.approx((row0 + row1) / 2,
                                                                        rel=1e-5)


def test_kld_disjoint_posteriors_is_large_but_finite():
  p = np.eye(4)
  q = np.roll(np.eye(4), 1, axis=1)
  got = metrics.kl_divergence(p, q, eps=1e-6)
  assert 5 < got < 20  # About ln(1e6) = 13.8.
  assert got == pytest.approx(np.log(1e6), rel=1e-3)


def test_softmax_is_stable_and_normalised():
  out = metrics.softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
  np.testing.assert_allclose(out, [[0.5, 0.5], [0.25, 0.75]], rtol=1e-12)


def test_align_accuracy():
  assert metrics.align_accuracy(np.array([0.9, 0.5, 0.49, 0.1])) == pytest.approx(50.0)
  assert metrics.align_accuracy([0.9, 0.5, 0.49, 0.1], threshold=0.05) == pytest.approx(100.0)
  assert metrics.align_accuracy([0.2, 0.3]) == 0.0


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='same'):
    metrics.kl_divergence(np.ones((3, 2)) / 2, np.ones((3, 4)) / 4)
  with pytest.raises(ValueError, match='2-D'):
    metrics.kl_divergence(np.ones(3) / 3, np.ones(3) / 3)
  with pytest.raises(ValueError, match='at least 2'):
    metrics.gaussian_stats(np.ones((1, 4)))
  with pytest.raises(ValueError, match='2-D'):
    metrics.gaussian_stats(np.ones(4))
  with pytest.raises(ValueError, match='covariances'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match='covariances'):
    metrics.fad(np.ones((5, 3)), np.ones((5, 2)))
  with pytest.raises(ValueError, match='imaginary'):
    # Indefinite "covariance": sqrtm(diag(1, -1)) has a large imaginary part.
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))
  with pytest.raises(ValueError, match='aligned_prob'):
    metrics.align_accuracy(np.ones((2, 2)))
