"""Training phases update exactly what they train; MSD gradients reach the encoders."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmscavp_jax.core import phases
from gmscavp_jax.core import steps
from gmscavp_jax.data import pipeline
from tests.conftest import SMALLEST, init_state, tiny_config


@pytest.fixture(scope='module')
def setup():
  # The smallest models: what these tests check holds at any size.
  config = tiny_config('msa_msd', **SMALLEST)
  models = steps.build_models(config)
  # Constant-rate Adam: the configured warmup gives the very first update a rate of 0.
  txs = {'encoders': optax.adam(1e-2), 'denoiser': optax.adam(1e-2)}
  state = init_state(config, models, txs)
  batch = pipeline.select(next(iter(pipeline.train_loader(config))), ('frames', 'waveform'))
  return config, models, txs, state, jax.tree.map(jnp.asarray, batch)


@pytest.fixture(scope='module')
def phase_step(setup):
  """phase -> the fixture's train step of that phase, jitted once for the module (a test
  that runs a phase's step again reuses its trace and compiled program)."""
  config, models, txs, _, _ = setup
  jitted = {}

  def step(phase):
    if phase not in jitted:
      jitted[phase] = jax.jit(functools.partial(steps.train_step, models=models, txs=txs,
                                                config=config, phase=phase))
    return jitted[phase]
  return step


def _changed(before, after) -> bool:
  return any(not np.array_equal(a, b)
             for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


@pytest.mark.parametrize('phase', [phases.CONTRASTIVE, phases.GENERATOR, phases.JOINT],
                         ids=str)
def test_phase_updates_only_its_groups(setup, phase_step, phase):
  state, batch = setup[3:]
  new, metrics = phase_step(phase)(state, batch, jax.random.key(1))
  assert int(new.step) == 1
  for group in ('encoders', 'denoiser'):
    assert _changed(state.params[group], new.params[group]) == (group in phase.groups)
  assert ('train/loss/msa' in metrics) == (phase != phases.GENERATOR)
  assert ('train/loss/msd_loss' in metrics) == (phase != phases.CONTRASTIVE)
  assert np.isfinite(float(metrics['train/loss']))


@pytest.mark.parametrize('stop_gradient', [False, True])
def test_msd_gradient_reaches_the_video_encoder_unless_stopped(setup, stop_gradient):
  config, models, _, state, batch = setup
  config = config.copy_and_resolve_references()
  config.loss.msa_weight = 0.0  # Only L_MSD remains.
  config.diffusion.stop_gradient = stop_gradient
  # Without a trained output layer the UNet's output ignores its input; perturb every param.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                        state.params)

  # Gradients of the encoders only: the denoiser's weight gradients would double the compile.
  def loss_of_encoders(encoders):
    return steps.loss_fn({**params, 'encoders': encoders}, batch, jax.random.key(3),
                         models=models, config=config, phase=phases.JOINT)[0]

  grads = jax.jit(jax.grad(loss_of_encoders))(params['encoders'])
  video_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(
      grads['video_encoder']))))
  audio_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(
      grads['audio_encoder']))))
  assert audio_norm == 0.0  # The denoiser sees the raw log-mel, never the audio encoder.
  assert (video_norm == 0.0) == stop_gradient, video_norm


def test_phase_schedule_of_the_table3_configs():
  frozen = tiny_config('msa')  # encoder_steps = 2 of 4.
  assert [steps.phase_at(frozen, s) for s in (1, 2, 3, 4)] == [
      phases.CONTRASTIVE, phases.CONTRASTIVE, phases.GENERATOR, phases.GENERATOR]
  assert [steps.generator_trained(frozen, s) for s in (0, 2, 3)] == [False, False, True]
  joint = tiny_config('msa_msd')
  assert {steps.phase_at(joint, s) for s in (1, 4)} == {phases.JOINT}
  assert steps.generator_trained(joint, 1)
  none = tiny_config('msa', **{'diffusion.training': 'none'})
  assert not steps.generator_trained(none, 4)


