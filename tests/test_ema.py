"""train.ema_decay: the EMA's update, its absence when off and its use by every inference path.
(Exact resume with it on, across a two-stage run, is tests/test_resume.py.)"""

import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gmscavp_jax.core import config_io
from gmscavp_jax.core import config_validation
from gmscavp_jax.core import ema
from gmscavp_jax.core import phases
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.core import train_state
from gmscavp_jax.inference import retrieval_queries
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import sharding
from gmscavp_jax import train
from tests.conftest import SMALLEST, tiny_config

DECAY = 0.9


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _full_state(workdir, config):
  """The whole newest train state of `workdir` and its step."""
  _, _, fresh = state_lib.build(config, sharding.mesh_from_config(config))
  ckpt = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  restored = ckpt.restore_latest(checkpointing.abstract_like(fresh))
  ckpt.close()
  return restored


def test_ema_update_math():
  avg, params = {'a': jnp.array([0.0, 2.0]), 'b': {'c': jnp.array(4.0)}}, {
      'a': jnp.array([1.0, 0.0]), 'b': {'c': jnp.array(-4.0)}}
  # First update (count 0): decay_t = min(0.99, 1/10) = 0.1.
  out = ema.ema_update(avg, params, 0.99, jnp.array(0, jnp.int32))
  np.testing.assert_allclose(out['a'], [0.9, 0.2], rtol=1e-6)
  np.testing.assert_allclose(out['b']['c'], 0.4 - 3.6, rtol=1e-6)
  # Late updates: decay_t is the configured decay.
  out = ema.ema_update(avg, params, 0.5, jnp.array(1000, jnp.int32))
  np.testing.assert_allclose(out['a'], [0.5, 1.0], rtol=1e-6)
  assert jax.tree.structure(out) == jax.tree.structure(avg)


def test_each_group_follows_its_stage():
  """Trained groups average (warmed up by their own update count), the a2v denoiser keeps its
  average between its updates, a frozen group equals its params, a skipped step changes
  nothing."""
  config = tiny_config('msa_msd', **{'train.ema_decay': DECAY})
  groups = ('encoders', 'denoiser', 'video_denoiser')
  old = {k: {'w': jnp.full((3,), float(i))} for i, k in enumerate(groups)}
  new = {k: {'w': v['w'] + 1.0} for k, v in old.items()}
  tx = steps.make_optimizer(config.train, 10)
  opt = {k: tx.init(old[k]) for k in groups}
  # The denoiser has taken 5 updates (a two-stage run's generator stage starts its count).
  for _ in range(5):
    opt['denoiser'] = tx.update(old['denoiser'], opt['denoiser'], old['denoiser'])[1]
  avg = {k: {'w': v['w'] - 1.0} for k, v in old.items()}
  taken = lambda n, o: n
  out = ema.ema_step(avg, opt, new, phases.GENERATOR, taken, DECAY)
  assert _leaves_equal(out['encoders'], new['encoders'])  # Frozen: its params.
  assert _leaves_equal(out['video_denoiser'], avg['video_denoiser'])  # Between a2v updates.
  d = min(DECAY, 6 / 15)  # Its own count, 5.
  np.testing.assert_allclose(out['denoiser']['w'], d * (1.0 - 1.0) + (1 - d) * 2.0, rtol=1e-6)
  out = ema.ema_step(avg, opt, new, phases.GENERATOR.with_a2v(), taken, DECAY)
  np.testing.assert_allclose(out['video_denoiser']['w'], 0.1 * 1.0 + 0.9 * 3.0, rtol=1e-6)
  skipped = ema.ema_step(avg, opt, new, phases.JOINT, lambda n, o: o, DECAY)
  assert _leaves_equal(skipped['encoders'], avg['encoders'])
  assert _leaves_equal(skipped['denoiser'], avg['denoiser'])


def test_config_field_is_validated_and_filled_for_old_workdirs(tmp_path):
  config = tiny_config('msa')
  assert config.train.ema_decay == 0.0
  config.train.ema_decay = 1.0
  with pytest.raises(errors.ConfigError, match='train.ema_decay'):
    config_validation.validate(config)
  config = tiny_config('msa')
  del config.train['ema_decay']
  config_io.save_config(config, str(tmp_path))
  assert config_io.load_config(str(tmp_path)).train.ema_decay == 0.0


