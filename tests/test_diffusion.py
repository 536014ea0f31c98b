"""Schedules, the eq. 7 objective and the samplers, checked on a Gaussian toy whose denoiser
is exact: x0 ~ N(mu, sigma^2) per dimension, so E[eps | x_t] and E[v | x_t] are closed forms.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from gmscavp_jax.diffusion import objectives
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.diffusion import schedules

# rbg keys: on CPU, XLA compiles threefry's unrolled rounds in ~1.5 s per program, which
# dominated this file's run time. The code under test is agnostic to the key type.
key = functools.partial(jax.random.key, impl='rbg')

MU, SIGMA = 0.7, 0.4
N = 1000
SHAPE = (4096, 4)


def gaussian_denoiser(alpha_bar, prediction, mu=MU, sigma=SIGMA):
  """Exact E[eps | x_t] ('eps') or E[v | x_t] ('v') for x0 ~ N(mu, sigma^2) per dimension.

  With x_t = a x0 + s eps and var = a^2 sigma^2 + s^2: E[eps | x_t] = s (x_t - a mu) / var
  and E[x0 | x_t] = mu + a sigma^2 (x_t - a mu) / var; E[v | x_t] = a E[eps] - s E[x0].
  The third argument (the condition) is ignored, so it also serves `objectives`.
  """
  def fn(x, t, conditional=True):
    del conditional
    a, s = (schedules.expand_to(c, x) for c in schedules.signal_noise(alpha_bar, t))
    var = a**2 * sigma**2 + s**2
    eps = s * (x - a * mu) / var
    if prediction == 'eps':
      return eps
    x0 = mu + a * sigma**2 * (x - a * mu) / var
    return schedules.v_from_x0_eps(x0, eps, a, s)
  return fn


def terminal_noise(alpha_bar, seed=1, mu=MU, sigma=SIGMA):
  """x_T drawn from the exact marginal at t = N-1, standardised to its exact mean and std.

  The 'linear' schedule ends at alpha_bar = 0.0047, not 0, so N(0, I) would bias the mean by
  ~0.02 before any sampler error; standardising removes the Monte Carlo error of x_T, so
  deterministic samplers are judged on their discretisation error alone.
  """
  a, s = np.sqrt(alpha_bar[-1]), np.sqrt(1.0 - alpha_bar[-1])
  z = np.random.default_rng(seed).normal(size=SHAPE)
  z = (z - z.mean()) / z.std()
  return jnp.asarray(a * mu + np.sqrt(a**2 * sigma**2 + s**2) * z, jnp.float32)


def run_sampler(alpha_bar, prediction, **kwargs):
  fn = jax.jit(functools.partial(samplers.sample, gaussian_denoiser(alpha_bar, prediction),
                                 prediction=prediction, **kwargs))
  args = (terminal_noise(alpha_bar), key(2), alpha_bar)
  # These programs are small and some run 1000 steps: optimised code, whatever the suite's
  # XLA_FLAGS say (1000 DDPM steps ran 25 s at backend level 0, 0.6 s at 2; same values).
  compiled = fn.lower(*args).compile({'xla_backend_optimization_level': 2})
  return np.asarray(compiled(*args))


class SchedulesTest(parameterized.TestCase):

  @parameterized.product(name=schedules.SCHEDULES, n=(1000, 10))
  def test_strictly_decreasing_in_unit_interval(self, name, n):
    ab = np.asarray(schedules.alpha_bar(name, n))
    self.assertEqual(ab.shape, (n,))
    self.assertEqual(ab.dtype, np.float32)
    self.assertTrue(np.all(np.diff(ab) < 0))
    self.assertTrue(np.all((ab > 0) & (ab < 1)))

  def test_endpoints(self):
    lin = np.asarray(schedules.alpha_bar('linear', N), np.float64)
    np.testing.assert_allclose(lin[0], 1 - 0.00085, rtol=1e-6)
    np.testing.assert_allclose(lin[-1] / lin[-2], 1 - 0.012, rtol=1e-5)
    cos = np.asarray(schedules.alpha_bar('cosine', N))
    self.assertLess(cos[-1], 1e-6)
    self.assertGreater(cos[0], 0.9999)

  def test_unknown_schedule(self):
    with self.assertRaisesRegex(ValueError, r'diffusion\.schedule.*linear.*cosine'):
      schedules.alpha_bar('quadratic', N)

  def test_conversions_round_trip(self):
    r = np.random.default_rng(0)
    x0, eps = (jnp.asarray(r.normal(size=(8, 3, 5)), jnp.float32) for _ in range(2))
    ab = jnp.asarray(r.uniform(0.05, 0.95, size=(8,)), jnp.float32)
    a, s = (schedules.expand_to(c, x0) for c in (jnp.sqrt(ab), jnp.sqrt(1 - ab)))
    x_t = schedules.q_sample(x0, eps, a, s)
    v = schedules.v_from_x0_eps(x0, eps, a, s)
    close = functools.partial(np.testing.assert_allclose, atol=1e-5)
    close(schedules.x0_from_eps(x_t, eps, a, s), x0)
    close(schedules.eps_from_x0(x_t, x0, a, s), eps)
    close(schedules.x0_from_v(x_t, v, a, s), x0)
    close(schedules.eps_from_v(x_t, v, a, s), eps)
    for prediction, pred in (('eps', eps), ('v', v)):
      got_x0, got_eps = schedules.to_x0_eps(x_t, pred, a, s, prediction)
      close(got_x0, x0)
      close(got_eps, eps)
    with self.assertRaisesRegex(ValueError, 'prediction'):
      schedules.to_x0_eps(x_t, v, a, s, 'x0')


# Measured |mean error| and relative std error (max over eps/v; linear, cosine) with the
# standardised x_T above: ddpm-50 0.001, -0.121 / -0.075; ddim-50 0.000, -0.066 / -0.036;
# dpmpp2m-50 0.000, +0.057 / +0.025; dpmpp2m-10 0.000, +0.194 / +0.334. Few steps evenly
# spaced in t take a long last step in lambda, where x0 predictions of this sigma = 0.4 data
# still change; the errors match a float64 numpy reference (test_matches_numpy_reference)
# and vanish as K -> N (test_converges_with_all_steps).
STD_TOL = {('ddpm', 50): 0.16, ('ddim', 50): 0.10, ('dpmpp2m', 50): 0.08,
           ('dpmpp2m', 10): 0.40}


class SamplersTest(parameterized.TestCase):

  @parameterized.named_parameters(
      (f'{sampler}{steps}_{prediction}_{schedule}', sampler, steps, prediction, schedule)
      for sampler, steps in STD_TOL for prediction in ('eps', 'v')
      for schedule in schedules.SCHEDULES)
  def test_recovers_gaussian(self, sampler, steps, prediction, schedule):
    ab = schedules.alpha_bar(schedule, N)
    x = run_sampler(ab, prediction, sampler=sampler, num_steps=steps)
    self.assertEqual(x.shape, SHAPE)
    self.assertLess(abs(x.mean() - MU), 0.01)  # ddpm's own noise: std error 0.003.
    self.assertLess(abs(x.std() / SIGMA - 1), STD_TOL[sampler, steps])

  @parameterized.named_parameters(('ddpm', 'ddpm', 0.015), ('ddim', 'ddim', 0.005),
                                  ('dpmpp2m', 'dpmpp2m', 0.002))
  def test_converges_with_all_steps(self, sampler, std_tol):
    # Measured: ddpm -0.003 (its noise), ddim -0.002, dpmpp2m -0.0001.
    ab = schedules.alpha_bar('cosine', N)
    x = run_sampler(ab, 'v', sampler=sampler, num_steps=N)
    self.assertLess(abs(x.mean() - MU), 0.005)
    self.assertLess(abs(x.std() / SIGMA - 1), std_tol)

  @parameterized.parameters('ddim', 'dpmpp2m')
  def test_matches_numpy_reference(self, sampler):
    """Deterministic samplers against a float64 numpy transcription of the papers' updates."""
    ab = schedules.alpha_bar('linear', N)
    abn = np.asarray(ab, np.float64)
    x_t = terminal_noise(ab)[:4]
    got = run_sampler(ab, 'eps', sampler=sampler, num_steps=8)  # All rows; compare 4.
    ts = samplers.timesteps(N, 8)
    x, x0_prev, h_prev = np.asarray(x_t, np.float64), None, None
    for i, t in enumerate(ts):
      a, s = np.sqrt(abn[t]), np.sqrt(1 - abn[t])
      x0 = MU + a * SIGMA**2 * (x - a * MU) / (a**2 * SIGMA**2 + s**2)
      if i == len(ts) - 1:
        x = x0
        break
      an, sn = np.sqrt(abn[ts[i + 1]]), np.sqrt(1 - abn[ts[i + 1]])
      if sampler == 'ddim':
        x = an * x0 + sn * (x - a * x0) / s
        continue
      h = np.log(an / sn) - np.log(a / s)
      d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * h / (2 * h_prev)
      x = sn / s * x + an * (1 - np.exp(-h)) * d
      x0_prev, h_prev = x0, h
    np.testing.assert_allclose(got[:4], x, atol=2e-4)

  def test_ddim_deterministic(self):
    ab = schedules.alpha_bar('linear', N)
    fn = jax.jit(functools.partial(samplers.sample, gaussian_denoiser(ab, 'eps'),
                                   sampler='ddim', num_steps=20))
    x_t = terminal_noise(ab)
    np.testing.assert_array_equal(fn(x_t, key(0), ab),
                                  fn(x_t, key(1), ab))
    noisy = jax.jit(functools.partial(samplers.sample, gaussian_denoiser(ab, 'eps'),
                                      sampler='ddim', num_steps=20, eta=1.0))
    self.assertFalse(np.allclose(noisy(x_t, key(0), ab),
                                 noisy(x_t, key(1), ab)))

  def test_guidance(self):
    ab = schedules.alpha_bar('cosine', N)
    cond = gaussian_denoiser(ab, 'v', mu=MU)
    uncond = gaussian_denoiser(ab, 'v', mu=-0.3)
    seen = set()

    def pair(x, t, conditional):
      seen.add(conditional)  # At trace time: which branches the sampler builds.
      return cond(x, t) if conditional else uncond(x, t)

    def run(fn, w):
      sample = jax.jit(functools.partial(samplers.sample, fn, sampler='dpmpp2m', num_steps=20,
                                         prediction='v', guidance_scale=w))
      return np.asarray(sample(terminal_noise(ab), key(0), ab))

    np.testing.assert_array_equal(run(pair, 1.0), run(cond, 1.0))
    self.assertEqual(seen, {True})
    np.testing.assert_array_equal(run(pair, 0.0), run(uncond, 1.0))
    # With equal variances, w = 2 is exactly the denoiser of mean 2 * 0.7 - (-0.3) = 1.7.
    self.assertAlmostEqual(float(run(pair, 2.0).mean()), 1.7, delta=0.05)

    # A BatchedDenoiser: w = 0 and 1 call only `single` (the same programs, bit for bit);
    # any other w one masked call on both halves stacked, equal to the two calls.
    batches = []

    def masked(x, t, conditional):
      batches.append(conditional)
      keep = conditional.reshape((-1,) + (1,) * (x.ndim - 1))
      return jnp.where(keep, cond(x, t), uncond(x, t))

    batched = guidance_lib.BatchedDenoiser(pair, masked)
    np.testing.assert_array_equal(run(batched, 1.0), run(cond, 1.0))
    np.testing.assert_array_equal(run(batched, 0.0), run(uncond, 1.0))
    self.assertEqual(batches, [])
    np.testing.assert_allclose(run(batched, 2.0), run(pair, 2.0), atol=1e-6)
    self.assertLen(batches, 1)  # Traced once: one call per step.
    x, t = terminal_noise(ab)[:3], jnp.full((3,), N - 1)
    np.testing.assert_allclose(guidance_lib.guided_output(batched, x, t, 2.0),
                               guidance_lib.guided_output(pair, x, t, 2.0), atol=1e-6)
    np.testing.assert_array_equal(batches[-1], [False] * 3 + [True] * 3)  # Unconditional first.

  def test_guidance_interval(self):
    """Guidance only where the noise level is in (lo, hi]: those steps make one guided call
    (batch 2B), the others one conditional call (batch B), and only the branch taken runs."""
    ab = schedules.alpha_bar('linear', N)
    cond, uncond = gaussian_denoiser(ab, 'v', mu=MU), gaussian_denoiser(ab, 'v', mu=-0.3)
    ran = []  # 'guided' / 'single' per model query, in order, as it runs.

    def single(x, t, conditional):
      jax.debug.callback(lambda: ran.append('single'), ordered=True)
      return cond(x, t) if conditional else uncond(x, t)

    def masked(x, t, conditional):
      jax.debug.callback(lambda: ran.append('guided'), ordered=True)
      keep = conditional.reshape((-1,) + (1,) * (x.ndim - 1))
      return jnp.where(keep, cond(x, t), uncond(x, t))

    interval, w, steps = (0.28, 5.42), 3.0, 10
    sigmas = np.sqrt((1 - np.asarray(ab)) / np.asarray(ab))[samplers.timesteps(N, steps)]
    want = ['guided' if 0.28 < s <= 5.42 else 'single' for s in sigmas]
    self.assertEqual(want.count('guided'), 7)  # sigma 14.6, 7.8 and 0.03 fall outside.
    x_t = terminal_noise(ab)[:64]

    def run(fn, guidance, guidance_interval=()):
      return np.asarray(jax.jit(functools.partial(
          samplers.sample, fn, sampler='dpmpp2m', num_steps=steps, prediction='v',
          guidance_scale=guidance, guidance_interval=guidance_interval))(x_t, key(0), ab))

    got = run(guidance_lib.BatchedDenoiser(single, masked), w, interval)
    jax.effects_barrier()
    self.assertEqual(ran, want)
    self.assertEqual(samplers.denoiser_calls(ab, objective='diffusion', sampler='dpmpp2m',
                                             num_steps=steps, guidance_scale=w,
                                             guidance_interval=interval), 17)

    # The same as a denoiser that guides itself on exactly those steps, run unguided.
    def reference(x, t, conditional):
      del conditional
      s = guidance_lib.noise_level(ab[t[0]])
      guided = uncond(x, t) + w * (cond(x, t) - uncond(x, t))
      return jnp.where((s > 0.28) & (s <= 5.42), guided, cond(x, t))

    np.testing.assert_allclose(got, run(reference, 1.0), atol=1e-5)
    # An interval that holds every step is plain guidance; one that holds none, w = 1.
    np.testing.assert_allclose(run(single, w, (0.0, 1e6)), run(single, w), atol=1e-6)
    np.testing.assert_allclose(run(single, w, (1e5, 1e6)), run(cond, 1.0), atol=1e-6)
    with self.assertRaisesRegex(ValueError, 'guidance_interval'):
      run(single, w, (2.0, 1.0))

  @parameterized.named_parameters(('ddpm', 'ddpm', None), ('ddim', 'ddim', None),
                                  ('ddim_eta', 'ddim', 0.5), ('dpmpp2m', 'dpmpp2m', None))
  def test_dtype_stable_under_x64(self, sampler, eta):
    """With jax_enable_x64 on, no float64 creeps into the scan (dpmpp2m's carry used to
    fail to trace) and the output keeps x_T's dtype and equals the x64-off output."""
    ab = schedules.alpha_bar('cosine', 50)
    x_t = terminal_noise(ab)[:8]
    fn = functools.partial(samplers.sample, gaussian_denoiser(ab, 'v'), sampler=sampler,
                           num_steps=6, prediction='v', guidance_scale=2.0, eta=eta,
                           guidance_interval=(0.5, float('inf')))  # Its lax.cond too.
    want = fn(x_t, key(0), ab)
    with jax.enable_x64(True):
      # No float64 anywhere in the program (only the loop index widens to int64).
      self.assertNotIn('f64', str(jax.make_jaxpr(fn)(x_t, key(0), ab)))
      got = fn(x_t, key(0), ab)
      got_jit = jax.jit(fn)(x_t, key(0), ab)
      got_bf16 = fn(x_t.astype(jnp.bfloat16), key(0), ab)
    self.assertEqual((got.dtype, got_jit.dtype, got_bf16.dtype),
                     (jnp.float32, jnp.float32, jnp.bfloat16))
    # Within an ulp or two, not bit for bit: the int64 index makes another program, and
    # XLA:CPU's loop emitters (the suite's conftest) may order its float32 ops differently.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_jit, want, atol=1e-6)

  def test_invalid(self):
    ab = schedules.alpha_bar('linear', 10)
    fn = gaussian_denoiser(ab, 'eps')
    x = jnp.zeros((2, 3))
    with self.assertRaisesRegex(ValueError, r"'euler'.*ddpm.*ddim.*dpmpp2m"):
      samplers.sample(fn, x, key(0), ab, sampler='euler', num_steps=5)
    with self.assertRaisesRegex(ValueError, r'num_steps must be in \[1, 10\].*got 11'):
      samplers.sample(fn, x, key(0), ab, sampler='ddim', num_steps=11)
    with self.assertRaisesRegex(ValueError, 'eta'):
      samplers.sample(fn, x, key(0), ab, sampler='dpmpp2m', num_steps=5, eta=0.5)

  def test_timesteps(self):
    np.testing.assert_array_equal(samplers.timesteps(1000, 1), [999])
    np.testing.assert_array_equal(samplers.timesteps(10, 10), np.arange(9, -1, -1))
    for k in (2, 3, 7, 50, 333, 999):
      ts = samplers.timesteps(1000, k)
      self.assertEqual((len(ts), ts[0], ts[-1]), (k, 999, 0))
      self.assertTrue(np.all(np.diff(ts) < 0))