def test_encoder_lr_scale_scales_only_the_encoders_rate():
  config = tiny_config('msa_msd', **{'train.encoder_lr_scale': 3.0, 'train.lr_schedule':
                                     'constant', 'train.warmup_steps': 0,
                                     'train.learning_rate': 1e-3})
  txs = steps.make_optimizers(config)
  grad = {'w': jnp.ones(3)}
  # Adam's first update is -rate * sign(gradient).
  first = {k: txs[k].update(grad, txs[k].init(grad), grad)[0]['w'] for k in txs}
  np.testing.assert_allclose(first['encoders'], -3e-3, rtol=1e-4)
  np.testing.assert_allclose(first['denoiser'], -1e-3, rtol=1e-4)


def test_mel_normalisation_round_trips(setup):
  config = setup[0]
  mel = jnp.linspace(-11.5, 3.0, 24).reshape(2, 3, 4)
  np.testing.assert_allclose(
      steps.denormalise_mel(steps.normalise_mel(mel, config), config), mel, atol=1e-5)


def test_a_non_finite_batch_is_skipped_and_counted(setup, phase_step):
  # The fixture's optimizers and phase: the step compiled above, not traced again.
  state, batch = setup[3:]
  step = phase_step(phases.CONTRASTIVE)
  bad = dict(batch, waveform=batch['waveform'].at[0, 10].set(jnp.nan))
  skipped, metrics = step(state, bad, jax.random.key(1))
  assert float(metrics['train/skipped']) == 1.0 and not np.isfinite(metrics['train/loss'])
  assert int(skipped.step) == 1
  assert not _changed(state.params, skipped.params)
  assert not _changed(state.opt_state, skipped.opt_state)  # Adam's moments and count too.
  taken, metrics = step(skipped, batch, jax.random.key(1))
  assert float(metrics['train/skipped']) == 0.0
  assert _changed(skipped.params['encoders'], taken.params['encoders'])
  assert int(taken.opt_state['encoders'][0].count) == 1


def test_bfloat16_compute_keeps_float32_params_and_loss():
  config = tiny_config('msa_msd', **{'train.compute_dtype': 'bfloat16', 'train.remat': 'full'})
  models = steps.build_models(config)
  assert models.encoders.dtype == jnp.bfloat16 and models.denoiser.remat == 'full'
  txs = steps.make_optimizers(config)
  state = jax.eval_shape(functools.partial(steps.init_state, config, models, txs),
                         jax.random.key(0, impl='rbg'))
  frames, _ = steps.dummy_inputs(config, batch_size=2)
  seconds = config.data.num_frames / config.data.fps
  batch = {'frames': frames, 'waveform': jnp.zeros((2, round(seconds * config.audio.sample_rate)))}
  new, metrics = jax.eval_shape(
      functools.partial(steps.train_step, models=models, txs=txs, config=config,
                        phase=phases.JOINT), state, batch, jax.random.key(1))
  assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
  assert metrics['train/loss'].dtype == jnp.float32


def test_contrastive_diffusion_term_on_the_same_noise(setup):
  """loss.cdiff_weight adds weight * cdiff to the joint loss on the same t, noise and dropout;
  at weight 0 none of the cdiff fields reach the program (exactly the loss without it)."""
  config, models, _, state, batch = setup

  def with_cdiff(**fields):
    c = config.copy_and_resolve_references()
    c.loss.update(fields)
    return functools.partial(steps.loss_fn, models=models, config=c, phase=phases.JOINT)

  args = (state.params, batch, jax.random.key(4))
  off = jax.make_jaxpr(with_cdiff(cdiff_weight=0.0))(*args)
  off_other = jax.make_jaxpr(with_cdiff(cdiff_weight=0.0, cdiff_temperature=0.3,
                                        cdiff_kinds=('shift',)))(*args)
  assert str(off) == str(off_other)
  # One program for both weights: XLA shares their common work, so it compiles about once.
  both = jax.jit(lambda *a: (with_cdiff(cdiff_weight=0.0)(*a), with_cdiff(cdiff_weight=0.5)(*a)))
  (loss0, m0), (loss1, m1) = both(*args)
  assert 'loss/cdiff' not in m0
  for key in ('loss/msd_loss', 'loss/msd_mse', 'loss/msa'):
    np.testing.assert_allclose(m1[key], m0[key], rtol=1e-5, err_msg=key)
  np.testing.assert_allclose(loss1, loss0 + 0.5 * config.loss.msd_weight * m1['loss/cdiff'],
                             rtol=1e-5)
  assert float(m1['loss/cdiff']) >= 0.0
  assert 0.0 <= float(m1['loss/cdiff_acc']) <= 1.0


