"""Pretrains GMS-CAVP (or an ablation of it) as configured.

  python -m gmscavp_jax.main --config=configs/msa.py:runlocal --workdir=/tmp/msa \
      --config.train.batch_size=16
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gmscavp_jax import cli
from gmscavp_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/msa.py:runlocal.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.setup()
  results = cli.run_or_explain(train.train_and_evaluate, _CONFIG.value, _WORKDIR.value)
  logging.info('final results: %s', results)


if __name__ == '__main__':
  app.run(main)
