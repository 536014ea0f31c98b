"""The one trainer: `train_and_evaluate(config, workdir)`, the loop alone, read top to bottom
(the state it trains is built, laid out and jitted in core/state.py).

validate config -> mesh -> data -> init or resume -> loop (log, checkpoint, evaluate) -> final
evaluation and results.json. Restart is the default: a workdir with checkpoints continues.
A SIGTERM saves a checkpoint and raises `Preempted`; too many non-finite steps in a row raise
`errors.NonFiniteError` (the last checkpoint is the params from before them).
"""

from collections.abc import Callable
import json
import os
import time

from absl import logging
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import feature_cache
from gmscavp_jax.core import preflight
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.core import steps
from gmscavp_jax.core import train_state
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import a2v_generation
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.infra import checkpointing
from gmscavp_jax.infra import errors
from gmscavp_jax.infra import metrics_io
from gmscavp_jax.infra import plotting
from gmscavp_jax.infra import sharding


# The exit status of a preempted run: 128 + SIGTERM, what a process killed by the signal
# reports, so schedulers and retry loops see "interrupted"; the checkpoint makes a rerun safe.
PREEMPTED_EXIT = 143


class Preempted(Exception):
  """Training stopped on a SIGTERM after saving a checkpoint at `step`; rerun to continue."""

  def __init__(self, step: int, workdir: str):
    super().__init__(f'preempted (SIGTERM): checkpoint saved at step {step} in {workdir}; '
                     'run the same command again to continue')
    self.step = step


def evaluate_and_record(evaluators: dict, state, step: int, workdir: str, writer,
                        config: ml_collections.ConfigDict) -> dict:
  """The loop's periodic evaluation of `state` at `step`: retrieval (and generation, once the
  denoisers train), recorded as results.json, PNGs and scalars. The params evaluated are
  those inference uses (`train_state.inference_params`: the EMA with train.ema_decay > 0)."""
  logging.info('step %d: evaluating', step)
  params = train_state.inference_params(state, config)
  results, emb = evaluators['retrieval'].run(params)
  recall = lambda d: '%.2f%% [%.2f, %.2f]' % tuple(
      results[f'retrieval/{d}_R@1{s}'] for s in ('', '_ci95_low', '_ci95_high'))
  logging.info('step %d retrieval: v2a R@1 %s  a2v R@1 %s  (95%% intervals over queries; '
               'chance %.2f%%, timing-blind ceiling %.2f%%, class-only %.2f%%)', step,
               recall('v2a'), recall('a2v'), results['retrieval/chance_R@1'],
               results['retrieval/ceiling_R@1'], results['retrieval/class_ceiling_R@1'])
  if steps.generator_trained(config, step) and config.eval.num_generate_clips > 0:
    results.update(evaluators['generation'].run(params, step, workdir, writer))
  if 'a2v' in evaluators and steps.a2v_trained(config, step):
    results.update(evaluators['a2v'].run(params, step, workdir, writer))
  results['step'] = step
  writer.write_scalars(step, {k: v for k, v in results.items()
                              if k != 'step' and isinstance(v, (int, float))})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2, sort_keys=True)
    retrieval.save_embeddings(workdir, step, emb)
    image = plotting.similarity_matrix(
        emb['similarity'], os.path.join(workdir, 'plots', 'similarity.png'),
        f'test similarity, step {step}', labels=emb['label'])
    writer.write_image(step, 'retrieval/similarity', image)
  return results


def _evaluated(workdir: str, step: int) -> bool:
  """Whether metrics.jsonl holds the evaluation of `step` (its retrieval row)."""
  rows = metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return any(r['step'] == step and 'retrieval/v2a_R@1' in r for r in rows)


def _mean_metrics(fetched: list[dict]) -> dict:
  """Mean of each metric over the steps that logged it (phases log different metrics)."""
  keys = {k for m in fetched for k in m}
  return {k: float(np.mean([m[k] for m in fetched if k in m])) for k in sorted(keys)}


