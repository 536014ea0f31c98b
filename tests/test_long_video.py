"""Whole-video soundtracks (inference/long_video.py): how windows tile a video, what each
window is told of the previous one, and the streamed audio's exact length, with a stand-in
generator (the trained path runs through the CLI in test_train.py)."""

import os
import wave

import av
import jax
import numpy as np
import pytest

from gmscavp_jax.data import media
from gmscavp_jax.data import media_stream
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.evaluators import vocoders
from gmscavp_jax.inference import long_video
from gmscavp_jax.infra import errors
from tests.conftest import tiny_config


def test_windows_tile_the_video_and_hold_then_fade_the_overlap():
  config = tiny_config('msa_msd')  # 8 frames at 8 fps, 5 log-mel frames per video frame.
  g = long_video.windows(config)
  assert (g.frames, g.hop, g.overlap, g.mel_per_frame, g.samples_per_frame) == (8, 6, 2, 5, 1000)
  assert [g.count(n) for n in (1, 8, 9, 14, 15, 600)] == [1, 1, 2, 2, 3, 100]
  mask = g.known_mask()
  assert mask.shape == (40,) and np.all(mask[:5] == 1) and np.all(mask[10:] == 0)
  assert np.all(np.diff(mask[4:11]) < 0) and 0 < mask[7] < 1
  assert long_video.windows(config, overlap_seconds=0.5).hop == 4
  for bad in (0.0, 0.6):
    with pytest.raises(errors.ConfigError, match='--overlap_seconds'):
      long_video.windows(config, overlap_seconds=bad)
  config.audio.hop_length = 300
  with pytest.raises(errors.ConfigError, match='hop_length=300'):
    long_video.windows(config)


class _Recorder:
  """Stands in for video_to_audio.Soundtracker: returns the known frames where the mask is
  1 and the call's number elsewhere, and records what it was given."""

  def __init__(self, config):
    self.config, self.calls = config, []

  def generate_batch(self, frames, *, known_mel, known_mask, seed, **unused):
    self.calls.append((frames.copy(), known_mel.copy(), known_mask.copy(), seed))
    n, ta, f = known_mel.shape
    made = np.full((n, ta, f), float(len(self.calls)), np.float32)
    return np.where(known_mask[..., None] == 1.0, known_mel, made)

  def vocode(self, mel, seed=0):
    return vocoders.griffin_lim_vocoder(self.config)(mel, rng=jax.random.key(seed))


def test_each_window_continues_the_previous_and_the_audio_is_the_video_length(tmp_path):
  config = tiny_config('msa_msd')
  records = [pipeline.make_source(config, 'test')[i] for i in range(3)]
  # 19 frames: windows at 0, 6 and 12, the last one padded past the end with the last frame.
  frames = np.concatenate([r['frames'] for r in records])[:19]
  video = str(tmp_path / 'in.mp4')
  media_writing.write_video(video, frames, config.data.fps)
  short = str(tmp_path / 'short.mp4')  # 3 frames: one window, padded with the last frame.
  media_writing.write_video(short, frames[:3], config.data.fps)
  jobs = [long_video.Job(v, str(tmp_path / f'{n}.wav'), str(tmp_path / f'{n}.mp4'))
          for n, v in (('long', video), ('short', short))]
  recorder, done = _Recorder(config), {}
  long_video.run(recorder, jobs, batch=2, seed=7, on_done=lambda j, i: done.update({j.wav: i}))

  assert len(recorder.calls) == 3 and [c[3] for c in recorder.calls] == [
      7 * 1_000_003 + k for k in range(3)]
  first, second = recorder.calls[0], recorder.calls[1]
  assert np.all(first[2] == 0)  # Nothing known in the first windows.
  # Row 0 (the long video): window 2 is told window 1's log-mel from its hop (6 frames) on.
  np.testing.assert_array_equal(second[1][0, :10], np.ones((10, config.audio.n_mels)))
  np.testing.assert_array_equal(second[2][0], long_video.windows(config).known_mask())
  np.testing.assert_array_equal(second[0][0, :2], first[0][0, 6:])  # Shared frames.
  third = recorder.calls[2][0][0]  # Frames 12-18, then frame 18 again past the end.
  decoded = np.stack(list(media_stream.iter_frames(video, fps=config.data.fps, image_size=32)))
  np.testing.assert_array_equal(third[:7], decoded[12:19])
  np.testing.assert_array_equal(third[7], third[6])
  assert np.all(second[2][1] == 0)  # Row 1 is idle: the short video finished in one window.
  np.testing.assert_array_equal(first[0][1, 3:], np.repeat(first[0][1, 2:3], 5, 0))

  for name, seconds in (('long', 19 / 8), ('short', 3 / 8)):
    with wave.open(str(tmp_path / f'{name}.wav')) as f:
      assert f.getnframes() == round(seconds * config.audio.sample_rate)
    with av.open(str(tmp_path / f'{name}.mp4')) as c:
      assert c.streams.video[0].frames == round(seconds * config.data.fps)
      assert len(c.streams.audio) == 1
    assert done[str(tmp_path / f'{name}.wav')]['seconds'] == seconds
  assert not [p for p in os.listdir(tmp_path) if p.endswith('.partial')]


def test_streamed_frames_match_the_clip_reader(tmp_path):
  config = tiny_config('msa')
  record = pipeline.make_source(config, 'test')[0]
  video = str(tmp_path / 'clip.mp4')
  media_writing.write_video(video, record['frames'], config.data.fps)
  streamed = np.stack(list(media_stream.iter_frames(video, fps=config.data.fps,
                                                    image_size=config.data.image_size)))
  np.testing.assert_array_equal(streamed, media.read_video_clip(
      video, num_frames=8, fps=config.data.fps, image_size=32))
  np.testing.assert_array_equal(streamed[2:6], np.stack(list(media_stream.iter_frames(
      video, fps=config.data.fps, image_size=32, start_seconds=0.25, end_seconds=0.75))))
  assert media_stream.probe_duration(video) == pytest.approx(1.0)
