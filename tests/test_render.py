"""The synthetic benchmark rendered as a VGGSound-style mp4 folder (data/prepare/render.py)."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from gmscavp_jax.data import audio
from gmscavp_jax.data import media
from gmscavp_jax.data.prepare import render
from gmscavp_jax.data import synthetic
from gmscavp_jax.infra import errors
from tests.conftest import ROOT
from tests.conftest import tiny_config

NUM_TRAIN, NUM_TEST = 3, 2


def _read_csv(out_dir: str) -> list[tuple[str, int, str, str]]:
  """The rows (ytid, start_seconds, label, split) of `out_dir`'s CSV, in file order."""
  with open(os.path.join(out_dir, render.CSV_NAME), newline='') as f:
    return [(ytid, int(start), label, split) for ytid, start, label, split in csv.reader(f)]


def _names(split, count):
  return [render.video_filename(render.clip_id(split, i)) for i in range(count)]


@pytest.fixture(scope='module')
def rendered(tmp_path_factory):
  """(config, out_dir, counts) of 3 train and 2 test clips (8 frames of 32x32, 1 s)."""
  config = tiny_config('msa')
  out_dir = str(tmp_path_factory.mktemp('vggsound'))
  counts = render.render_vggsound_layout(config, out_dir, num_train=NUM_TRAIN,
                                         num_test=NUM_TEST, progress=False)
  return config, out_dir, counts


def test_names_and_labels():
  assert render.clip_id('train', 42) == 'tr000000042' and len(render.clip_id('test', 0)) == 11
  assert render.video_filename('te000000007') == 'te000000007_000000.mp4'
  assert render.video_filename('abc', 30) == 'abc_000030.mp4'
  names = [render.class_name(c, 16) for c in range(16)]
  assert names[7] == 'class 07' and sorted(names) == names  # Sorted names are in id order.
  assert [int(name.removeprefix('class ')) for name in names] == list(range(16))
  with pytest.raises(ValueError, match='validation'):
    render.clip_id('validation', 0)


def test_layout_and_csv(rendered):
  config, out_dir, counts = rendered
  assert counts == {'train': 3, 'test': 2, 'written': 5, 'skipped': 0}
  assert sorted(os.listdir(out_dir)) == [render.VIDEO_DIR, render.SPEC_NAME, render.CSV_NAME]
  assert sorted(os.listdir(os.path.join(out_dir, render.VIDEO_DIR))) == sorted(
      _names('train', NUM_TRAIN) + _names('test', NUM_TEST))  # No temporary files left.
  with open(os.path.join(out_dir, render.CSV_NAME)) as f:
    lines = f.read().splitlines()
  assert len(lines) == 5 and lines[0].startswith('tr000000000,0,class ')
  rows = _read_csv(out_dir)
  assert [row[3] for row in rows] == ['train'] * 3 + ['test'] * 2
  for split, count in (('train', NUM_TRAIN), ('test', NUM_TEST)):
    source = synthetic.from_config(config, split)
    expected = [(render.clip_id(split, i), 0, render.class_name(source[i]['label'], 16), split)
                for i in range(count)]
    assert [row for row in rows if row[3] == split] == expected


@pytest.mark.parametrize('split,count', [('train', NUM_TRAIN), ('test', NUM_TEST)])
def test_clips_decode_back_to_the_source(rendered, split, count):
  config, out_dir, _ = rendered
  source = synthetic.from_config(config, split)  # Test clip i is synthetic test clip i.
  for i, name in enumerate(_names(split, count)):
    clip = media.read_clip(os.path.join(out_dir, render.VIDEO_DIR, name),
                           num_frames=source.num_frames, fps=source.fps,
                           image_size=source.image_size, sample_rate=source.sample_rate,
                           num_samples=source.num_samples)
    truth = source[i]
    assert (clip.video_padding, clip.audio_padding) == (0, 0)
    # Measured: mean |diff| 2-4 of 255 (H.264 crf 18 on 32x32 frames).
    assert np.abs(clip.frames.astype(np.float32) - truth['frames']).mean() < 8
    # AAC keeps the waveform itself (correlation 0.998-0.9997 measured) and its log-mel.
    assert np.corrcoef(clip.waveform, truth['waveform'])[0, 1] > 0.99
    mels = [np.asarray(audio.log_mel_from_config(w, config.audio))
            for w in (clip.waveform, truth['waveform'])]
    assert np.corrcoef(mels[0].ravel(), mels[1].ravel())[0, 1] > 0.97


