"""Pretrains GMS-CAVP (or an ablation of it) as configured.

  python -m gmscavp_jax.main --config=configs/msa.py:runlocal --workdir=/tmp/msa \
      --config.train.batch_size=16

On a SIGTERM (a preemption notice) it saves a checkpoint and exits with status 143
(`train.PREEMPTED_EXIT`); the same command continues the run. Several processes (TPU pod, SLURM,
or by hand with --coordinator_address/--num_processes/--process_id) run one job together.
"""

import sys

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
_DISTRIBUTED = cli.define_distributed_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.run_or_explain(cli.check_paths, write_dirs={'workdir': _WORKDIR.value})
  cli.setup()
  cli.run_or_explain(cli.init_distributed, _DISTRIBUTED)
  try:
    results = cli.run_or_explain(train.train_and_evaluate, _CONFIG.value, _WORKDIR.value)
  except train.Preempted as e:
    logging.warning('%s', e)
    sys.exit(train.PREEMPTED_EXIT)
  logging.info('final results: %s', results)


if __name__ == '__main__':
  cli.run(main)
