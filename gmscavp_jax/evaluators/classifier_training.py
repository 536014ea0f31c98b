"""Trains the evaluator networks on a dataset's train split and keeps them per dataset.

Evaluators belong to a dataset, not to an experiment: every workdir trained on the same data
(same data.* and audio.* fields) and evaluator.* settings is scored by the same networks, so
KLD / FAD / Align Acc compare across experiments and seeds. They live in
EVALUATOR_ROOT/<data.name>-<hash of those fields>/ (EVALUATOR_ROOT: --evaluator_dir, else
$GMSCAVP_EVALUATORS, else ~/.cache/gmscavp_jax/evaluators), written atomically: params (Orbax)
and evaluators.json (settings, training summary, and the self-check accuracies on the test
split, which say whether the evaluators can be trusted).

  python -m gmscavp_jax.tools.train_evaluators --config=configs/msa_msd.py:runlocal
"""

import functools
import hashlib
import json
import os
import shutil
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from gmscavp_jax.core import config_validation
from gmscavp_jax.infra import metrics_io
from gmscavp_jax.infra import sharding
from gmscavp_jax.core import steps
from gmscavp_jax.data import negatives
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import classifiers
from gmscavp_jax.evaluators import generation

SUMMARY_FILE = 'evaluators.json'
# data.* fields that do not change what the data is. The evaluators of a mixture's run are
# data.name's own (a mixture shapes what a generator trains on, not what it is judged by).
_NOT_IDENTITY = ('worker_count', 'prefetch_buffer_size', 'mixture')


def evaluator_root(root: str | None = None) -> str:
  """Where evaluator sets are kept (see the module docstring)."""
  return root or os.environ.get('GMSCAVP_EVALUATORS') or os.path.join(
      os.path.expanduser('~'), '.cache', 'gmscavp_jax', 'evaluators')


def identity(config: ml_collections.ConfigDict) -> dict:
  """The fields that decide an evaluator set: the dataset, the audio features, the nets."""
  data = {k: v for k, v in config.data.to_dict().items() if k not in _NOT_IDENTITY}
  return {'data': data, 'audio': config.audio.to_dict(),
          'evaluator': config.evaluator.to_dict()}


def evaluator_dir(config: ml_collections.ConfigDict, root: str | None = None) -> str:
  """EVALUATOR_ROOT/<data.name>-<12 hex digits of the identity's hash>."""
  text = json.dumps(identity(config), sort_keys=True, default=list)
  digest = hashlib.sha256(text.encode()).hexdigest()[:12]
  return os.path.join(evaluator_root(root), f'{config.data.name}-{digest}')


def _optimizer(v: ml_collections.ConfigDict) -> optax.GradientTransformation:
  lr = optax.warmup_cosine_decay_schedule(0.0, v.learning_rate, v.warmup_steps,
                                          max(v.num_steps, v.warmup_steps + 1),
                                          v.learning_rate * 0.05)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


