"""Trains the neural vocoder of a dataset ahead of `generate`, `evaluate` and the demo.

  python -m gmscavp_jax.tools.train_vocoder --config=configs/msa_msd.py:runlocal
  python -m gmscavp_jax.tools.train_vocoder --workdir=/tmp/gmscavp_msa_msd

--workdir trains the one its commands look for: its config's (a workdir saved before the
vocoder existed gets the :runlocal vocoder settings, core/config_io.py).

The dataset is the config's data.* / audio.* fields, the network its vocoder.* fields; it
lands in EVALUATOR_ROOT/<data.name>-<hash>-vocoder (see evaluators/vocoder_training.py),
where --vocoder=auto|neural finds it. A vocoder already there is reused, not retrained.
Prints its self-check against Griffin-Lim: the log-mel distance of the re-analysed waveform
to the real log-mel on vocoder.num_check_clips test clips, and seconds per clip.
"""

from absl import app
from absl import flags

from gmscavp_jax import cli
from gmscavp_jax.core import config_io
from gmscavp_jax.evaluators import vocoder_training
from gmscavp_jax.evaluators import vocoders

_CONFIG = cli.define_dataset_config_flag(required=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run whose dataset and vocoder '
                               'settings to use instead of --config.')
_EVALUATOR_DIR = cli.define_evaluator_dir_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if (_CONFIG.value is None) == (_WORKDIR.value is None):
    raise app.UsageError('give exactly one of --config=FILE or --workdir=DIR')
  cli.setup()
  config = _CONFIG.value or cli.run_or_explain(config_io.load_config, _WORKDIR.value)
  neural, summary = cli.run_or_explain(vocoders.load_or_train, config, _EVALUATOR_DIR.value)
  print(f'vocoder in {vocoder_training.vocoder_dir(config, _EVALUATOR_DIR.value)} '
        f"(trained in {summary['train_seconds']:.0f} s)")
  # Checked again as it is used now (vocoder.json keeps the check made when it was trained).
  summary = vocoders.self_check(config, neural)
  print(f"log-mel L1 to the real log-mel on {summary['check/num_clips']} test clips "
        f'(nats; lower is better), {config.vocoder.inference_projections} projections after '
        'the network:')
  for name in ('neural', 'griffin_lim'):
    print(f"  {name:12s} {summary[f'check/{name}/log_mel_l1']:.3f}   "
          f"{summary[f'check/{name}/seconds_per_clip'] * 1e3:.1f} ms per clip")


if __name__ == '__main__':
  cli.run(main)
