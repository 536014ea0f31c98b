"""A local demo page: upload a video (or pick a test clip), hear the soundtrack a trained
workdir generates for it, and see the test clips it retrieves.

  pip install -e '.[demo]'
  python -m gmscavp_jax.demo --workdir=/tmp/gmscavp_msa_msd [--port=7860]

Serves http://127.0.0.1:PORT (this machine only; nothing is shared or sent elsewhere). The
page shows the video with its generated soundtrack, the generated spectrogram beside the
original one, both audios, and the top test clips of the other modality with their scores;
sampler, steps, guidance scale and seed are controls. See demo_page.py.
"""

import sys

from absl import app
from absl import flags

from gmscavp_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run (MSD trained).')
_PORT = flags.DEFINE_integer('port', 7860, 'Port on 127.0.0.1.')
_MAX_UPLOAD_MB = flags.DEFINE_float('max_upload_mb', 50.0,
                                    'Uploads over this size are refused before decoding.')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'Retrieved clips listed per direction.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, "Where each request's WAV, PNG and mp4 go (default: a new temporary "
    'folder); the last few requests are kept.')
_CACHE_SECONDS = flags.DEFINE_integer(
    'cache_seconds', 600, 'Uploads and served files are deleted once this old (and when the '
    'server stops), so that many users do not fill the disk.')
_VOCODER = cli.define_vocoder_flag()
_EVALUATOR_DIR = cli.define_evaluator_dir_flag()
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _MAX_UPLOAD_MB.value > 0:
    raise app.UsageError(f'--max_upload_mb={_MAX_UPLOAD_MB.value}: expected a positive size')
  if _CACHE_SECONDS.value < 1:
    raise app.UsageError(f'--cache_seconds={_CACHE_SECONDS.value}: expected at least 1')
  cli.run_or_explain(cli.check_paths, dirs={'workdir': _WORKDIR.value},
                     write_dirs={'output_dir': _OUTPUT_DIR.value})
  cli.setup()
  try:
    # gradio is optional: imported only when the page is served.
    from gmscavp_jax.inference import demo_page  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name not in ('gradio', 'gradio_client'):
      raise
    sys.exit(f"error: the demo needs {e.name}: pip install -e '.[demo]'")
  cli.run_or_explain(demo_page.serve, _WORKDIR.value, port=_PORT.value,
                     max_upload_mb=_MAX_UPLOAD_MB.value, top_k=_TOP_K.value,
                     output_dir=_OUTPUT_DIR.value, vocoder=_VOCODER.value,
                     evaluator_dir=_EVALUATOR_DIR.value, cache_seconds=_CACHE_SECONDS.value)


if __name__ == '__main__':
  cli.run(main)
