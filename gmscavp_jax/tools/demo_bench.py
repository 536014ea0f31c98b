"""Times the demo page's answers to an uploaded video, through gradio's own client.

  python -m gmscavp_jax.tools.demo_bench --workdir=/tmp/gmscavp_msa_msd [--upload_seconds=10]

Writes a video of `--upload_seconds` (test clips back to back, with their sound), starts the
page that `python -m gmscavp_jax.demo` serves on a free loopback port, and asks it
`--requests` times for the window at a different start each time (the page's default sampler,
steps and guidance), printing how long the server took to start and each answer took, upload
and download included. The first answer compiles the sampler (or reads it from the persistent
compilation cache); the later ones are what a user waits for. Needs the [demo] extra.
"""

import os
import socket
import tempfile
import time

from absl import app
from absl import flags

from gmscavp_jax import cli
from gmscavp_jax.core import config_io
from gmscavp_jax.core import sampling

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run (MSD trained).')
_UPLOAD_SECONDS = flags.DEFINE_float('upload_seconds', 10.0, 'Length of the uploaded video.')
_REQUESTS = flags.DEFINE_integer('requests', 4, 'Requests, each at another start time.')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.setup()
  from gradio_client import Client  # pylint: disable=g-import-not-at-top  (the [demo] extra)
  from gradio_client import handle_file  # pylint: disable=g-import-not-at-top
  from gmscavp_jax.inference import demo_page  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value
  config = config_io.load_config(workdir)
  video = demo_page.clips_as_upload(
      workdir, _UPLOAD_SECONDS.value,
      os.path.join(tempfile.mkdtemp(prefix='gmscavp_demo_bench_'), 'upload.mp4'))
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  t0 = time.perf_counter()
  page = demo_page.serve(workdir, port=port, max_upload_mb=1024, block=False)
  print(f'server ready in {time.perf_counter() - t0:.1f} s ({page.local_url})')
  client = Client(page.local_url, verbose=False)
  settings = sampling.sampler_settings(config.eval)
  clip_seconds = config.data.num_frames / config.data.fps
  latest_start = max(_UPLOAD_SECONDS.value - clip_seconds, 0.0)
  try:
    for i in range(_REQUESTS.value):
      start = latest_start * i / max(_REQUESTS.value - 1, 1)
      t0 = time.perf_counter()
      *_, message = client.predict(handle_file(video), start, settings['sampler'],
                                   settings['num_steps'], settings['guidance'], i,
                                   api_name='/generate_upload')
      print(f'request {i} (a {_UPLOAD_SECONDS.value:g} s upload, window at {start:.1f} s): '
            f'{time.perf_counter() - t0:.2f} s')
      if message.startswith('**Cannot'):
        raise RuntimeError(message)
  finally:
    page.close()


if __name__ == '__main__':
  cli.run(main)
