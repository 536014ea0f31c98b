"""Preparing datasets (data/prepare/preparation.py, prepare.py): bad files, resume, crashes."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest

from gmscavp_jax.data import builders

from gmscavp_jax.data.prepare import clips_builder
from gmscavp_jax.data.prepare import layouts
from gmscavp_jax.data.prepare import preparation
from gmscavp_jax.tools import prepare_bench
from tests.conftest import ROOT
from tests.test_builders import GEOMETRY
from tests.test_builders import write_clip

GEOMETRY_FLAGS = ('--num_frames=8', '--fps=8', '--image_size=32', '--sample_rate=8000')


def _prepare_cli(*args, timeout=240):
  return subprocess.run([sys.executable, '-m', 'gmscavp_jax.prepare', *GEOMETRY_FLAGS, *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _write_audio_only(path):
  """An mp4 holding one AAC stream and no video."""
  t = np.arange(8000) / 8000
  with av.open(str(path), 'w', format='mp4') as container:
    stream = container.add_stream('aac', rate=8000, layout='mono')
    frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2e3 * t)).astype(np.float32)[None],
                                       format='flt', layout='mono')
    frame.sample_rate, frame.pts = 8000, 0
    for packet in list(stream.encode(frame)) + list(stream.encode(None)):
      container.mux(packet)


def _fuzz_set(root):
  """A VGGSound folder: 6 good clips (4 train, 2 test) and 8 bad ones; returns
  ({bad ytid: pattern its reason must match}, videos dir, csv path)."""
  videos = root / 'VIDEOS'
  videos.mkdir(parents=True)
  rows = []
  for i in range(6):
    write_clip(videos / f'good{i}_000000.mp4', i)
    rows.append(f'good{i},0,{"dog" if i % 2 else "cat"},{"test" if i >= 4 else "train"}')
  rng = np.random.default_rng(0)
  (videos / 'empty_000000.mp4').write_bytes(b'')
  (videos / 'noise_000000.mp4').write_bytes(rng.bytes(20_000))
  (videos / 'text_000000.mp4').write_text('<html>404 video unavailable</html>\n')
  whole = (videos / 'good0_000000.mp4').read_bytes()
  (videos / 'halved_000000.mp4').write_bytes(whole[:len(whole) // 2])
  write_clip(videos / 'mute_000000.mp4', 7, audio=False)
  _write_audio_only(videos / 'audioonly_000000.mp4')
  write_clip(videos / 'short_000000.mp4', 8, seconds=0.5)
  bad = {'missing': r'not found', 'empty': r'cannot be decoded|empty',
         'noise': r'cannot be decoded', 'text': r'cannot be decoded',
         'halved': r'truncated|cannot be decoded|too short', 'mute': r'no audio stream',
         'audioonly': r'no video stream|no decodable video', 'short': r'too short'}
  rows += [f'{ytid},0,cat,train' for ytid in bad]
  csv = root / 'vggsound.csv'
  csv.write_text('\n'.join(rows) + '\n')
  return bad, str(videos), str(csv)


def test_fuzzed_bad_files_land_in_the_report_while_good_files_build(tmp_path):
  bad, videos, csv = _fuzz_set(tmp_path)
  data_dir = str(tmp_path / 'data')
  run = _prepare_cli('--layout=vggsound', f'--videos={videos}', f'--csv={csv}',
                     f'--data_dir={data_dir}', '--workers=2', '--chunk_size=3')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'vggsound (8f_8fps_32px_8000hz, vggsound layout, 2 classes): 6 of 14 clips decoded, ' \
         '8 bad' in run.stdout
  assert '--config.data.name=vggsound' in run.stdout

  config_dir = os.path.join(data_dir, 'vggsound', GEOMETRY.name)
  with open(os.path.join(config_dir, 'prepare_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  reasons = {os.path.basename(b['file']).split('_')[0]: b['reason'] for b in report['bad_files']}
  assert set(reasons) == set(bad)
  for ytid, pattern in bad.items():
    assert re.search(pattern, reasons[ytid]), (ytid, reasons[ytid])
  assert sum(report['bad_by_reason'].values()) == 8
  assert report['splits'] == {'train': dict(clips=12, ok=4, bad=8),
                              'test': dict(clips=2, ok=2, bad=0)}
  with open(os.path.join(config_dir, 'prepare_report.txt'), encoding='utf-8') as f:
    text = f.read()
  assert 'file\tsplit\treason' in text and f"{videos}/mute_000000.mp4\ttrain\t" in text
  assert not os.path.exists(os.path.join(config_dir, 'decoded'))  # Deleted after the build.

  # The good clips are the dataset, in CSV order.
  dataset_dir = builders.find_prepared(data_dir, 'vggsound', GEOMETRY)
  train = builders.PreparedSource(dataset_dir, 'train', max_onsets=2)
  assert [train[i]['file'] for i in range(len(train))] == [
      f'good{i}_000000'.encode() for i in range(4)]
  assert [int(train[i]['label']) for i in range(4)] == [0, 1, 0, 1]  # ('cat', 'dog').
  # A second run finds the dataset built and touches nothing.
  dataset = layouts.load('vggsound', videos, csv)
  again = preparation.prepare(dataset, data_dir=data_dir, name='vggsound', config=GEOMETRY,
                              workers=0, progress=False)
  assert again['already_prepared'] and again['bad'] == 8


def test_cli_reports_a_malformed_csv_row(tmp_path):
  (tmp_path / 'v.csv').write_text('abc,0,dog,train\nabc;0;dog;train\n')
  run = _prepare_cli('--layout=vggsound', f'--videos={tmp_path}', f'--csv={tmp_path}/v.csv',
                     f'--data_dir={tmp_path}/data', timeout=120)
  assert run.returncode == 1
  assert f'error: {tmp_path}/v.csv:2: ' in run.stderr
  assert 'expected ytid,start_seconds,label,split' in run.stderr


def slow_decode(item, config, num_classes):
  """clips_builder.decode_item, slowed down so that a run can be killed halfway."""
  time.sleep(0.4)
  return clips_builder.decode_item(item, config, num_classes)


DECODED = []  # Keys that counting_decode saw (decoding in this process: workers=0).


def counting_decode(item, config, num_classes):
  DECODED.append(item.key)
  return clips_builder.decode_item(item, config, num_classes)


def test_a_killed_run_resumes_with_the_missing_chunks_only(tmp_path):
  for i in range(10):
    write_clip(tmp_path / 'videos' / f'clip{i:02d}.mp4', i)
  data_dir = str(tmp_path / 'data')
  decoded_dir = os.path.join(data_dir, 'resumable', GEOMETRY.name, 'decoded')
  script = textwrap.dedent(f"""
      from gmscavp_jax.data import builders
      from gmscavp_jax.data.prepare import layouts, preparation
      from tests import test_prepare
      dataset = layouts.load('generic', {str(tmp_path / 'videos')!r}, test_percent=0)
      preparation.prepare(dataset, data_dir={data_dir!r}, name='resumable',
                          config=builders.clips_config(8, 8.0, 32, 8000), workers=1,
                          chunk_size=2, decode_fn=test_prepare.slow_decode)
      """)
  # Its own session, so that the kill takes its decoding worker too.
  proc = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 120
    while not glob.glob(os.path.join(decoded_dir, '*.npz')):
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline, 'no chunk was written in 120 s'
      time.sleep(0.02)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  written = sorted(glob.glob(os.path.join(decoded_dir, '*.npz')))
  assert 1 <= len(written) < 5, written

  DECODED.clear()
  dataset = layouts.load('generic', str(tmp_path / 'videos'), test_percent=0)
  report = preparation.prepare(dataset, data_dir=data_dir, name='resumable', config=GEOMETRY,
                               workers=0, chunk_size=2, keep_decoded=True, progress=False,
                               decode_fn=counting_decode)
  done = set()
  for path in written:
    with np.load(path) as chunk:
      done.update(chunk['key'].tolist())
  assert sorted(DECODED) == sorted(f'clip{i:02d}.mp4' for i in range(10)
                                   if f'clip{i:02d}.mp4' not in done)
  assert report['decode']['chunks_reused'] == len(written)
  assert report['decode']['chunks_decoded'] == 5 - len(written)
  assert report['ok'] == 10 and report['bad'] == 0
  # Only whole chunks remain (the killed run's partial file and marker are gone).
  assert sorted(os.listdir(decoded_dir)) == sorted(
      os.path.basename(t.path) for t in preparation.plan_chunks(dataset, GEOMETRY,
                                                                decoded_dir, 2))
  train = builders.PreparedSource(report['dataset_dir'], 'train', max_onsets=3, num_classes=4)
  assert len(train) == 10 and train.classes == ()
  record = train[9]
  assert record['file'] == b'clip09.mp4' and record['label'] == -1
  np.testing.assert_array_equal(record['labels'], np.zeros(4, np.float32))


def crash_on_poison(item, config, num_classes):
  """clips_builder.decode_item, except that the process dies on files named poison*."""
  if 'poison' in item.key:
    os._exit(3)  # pylint: disable=protected-access  (like a segfault in FFmpeg)
  return clips_builder.decode_item(item, config, num_classes)


def test_a_file_that_kills_its_worker_is_reported_and_the_rest_builds(tmp_path):
  for name in ('a.mp4', 'b.mp4', 'poison.mp4', 'c.mp4'):
    write_clip(tmp_path / 'videos' / name, len(name))
  dataset = layouts.load('generic', str(tmp_path / 'videos'), test_percent=0)
  report = preparation.prepare(dataset, data_dir=str(tmp_path / 'data'), name='crashy',
                               config=GEOMETRY, workers=1, chunk_size=2, progress=False,
                               decode_fn=crash_on_poison)
  assert report['ok'] == 3 and report['decode']['worker_restarts'] == 2
  [bad] = report['bad_files']
  assert bad['file'].endswith('poison.mp4')
  assert 'worker process died on it 2 times' in bad['reason']
  source = builders.PreparedSource(report['dataset_dir'], 'train', max_onsets=1)
  assert [source[i]['file'] for i in range(3)] == [b'a.mp4', b'b.mp4', b'c.mp4']


def test_benchmark_prints_decode_and_grain_speeds(capsys):
  result = prepare_bench.run(GEOMETRY, num_clips=6, workers=0, chunk_size=3, batch_size=2,
                             num_batches=3, grain_workers=0)
  out = capsys.readouterr().out
  assert '6 of 6 clips decoded, 0 bad' in out
  assert 'clips/s per worker' in out and 'examples/s from the ArrayRecord shards' in out
  assert result['clips_per_second_per_worker'] > 0
  assert result['grain_examples_per_second'] > 0


def test_prepare_refuses_a_second_concurrent_run(tmp_path):
  config_dir = tmp_path / 'busy' / GEOMETRY.name
  os.makedirs(config_dir)
  with preparation._exclusive(str(config_dir)):  # pylint: disable=protected-access
    dataset = layouts.Dataset('generic', (), ())
    with pytest.raises(preparation.PrepareError, match='another prepare run is working'):
      preparation.prepare(dataset, data_dir=str(tmp_path), name='busy', config=GEOMETRY,
                          workers=0, progress=False)
