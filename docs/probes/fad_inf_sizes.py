"""FAD and FAD-inf of the first 64, 128 and 256 generated clips against one reference set.

  python docs/probes/fad_inf_sizes.py WORKDIR

Generates audio for the first eval.num_metric_clips test videos of WORKDIR's newest
checkpoint as `evaluate` does (its default sampler), embeds it and the real audio of the next
as many test clips with the dataset's evaluator, and prints, for the first 64, 128 and all
of the generated clips, FAD with its 95% bootstrap interval and FAD-inf, always against the
same full reference set: FAD falls as clips are added, FAD-inf should not.
"""

import sys

import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.core import state as state_lib
from gmscavp_jax.evaluators import checkpoint_evaluation
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import intervals
from gmscavp_jax.evaluators import metrics


def main(workdir):
  config = config_io.load_config(workdir)
  _, mesh, models, params, _ = state_lib.restore_workdir(workdir, config,
                                                         state_lib.restore_generator)
  evalset, _ = classifier_training.load_or_train(config, None, mesh)
  generator = sampling.Generator(config, mesh, models)
  n = config.eval.num_metric_clips
  clips = checkpoint_evaluation.clips_with_log_mel(config, generator, n, 0, 'test')
  reference = checkpoint_evaluation.clips_with_log_mel(config, generator, n, n, 'test')
  args = sampling.sampler_settings(config.eval, None, None, None, None)
  generated, _ = generator.generate_timed(params, clips['frames'], labels=clips['labels'],
                                          seed=0, **args)
  gen, ref = (evalset.audio(m)['embedding'] for m in (generated, reference['log_mel']))
  stats = metrics.gaussian_stats(ref)
  rows = []
  for size in sorted({64, 128, n}):
    sub = gen[:size]
    fad = intervals.fad_to(sub, stats)
    low, high = intervals.bootstrap_interval(lambda i, s=sub: intervals.fad_to(s[i], stats),
                                             size)
    inf = intervals.fad_inf(sub, ref)['fad_inf']
    rows.append((fad, inf))
    print(f'{size} clips: FAD {fad:.2f} [{low:.2f}, {high:.2f}]  FAD-inf {inf:.2f}')
  fads, infs = np.array(rows).T
  print(f'spread over the sizes (std): FAD {np.std(fads, ddof=1):.2f}, '
        f'FAD-inf {np.std(infs, ddof=1):.2f}')


if __name__ == '__main__':
  main(sys.argv[1])
