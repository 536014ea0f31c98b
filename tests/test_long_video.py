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
    n, ta, f = known_mel.shape  # Row r of call c makes c + r / 100.
    made = np.broadcast_to(len(self.calls) + np.arange(n, dtype=np.float32)[:, None, None] / 100,
                           (n, ta, f))
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


def _videos(config, tmp_path):
  """A 31-frame video (5 windows: 0, 6, 12, 18, 24, the last padded) and a 3-frame one."""
  records = [pipeline.make_source(config, 'test')[i] for i in range(4)]
  frames = np.concatenate([r['frames'] for r in records])[:31]
  paths = {'long': str(tmp_path / 'long.mp4'), 'short': str(tmp_path / 'short.mp4')}
  media_writing.write_video(paths['long'], frames, config.data.fps)
  media_writing.write_video(paths['short'], frames[:3], config.data.fps)
  return paths


def _jobs(paths, out):
  os.makedirs(out, exist_ok=True)
  return [long_video.Job(v, os.path.join(out, f'{n}.wav'), os.path.join(out, f'{n}.mp4'))
          for n, v in paths.items()]


def test_two_pass_samples_even_then_odd_windows_knowing_both_neighbours(tmp_path):
  config = tiny_config('msa_msd')
  paths = _videos(config, tmp_path)
  junk = tmp_path / 'junk.mp4'
  junk.write_bytes(b'not a video')
  outputs = {}
  for schedule in ('sequential', 'two_pass'):
    recorder, done, failed = _Recorder(config), {}, []
    jobs = _jobs({**paths, 'junk': str(junk)}, str(tmp_path / schedule))
    long_video.run(recorder, jobs, batch=4, schedule=schedule,
                   on_done=lambda j, i: done.update({os.path.basename(j.wav): i}),
                   on_failed=lambda j, e: failed.append(j.video))
    assert failed == [str(junk)] and sorted(done) == ['long.wav', 'short.wav']
    assert [done[n]['windows'] for n in ('long.wav', 'short.wav')] == [5, 1]
    outputs[schedule] = recorder
    names = sorted(os.listdir(tmp_path / schedule))
    assert names == ['long.mp4', 'long.wav', 'short.mp4', 'short.wav'], names
  # The sequential schedule needs one call per window of the long video; two_pass needs two.
  assert len(outputs['sequential'].calls) == 5 and len(outputs['two_pass'].calls) == 2
  (frames1, _, mask1, _), (frames2, known2, mask2, _) = outputs['two_pass'].calls
  assert frames1.shape[0] == frames2.shape[0] == 4 and not mask1.any()
  decoded = np.stack(list(media_stream.iter_frames(paths['long'], fps=8, image_size=32)))
  for row, start in enumerate((0, 12, 24)):  # Pass 1: windows 0, 2 and 4 of the long video,
    np.testing.assert_array_equal(frames1[row, :7], decoded[start:start + 7])
  short = np.stack(list(media_stream.iter_frames(paths['short'], fps=8, image_size=32)))
  np.testing.assert_array_equal(frames1[3, 0], short[0])  # then the short video's only one.
  np.testing.assert_array_equal(frames2[:2, 0], decoded[[6, 18]])  # Pass 2: windows 1 and 3.
  assert not mask2[2:].any()  # Idle rows.
  g = long_video.windows(config)
  pass1 = [1 + r / 100 for r in range(3)]  # What pass 1 made for windows 0, 2 and 4.
  head = g.known_mask()[:10]
  for row, (before, after) in enumerate(((0, 1), (1, 2))):
    np.testing.assert_array_equal(mask2[row, :10], head)
    np.testing.assert_array_equal(mask2[row, 32:], head[::-1][2:])  # Less window k + 1's
    assert not mask2[row, 10:32].any()  # first frames (two_pass.SKIP_START).
    np.testing.assert_allclose(known2[row, :10], pass1[before])  # Window k - 1 from its hop,
    np.testing.assert_allclose(known2[row, 30:], pass1[after])  # window k + 1 to the overlap's end.
  for name, seconds in (('long', 31 / 8), ('short', 3 / 8)):  # Same files, same lengths.
    for schedule in ('sequential', 'two_pass'):
      with wave.open(str(tmp_path / schedule / f'{name}.wav')) as f:
        assert f.getnframes() == round(seconds * config.audio.sample_rate)
      with av.open(str(tmp_path / schedule / f'{name}.mp4')) as c:
        assert c.streams.video[0].frames == round(seconds * config.data.fps)
  assert not [p for p in os.listdir(tmp_path / 'two_pass') if p.endswith('.partial')]


