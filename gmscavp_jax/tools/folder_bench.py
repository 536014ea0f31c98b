"""Benchmark of folder soundtracks (issue 19): a folder of test-clip mp4s with some broken
files, through `generate --videos=DIR` at the default batch and at --batch=1, a rerun that
must do no work, and one-file-at-a-time `generate --video=F` calls, side by side.

  python -m gmscavp_jax.tools.folder_bench --workdir=/tmp/msa_msd --out=/tmp/folder \
      --num_videos=50 --num_broken=3 --single_calls=10

Writes OUT/videos/ (the folder), OUT/batch*/ (soundtracks and report.json) and OUT/bench.json.
"""

import json
import os
import subprocess
import sys
import time

from absl import flags

from gmscavp_jax import cli
from gmscavp_jax.core import config_io
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained msa_msd workdir.')
_OUT = flags.DEFINE_string('out', None, 'Output folder.')
_NUM = flags.DEFINE_integer('num_videos', 50, 'Files in the folder, broken ones included.')
_BROKEN = flags.DEFINE_integer('num_broken', 3, 'Broken files among them.')
_SINGLE = flags.DEFINE_integer('single_calls', 10, 'One-file-at-a-time calls to time.')
flags.mark_flags_as_required(['workdir', 'out'])


def make_folder(config, folder: str, num: int, broken: int) -> None:
  """num - broken test clips as mp4 (in two sub-folders) and `broken` damaged files: an
  empty one, a truncated one, and text named .mp4."""
  source = pipeline.make_source(config, 'test')
  good = num - broken
  for i in range(good):
    r = source[i]
    media_writing.write_video(os.path.join(folder, f'part{i % 2}', f'clip{i:03d}.mp4'),
                              r['frames'], config.data.fps)
  with open(os.path.join(folder, 'part0', 'clip000.mp4'), 'rb') as f:
    damaged = [b'', f.read()[:3000], b'this is not a video']
  for i in range(broken):
    with open(os.path.join(folder, f'broken{i}.mp4'), 'wb') as f:
      f.write(damaged[i % len(damaged)])


def generate(workdir: str, *flags_) -> tuple[float, str]:
  """Runs the generate CLI; returns (wall seconds, stdout)."""
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, '-m', 'gmscavp_jax.generate', f'--workdir={workdir}',
                      *flags_], capture_output=True, text=True, check=False)
  if r.returncode:
    raise RuntimeError(r.stderr[-3000:])
  return time.perf_counter() - t0, r.stdout


def main(argv):
  del argv
  cli.setup()
  workdir, out = _WORKDIR.value, _OUT.value
  config = config_io.load_config(workdir)
  folder = os.path.join(out, 'videos')
  make_folder(config, folder, _NUM.value, _BROKEN.value)
  good = _NUM.value - _BROKEN.value
  report = {}
  for name, extra in (('batch_default', []), ('batch_1', ['--batch=1'])):
    target = os.path.join(out, name)
    seconds, stdout = generate(workdir, f'--videos={folder}', f'--output_dir={target}', *extra)
    with open(os.path.join(target, 'report.json')) as f:
      run = json.load(f)
    report[name] = {'wall_seconds': seconds, 'clips_per_second': good / seconds,
                    'done': len(run['done']), 'failed': [(os.path.basename(e['video']),
                                                          e['reason']) for e in run['failed']],
                    'summary': stdout.strip().splitlines()[-1 - len(run['failed'])]}
    if name == 'batch_default':
      seconds, stdout = generate(workdir, f'--videos={folder}', f'--output_dir={target}')
      report['rerun'] = {'wall_seconds': seconds,
                         'summary': stdout.strip().splitlines()[-1 - len(run['failed'])]}
  part = os.path.join(folder, 'part0')
  videos = sorted(os.path.join(part, n) for n in os.listdir(part))
  t0 = time.perf_counter()
  for video in videos[:_SINGLE.value]:
    generate(workdir, f'--video={video}', f'--output_dir={os.path.join(out, "single")}')
  seconds = time.perf_counter() - t0
  report['one_file_per_call'] = {'calls': _SINGLE.value, 'wall_seconds': seconds,
                                 'clips_per_second': _SINGLE.value / seconds}
  with open(os.path.join(out, 'bench.json'), 'w') as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  cli.run(main)
