"""Makes a small real audio-visual set: spoken digits heard, handwritten digits seen.

  python -m gmscavp_jax.tools.make_digits_av --fsdd=FSDD/recordings --out=/tmp/digits_av
  python -m gmscavp_jax.prepare --layout=generic --videos=/tmp/digits_av \
      --csv=/tmp/digits_av/digits_av.csv --data_dir=DATA --name=digits_av \
      --config=configs/msa.py:runlocal

--fsdd is a folder of the Free Spoken Digit Dataset's wavs (CC BY-SA 4.0,
github.com/Jakobovski/free-spoken-digit-dataset, `recordings/`); the images are
scikit-learn's handwritten digits (`pip install scikit-learn`; not a dependency of this
package). Clips have the runlocal geometry (configs/common.py RUNLOCAL: 16 frames at 8 fps,
64x64, with the base config's 8 kHz audio). See data/prepare/digits_av.py for what a clip
shows and sounds like and how the splits are kept apart.
"""

from absl import app
from absl import flags

from configs import common
from gmscavp_jax import cli
from gmscavp_jax.data.prepare import digits_av

_FSDD = flags.DEFINE_string('fsdd', None, 'Folder of the FSDD recordings (*.wav).')
_OUT = flags.DEFINE_string('out', None, 'Output folder (created if needed).')
_NUM_TRAIN = flags.DEFINE_integer('num_train_clips', 1000, 'Train clips (balanced classes).')
_NUM_TEST = flags.DEFINE_integer('num_test_clips', 200, 'Test clips (balanced classes).')
_TEST_SPEAKERS = flags.DEFINE_list('test_speakers', ['theo'],
                                   'FSDD speakers heard only in the test split.')
_TEST_IMAGES = flags.DEFINE_float('test_image_share', 0.2,
                                  'Share of the images (the last ones) seen only in test.')
_MAX_UTTERANCES = flags.DEFINE_integer('max_utterances', 2, 'Utterances per clip: 1 to this.')
_DIM = flags.DEFINE_float('dim', 0.2, "The image's brightness while no digit is spoken.")
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every random choice.')
flags.mark_flags_as_required(['fsdd', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  geometry = digits_av.Geometry(
      num_frames=common.RUNLOCAL['num_frames'], fps=common.RUNLOCAL['fps'],
      image_size=common.RUNLOCAL['image_size'],
      sample_rate=common.base_config().audio.sample_rate)
  try:
    images, labels = digits_av.load_sklearn_digits()
    recordings = digits_av.find_recordings(_FSDD.value)
  except (ImportError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  summary = cli.run_or_explain(
      digits_av.build, _OUT.value, recordings, images, labels, geometry,
      num_train=_NUM_TRAIN.value, num_test=_NUM_TEST.value,
      test_speakers=tuple(_TEST_SPEAKERS.value), test_image_share=_TEST_IMAGES.value,
      seed=_SEED.value, max_utterances=_MAX_UTTERANCES.value, dim=_DIM.value)
  print(f'{summary["train"]} train and {summary["test"]} test clips '
        f'({summary["utterances"]} utterances) in {_OUT.value}; CSV: {summary["csv"]}')


if __name__ == '__main__':
  cli.run(main)
