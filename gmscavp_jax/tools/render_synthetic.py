"""Renders the synthetic benchmark as a VGGSound-style folder of mp4 files and a CSV.

  python -m gmscavp_jax.tools.render_synthetic --config=configs/msa.py:runlocal --out=/tmp/vgg \
      --num_train_clips=2000 --num_test_clips=512 --workers=8

Clips have the config's frame size, frame rate, length and audio sample rate; test clip i is
synthetic test clip i (see data/prepare/render.py for the layout). Run it again after an
interruption: finished clips are kept.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from gmscavp_jax import cli
from gmscavp_jax.data.prepare import render

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Output folder (created if needed).')
_NUM_TRAIN = flags.DEFINE_integer('num_train_clips', 1000, 'Train clips to render.')
_NUM_TEST = flags.DEFINE_integer(
    'num_test_clips', None, 'Test clips to render (default: the config eval.num_test_clips, '
    'what retrieval evaluates).')
_WORKERS = flags.DEFINE_integer('workers', os.cpu_count() or 1,
                                'Worker processes (0: render in this process).')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  num_test = config.eval.num_test_clips if _NUM_TEST.value is None else _NUM_TEST.value
  counts = cli.run_or_explain(render.render_vggsound_layout, config, _OUT.value,
                              num_train=_NUM_TRAIN.value, num_test=num_test,
                              workers=_WORKERS.value)
  print(f'{counts["train"]} train and {counts["test"]} test clips in {_OUT.value} '
        f'({counts["written"]} written, {counts["skipped"]} already there); '
        f'CSV: {os.path.join(_OUT.value, render.CSV_NAME)}')


if __name__ == '__main__':
  cli.run(main)
