"""Does the memorisation check catch a generator that copies? A lookup 'generator' scored.

  python docs/probes/memorised_generator.py WORKDIR

For each of the first eval.num_metric_clips test videos of WORKDIR's dataset, the 'generated'
audio is the real audio of a training clip with the same sounding classes (the first such
clip among the first eval.num_memorisation_clips training clips; a random one where none
matches): a generator that has memorised its training set and looks the answer up. The
memorisation check of `evaluate` (evaluators/memorisation.py) scores it beside the real
audio of the test clips themselves, with the dataset's evaluator networks.
"""

import sys

import numpy as np

from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling
from gmscavp_jax.core import steps
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import checkpoint_evaluation
from gmscavp_jax.evaluators import classifier_training
from gmscavp_jax.evaluators import memorisation
from gmscavp_jax.evaluators import suite
from gmscavp_jax.infra import sharding


def main(workdir):
  config = config_io.load_config(workdir)
  mesh = sharding.mesh_from_config(config)
  evalset, _ = classifier_training.load_or_train(config, None, mesh)
  generator = sampling.Generator(config, mesh, steps.build_models(config))
  n, num_train = config.eval.num_metric_clips, config.eval.num_memorisation_clips
  clips = checkpoint_evaluation.clips_with_log_mel(config, generator, n, 0, 'test')
  reference = checkpoint_evaluation.clips_with_log_mel(config, generator, n, n, 'test')
  source = pipeline.make_source(config, 'train')
  train_labels = np.stack([source[i]['labels'] for i in range(num_train)])
  match = suite.match_by_labels(clips['labels'], train_labels)
  match = np.where(match >= 0, match, np.random.default_rng(0).integers(0, num_train, n))
  lookup = generator.real_log_mel(np.stack([source[int(i)]['waveform'] for i in match]))
  for name, audio in (('lookup of a training clip', lookup),
                      ('real audio of the test clips', clips['log_mel'])):
    results, _ = checkpoint_evaluation.memorisation_check(config, generator, evalset, audio,
                                                          clips, reference)
    print(f'{name}: memorised {results["gen/memorised_share"]:.1f}% of {n} clips, '
          f'train/test distance ratio {results["gen/train_over_test_distance"]:.2f} '
          f'(real test audio: {results["ref/gt/memorised_share"]:.1f}%)')


if __name__ == '__main__':
  main(sys.argv[1])
