"""The neural vocoder: its networks and losses, its training and cache, the --vocoder choice.

The commands that use it are tested where a trained workdir already is: `evaluate
--vocoder=neural` in test_evaluate.py, `generate --vocoder=neural` on a whole video in
test_soundtracks.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax.core import vocoder_validation
from gmscavp_jax.data import audio
from gmscavp_jax.data import vocoder as griffin_lim
from gmscavp_jax.evaluators import vocoder_training
from gmscavp_jax.evaluators import vocoders
from gmscavp_jax.infra import errors
from gmscavp_jax.losses import gan
from tests.conftest import tiny_config


def _vocoder_config(**overrides):
  return tiny_config('msa_msd', **overrides)  # With conftest's tiny vocoder.


def test_an_untrained_generator_is_plain_griffin_lim():
  """The head starts at zero (no magnitude correction, zero phase), so with K projections an
  untrained vocoder is Griffin-Lim from zero phase for K iterations, without momentum."""
  config = _vocoder_config()
  config.vocoder.projections = 3
  params = vocoder_training.init_params(config, jax.random.key(0))['generator']
  wave = np.random.RandomState(0).randn(2, 4000).astype(np.float32) * 0.1
  mel = audio.log_mel_from_config(wave, config.audio)
  ours = np.asarray(vocoder_training.synthesize(params, mel, config))
  theirs = np.asarray(griffin_lim.griffin_lim(mel, num_iters=3, momentum=0.0,
                                              **audio.frontend_kwargs(config.audio)))
  np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max())
  assert ours.shape == (2, 4000 // config.audio.hop_length * config.audio.hop_length)


def test_gan_losses():
  ones, zeros = jnp.ones((2, 3)), jnp.zeros((2, 3))
  feats = [jnp.ones((2, 4))]
  assert float(gan.discriminator_loss([(ones, feats)], [(zeros, feats)])) == 0.0
  assert float(gan.discriminator_loss([(zeros, feats)], [(ones, feats)])) == 2.0
  assert float(gan.generator_adversarial_loss([(ones, feats)])) == 0.0
  assert float(gan.feature_matching_loss([(ones, feats)], [(ones, feats)])) == 0.0
  assert float(gan.feature_matching_loss([(ones, feats)], [(ones, [jnp.zeros((2, 4))])])) == 1.0


def test_bad_vocoder_fields_are_named():
  config = _vocoder_config()
  config.vocoder.segment_frames = 10_000
  with pytest.raises(errors.ConfigError, match='vocoder.segment_frames'):
    vocoder_validation.validate_vocoder(config)
  config = _vocoder_config()
  config.vocoder.gan_start_step = 99
  with pytest.raises(errors.ConfigError, match='vocoder.gan_start_step'):
    vocoder_validation.validate_vocoder(config)


def test_reconstruction_steps_learn_a_batch():
  """Thirty reconstruction steps on one batch of real audio lower the log-mel L1."""
  config = _vocoder_config()
  config.vocoder.learning_rate = 1e-2
  step = jax.jit(vocoder_training.make_train_step(config, adversarial=False))
  params = vocoder_training.init_params(config, jax.random.key(0))
  tx = vocoder_training._optimizer(config.vocoder)  # pylint: disable=protected-access
  opt = {k: tx.init(p) for k, p in params.items()}
  from gmscavp_jax.evaluators import generation  # pylint: disable=g-import-not-at-top
  batch = {'waveform': generation.test_clips(config, 4)['waveform']}
  losses = []
  for _ in range(30):
    params, opt, metrics = step(params, opt, batch, jax.random.key(0))
    losses.append(float(metrics['mel_l1']))
  assert losses[-1] < 0.8 * losses[0], losses


def test_trained_once_kept_beside_the_evaluators_and_chosen_by_auto(tmp_path):
  config, root = _vocoder_config(), str(tmp_path)
  # Nothing trained: 'auto' falls back to Griffin-Lim without training anything.
  assert vocoders.make(config, 'auto', root).name == 'griffin_lim'
  assert not os.listdir(root)
  neural, summary = vocoders.load_or_train(config, root)
  path = vocoder_training.vocoder_dir(config, root)
  assert path.startswith(os.path.join(root, 'synthetic-')) and path.endswith('-vocoder')
  assert vocoder_training.is_trained(config, root)
  assert summary['check/num_clips'] == 8
  for name in ('neural', 'griffin_lim'):
    assert np.isfinite(summary[f'check/{name}/log_mel_l1'])
    assert summary[f'check/{name}/seconds_per_clip'] > 0
  assert [row['step'] for row in summary['history']] == [4]
  assert 'disc_loss' in summary['history'][-1]  # The GAN steps ran, every discriminator.
  # 'auto' now finds it; a reload gives the same audio.
  again = vocoders.make(config, 'auto', root)
  assert again.name == 'neural'
  mel = np.full((2, 10, config.audio.n_mels), -6.0, np.float32)
  np.testing.assert_allclose(np.asarray(again(mel)), np.asarray(neural(mel)), atol=1e-6)
  assert np.asarray(again(mel[0])).shape == (10 * config.audio.hop_length,)
  # Other vocoder settings are another vocoder; other evaluator settings are not.
  other = _vocoder_config()
  other.vocoder.width = 32
  assert vocoder_training.vocoder_dir(other, root) != path
  other = _vocoder_config()
  other.evaluator.num_steps = 7
  assert vocoder_training.vocoder_dir(other, root) == path
  # The projections it vocodes with are how it is used: the same vocoder, and what it plays.
  other = _vocoder_config()
  other.vocoder.inference_projections = 5
  assert vocoder_training.vocoder_dir(other, root) == path
  more = vocoders.make(other, 'neural', root)
  params, _ = vocoder_training.load(config, root)
  want = np.asarray(vocoder_training.synthesize(params, mel, other, 5))
  np.testing.assert_allclose(np.asarray(more(mel)), want, atol=1e-4 * np.abs(want).max())
  assert np.abs(np.asarray(more(mel)) - np.asarray(neural(mel))).max() > 1e-6
  with pytest.raises(ValueError, match='vocoder'):
    vocoders.make(config, 'wavenet', root)


def test_log_mel_distance_is_zero_for_a_perfect_vocoder():
  config = _vocoder_config()
  wave = np.random.RandomState(0).randn(3, 4000).astype(np.float32) * 0.1
  mel = np.asarray(audio.log_mel_from_config(wave, config.audio))
  exact = vocoders.Vocoder('exact', lambda m, rng: jnp.asarray(wave[:len(m)]))
  distance, seconds = vocoders.log_mel_distance(config, exact, mel, batch_size=3)
  assert distance < 1e-5 and seconds >= 0
