"""The samplers' two hooks: inpainting (samplers.Known: known values come out exactly, and
the model's knowledge of them reaches the unknown part) and gradient guidance.

The toy: each row x0 = c * ones(D) with c ~ N(mu, sigma^2), whose exact denoiser knows that
all of a row's coordinates are equal, so a row half of which is known must be completed with
the known value; a denoiser of independent coordinates could not do that.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax.diffusion import samplers
from gmscavp_jax.diffusion import schedules
from gmscavp_jax.infra import errors

key = functools.partial(jax.random.key, impl='rbg')
MU, SIGMA, D, B, N = 0.0, 1.0, 16, 64, 1000


def _x0_hat(x, a, s):
  """E[x0 | x_t = x] for rows c * ones(D): the posterior mean of c from the row's sum."""
  a, s = schedules.expand_to(a, x), schedules.expand_to(s, x)
  total = jnp.sum(x - a * MU, axis=-1, keepdims=True)
  c = MU + a * SIGMA**2 * total / (D * a**2 * SIGMA**2 + s**2)
  return jnp.broadcast_to(c, x.shape)


def _diffusion_denoiser(alpha_bar):
  def fn(x, t, conditional=True):
    del conditional
    a, s = schedules.signal_noise(alpha_bar, t)
    return (x - schedules.expand_to(a, x) * _x0_hat(x, a, s)) / schedules.expand_to(s, x)
  return fn


def _flow_velocity(x, model_t, conditional=True):
  del conditional
  t = model_t / (N - 1)
  return (x - _x0_hat(x, 1.0 - t, t)) / schedules.expand_to(t, x)


def _known(values, mask_cols):
  x0 = jnp.broadcast_to(jnp.asarray(values, jnp.float32)[:, None], (B, D))
  mask = jnp.zeros((B, D)).at[:, :mask_cols].set(1.0)
  return samplers.Known(x0, mask)


def _sample(sampler, known, eta=None):
  noise = jax.random.normal(key(3), (B, D), jnp.float32)
  if sampler in samplers.FLOW_SAMPLERS:
    return samplers.sample_flow(_flow_velocity, noise, sampler=sampler, num_steps=30,
                                num_timesteps=N, known=known)
  ab = schedules.alpha_bar('cosine', N)
  return samplers.sample(_diffusion_denoiser(ab), noise, key(4), ab, sampler=sampler,
                         num_steps=30, eta=eta, known=known)


@pytest.mark.parametrize('sampler,eta', [('ddim', None), ('ddpm', None), ('dpmpp2m', None),
                                         ('euler', None), ('heun', None)])
def test_known_half_is_kept_and_the_rest_follows_it(sampler, eta):
  values = np.linspace(-2.0, 2.0, B).astype(np.float32)
  out = np.asarray(jax.jit(functools.partial(_sample, sampler, eta=eta))(_known(values, D // 2)))
  np.testing.assert_allclose(out[:, :D // 2], np.repeat(values[:, None], D // 2, 1), atol=1e-5)
  # The unknown half takes the row's value: the prior alone (no known part) would give rows
  # uncorrelated with `values`.
  # Replacement inpainting is approximate (the known part is noised with the start noise,
  # not conditioned on exactly): measured max errors 0.09-0.26 at |value| <= 2.
  filled = out[:, D // 2:]
  assert np.abs(filled - values[:, None]).max() < 0.35, np.abs(filled - values[:, None]).max()
  assert np.corrcoef(filled[:, 0], values)[0, 1] > 0.99
  free = np.asarray(_sample(sampler, None))
  assert abs(np.corrcoef(free[:, -1], values)[0, 1]) < 0.4


def test_soft_mask_blends_and_zero_mask_changes_nothing():
  """A mask of 0 is sampling without inpainting, bit for bit; a mask of 0.5 pulls the whole
  row towards the value (the model completes the pulled half as in the test above)."""
  values = np.full((B,), 3.0, np.float32)
  free = np.asarray(_sample('dpmpp2m', None))
  none = np.asarray(_sample('dpmpp2m', _known(values, 0)))
  np.testing.assert_array_equal(none, free)
  half = samplers.Known(jnp.full((B, D), 3.0), jnp.full((B, D), 0.5))
  out = np.asarray(_sample('dpmpp2m', half))
  assert abs(free.mean()) < 0.5 and 1.5 < out.mean() < 3.1


def test_inpainting_keeps_float32_under_x64():
  with jax.enable_x64(True):
    out = _sample('dpmpp2m', _known(np.zeros((B,), np.float32), 4))
    out_flow = _sample('heun', _known(np.zeros((B,), np.float32), 4))
  assert out.dtype == out_flow.dtype == jnp.float32


@pytest.mark.parametrize('sampler', ['ddim', 'dpmpp2m'])
def test_gradient_guidance_moves_samples_up_the_guide_and_zero_is_no_guide(sampler):
  """Classifier guidance (double guidance's second half): a guide whose log-likelihood grows
  with x lifts the samples, more with a larger scale; a zero gradient changes nothing."""
  ab = schedules.alpha_bar('cosine', N)
  noise = jax.random.normal(key(3), (B, D), jnp.float32)

  def run(scale):
    guide = None if scale is None else (lambda x, t: jnp.full_like(x, scale))
    return np.asarray(samplers.sample(_diffusion_denoiser(ab), noise, key(4), ab,
                                      sampler=sampler, num_steps=30, gradient_guide=guide))

  free, zero, small, large = run(None), run(0.0), run(0.5), run(2.0)
  np.testing.assert_allclose(zero, free, atol=1e-5)
  assert free.mean() < small.mean() < large.mean()
  with pytest.raises(errors.ConfigError, match='flow'):
    samplers.sample_objective(_flow_velocity, noise, key(4), ab, objective='flow',
                              sampler='euler', num_steps=4,
                              gradient_guide=lambda x, t: jnp.zeros_like(x))