class SkipCounter:
  """Counts skipped (non-finite) steps from the step's train/skipped flags, fetched lazily.

  `check` fetches the flags added since the last check (at log and checkpoint steps only, so
  steps stay asynchronous) and raises errors.NonFiniteError once `limit` are in a row.
  """

  def __init__(self, limit: int):
    self.limit, self.streak, self.total = limit, 0, 0
    self._pending = []

  def add(self, step: int, flag: jax.Array) -> None:
    self._pending.append((step, flag))

  def check(self, saved_steps: Callable[[], list[int]]) -> None:
    """`saved_steps` lists the checkpoints, for the error message only (it reads a folder)."""
    flags = jax.device_get([flag for _, flag in self._pending])
    for (step, _), flag in zip(self._pending, flags):
      self.streak = self.streak + 1 if flag > 0 else 0
      self.total += int(flag > 0)
      if self.streak >= self.limit:
        saved = saved_steps()
        raise errors.NonFiniteError(
            f'config.train.max_skipped_steps={self.limit}: the loss or gradients were not '
            f'finite for {self.streak} steps in a row (steps {step - self.streak + 1}-{step}); '
            f'their updates were skipped, so the params are those after step '
            f'{step - self.streak}, and the newest checkpoint (step '
            f'{saved[-1] if saved else "none"}) is intact. Expected finite '
            'losses: lower train.learning_rate, check the data, or use '
            'train.compute_dtype=float32')
    self._pending = []


def _open_workdir(config: ml_collections.ConfigDict, workdir: str) -> Mesh:
  """The run's mesh; the config is completed from a prepared set (preflight.check), checked
  for the mesh and the data, and saved in `workdir`."""
  mesh = sharding.mesh_from_config(config)
  # Before anything is written or compiled: a count the data cannot serve fails now, not at
  # the first evaluation hundreds of steps in.
  preflight.check(config, num_devices=mesh.size)
  os.makedirs(os.path.join(workdir, 'plots'), exist_ok=True)
  config_io.save_config(config, workdir)
  logging.info('experiment %s on %d devices (%d processes), workdir %s', config.experiment,
               mesh.size, jax.process_count(), workdir)
  return mesh


def _same_run(config: ml_collections.ConfigDict, workdir: str):
  """A `check_config` for Checkpointer.restore_latest: errors.ConfigError naming each field
  where the checkpoints' config differs from `config` (config_io.RESUME_MAY_CHANGE aside)."""

  def check(step: int, saved: dict) -> None:
    differing = config_io.resume_differences(saved, config)
    if differing:
      where = checkpointing.checkpoint_dir(workdir)
      raise errors.ConfigError('; '.join(
          f'config.{path}: the checkpoints in {where} were written with {theirs!r} (step '
          f'{step}), this run has {ours!r}' for path, theirs, ours in differing) +
          '; expected the same values to continue that run, or a fresh --workdir')
  return check


def _resume(ckpt: checkpointing.Checkpointer, state, train_iter, workdir: str,
            config: ml_collections.ConfigDict):
  """(state, step) of the newest checkpoint, the data iterator put back where it was; the
  fresh `state` and step 0 when there is none. Metrics logged after that step are dropped.

  Raises errors.ConfigError if the checkpoints are of another config, and
  errors.DamagedCheckpointError if step folders exist but none restores: never a silent
  start from step 0 over a run's checkpoints.
  """
  restored = ckpt.restore_latest(checkpointing.abstract_like(state), train_iter,
                                 check_config=_same_run(config, workdir))
  start = 0
  if restored is not None:
    state, start = restored
    logging.info('resumed from step %d', start)
  # A run already trained to the end evaluates its last step again: in place of its rows.
  metrics_io.truncate_jsonl(os.path.join(workdir, 'metrics.jsonl'), after_step=start,
                            evaluations_of_it=start >= config.train.num_steps)
  return state, start


def _evaluators(config: ml_collections.ConfigDict, mesh: Mesh, models) -> dict:
  """What `evaluate_and_record` runs: retrieval, generation, and a2v when it is trained."""
  evaluators = {'retrieval': retrieval.RetrievalEvaluator(config, mesh, models),
                'generation': generation.GenerationEvaluator(config, mesh, models)}
  if models.video_denoiser is not None and config.a2v.num_eval_clips > 0:
    evaluators['a2v'] = a2v_generation.A2VGenerationEvaluator(config, mesh, models)
  return evaluators


class _PhaseSteps:
  """The train step of each phase (steps.train_phase), compiled when its phase first runs."""

  def __init__(self, models, txs, config: ml_collections.ConfigDict, mesh: Mesh, layout):
    self._args = (models, txs, config, mesh)
    self._layout, self._compiled = layout, {}

  def __call__(self, step: int, state, batch: dict, rng: jax.Array):
    """(state, metrics) after train step `step` (its phase's program; the state donated)."""
    config = self._args[2]
    phase = steps.phase_at(config, step)
    if phase != steps.phase_at(config, step - 1) and step > 1:
      logging.info('step %d: %s phase starts', step, phase)
    phase = steps.train_phase(config, step)  # Its a2v half too on bidirectional steps.
    if phase not in self._compiled:
      logging.info('compiling the %s train step', phase)
      t0 = time.perf_counter()
      self._compiled[phase] = state_lib.jit_train_step(
          *self._args, phase, self._layout).lower(state, batch, rng).compile()
      logging.info('compiled the %s train step in %.1f s', phase, time.perf_counter() - t0)
      sharding.sync_processes(f'compiled {phase} step')
    return self._compiled[phase](state, batch, rng)