def loss_fn(params, batch: dict, rng: jax.Array, *, models: classifiers.Classifiers,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """Cross-entropy of the audio classifier plus the alignment classifier's BCE.

  Audio targets are the clip's sounding classes, equally weighted (a clip may have two).
  The alignment classifier sees each video twice: with its own audio (label 1) and with a
  negative made from the batch (label 0; one of the three kinds, drawn per example).
  """
  wave, frames, labels = batch['waveform'], batch['frames'], batch['labels']
  min_shift, max_shift = classifiers.shift_samples(config)
  fake, _ = negatives.make_negatives(rng, wave, min_shift=min_shift, max_shift=max_shift)
  mel = steps.log_mel({'waveform': jnp.concatenate([wave, fake])}, config)
  b = wave.shape[0]

  audio = models.audio.apply({'params': params['audio']}, mel[:b])
  targets = labels / jnp.maximum(labels.sum(-1, keepdims=True), 1.0)
  ce = optax.softmax_cross_entropy(audio['logits'], targets).mean()
  top = jnp.argmax(audio['logits'], -1)
  audio_acc = jnp.take_along_axis(labels, top[:, None], axis=1).mean()

  align = {'params': params['align']}
  video = models.align.apply(align, frames, method=classifiers.AlignmentClassifier.
                             video_features)
  sound = models.align.apply(align, mel, method=classifiers.AlignmentClassifier.
                             audio_features)
  logits = models.align.apply(align, jnp.concatenate([video, video]), sound,
                              method=classifiers.AlignmentClassifier.head)
  target = jnp.concatenate([jnp.ones(b), jnp.zeros(b)])
  bce = optax.sigmoid_binary_cross_entropy(logits, target).mean()
  align_acc = ((logits > 0) == (target > 0)).mean()
  metrics = {'audio_ce': ce, 'align_bce': bce, 'audio_acc': 100 * audio_acc,
             'align_acc': 100 * align_acc}
  return ce + bce, metrics


def loader_config(config: ml_collections.ConfigDict, batch_size: int,
                  seed: int) -> ml_collections.ConfigDict:
  """The config whose train loader feeds a per-dataset network: data.name's own train split
  (no mixture, see _NOT_IDENTITY) at `batch_size`, shuffled by `seed`."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.train.batch_size = batch_size
  cfg.seed = seed
  cfg.data.mixture = ''
  return cfg


def fit(config: ml_collections.ConfigDict, mesh, *, init, loss, seed: int, what: str,
        fields: tuple[str, ...] = ('frames', 'waveform', 'labels')) -> tuple[dict, dict]:
  """Trains params from `init(rng)` on `loss(params, batch, rng) -> (loss, metrics)` for
  evaluator.num_steps at evaluator.batch_size (the evaluators' optimizer and schedule) on the
  train split's `fields`; returns (params, {'train_seconds', 'history'})."""
  v = config.evaluator
  tx = _optimizer(v)
  repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  params = jax.jit(init, out_shardings=repl)(jax.random.key(seed))
  state = (params, jax.jit(tx.init, out_shardings=repl)(params), jnp.zeros((), jnp.int32))

  def train_step(state, batch, rng):
    params, opt_state, step = state
    (_, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
        params, batch, jax.random.fold_in(rng, step))
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, step + 1), metrics

  step_fn = jax.jit(train_step, in_shardings=(repl, batch_sh, repl),
                    out_shardings=(repl, repl), donate_argnums=(0,))
  loader = iter(pipeline.train_loader(loader_config(config, v.batch_size, seed)))
  progress = metrics_io.Progress(0, v.num_steps)
  rng, pending, history = jax.random.key(seed + 1), [], []
  t0 = time.perf_counter()
  logging.info('training the %s (%d steps, batch %d)', what, v.num_steps, v.batch_size)
  for step in range(1, v.num_steps + 1):
    batch = sharding.global_batch(mesh, pipeline.select(next(loader), fields))
    state, metrics = step_fn(state, batch, rng)
    pending.append(metrics)
    if step % 100 == 0 or step == v.num_steps:
      fetched, pending = jax.device_get(pending), []
      row = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      history.append({'step': step, **row})
      progress.update(step)
      logging.info('%s step %d: %s (train batches)', what, step,
                   '  '.join(f'{k} {x:.3g}' for k, x in row.items()))
  del loader  # Stops grain's workers now, not at interpreter exit.
  return jax.device_get(state[0]), {'train_seconds': time.perf_counter() - t0,
                                    'history': history}


def train(config: ml_collections.ConfigDict, mesh=None) -> tuple[dict, dict]:
  """Trains both evaluators for evaluator.num_steps; returns (params, training summary)."""
  config_validation.validate_evaluation(config)
  mesh = mesh or sharding.make_mesh()
  models = classifiers.build(config)
  return fit(config, mesh, init=functools.partial(classifiers.init_params, config, models),
             loss=functools.partial(loss_fn, models=models, config=config),
             seed=config.evaluator.seed, what='evaluators')


def self_check(evalset: classifiers.EvaluatorSet) -> dict:
  """The evaluators' accuracy (percent) on the first evaluator.num_check_clips test clips.

  Keys: eval/audio_classifier_acc (top class among the true classes), and
  eval/align_classifier_acc (balanced: real pairs vs their negatives), with its parts
  eval/align_acc_real and eval/align_acc_{shift,segment_swap,random_swap} (share judged
  correctly).
  """
  config = evalset.config
  clips = generation.test_clips(config, config.evaluator.num_check_clips)
  real_mel = steps.log_mel({'waveform': clips['waveform']}, config)
  out = {'eval/audio_classifier_acc': classifiers.top1_in_labels(
      evalset.audio(real_mel)['logits'], clips['labels'])}
  min_shift, max_shift = classifiers.shift_samples(config)
  fake, info = classifiers.make_negative_waveforms(
      jax.random.key(12345), clips['waveform'], min_shift=min_shift, max_shift=max_shift,
      kinds=negatives.KINDS)
  p_real = evalset.aligned_prob(clips['frames'], np.asarray(real_mel))
  p_fake = evalset.aligned_prob(clips['frames'],
                                np.asarray(steps.log_mel({'waveform': fake}, config)))
  out['eval/align_acc_real'] = 100.0 * float(np.mean(p_real >= 0.5))
  kind = np.asarray(info['kind'])
  for i, name in enumerate(negatives.KINDS):
    if np.any(kind == i):
      out[f'eval/align_acc_{name}'] = 100.0 * float(np.mean(p_fake[kind == i] < 0.5))
  out['eval/align_classifier_acc'] = 0.5 * (out['eval/align_acc_real'] +
                                            100.0 * float(np.mean(p_fake < 0.5)))
  return out


def save_params(path: str, params: dict, summary_file: str, summary: dict) -> None:
  """Writes params (Orbax) and `summary` as JSON to `path` atomically: a temp dir, then a
  rename; if another process finished the same path first, theirs is kept."""
  tmp = f'{path}.tmp-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(tmp, 'params'), params)
  ckptr.wait_until_finished()
  with open(os.path.join(tmp, summary_file), 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True, default=list)
  try:
    os.rename(tmp, path)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)


