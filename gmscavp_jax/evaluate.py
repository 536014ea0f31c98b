"""Evaluates a trained workdir with every metric of the paper (DESIGN §5).

  python -m gmscavp_jax.evaluate --workdir=/tmp/gmscavp_msa_msd [--sampler=ddim --steps=50]

Retrieval R@1/5/10 both ways over eval.num_test_clips; audio generated for the first
eval.num_metric_clips test videos, scored by KLD, FAD, Align Acc, onset hit-rate and class
accuracy with the dataset's evaluator networks (trained on first use, then reused: see
evaluators/classifier_training.py). Merges the numbers into WORKDIR/results.json and writes
WORKDIR/results.md (the paper's table layout) and WORKDIR/plots/evaluate.png.
"""

import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from gmscavp_jax import cli
from gmscavp_jax import config_validation
from gmscavp_jax import plotting
from gmscavp_jax import sharding
from gmscavp_jax import steps
from gmscavp_jax import train
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import generation
from gmscavp_jax.evaluators import retrieval
from gmscavp_jax.evaluators import suite

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_SAMPLER_FLAGS = cli.define_sampler_flags()
_NUM_CLIPS = flags.DEFINE_integer('num_clips', None,
                                  'Test videos to generate for (default: eval.num_metric_clips).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the sampling noise.')
_EVALUATOR_DIR = flags.DEFINE_string(
    'evaluator_dir', None, 'Root of the evaluator networks (default: $GMSCAVP_EVALUATORS or '
    '~/.cache/gmscavp_jax/evaluators).')
flags.mark_flags_as_required(['workdir'])


def _clips_with_log_mel(config, evaluator, num: int, start: int) -> dict:
  clips = generation.test_clips(config, num, start=start)
  clips['log_mel'] = evaluator.real_log_mel(clips['waveform'])
  return clips


def evaluate(workdir: str, *, evaluator_dir: str | None = None, num_clips: int | None = None,
             sampler: str | None = None, num_steps: int | None = None,
             guidance: float | None = None, eta: float | None = None, seed: int = 0) -> dict:
  """Scores the newest checkpoint of `workdir`; returns the merged results.json dict."""
  t0 = time.perf_counter()
  config = train.load_config(workdir)
  if num_clips is not None:
    config.eval.num_metric_clips = num_clips
  config_validation.validate_evaluation(config)
  mesh = sharding.make_mesh()
  models, params, step = train.restore_params(workdir, config, mesh)
  if not steps.generator_trained(config, step):
    raise config_validation.ConfigError(
        f'config.diffusion.training={config.diffusion.training!r}: the checkpoint at step '
        f'{step} in {workdir} has no trained denoiser to evaluate')
  evalset, summary = classifier_training.load_or_train(config, evaluator_dir, mesh)

  results, emb = retrieval.RetrievalEvaluator(config, mesh, models).run(params)
  e = config.eval
  sampler_args = dict(sampler=sampler or e.sampler, num_steps=num_steps or e.sample_steps,
                      guidance=e.guidance if guidance is None else guidance,
                      eta=e.eta if eta is None else eta)
  gen_eval = generation.GenerationEvaluator(config, mesh, models)
  n = e.num_metric_clips
  clips = _clips_with_log_mel(config, gen_eval, n, 0)
  reference = _clips_with_log_mel(config, gen_eval, n, n)
  logging.info('generating audio for %d test videos (%s, %d steps, guidance %g)', n,
               sampler_args['sampler'], sampler_args['num_steps'], sampler_args['guidance'])
  t_gen = time.perf_counter()
  generated = gen_eval.generate(params, clips['frames'], seed=seed, **sampler_args)
  seconds_per_clip = (time.perf_counter() - t_gen) / n
  results.update(suite.score(evalset, generated, clips, reference,
                             generation.frame_rate(config)))
  results.update({k: v for k, v in summary.items() if k.startswith('eval/')})
  results.update({
      'gen/num_clips': float(n), 'gen/num_reference_clips': float(n),
      'gen/seconds_per_clip': seconds_per_clip, 'evaluate/step': step,
      'evaluate/sampler': sampler_args['sampler'],
      'evaluate/sample_steps': sampler_args['num_steps'],
      'evaluate/guidance': sampler_args['guidance'], 'evaluate/seed': seed,
      'evaluate/evaluator_dir': classifier_training.evaluator_dir(config, evaluator_dir),
      'evaluate/seconds': time.perf_counter() - t0})
  if jax.process_index() == 0:
    _write(workdir, config, results, generated, clips)
  return _merged(workdir, results)


def _merged(workdir: str, results: dict) -> dict:
  """results.json as it is after the write (training's keys kept, ours newer)."""
  path = os.path.join(workdir, 'results.json')
  old = {}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  return {**old, **results}


def _write(workdir: str, config: ml_collections.ConfigDict, results: dict,
           generated: np.ndarray, clips: dict) -> None:
  merged = _merged(workdir, results)
  path = os.path.join(workdir, 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(merged, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(suite.results_markdown(merged, config.experiment))
  k = min(4, len(generated))
  plotting.spectrograms(
      generated[:k], os.path.join(workdir, 'plots', 'evaluate.png'),
      f"{config.experiment} step {results['evaluate/step']}: generated vs real "
      f"(KLD {results['gen/kld']:.2f}, FAD {results['gen/fad']:.2f}, "
      f"Align Acc {results['gen/align_acc']:.1f}%)", real=clips['log_mel'][:k],
      frame_rate=generation.frame_rate(config), onsets=clips['onsets'][:k])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.setup()
  r = cli.run_or_explain(
      evaluate, _WORKDIR.value, evaluator_dir=_EVALUATOR_DIR.value, num_clips=_NUM_CLIPS.value,
      seed=_SEED.value, **cli.sampler_args(_SAMPLER_FLAGS))
  print(f"checkpoint {r['evaluate/step']}: KLD {r['gen/kld']:.3f}  FAD {r['gen/fad']:.3f}  "
        f"Align Acc {r['gen/align_acc']:.1f}%  onset hit@100ms {r['gen/onset_hit@100ms']:.1f}%"
        f"  v2a R@1 {r['retrieval/v2a_R@1']:.2f}%  a2v R@1 {r['retrieval/a2v_R@1']:.2f}%")
  print(f"ground truth: KLD {r['ref/gt/kld']:.3f}  FAD {r['ref/gt/fad']:.3f}  Align Acc "
        f"{r['ref/gt/align_acc']:.1f}%; shuffled ground truth Align Acc "
        f"{r['ref/shuffled/align_acc']:.1f}%")
  print(f"wrote {os.path.join(_WORKDIR.value, 'results.json')} and results.md")


if __name__ == '__main__':
  app.run(main)