def test_video_class_loss_trains_a_head_on_the_clip_embedding():
  """loss.video_class_weight > 0 adds a (D,K) head whose BCE on data.labels joins the loss."""
  config = tiny_config('msa', **SMALLEST, **{'loss.video_class_weight': 1.0})
  models = steps.build_models(config)
  txs = {'encoders': optax.adam(1e-2), 'denoiser': optax.adam(1e-2)}
  state = init_state(config, models, txs)
  head = state.params['encoders']['video_class_head']['kernel']
  assert head.shape == (config.model.embed_dim, config.data.num_classes)
  batch = pipeline.select(next(iter(pipeline.train_loader(config))),
                          ('frames', 'waveform', 'labels'))
  step = jax.jit(functools.partial(steps.train_step, models=models, txs=txs, config=config,
                                   phase=phases.CONTRASTIVE))
  new, metrics = step(state, jax.tree.map(jnp.asarray, batch), jax.random.key(1))
  assert 0.0 < float(metrics['train/loss/video_class']) < float(metrics['train/loss'])
  assert _changed(head, new.params['encoders']['video_class_head']['kernel'])


def _contrastive_step_metrics(step: int = 0, **overrides) -> dict:
  """The metrics of contrastive step `step` of the tiny msa config with `overrides`."""
  config = tiny_config('msa', **SMALLEST, **overrides)
  models = steps.build_models(config)
  txs = {'encoders': optax.adam(1e-2), 'denoiser': optax.adam(1e-2)}
  state = init_state(config, models, txs).replace(step=jnp.asarray(step, jnp.int32))
  batch = pipeline.select(next(iter(pipeline.train_loader(config))), ('frames', 'waveform'))
  train = jax.jit(functools.partial(steps.train_step, models=models, txs=txs, config=config,
                                    phase=phases.CONTRASTIVE))
  return train(state, jax.tree.map(jnp.asarray, batch), jax.random.key(1))[1]


def test_hue_negatives_enter_the_contrastive_loss():
  """loss.hue_negatives adds one same-timing video negative per audio segment: the MSA loss
  rises over the same step without them, with the per-scale accuracy logged."""
  losses = {}
  for on in (False, True):
    metrics = _contrastive_step_metrics(**{'loss.hue_negatives': on})
    losses[on] = float(metrics['train/loss/msa'])
    assert ('train/acc_hue/scale0' in metrics) == on
  assert losses[True] > losses[False]


def test_cross_time_loss_joins_the_contrastive_stage():
  """loss.cross_time_weight adds its term, with its accuracy, to the same step's loss."""
  metrics = _contrastive_step_metrics(**{'loss.cross_time_weight': 0.5,
                                         'loss.cross_time_scale': 0})
  cross = float(metrics['train/loss/cross_time'])
  assert cross > 0.0 and 0.0 <= float(metrics['train/acc_cross_time']) <= 1.0
  np.testing.assert_allclose(float(metrics['train/loss']),
                             float(metrics['train/loss/msa']) + 0.5 * cross, rtol=1e-5)


def test_cross_time_loss_counts_only_before_cross_time_steps():
  """loss.cross_time_steps=N: the term joins the loss at steps < N and leaves it from N on,
  still logged."""
  for step, joins in ((4, True), (5, False)):
    metrics = _contrastive_step_metrics(step, **{'loss.cross_time_weight': 0.5,
                                                 'loss.cross_time_scale': 0,
                                                 'loss.cross_time_steps': 5})
    cross = float(metrics['train/loss/cross_time'])
    assert cross > 0.0
    np.testing.assert_allclose(float(metrics['train/loss']),
                               float(metrics['train/loss/msa']) + 0.5 * cross * joins,
                               rtol=1e-5)
