"""The rectified-flow objective (diffusion.objective 'flow') and its Euler and Heun samplers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmscavp_jax.core import bidirectional
from gmscavp_jax.core import config_io
from gmscavp_jax.core import config_validation
from gmscavp_jax.core import phases
from gmscavp_jax.core import sampling
from gmscavp_jax.core import steps
from gmscavp_jax.data import media
from gmscavp_jax.data import pipeline
from gmscavp_jax.diffusion import objectives
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.diffusion import samplers
from gmscavp_jax.diffusion import schedules
from gmscavp_jax.infra import errors
from gmscavp_jax.models import gmscavp
from tests.conftest import SMALLEST_A2V, init_state, tiny_config

N = 1000  # diffusion.num_timesteps: the model time's scale.


def test_flow_loss_regresses_the_velocity_of_the_straight_path():
  """A model returning (x_t - x0) / t (exact if x_t = (1 - t) x0 + t eps and the target is
  eps - x0) has zero loss; one off by 1 everywhere has loss 1; eps = target + x0 is N(0, 1)."""
  x0 = jnp.full((4096, 3), 3.0)
  seen = {}

  def exact(x_t, model_t):
    t = model_t / (N - 1)
    seen.update(t=t, v=(x_t - x0) / t[:, None])
    return seen['v']

  loss, metrics = objectives.flow_loss(exact, x0, jax.random.key(0), num_timesteps=N)
  assert set(metrics) == {'msd_loss', 'msd_mse'}
  assert float(loss) < 1e-6
  eps = np.asarray(seen['v'] + x0)
  assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1.0) < 0.03
  # Logit-normal(0, 1): the logits of t have mean 0 and std 1.
  logits = np.log(seen['t']) - np.log1p(-seen['t'])
  assert abs(logits.mean()) < 0.05 and abs(logits.std() - 1.0) < 0.05
  off_by_one, _ = objectives.flow_loss(lambda x, t: exact(x, t) + 1.0, x0, jax.random.key(0),
                                       num_timesteps=N)
  np.testing.assert_allclose(float(off_by_one), 1.0, rtol=1e-4)


def test_flow_loss_hand_computed_target():
  """x0 = 0 makes x_t = t eps and the target eps = x_t / t: a zero prediction costs the mean of
  eps^2 over the example's elements, weighted by example_weights."""
  x0 = jnp.zeros((2, 2))
  seen = {}

  def zero(x_t, model_t):
    seen.update(x_t=x_t, t=model_t / (N - 1))
    return jnp.zeros_like(x_t)

  weights = jnp.array([1.0, 0.0])
  loss, _ = objectives.flow_loss(zero, x0, jax.random.key(3), num_timesteps=N,
                                 t_sampling='uniform', example_weights=weights)
  eps0 = np.asarray(seen['x_t'][0]) / float(seen['t'][0])
  np.testing.assert_allclose(float(loss), np.mean(eps0**2), rtol=1e-5)
  assert 0.0 <= float(seen['t'].min()) and float(seen['t'].max()) < 1.0


def test_flow_loss_with_the_contrastive_term():
  """The contrastive term compares errors on the same x_t and t: a negative model that is
  off by 1 ranks below the positive one on every example."""
  x0 = jax.random.normal(jax.random.key(4), (16, 3))
  calls = []

  def model(offset):
    def fn(x_t, model_t):
      calls.append(model_t)
      return (x_t - x0) / (model_t / (N - 1))[:, None] + offset
    return fn

  contrast = objectives.Contrast(model(1.0), weight=0.5, temperature=0.1)
  loss, metrics = objectives.flow_loss(model(0.1), x0, jax.random.key(5), num_timesteps=N,
                                       contrast=contrast)
  np.testing.assert_array_equal(calls[0], calls[1])
  np.testing.assert_allclose(float(metrics['msd_mse_pos']), 0.01, rtol=1e-3)
  np.testing.assert_allclose(float(metrics['msd_mse_neg']), 1.0, rtol=1e-3)
  assert float(metrics['cdiff_acc']) == 1.0
  np.testing.assert_allclose(float(loss), float(metrics['msd_loss'] + 0.5 * metrics['cdiff']),
                             rtol=1e-6)