def save(path: str, config: ml_collections.ConfigDict, params: dict, summary: dict) -> None:
  """Writes the evaluators' params and evaluators.json (with their identity) to `path`."""
  save_params(path, params, SUMMARY_FILE, {'identity': identity(config), **summary})


def load_or_train(config: ml_collections.ConfigDict, root: str | None = None,
                  mesh=None) -> tuple[classifiers.EvaluatorSet, dict]:
  """The dataset's evaluators (trained and saved first if there are none); (set, summary)."""
  config_validation.validate_evaluation(config)
  mesh = mesh or sharding.make_mesh()
  path = evaluator_dir(config, root)
  if not os.path.exists(os.path.join(path, SUMMARY_FILE)):
    logging.info('no evaluators in %s: training them on the %s train split', path,
                 config.data.name)
    params, summary = train(config, mesh)
    evalset = classifiers.EvaluatorSet(config, params, mesh)
    summary.update(self_check(evalset))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save(path, config, params, summary)
    logging.info('evaluators saved to %s: audio classifier %.1f%%, alignment %.1f%% on '
                 'the test split', path, summary['eval/audio_classifier_acc'],
                 summary['eval/align_classifier_acc'])
    return evalset, summary
  with open(os.path.join(path, SUMMARY_FILE)) as f:
    summary = json.load(f)
  models = classifiers.build(config)
  abstract = jax.eval_shape(functools.partial(classifiers.init_params, config, models),
                            jax.random.key(0))
  params = ocp.StandardCheckpointer().restore(os.path.join(path, 'params'), abstract)
  return classifiers.EvaluatorSet(config, params, mesh), summary