def test_rerun_skips_and_resumes(rendered):
  config, out_dir, _ = rendered
  video_dir = os.path.join(out_dir, render.VIDEO_DIR)
  paths = [os.path.join(video_dir, name) for name in sorted(os.listdir(video_dir))]
  stamps = {path: os.stat(path).st_mtime_ns for path in paths}
  with open(os.path.join(out_dir, render.CSV_NAME)) as f:
    csv_text = f.read()
  again = render.render_vggsound_layout(config, out_dir, num_train=NUM_TRAIN,
                                        num_test=NUM_TEST, progress=False)
  assert again == {'train': 3, 'test': 2, 'written': 0, 'skipped': 5}
  assert {path: os.stat(path).st_mtime_ns for path in paths} == stamps
  # A killed run: one clip missing, another half-written under its temporary name.
  os.remove(paths[0])
  with open(os.path.join(video_dir, '.' + os.path.basename(paths[1]) + '.partial'), 'wb') as f:
    f.write(b'\0' * 100)
  resumed = render.render_vggsound_layout(config, out_dir, num_train=NUM_TRAIN,
                                          num_test=NUM_TEST, progress=False)
  assert resumed['written'] == 1 and resumed['skipped'] == 4
  assert sorted(os.listdir(video_dir)) == [os.path.basename(path) for path in paths]
  assert media.read_video_clip(paths[0], num_frames=8, fps=config.data.fps,
                               image_size=32).shape == (8, 32, 32, 3)
  with open(os.path.join(out_dir, render.CSV_NAME)) as f:
    assert f.read() == csv_text
  # Other synthetic settings would mix two worlds in one folder: refused.
  other = tiny_config('msa', **{'data.image_size': 48})
  with pytest.raises(errors.ConfigError, match='image_size.*32, 48'):
    render.render_vggsound_layout(other, out_dir, num_train=1, num_test=1, progress=False)


def test_worker_pool_renders_the_same_clips(rendered, tmp_path):
  config, out_dir, _ = rendered
  counts = render.render_vggsound_layout(config, tmp_path, num_train=1, num_test=2, workers=2,
                                         progress=False)
  assert counts == {'train': 1, 'test': 2, 'written': 3, 'skipped': 0}
  assert _read_csv(tmp_path) == [row for row in _read_csv(out_dir)
                                       if row[0] in ('tr000000000', 'te000000000', 'te000000001')]
  for name in _names('train', 1) + _names('test', 2):
    a, b = (media.read_video_clip(os.path.join(d, render.VIDEO_DIR, name), num_frames=8,
                                  fps=config.data.fps, image_size=32) for d in (out_dir, tmp_path))
    assert np.abs(a.astype(np.float32) - b).mean() < 1


def test_cli(tmp_path):
  args = [sys.executable, '-m', 'gmscavp_jax.tools.render_synthetic',
          '--config=configs/msa.py:runlocal', '--config.data.image_size=32',
          '--config.data.num_frames=8', f'--out={tmp_path}', '--num_train_clips=2',
          '--num_test_clips=1', '--workers=0']
  r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert '2 train and 1 test clips' in r.stdout and '3 written' in r.stdout
  assert [row[0] for row in _read_csv(tmp_path)] == [
      'tr000000000', 'tr000000001', 'te000000000']
  frames = media.read_video_clip(
      os.path.join(tmp_path, render.VIDEO_DIR, 'te000000000_000000.mp4'), num_frames=8,
      fps=8.0, image_size=32)
  assert frames.shape == (8, 32, 32, 3)
  # A user error (another frame size in the same folder) is one line, exit status 1.
  assert args[4] == '--config.data.image_size=32'
  r = subprocess.run(args[:4] + ['--config.data.image_size=48'] + args[5:], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert 'was rendered with other synthetic settings' in r.stderr and 'image_size' in r.stderr
