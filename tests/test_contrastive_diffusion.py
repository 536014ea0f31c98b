"""CMMD's contrastive diffusion term (objectives.Contrast, contrastive_term) on the Gaussian toy
of test_diffusion.py, with a denoiser that is exact given its true condition."""

import functools

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.data import negatives
from gmscavp_jax.diffusion import objectives
from gmscavp_jax.diffusion import schedules
from tests.test_diffusion import gaussian_denoiser
from tests.test_diffusion import key
from tests.test_diffusion import N


def conditioned_denoiser(alpha_bar, condition):
  """An eps denoiser that takes its condition (B, ...) for x0: exact when it is x0 itself."""
  def fn(x, t):
    a, s = (schedules.expand_to(c, x) for c in schedules.signal_noise(alpha_bar, t))
    return (x - a * condition) / s
  return fn


class ContrastiveDiffusionTest(absltest.TestCase):
  """CMMD's contrastive term on a denoiser that is exact given its true condition."""

  def test_true_condition_ranks_below_its_negatives(self):
    ab = schedules.alpha_bar('cosine', N)
    x0 = jax.random.normal(key(6), (32, 20, 3))
    # The shared generators: shifted by 2-6 steps, spliced or swapped (none equals x0[b]).
    misaligned, _ = jax.jit(functools.partial(negatives.make_negatives, min_shift=2,
                                              max_shift=6))(key(7), x0)

    @jax.jit
    def loss(positive, negative, weight):
      return objectives.diffusion_loss(
          conditioned_denoiser(ab, positive), x0, key(8), ab, prediction='eps',
          contrast=objectives.Contrast(conditioned_denoiser(ab, negative), weight, 0.1))

    (true_loss, true_m), (swapped_loss, swapped_m) = (loss(x0, misaligned, 1.0),
                                                      loss(misaligned, x0, 1.0))
    self.assertLess(float(true_loss), float(swapped_loss))
    self.assertLess(float(true_m['cdiff']), 1e-3)  # Ranked right by far: the term fades.
    self.assertGreater(float(swapped_m['cdiff']), 1.0)
    self.assertEqual(float(true_m['cdiff_acc']), 1.0)
    self.assertEqual(float(swapped_m['cdiff_acc']), 0.0)
    self.assertLess(float(true_m['msd_mse_pos']), float(true_m['msd_mse_neg']))
    # Bounded below: however bad the negatives, the term stays >= 0.
    self.assertGreaterEqual(float(loss(x0, 1e3 * misaligned, 1.0)[1]['cdiff']), 0.0)

  def test_weight_zero_is_eq7_on_the_same_noise(self):
    ab = schedules.alpha_bar('cosine', N)
    x0 = jax.random.normal(key(9), (16, 8, 2))
    plain = jax.jit(lambda: objectives.diffusion_loss(gaussian_denoiser(ab, 'eps'), x0, key(1),
                                                      ab))()
    contrasted = jax.jit(lambda: objectives.diffusion_loss(
        gaussian_denoiser(ab, 'eps'), x0, key(1), ab,
        contrast=objectives.Contrast(conditioned_denoiser(ab, x0), 0.0, 0.1)))()
    # The same t and noise: eq. 7's value and metrics are untouched; weight 0 adds nothing
    # (up to float rounding: the two programs fuse differently).
    np.testing.assert_allclose(plain[0], contrasted[0], rtol=1e-6)
    for k, v in plain[1].items():
      np.testing.assert_allclose(v, contrasted[1][k], rtol=1e-6, err_msg=k)
    self.assertEqual(set(contrasted[1]) - set(plain[1]),
                     {'cdiff', 'cdiff_acc', 'msd_mse_pos', 'msd_mse_neg'})
    np.testing.assert_allclose(contrasted[1]['msd_mse_pos'], plain[1]['msd_mse'], rtol=1e-6)

  def test_mask_and_temperature(self):
    err_pos, err_neg = jnp.array([0.1, 0.2, 0.4]), jnp.array([0.2, 0.1, 0.4])
    term, m = objectives.contrastive_term(err_pos, err_neg, 0.5, jnp.array([1.0, 0.0, 1.0]))
    expected = np.mean([0.5 * np.log1p(np.exp(np.log(0.5) / 0.5)), 0.5 * np.log(2.0)])
    np.testing.assert_allclose(float(term), expected, rtol=1e-5)
    self.assertEqual(float(m['cdiff_acc']), 0.5)
    with self.assertRaisesRegex(ValueError, 'temperature'):
      objectives.contrastive_term(err_pos, err_neg, 0.0)


if __name__ == '__main__':
  absltest.main()
