"""The alignment guide of double guidance (Diff-Foley): a noise-aware alignment classifier
trained once per dataset on diffused audio, kept beside the evaluator networks.

It has the evaluators' alignment classifier's architecture (models/alignment.py) with the
diffusion timestep added, its own seed (evaluator.seed + GUIDE_SEED_OFFSET) and its own
parameters, and it reads noisy normalised log-mels: the evaluator that scores Align Acc never
steers the sampler. Kept in <evaluator dir>-guide/ (params + guide.json).
"""

import functools
import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp

from gmscavp_jax.core import msd
from gmscavp_jax.core import steps
from gmscavp_jax.data import negatives
from gmscavp_jax.diffusion import schedules
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import classifiers
from gmscavp_jax.infra import sharding

GUIDE_SEED_OFFSET = 7919
SUMMARY_FILE = 'guide.json'


def guide_dir(config: ml_collections.ConfigDict, root: str | None = None) -> str:
  """Where the dataset's guide is kept: beside its evaluators."""
  return classifier_training.evaluator_dir(config, root) + '-guide'


def init_params(config: ml_collections.ConfigDict, rng: jax.Array):
  """Fresh params of `steps.build_guide(config)`."""
  frames, mel = steps.dummy_inputs(config)
  return steps.build_guide(config).init(rng, frames, mel, jnp.zeros((1,), jnp.int32))['params']


def loss_fn(params, batch: dict, rng: jax.Array, *,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """BCE of "aligned" on diffused audio: each video with its own audio (1) and a negative
  made from the batch (0; shifted, segment-swapped or swapped), both noised to a random
  timestep of the MSD schedule in the denoiser's data space."""
  wave, frames = batch['waveform'], batch['frames']
  neg_rng, t_rng, noise_rng = jax.random.split(rng, 3)
  min_shift, max_shift = classifiers.shift_samples(config)
  fake, _ = negatives.make_negatives(neg_rng, wave, min_shift=min_shift, max_shift=max_shift)
  x0 = steps.normalise_mel(steps.log_mel({'waveform': jnp.concatenate([wave, fake])}, config),
                           config)
  b = wave.shape[0]
  t = jax.random.randint(t_rng, (2 * b,), 0, config.diffusion.num_timesteps)
  a, s = (schedules.expand_to(c, x0) for c in schedules.signal_noise(msd.alpha_bar(config), t))
  x_t = a * x0 + s * jax.random.normal(noise_rng, x0.shape)
  logits = steps.build_guide(config).apply({'params': params},
                                           jnp.concatenate([frames, frames]), x_t, t)
  target = jnp.concatenate([jnp.ones(b), jnp.zeros(b)])
  bce = optax.sigmoid_binary_cross_entropy(logits, target).mean()
  return bce, {'guide_bce': bce, 'guide_acc': 100 * ((logits > 0) == (target > 0)).mean()}


def load_or_train(config: ml_collections.ConfigDict, root: str | None = None, mesh=None):
  """The dataset's guide params (trained and saved first if there are none)."""
  mesh = mesh or sharding.make_mesh()
  path = guide_dir(config, root)
  abstract = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  if os.path.exists(os.path.join(path, SUMMARY_FILE)):
    return ocp.StandardCheckpointer().restore(os.path.join(path, 'params'), abstract)
  logging.info('no alignment guide in %s: training it on the %s train split', path,
               config.data.name)
  seed = config.evaluator.seed + GUIDE_SEED_OFFSET
  params, summary = classifier_training.fit(
      config, mesh, init=functools.partial(init_params, config),
      loss=functools.partial(loss_fn, config=config), seed=seed, what='alignment guide',
      fields=('frames', 'waveform'))
  classifier_training.save_params(
      path, params, SUMMARY_FILE,
      {'identity': classifier_training.identity(config), 'seed': seed, **summary})
  return params