def _gaussian_velocity(mu: float, s: float):
  """The exact rectified-flow velocity E[eps - x0 | x_t = x] for x0 ~ N(mu, s^2), eps ~ N(0, 1):
  x_t has mean (1 - t) mu and variance (1 - t)^2 s^2 + t^2, Cov(eps - x0, x_t) = t - (1 - t) s^2,
  so v(x, t) = -mu + (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2) (x - (1 - t) mu)."""

  def velocity(x, model_t):
    t = (model_t / (N - 1)).reshape((-1,) + (1,) * (x.ndim - 1))
    var = (1 - t)**2 * s**2 + t**2
    return -mu + (t - (1 - t) * s**2) / var * (x - (1 - t) * mu)

  return velocity


@pytest.mark.parametrize('mu,s', [(2.0, 0.5), (-1.0, 1.5)])
def test_euler_and_heun_transport_noise_to_the_gaussian(mu, s):
  """With the exact velocity, the ODE maps x_1 to mu + s x_1 (the 1-D monotone transport);
  both samplers land near it, Heun much closer than Euler at the same step count."""
  x_1 = jax.random.normal(jax.random.key(0), (20_000, 1))
  velocity = _gaussian_velocity(mu, s)
  exact = np.asarray(mu + s * x_1)
  errors_ = {}
  # Euler's first-order error shrinks the spread (std 0.46 for s = 0.5 at 16 steps).
  for sampler, std_rtol in (('euler', 0.1), ('heun', 0.02)):
    x0 = np.asarray(samplers.sample_flow(lambda x, t, c: velocity(x, t), x_1, sampler=sampler,
                                         num_steps=16, num_timesteps=N))
    assert x0.dtype == np.float32
    np.testing.assert_allclose(x0.mean(), mu, atol=0.02)
    np.testing.assert_allclose(x0.std(), s, rtol=std_rtol)
    errors_[sampler] = np.abs(x0 - exact).max()
  assert errors_['heun'] < 0.1 * errors_['euler'], errors_
  assert errors_['heun'] < 0.03, errors_


@pytest.mark.parametrize('sampler,order', [('euler', 1), ('heun', 2)])
def test_flow_samplers_converge_at_their_order(sampler, order):
  """Doubling the steps divides the error by about 2 (Euler) or 4 (Heun)."""
  x_1 = jax.random.normal(jax.random.key(1), (512, 1))
  velocity = _gaussian_velocity(1.0, 0.3)
  err = [np.abs(np.asarray(samplers.sample_flow(lambda x, t, c: velocity(x, t), x_1,
                                                sampler=sampler, num_steps=k,
                                                num_timesteps=N)) - (1.0 + 0.3 * x_1)).max()
         for k in (16, 32)]
  assert 0.8 * 2**order < err[0] / err[1] < 1.25 * 2**order, err


@pytest.mark.parametrize('sampler', samplers.FLOW_SAMPLERS)
def test_flow_guidance(sampler):
  """Guidance 1 is the conditional model alone (bit for bit), 0 the unconditional one, and
  w extrapolates the two velocities."""
  cond, uncond = _gaussian_velocity(2.0, 0.5), _gaussian_velocity(-1.0, 1.0)
  calls = []

  def guided(x, t, conditional):
    calls.append(conditional)
    return cond(x, t) if conditional else uncond(x, t)

  x_1 = jax.random.normal(jax.random.key(2), (64, 3))
  run = functools.partial(samplers.sample_flow, x_1=x_1, sampler=sampler, num_steps=4,
                          num_timesteps=N)
  alone = run(lambda x, t, c: cond(x, t))
  np.testing.assert_array_equal(run(guided, guidance_scale=1.0), alone)
  assert set(calls) == {True}
  np.testing.assert_array_equal(run(guided, guidance_scale=0.0),
                                run(lambda x, t, c: uncond(x, t)))
  w = 2.5
  extrapolated = run(lambda x, t, c: uncond(x, t) + w * (cond(x, t) - uncond(x, t)))
  np.testing.assert_allclose(run(guided, guidance_scale=w), extrapolated, rtol=1e-6, atol=1e-6)
  # A BatchedDenoiser: one call on both halves stacked (unconditional first), same result.
  halves = []

  def masked(x, t, conditional):
    halves.append(x.shape[0])
    keep = conditional[:, None]
    return jnp.where(keep, cond(x, t), uncond(x, t))

  batched = guidance_lib.BatchedDenoiser(guided, masked)
  np.testing.assert_array_equal(run(batched, guidance_scale=1.0), alone)
  assert halves == []
  np.testing.assert_allclose(run(batched, guidance_scale=w), extrapolated, rtol=1e-6, atol=1e-6)
  assert halves and set(halves) == {2 * len(x_1)}
  # A guidance interval on the flow's noise level t / (1 - t): 4 steps query t = 1, 0.75,
  # 0.5, 0.25 (noise levels inf, 3, 1, 1/3; heun also 0.75, 0.5, 0.25 at the ends).
  interval = (0.5, 2.0)  # Holds the level 1 (t = 0.5) alone.

  def self_guided(x, t, c):  # Guides itself on those steps; run unguided.
    del c
    level = schedules.flow_model_time(0.5, N)
    return jnp.where(jnp.isclose(t, level)[:, None], uncond(x, t) + w * (cond(x, t) - uncond(x, t)),
                     cond(x, t))

  np.testing.assert_allclose(run(batched, guidance_scale=w, guidance_interval=interval),
                             run(self_guided, guidance_scale=1.0), rtol=1e-6, atol=1e-6)
  queries = 4 if sampler == 'euler' else 7
  assert samplers.denoiser_calls(None, objective='flow', sampler=sampler, num_steps=4,
                                 guidance_scale=w, guidance_interval=interval) == (
                                     queries + (1 if sampler == 'euler' else 2))