class ObjectiveTest(parameterized.TestCase):

  def _loss(self, fn, x0, seed=0, **kwargs):
    loss_fn = jax.jit(functools.partial(objectives.diffusion_loss, fn, **kwargs))
    return loss_fn(x0, key(seed), schedules.alpha_bar('cosine', N))

  @parameterized.parameters('eps', 'v')
  def test_exact_denoiser_is_best(self, prediction):
    ab = schedules.alpha_bar('cosine', N)
    exact = gaussian_denoiser(ab, prediction)
    x0 = MU + SIGMA * jax.random.normal(key(3), SHAPE)

    @jax.jit
    def loss_at(scale):  # One compiled program for the exact (1.0) and perturbed denoisers.
      return objectives.diffusion_loss(lambda x, t: scale * exact(x, t), x0, key(0), ab,
                                       prediction=prediction, terminal_weight=1.0)

    (loss, metrics), (worse, _) = loss_at(1.0), loss_at(1.1)
    self.assertLess(float(loss), float(worse))
    self.assertEqual(set(metrics), {'msd_loss', 'msd_mse', 'msd_mse_terminal'})
    self.assertEqual(float(metrics['msd_loss']), float(loss))

  def test_single_call_estimator_is_unbiased(self):
    """Exact v denoiser: E||v - E[v|x_t]||^2 per dimension is sigma^2 / var at step t."""
    lam = 3.0
    ab = np.asarray(schedules.alpha_bar('cosine', N), np.float64)
    per_t = SIGMA**2 / (ab * SIGMA**2 + 1 - ab)
    expected = per_t.mean() + lam * per_t[-1]
    fn = gaussian_denoiser(schedules.alpha_bar('cosine', N), 'v')
    x0 = MU + SIGMA * jax.random.normal(key(4), (1 << 16, 4))
    loss, metrics = self._loss(fn, x0, prediction='v', terminal_weight=lam)
    # Measured relative errors: 0.4% (loss), 0.3% (terminal); other keys gave up to 0.8%.
    # Dropping lambda_T would be off by -55%, the unscaled mixture mean by -75%.
    np.testing.assert_allclose(float(loss), expected, rtol=0.015)
    np.testing.assert_allclose(float(metrics['msd_mse_terminal']), per_t[-1], rtol=0.015)

  def test_jit_and_weights(self):
    ab = schedules.alpha_bar('cosine', N)
    fn = gaussian_denoiser(ab, 'eps')
    x0 = MU + SIGMA * jax.random.normal(key(5), (16, 3, 2))
    eager_fn = functools.partial(objectives.diffusion_loss, fn, prediction='eps',
                                 terminal_weight=0.5)
    loss_fn = jax.jit(eager_fn)
    eager, _ = eager_fn(x0, key(0), ab)
    jitted, metrics = loss_fn(x0, key(0), ab)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
    self.assertTrue(all(np.isfinite(v) for v in jax.device_get(metrics).values()))
    ones, _ = loss_fn(x0, key(0), ab, example_weights=jnp.full((16,), 3.0))
    np.testing.assert_allclose(ones, eager, rtol=1e-6)
    # A masked example cannot change the loss, however wrong its data.
    mask = jnp.ones((16,)).at[0].set(0.0)
    masked, _ = loss_fn(x0, key(0), ab, example_weights=mask)
    moved, _ = loss_fn(x0.at[0].add(100.0), key(0), ab, example_weights=mask)
    np.testing.assert_allclose(masked, moved, rtol=1e-6)
    zero, _ = loss_fn(x0, key(0), ab, example_weights=jnp.zeros((16,)))
    self.assertEqual(float(zero), 0.0)


  def test_min_snr_weighs_the_x0_error_by_clipped_snr(self):
    """Min-SNR-gamma: eps and v losses of one x0 guess both become min(SNR, gamma) times
    its x0 error, in expectation over t; gamma 0 is eq. 7 unchanged."""
    ab = schedules.alpha_bar('cosine', N)  # The schedule `_loss` trains with.
    x0 = jax.random.normal(key(6), (4096, 4))
    delta = 0.1

    def guessing(prediction):  # Predicts from the guess x0 + delta, whatever t is.
      def fn(x, t):
        a, s = (schedules.expand_to(c, x) for c in schedules.signal_noise(ab, t))
        eps = (x - a * (x0 + delta)) / s
        return eps if prediction == 'eps' else a * eps - s * (x0 + delta)
      return fn

    gamma = 5.0
    snr = np.asarray(ab, np.float64) / (1 - np.asarray(ab, np.float64))
    expected = delta**2 * np.minimum(snr, gamma).mean()
    losses = {p: float(self._loss(guessing(p), x0, prediction=p, min_snr_gamma=gamma)[0])
              for p in ('eps', 'v')}
    np.testing.assert_allclose(losses['eps'], losses['v'], rtol=1e-3)
    np.testing.assert_allclose(losses['v'], expected, rtol=0.05)
    plain, metrics = self._loss(guessing('v'), x0, prediction='v')
    np.testing.assert_allclose(float(plain), float(metrics['msd_mse']), rtol=1e-6)
    self.assertGreater(float(plain), 10 * losses['v'])  # Unweighted v: (SNR + 1) delta^2.


if __name__ == '__main__':
  absltest.main()
