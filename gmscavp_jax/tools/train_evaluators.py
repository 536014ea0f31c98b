"""Trains the evaluator networks of a dataset (DESIGN §5) ahead of `evaluate`.

  python -m gmscavp_jax.tools.train_evaluators --config=configs/msa_msd.py:runlocal

The dataset is the config's data.* / audio.* fields, the networks its evaluator.* fields;
the set lands in EVALUATOR_ROOT/<data.name>-<hash> (see evaluators/classifier_training.py),
where every later `evaluate` of a workdir on the same data finds it. A set already there is
reused, not retrained. Prints the evaluators' accuracy on the test split.
"""

from absl import app

from gmscavp_jax import cli
from gmscavp_jax.evaluators import classifier_training

_CONFIG = cli.define_dataset_config_flag()
_EVALUATOR_DIR = cli.define_evaluator_dir_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.setup()
  _, summary = cli.run_or_explain(classifier_training.load_or_train, _CONFIG.value,
                                  _EVALUATOR_DIR.value)
  print(f'evaluators in {classifier_training.evaluator_dir(_CONFIG.value, _EVALUATOR_DIR.value)}')
  for key in sorted(k for k in summary if k.startswith('eval/')):
    print(f'  {key}: {summary[key]:.1f}%')


if __name__ == '__main__':
  cli.run(main)