def test_flow_samplers_keep_float32_under_x64():
  """The time grid and updates stay float32 when jax_enable_x64 is on."""
  with jax.enable_x64(True):
    x_1 = jax.random.normal(jax.random.key(0), (8, 2), jnp.float32)
    for sampler in samplers.FLOW_SAMPLERS:
      out = jax.jit(lambda x, s=sampler: samplers.sample_flow(
          lambda y, t, c: -y + 0.0 * t[:, None], x, sampler=s, num_steps=3,
          num_timesteps=N, guidance_scale=2.0))(x_1)
      assert out.dtype == jnp.float32


def test_sample_objective_refuses_mismatched_samplers():
  x = jnp.zeros((2, 3))
  ab = schedules.alpha_bar('linear', 10)
  with pytest.raises(errors.ConfigError, match="diffusion.objective='flow'"):
    samplers.sample_objective(lambda y, t, c: y, x, jax.random.key(0), ab, objective='flow',
                              sampler='ddim', num_steps=2)
  with pytest.raises(errors.ConfigError, match="diffusion.objective='diffusion'"):
    samplers.sample_objective(lambda y, t, c: y, x, jax.random.key(0), ab,
                              objective='diffusion', sampler='heun', num_steps=2)


def _flow_config(**overrides):
  # The smallest models (the a2v net's too): the flow path's checks hold at any size.
  return tiny_config('msa_msd', **SMALLEST_A2V, **{
      'diffusion.objective': 'flow', 'eval.sampler': 'euler', 'diffusion.terminal_weight': 0.0,
      **overrides})


@pytest.mark.parametrize('fields,message', [
    ({'diffusion.objective': 'flow'}, r"eval.sampler='dpmpp2m'.*diffusion.objective='flow'"),
    ({'eval.sampler': 'heun'}, r"eval.sampler='heun'.*diffusion.objective='diffusion'"),
    ({'diffusion.objective': 'flow', 'eval.sampler': 'euler', 'diffusion.terminal_weight': 1.0},
     r"diffusion.terminal_weight=1.0.*objective='flow'"),
    ({'diffusion.objective': 'rf'}, r"diffusion.objective='rf'"),
    ({'diffusion.objective': 'flow', 'eval.sampler': 'euler', 'diffusion.flow_t_sampling': 'x'},
     r"diffusion.flow_t_sampling='x'"),
])
def test_config_validation_pairs_sampler_and_objective(fields, message):
  with pytest.raises(errors.ConfigError, match=message):
    config_validation.validate(tiny_config('msa_msd', **fields))


def test_old_configs_get_the_diffusion_objective():
  old = tiny_config('msa_msd')
  del old.diffusion['objective']
  del old.diffusion['flow_t_sampling']
  upgraded = config_io.upgrade(old)
  assert upgraded.diffusion.objective == 'diffusion'
  assert upgraded.diffusion.flow_t_sampling == 'logit_normal'


