r"""Which part of the sounding source does generated audio get right? (issue 18's diagnosis)

  python -m gmscavp_jax.tools.source_confusion --workdir=DIR [--num_clips=256]

Prints, for the generated audio of the first test clips and for a random class, how often the
class the evaluator's audio classifier hears is a sounding one, has the colour of a sounding
one, or has its shape (evaluators/source_confusion.py); writes DIR/source_confusion.json too.
"""

from absl import app
from absl import flags

from gmscavp_jax import cli
from gmscavp_jax.evaluators import source_confusion

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained msa_msd/msd workdir.', required=True)
_NUM_CLIPS = flags.DEFINE_integer('num_clips', 256, 'Test clips to generate for.')
_EVALUATOR_DIR = cli.define_evaluator_dir_flag()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.setup()
  out = cli.run_or_explain(source_confusion.diagnose, _WORKDIR.value, _NUM_CLIPS.value,
                           _EVALUATOR_DIR.value)
  print(f"step {out['step']}, {out['num_clips']} test clips")
  for row in ('generated', 'random_class'):
    r = out[row]
    print(f"{row:>13}: a sounding class {r['class']:.1f}%  its colour {r['colour']:.1f}%  "
          f"its shape {r['shape']:.1f}%")


if __name__ == '__main__':
  cli.run(main)