def _log(step: int, fetched: list[dict], progress: metrics_io.Progress, skips: SkipCounter,
         writer, batch_size: int) -> None:
  """Writes the mean of the metrics `fetched` since the last log line, with speed and skips."""
  summary = _mean_metrics(fetched)
  summary.update(progress.update(step))
  summary['train/examples_per_sec'] = summary['steps_per_sec'] * batch_size
  summary['train/skipped_total'] = skips.total
  writer.write_scalars(step, summary)
  logging.info('step %d  loss %.4f%s', step, summary['train/loss'],
               f'  ({skips.total} non-finite steps skipped)' if skips.total else '')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last results."""
  mesh = _open_workdir(config, workdir)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  source_config = None  # Of train.init_from, for a run with no checkpoint of its own yet.
  if config.train.init_from and not ckpt.all_steps():
    # A source that does not fit fails before anything is built or compiled.
    source_config = state_lib.check_init_from(config.train.init_from, config)
  models, txs, state = state_lib.build(config, mesh)
  logging.info('%d parameters', sum(x.size for x in jax.tree.leaves(state.params)))
  train_iter = iter(pipeline.train_loader(config))
  state, start = _resume(ckpt, state, train_iter, workdir, config)
  if source_config is not None:  # A resumed run keeps its own params.
    state = state_lib.initialise_from(config.train.init_from, source_config, state)

  train_step = _PhaseSteps(models, txs, config, mesh, state_lib.layout_of(state))
  evaluators = _evaluators(config, mesh, models)
  features = feature_cache.FeatureCache(config, mesh, models)
  writer = metrics_io.MetricWriter(workdir)
  progress = metrics_io.Progress(start, config.train.num_steps)
  skips = SkipCounter(config.train.max_skipped_steps)
  preemption = checkpointing.PreemptionWatcher()
  rng = jax.random.key(config.seed + 1)
  t = config.train
  results = {}
  # The steps since the last log line before the checkpoint: their metrics join the next mean.
  pending = ckpt.log_window(start) if start else []
  if 0 < start < t.num_steps and start % t.eval_every_steps == 0 and not _evaluated(
      workdir, start):
    # Stopped between this step's checkpoint and its evaluation (a kill, or a SIGTERM, which
    # saves before evaluating): evaluate it now, as the uninterrupted run did.
    results = evaluate_and_record(evaluators, state, start, workdir, writer, config)

  try:
    for step in range(start + 1, t.num_steps + 1):
      local = pipeline.select(next(train_iter))
      if feature_cache.applies(config, step):  # Frozen encoders: their features, not frames.
        local = features.batch_for(local, state.params['encoders'], step)
      batch = sharding.global_batch(mesh, local)
      state, metrics = train_step(step, state, batch, rng)
      pending.append(metrics)
      skips.add(step, metrics['train/skipped'])
      log_now = step % t.log_every_steps == 0 or step == t.num_steps
      save_now = step % t.checkpoint_every_steps == 0 or step == t.num_steps
      if log_now or save_now:
        skips.check(ckpt.all_steps)  # Never checkpoint past too many skipped steps.
      if log_now:
        # Fetched once per log line, so the steps in between stay asynchronous.
        fetched, pending = jax.device_get(pending), []
        _log(step, fetched, progress, skips, writer, t.batch_size)
      preempted = preemption.reached(step)
      if save_now or preempted:
        pending = jax.device_get(pending)
        ckpt.save(step, state, train_iter, config.to_json_best_effort(), log_window=pending)
      if preempted:
        ckpt.wait()
        raise Preempted(step, workdir)
      if step % t.eval_every_steps == 0 or step == t.num_steps:
        results = evaluate_and_record(evaluators, state, step, workdir, writer, config)

    if start >= t.num_steps:
      logging.info('workdir already trained to step %d; evaluating', start)
      results = evaluate_and_record(evaluators, state, start, workdir, writer, config)
  finally:
    preemption.close()
    ckpt.close()
    writer.close()
    # Stop grain's worker processes now: left to interpreter exit, their cleanup races the
    # closing of multiprocessing's handles and prints tracebacks.
    del train_iter
  if jax.process_index() == 0:
    plotting.loss_curves(metrics_io.read_jsonl(os.path.join(workdir, 'metrics.jsonl')),
                         os.path.join(workdir, 'plots', 'loss.png'))
  return results
