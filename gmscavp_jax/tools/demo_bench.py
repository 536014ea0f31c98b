"""Times the demo page's answers to uploaded videos, through gradio's own client.

  python -m gmscavp_jax.tools.demo_bench --workdir=/tmp/gmscavp_msa_msd [--upload_seconds=10]
  python -m gmscavp_jax.tools.demo_bench --workdir=W --clients=8 --seconds=120 \\
      [--output_json=load.json]

Both start the page that `python -m gmscavp_jax.demo` serves, in this process on a free
loopback port, with its gradio cache in a new temporary folder (unless GRADIO_TEMP_DIR is set).

Sequential (the default, --clients=0): writes a video of `--upload_seconds` (test clips back
to back, with their sound) and asks for the window at a different start `--requests` times
(the page's default sampler, steps and guidance), printing how long the server took to start
and each answer took, upload and download included. The first answer compiles the sampler (or
reads it from the persistent compilation cache); the later ones are what a user waits for.

Load (--clients=N): N users at once for `--seconds`, each with its own client, sending good
and bad uploads; every answer is checked against a reference asked beforehand, one at a time
(tools/demo_load.py says what correct means). Prints requests, wrong answers and server errors
by kind (good/bad), latency p50/p95/max, throughput, this process's RSS and the sizes of the
page's folders (gradio's cache of uploads and served files, kept `--cache_seconds`; the
request folders) at the start, at their peak and at the end. Needs the [demo] extra.
"""

import json
import os
import shutil
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
_CLIENTS = flags.DEFINE_integer('clients', 0, 'Users at once (load mode); 0: sequential.')
_SECONDS = flags.DEFINE_float('seconds', 120.0, 'Load mode: how long the users send requests.')
_SEED = flags.DEFINE_integer('seed', 0, "Load mode: draws each user's order of requests.")
_CACHE_SECONDS = flags.DEFINE_integer(
    'cache_seconds', 60, 'Load mode: age at which the page deletes uploads and served files '
    '(the demo keeps them 600 s; shorter shows the cleanup within the run).')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None, 'Load mode: write the summary here.')
flags.mark_flag_as_required('workdir')
# The load's uploads are under a megabyte; a small limit keeps the too-large one small.
_LOAD_MAX_UPLOAD_MB = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _sequential(demo_page, workdir: str, folder: str) -> None:
  """Asks for `--requests` windows of one upload, one after the other, and prints the times."""
  from gradio_client import Client  # pylint: disable=g-import-not-at-top  (the [demo] extra)
  from gradio_client import handle_file  # pylint: disable=g-import-not-at-top

  config = config_io.load_config(workdir)
  video = demo_page.clips_as_upload(workdir, _UPLOAD_SECONDS.value,
                                    os.path.join(folder, 'upload.mp4'))
  t0 = time.perf_counter()
  page = demo_page.serve(workdir, port=_free_port(), max_upload_mb=1024, block=False,
                         output_dir=os.path.join(folder, 'requests'))
  print(f'server ready in {time.perf_counter() - t0:.1f} s ({page.local_url})')
  client = Client(page.local_url, verbose=False, download_files=os.path.join(folder, 'answers'))
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
    client.close()
    page.close()


def _load(demo_page, workdir: str, folder: str) -> None:
  """The load mode: references first, then `--clients` users for `--seconds`."""
  from gmscavp_jax.tools import demo_load  # pylint: disable=g-import-not-at-top  ([demo])

  requests = demo_load.make_requests(workdir, os.path.join(folder, 'uploads'),
                                     max_upload_mb=_LOAD_MAX_UPLOAD_MB)
  output_dir = os.path.join(folder, 'requests')
  t0 = time.perf_counter()
  page = demo_page.serve(workdir, port=_free_port(), max_upload_mb=_LOAD_MAX_UPLOAD_MB,
                         block=False, output_dir=output_dir, cache_seconds=_CACHE_SECONDS.value)
  print(f'server ready in {time.perf_counter() - t0:.1f} s ({page.local_url})')
  try:
    t0 = time.perf_counter()
    references = demo_load.reference_answers(page.local_url, requests,
                                             os.path.join(folder, 'reference'))
    print(f'{len(requests)} reference answers ({sum(r.reason is None for r in requests)} good,'
          f' asked twice) in {time.perf_counter() - t0:.1f} s')
    dirs = {'gradio cache': os.environ['GRADIO_TEMP_DIR'], 'request folders': output_dir}
    summary = demo_load.run(page.local_url, requests, references, clients=_CLIENTS.value,
                            seconds=_SECONDS.value, seed=_SEED.value,
                            folder=os.path.join(folder, 'clients'), dirs=dirs)
  finally:
    page.close()
  summary.update(workdir=workdir, cache_seconds=_CACHE_SECONDS.value,
                 date=time.strftime('%Y-%m-%d %H:%M'),
                 requests_set=[{'name': r.name, 'kind': r.kind, 'start': r.start,
                                'sampler': r.sampler, 'steps': r.steps,
                                'guidance': r.guidance, 'seed': r.seed} for r in requests])
  print('\n'.join(demo_load.summary_lines(summary)))
  if _OUTPUT_JSON.value:
    with open(_OUTPUT_JSON.value, 'w') as f:
      json.dump(summary, f, indent=1)
  if summary['wrong'] or summary['server_errors']:
    raise SystemExit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for name, value, ok, expected in (
      ('clients', _CLIENTS.value, _CLIENTS.value >= 0, '0 or more'),
      ('seconds', _SECONDS.value, _SECONDS.value > 0, 'a positive time'),
      ('cache_seconds', _CACHE_SECONDS.value, _CACHE_SECONDS.value >= 1, 'at least 1')):
    if not ok:
      raise app.UsageError(f'--{name}={value}: expected {expected}')
  cli.run_or_explain(cli.check_paths, dirs={'workdir': _WORKDIR.value})
  cli.setup()
  folder = tempfile.mkdtemp(prefix='gmscavp_demo_bench_')
  # Before gradio is imported: its cache (uploads, served files) is then this run's alone,
  # so its size is the page's, and it goes with the rest at the end.
  os.environ.setdefault('GRADIO_TEMP_DIR', os.path.join(folder, 'gradio'))
  from gmscavp_jax.inference import demo_page  # pylint: disable=g-import-not-at-top  ([demo])
  try:
    if _CLIENTS.value:
      _load(demo_page, _WORKDIR.value, folder)
    else:
      _sequential(demo_page, _WORKDIR.value, folder)
  finally:
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main)