def test_tiny_flow_training_and_sampling_end_to_end():
  """Joint steps with the flow loss train the denoiser, and the Euler and Heun samplers
  generate finite log-mels from it; a diffusion sampler is refused."""
  config = _flow_config()
  config_validation.validate(config)
  models = steps.build_models(config)
  txs = {'encoders': optax.adam(1e-2), 'denoiser': optax.adam(1e-2)}
  state = init_state(config, models, txs)
  batch = jax.tree.map(jnp.asarray, pipeline.select(next(iter(pipeline.train_loader(config))),
                                                    ('frames', 'waveform')))
  step = jax.jit(functools.partial(steps.train_step, models=models, txs=txs, config=config,
                                   phase=phases.JOINT))
  losses = []
  for i in range(2):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics['train/loss/msd_loss']))
  assert np.all(np.isfinite(losses))
  assert 'train/loss/msd_mse_terminal' not in metrics
  frames = {'frames': batch['frames'][:2]}
  for sampler, guidance in (('euler', 1.0), ('heun', 2.0)):
    mel = jax.jit(functools.partial(sampling.sample_step, models=models, config=config,
                                    sampler=sampler, num_steps=2, guidance=guidance))(
                                        state.params, frames, jax.random.key(5))
    assert mel.shape == (2, steps.num_mel_frames(config), config.audio.n_mels)
    assert np.all(np.isfinite(np.asarray(mel)))
  with pytest.raises(errors.ConfigError, match='dpmpp2m'):
    sampling.sample_step(state.params, frames, jax.random.key(5), models=models, config=config,
                      sampler='dpmpp2m', num_steps=3, guidance=1.0)


def test_a2v_denoiser_trains_and_samples_with_flow():
  config = _flow_config(**{'train.bidirectional_interval': 1})
  config_validation.validate(config)
  models = steps.build_models(config)
  net = models.video_denoiser
  size = config.a2v.image_size
  frames = jax.random.uniform(jax.random.key(0), (2, config.data.num_frames, 32, 32, 3),
                              minval=-1.0, maxval=1.0)
  num_samples = media.clip_num_samples(config.data.num_frames, config.data.fps,
                                       config.audio.sample_rate)
  waveform = 0.1 * jax.random.normal(jax.random.key(1), (2, num_samples))
  params = jax.jit(functools.partial(steps.init_params, config, models))(
      jax.random.key(2, impl='rbg'))

  # Jitted: one compile each, where op-by-op dispatch compiles every small op (loss 40 s ->
  # 6 s, sampling 17 s -> 10 s on 2 busy cores).
  @jax.jit
  def loss_fn(params, waveform, frames, rng):
    mel = steps.log_mel({'waveform': waveform}, config)
    aud = models.encoders.apply({'params': params['encoders']}, mel,
                                method=gmscavp.GMSCAVP.embed_audio)
    return bidirectional.a2v_loss(params['video_denoiser'], aud, frames, rng, denoiser=net,
                                  config=config)

  loss, metrics = loss_fn(params, waveform, frames, jax.random.key(3))
  assert set(metrics) == {'a2v_loss', 'a2v_mse'} and np.isfinite(float(loss))
  out = jax.jit(functools.partial(bidirectional.sample_frames, models=models, config=config,
                                  sampler='heun', num_steps=2, guidance=2.0))(
                                      params, waveform, jax.random.key(4))
  assert out.shape == (2, config.data.num_frames, size, size, 3)
  assert float(jnp.abs(out).max()) <= 1.0 + 1e-5


def test_min_snr_is_validated_and_filled_for_old_workdirs():
  with pytest.raises(errors.ConfigError, match='diffusion.min_snr_gamma'):
    config_validation.validate(tiny_config('msa_msd', **{'diffusion.min_snr_gamma': -1.0}))
  with pytest.raises(errors.ConfigError, match=r"min_snr_gamma.*objective='flow'"):
    config_validation.validate(_flow_config(**{'diffusion.min_snr_gamma': 5.0}))
  old = tiny_config('msa_msd')
  del old.diffusion['min_snr_gamma']
  assert config_io.upgrade(old).diffusion.min_snr_gamma == 0.0