def test_two_pass_chunks_by_batch_and_drops_a_video_that_breaks(tmp_path, monkeypatch):
  config = tiny_config('msa_msd')
  paths = _videos(config, tmp_path)
  recorder, calls_made = _Recorder(config), []
  long_video.run(recorder, _jobs({'long': paths['long']}, str(tmp_path / 'a')), batch=2,
                 schedule='two_pass', on_window=calls_made.append)
  # 3 even windows in 2 calls of 2 rows, then the 2 odd ones in 1: ceil(3/2) + ceil(2/2).
  assert calls_made == [2, 1, 2] and {c[0].shape[0] for c in recorder.calls} == {2}
  assert not recorder.calls[1][2].any() and recorder.calls[2][2][:, :5].all()
  # The short video, then the long one: 4 even windows at batch 3 go as 2 + 2, not 3 + 3.
  recorder, calls_made = _Recorder(config), []
  jobs = _jobs(paths, str(tmp_path / 'c'))[::-1]
  long_video.run(recorder, jobs, batch=3, schedule='two_pass',
                 on_window=calls_made.append)
  assert calls_made == [2, 2, 2] and {c[0].shape[0] for c in recorder.calls} == {2}
  # A video whose frames fail on the second pass is reported; the other one is written.
  iter_windows = long_video.Track.iter_windows

  def broken(track, parity=None):
    if parity == 1 and track.job.video == paths['long']:
      raise media.TruncatedError(track.job.video, 'breaks on the second pass')
    return iter_windows(track, parity)

  monkeypatch.setattr(long_video.Track, 'iter_windows', broken)
  failed, done, out = [], [], str(tmp_path / 'b')
  late = long_video.Job(paths['short'], str(tmp_path / 'late.wav'), str(tmp_path / 'late.mp4'),
                        start_seconds=5.0)  # Starts after the video's end.
  long_video.run(_Recorder(config), _jobs(paths, out) + [late], batch=4, schedule='two_pass',
                 on_done=lambda j, i: done.append(j.video),
                 on_failed=lambda j, e: failed.append((j.video, e.reason)))
  assert failed == [(paths['long'], 'breaks on the second pass'),
                    (paths['short'], 'lasts 0.375 s, less than --start_seconds=5')]
  assert done == [paths['short']]
  assert sorted(os.listdir(out)) == ['short.mp4', 'short.wav']


def test_schedule_and_its_overlap_are_checked(tmp_path):
  config = tiny_config('msa_msd')
  job = long_video.Job('unused.mp4', str(tmp_path / 'a.wav'), str(tmp_path / 'a.mp4'))
  with pytest.raises(errors.ConfigError, match='--schedule=three_pass: expected one of '
                     'sequential, two_pass'):
    long_video.run(_Recorder(config), [job], batch=1, schedule='three_pass')
  with pytest.raises(errors.ConfigError, match='--overlap_seconds=0.6'):
    long_video.run(_Recorder(config), [job], batch=1, schedule='two_pass', overlap_seconds=0.6)
  wide = long_video.Windows(frames=8, hop=3, fps=8.0, mel_per_frame=5, samples_per_frame=1000)
  with pytest.raises(errors.ConfigError, match='at most half a clip'):
    long_video.check_schedule('two_pass', wide)
  long_video.check_schedule('sequential', wide)


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
