"""A fuzz set of bad media files: each gives its own MediaError subclass, naming the file."""

import os
import re

import numpy as np
import pytest

from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from tests.test_media import write_streams

SR = 8000
FPS = 8.0
NUM_FRAMES = 16  # The request: 2 s.
SIZE = 32

READERS = {
    'video': lambda path: media.read_video_clip(path, num_frames=NUM_FRAMES, fps=FPS,
                                                image_size=SIZE),
    'audio': lambda path: media.read_audio(path, sample_rate=SR, num_samples=2 * SR),
    'clip': lambda path: media.read_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=SIZE,
                                         sample_rate=SR, num_samples=2 * SR),
}


def _frames(count):
  """(count, 32, 32, 3) uint8 whose red level tells the frames apart."""
  frames = np.full((count, SIZE, SIZE, 3), 90, np.uint8)
  frames[..., 0] = (10 * np.arange(count))[:, None, None]
  return frames


def _tone(seconds, rate=SR):
  return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(
      np.float32)


def _cut(source, path, size):
  with open(source, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:size(data)])
  return str(path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """{name: path} of a good 2 s clip and of every kind of bad file."""
  root = tmp_path_factory.mktemp('fuzz')
  good = str(root / 'good.mp4')
  media_writing.write_video(good, _frames(NUM_FRAMES), FPS, _tone(2.0), SR)
  faststart = write_streams(root / 'faststart.mp4', frames=_frames(NUM_FRAMES), fps=FPS,
                            audio=_tone(2.0)[None], rate=SR, options={'movflags': 'faststart'})
  mkv = write_streams(root / 'good.mkv', frames=_frames(NUM_FRAMES), fps=FPS,
                      audio=_tone(2.0)[None], rate=SR, container_format='matroska')
  paths = {'good': good}
  paths['zero_bytes'] = _cut(good, root / 'zero_bytes.mp4', lambda data: 0)
  rng = np.random.default_rng(0)
  for size in (1, 100, 20_000):
    paths[f'random_{size}'] = str(root / f'random_{size}.mp4')
    with open(paths[f'random_{size}'], 'wb') as f:
      f.write(rng.bytes(size))
  paths['text'] = str(root / 'notes.mp4')
  with open(paths['text'], 'w') as f:
    f.write('ytid,start_seconds,label,split\n' * 100)
  # Halves: the index ('moov') written last is lost; written first (faststart) it promises
  # media data that is gone; Matroska declares a duration its data no longer reaches.
  paths['half'] = _cut(good, root / 'half.mp4', lambda data: len(data) // 2)
  paths['half_faststart'] = _cut(faststart, root / 'half_faststart.mp4',
                                 lambda data: len(data) // 2)
  paths['no_index'] = _cut(good, root / 'no_index.mp4', lambda data: data.index(b'moov') - 4)
  paths['half_mkv'] = _cut(mkv, root / 'half.mkv', lambda data: len(data) // 2)
  paths['audio_only'] = write_streams(root / 'audio_only.mp4', audio=_tone(2.0)[None], rate=SR)
  paths['video_only'] = str(root / 'video_only.mp4')
  media_writing.write_video(paths['video_only'], _frames(NUM_FRAMES), FPS)
  paths['short'] = str(root / 'short.mp4')  # 0.2 s when 2 s are asked.
  media_writing.write_video(paths['short'], _frames(2), 10.0, _tone(0.2), SR)
  paths['slightly_short'] = str(root / 'slightly_short.mp4')  # 1.875 s: one frame short.
  media_writing.write_video(paths['slightly_short'], _frames(NUM_FRAMES - 1), FPS, _tone(2.0), SR)
  return paths


def _raises(reader, path, error):
  """Calls READERS[reader] on `path`; checks the exact error type and the message."""
  with pytest.raises(media.MediaError) as info:
    READERS[reader](path)
  assert type(info.value) is error, f'{reader}: {info.value!r}'
  assert info.value.path == path and os.path.basename(path) in str(info.value)
  return info.value


NOT_MEDIA = ['zero_bytes', 'random_1', 'random_100', 'random_20000', 'text']
TRUNCATED = ['half', 'half_faststart', 'no_index', 'half_mkv']


@pytest.mark.parametrize('reader', sorted(READERS))
@pytest.mark.parametrize('name', NOT_MEDIA)
def test_not_media(files, name, reader):
  error = _raises(reader, files[name], media.NotMediaError)
  assert 'cannot be decoded' in error.reason
  if name == 'zero_bytes':
    assert 'empty' in error.reason


@pytest.mark.parametrize('reader', sorted(READERS))
@pytest.mark.parametrize('name', TRUNCATED)
def test_truncated(files, name, reader):
  error = _raises(reader, files[name], media.TruncatedError)
  assert 'truncated' in error.reason
  if name == 'half_mkv':  # Found by decoding: the reason gives both durations.
    assert re.search(r'lasts 2\.\d+ s but its data ends at [01]\.\d+ s', error.reason)


def test_the_uncut_files_read_fine(files, tmp_path):
  for path in (files['good'], write_streams(tmp_path / 'faststart.mp4', frames=_frames(16),
                                            fps=FPS, options={'movflags': 'faststart'})):
    frames = READERS['video'](path)
    np.testing.assert_allclose(frames[:, :, :, 0].mean(axis=(1, 2)), 10 * np.arange(16),
                               atol=3)


def test_missing_streams(files):
  _raises('video', files['audio_only'], media.NoVideoStreamError)
  _raises('clip', files['audio_only'], media.NoVideoStreamError)
  _raises('audio', files['video_only'], media.NoAudioStreamError)
  _raises('clip', files['video_only'], media.NoAudioStreamError)
  # The stream that is there still reads.
  audio = READERS['audio'](files['audio_only'])
  assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
  assert READERS['video'](files['video_only']).shape == (NUM_FRAMES, SIZE, SIZE, 3)


@pytest.mark.parametrize('reader', sorted(READERS))
def test_too_short_says_both_durations(files, reader):
  error = _raises(reader, files['short'], media.TooShortError)
  assert 'too short' in error.reason
  assert '0.200 s' in error.reason and '2.000 s' in error.reason
  assert error.available_seconds == pytest.approx(0.2, abs=1e-3)
  assert error.needed_seconds == pytest.approx(2.0)


def test_read_clip_pads_within_its_tolerance(files):
  path = files['slightly_short']
  clip = READERS['clip'](path)  # 0.125 s short of 2 s; the default tolerance is 0.2 s.
  assert (clip.video_padding, clip.audio_padding) == (1, SR // 8)
  np.testing.assert_array_equal(clip.frames[-1], clip.frames[-2])  # The last frame lasts.
  assert np.all(clip.waveform[-SR // 8:] == 0)
  assert np.abs(clip.waveform[-SR // 4:-SR // 8]).max() > 0.4
  # Without the tolerance it is too short; so it is for read_video_clip (no padding).
  with pytest.raises(media.TooShortError, match='slightly_short.mp4.*1.875 s'):
    media.read_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=SIZE, sample_rate=SR,
                    num_samples=2 * SR, max_pad_seconds=0.0)
  _raises('video', path, media.TooShortError)
  # read_audio's older rule pads up to half of the request.
  assert np.all(READERS['audio'](path)[-SR // 8:] == 0)


def test_every_kind_is_a_distinct_media_error():
  kinds = (media.NotMediaError, media.NoVideoStreamError, media.NoAudioStreamError,
           media.TruncatedError, media.TooShortError)
  for kind in kinds:
    assert issubclass(kind, media.MediaError) and issubclass(kind, ValueError)
    assert not any(issubclass(kind, other) for other in kinds if other is not kind)