def test_off_keeps_the_state_tree_and_on_leaves_training_unchanged():
  """Off: no EMA leaves, old checkpoints restore. On: the same losses and params as off.

  (The contrastive step, the cheapest to compile: the joint run below and test_resume.py
  train the other stages with the EMA on.)"""
  built = {}
  for decay in (0.0, DECAY):
    config = tiny_config('msa', **SMALLEST, **{'train.ema_decay': decay})
    built[decay] = config, steps.build_models(config), steps.make_optimizers(config)
  # Both inits in one program (one compile): the same key, each decay's own init_state.
  states = jax.jit(lambda key: {decay: steps.init_state(config, models, txs, key)
                                for decay, (config, models, txs) in built.items()})(
                                    jax.random.key(0))
  outs = {}
  for decay, (config, models, txs) in built.items():
    state = states[decay]
    frames, _ = steps.dummy_inputs(config, batch_size=4)
    batch = {'frames': frames + 7, 'waveform': jax.random.normal(jax.random.key(2), (4, 8000))}
    step = jax.jit(functools.partial(steps.train_step, models=models, txs=txs, config=config,
                                     phase=phases.CONTRASTIVE))
    # Two steps: the warmup gives the first a learning rate of 0.
    once = step(state, batch, jax.random.key(1))[0]
    outs[decay] = (once, *step(once, batch, jax.random.key(1)))
  off, on = states[0.0], states[DECAY]
  assert off.ema_params is None and _leaves_equal(on.ema_params, on.params)
  def paths(tree):  # (top-level field, the rest of the key path) of every leaf.
    return sorted((getattr(p[0], 'name', getattr(p[0], 'key', None)),
                   jax.tree_util.keystr(p[1:]))
                  for p, _ in jax.tree_util.tree_leaves_with_path(tree))
  old = {'step': off.step, 'params': off.params, 'opt_state': off.opt_state}
  assert paths(off) == paths(old)
  assert paths(on) == sorted(paths(old) + [('ema_params', p) for _, p in paths(
      {'params': off.params})])
  (_, new_off, m_off), (once, new_on, m_on) = outs[0.0], outs[DECAY]
  assert new_off.ema_params is None
  assert float(m_off['train/loss']) == float(m_on['train/loss'])
  assert _leaves_equal(new_off.params, new_on.params)
  # The second update (count 1): decay_t = 2/11; the untrained denoiser's EMA stays its params.
  want = ema.ema_update(once.ema_params, new_on.params, DECAY, 1)
  for got, w in zip(jax.tree.leaves(new_on.ema_params), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)
  assert not _leaves_equal(new_on.ema_params['encoders'], new_on.params['encoders'])
  assert _leaves_equal(new_on.ema_params['denoiser'], new_on.params['denoiser'])


def test_an_old_checkpoint_restores_into_the_new_state(tmp_path):
  """A state saved before the field existed restores with ema off, leaf for leaf."""

  @flax.struct.dataclass
  class OldTrainState:
    step: jax.Array
    params: dict
    opt_state: dict

  old = OldTrainState(jnp.array(3, jnp.int32), {'w': jnp.arange(4.0)}, {'m': jnp.ones(2)})
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(str(tmp_path / 'state'), old)
  ckpt.wait_until_finished()
  target = train_state.TrainState(old.step, old.params, old.opt_state)
  restored = ckpt.restore(str(tmp_path / 'state'), checkpointing.abstract_like(target))
  assert type(restored) is train_state.TrainState and restored.ema_params is None
  assert _leaves_equal(restored, old)


@pytest.fixture(scope='module')
def joint_ema_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ema_joint'))
  # No generation at the evaluations: the test reads the retrieval embeddings, which are
  # what the trainer's evaluation computed with the EMA (sampling compiles a program more).
  config = tiny_config('msa_msd', **SMALLEST, **{
      'train.ema_decay': DECAY, 'eval.num_generate_clips': 0, 'eval.num_summary_clips': 0})
  return workdir, train.train_and_evaluate(config, workdir)


def test_training_keeps_an_ema_that_inference_restores(joint_ema_workdir):
  workdir, _ = joint_ema_workdir
  config = config_io.load_config(workdir)
  assert config.train.ema_decay == DECAY
  full, step = _full_state(workdir, config)
  assert step == 4
  for group in ('encoders', 'denoiser'):
    assert not _leaves_equal(full.ema_params[group], full.params[group]), group
  # The params-only restore every command uses gives the EMA, in the state's layout.
  _, params, _ = state_lib.restore_params(workdir, config, sharding.mesh_from_config(config))
  assert jax.tree.structure(params) == jax.tree.structure(full.ema_params)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(full.ema_params)):
    assert got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # The trainer's evaluation embedded with the EMA too: its cached test embeddings are those
  # the EMA gives, not those of the raw params.
  cached = dict(retrieval_queries.test_embeddings(workdir))
  os.remove(os.path.join(workdir, 'test_embeddings.npz'))
  recomputed = retrieval_queries.test_embeddings(workdir)
  np.testing.assert_allclose(recomputed['video'], cached['video'], atol=1e-5)
  evaluator = train._evaluators(config, sharding.mesh_from_config(config),
                                steps.build_models(config))['retrieval']
  _, raw = evaluator.run(full.params)
  assert np.abs(raw['video'] - cached['video']).max() > 1e-4


@pytest.mark.parametrize('phase', [phases.JOINT, phases.JOINT.with_a2v()])
def test_a_bidirectional_step_with_ema_keeps_the_state_tree(phase):
  """Traced only: every group of a bidirectional run has an EMA leaf for each param leaf."""
  config = tiny_config('msa_msd', **SMALLEST, **{'train.ema_decay': DECAY,
                                               'train.bidirectional_interval': 1})
  models, txs = steps.build_models(config), steps.make_optimizers(config)
  state = jax.eval_shape(functools.partial(steps.init_state, config, models, txs),
                         jax.random.key(0))
  assert sorted(state.ema_params) == ['denoiser', 'encoders', 'video_denoiser']
  frames, _ = steps.dummy_inputs(config, batch_size=4)
  batch = {'frames': frames, 'waveform': jnp.zeros((4, 8000))}
  new_state, _ = jax.eval_shape(functools.partial(
      steps.train_step, models=models, txs=txs, config=config, phase=phase),
      state, batch, jax.random.key(1))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert jax.tree.structure(new_state.ema_params) == jax.tree.structure(state.params)
