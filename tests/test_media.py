"""Round trips and error messages of the PyAV media I/O (data/media.py, data/media_writing.py)."""

import ctypes
from fractions import Fraction
import hashlib
import os

import av
import numpy as np
import pytest
import scipy.io.wavfile

from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import synthetic
from tests.conftest import tiny_config

SR = 8000
FPS = 8.0
NUM_FRAMES = 16  # 2 s.
SIZE = 64


def _moving_square_frames(num_frames=NUM_FRAMES, height=SIZE, width=SIZE):
  """(T, H, W, 3) uint8: a yellow 16x16 square moving 3 px per frame over dark blue."""
  frames = np.zeros((num_frames, height, width, 3), np.uint8)
  frames[..., 2] = 60
  for i in range(num_frames):
    frames[i, 20:36, 4 + 3 * i:20 + 3 * i] = (230, 200, 30)
  return frames


def _tone(seconds=2.0, hz=440.0):
  t = np.arange(int(seconds * SR)) / SR
  return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  """Path of a 2 s, 8 fps, 64x64 mp4 with a 440 Hz tone, and its frames."""
  path = tmp_path_factory.mktemp('media') / 'nested' / 'clip.mp4'
  frames = _moving_square_frames()
  media_writing.write_video(path, frames, FPS, _tone(), SR)
  return str(path), frames


@pytest.fixture(scope='module')
def silent_clip(tmp_path_factory):
  path = tmp_path_factory.mktemp('media') / 'silent.mp4'
  media_writing.write_video(path, _moving_square_frames(), FPS)
  return str(path)


def _stream_durations(path):
  """{stream type: duration in seconds} of a file, and the video codec's name."""
  with av.open(path) as container:
    durations = {s.type: float(s.duration * s.time_base) for s in container.streams}
    return durations, container.streams.video[0].codec_context.name


def test_write_video_codecs_and_exact_duration(clip):
  path, _ = clip
  durations, codec = _stream_durations(path)
  assert durations == {'video': 2.0, 'audio': 2.0}
  assert codec == ('h264' if media_writing.default_video_codec() == 'libx264' else 'mpeg4')


def test_read_back_at_the_written_rate(clip):
  path, frames = clip
  out = media.read_video_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=SIZE)
  assert out.shape == (16, 64, 64, 3) and out.dtype == np.uint8
  # Lossy but close: measured mean |diff| 1.2 (H.264, crf 18) on 0..255.
  assert np.abs(out.astype(np.float32) - frames).mean() < 10
  # Frame i is written frame i (not a neighbour): the square is where it should be.
  per_frame = np.abs(out[:, None].astype(np.float32) - frames[None]).mean(axis=(2, 3, 4))
  np.testing.assert_array_equal(per_frame.argmin(axis=1), np.arange(NUM_FRAMES))


def test_lower_rate_picks_every_other_frame_and_resizes(clip):
  path, frames = clip
  full = media.read_video_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=SIZE)
  half = media.read_video_clip(path, num_frames=8, fps=4.0, image_size=SIZE)
  np.testing.assert_array_equal(half, full[::2])  # Output time i / 4 s is frame 2i.
  small = media.read_video_clip(path, num_frames=8, fps=4.0, image_size=32)
  assert small.shape == (8, 32, 32, 3)
  pooled = frames[::2].reshape(8, 32, 2, 32, 2, 3).mean(axis=(2, 4))
  assert np.abs(small.astype(np.float32) - pooled).mean() < 10


def test_start_seconds_and_higher_rate(clip):
  path, _ = clip
  full = media.read_video_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=SIZE)
  late = media.read_video_clip(path, num_frames=8, fps=FPS, image_size=SIZE, start_seconds=0.5)
  np.testing.assert_array_equal(late, full[4:12])
  # At 16 fps each frame repeats (nearest previous); the last output time 1.9375 s < 2 s.
  double = media.read_video_clip(path, num_frames=32, fps=16.0, image_size=SIZE)
  np.testing.assert_array_equal(double, np.repeat(full, 2, axis=0))


def test_non_square_and_odd_sizes(tmp_path):
  frames = _moving_square_frames(8, 47, 81)  # Odd sizes: padded to 48 x 82 on writing.
  path = tmp_path / 'wide.mp4'
  media_writing.write_video(path, frames, FPS)
  with av.open(str(path)) as container:
    stream = container.streams.video[0]
    assert (stream.codec_context.height, stream.codec_context.width) == (48, 82)
  out = media.read_video_clip(path, num_frames=8, fps=FPS, image_size=48)
  # Height is the shorter side (48 already); the width is centre-cropped 82 -> 48.
  assert out.shape == (8, 48, 48, 3)
  assert np.abs(out[:, :47].astype(np.float32) - frames[:, :, 17:65]).mean() < 10


def test_read_audio_length_and_pitch(clip):
  path, _ = clip
  for rate in (SR, 16000):
    audio = media.read_audio(path, sample_rate=rate, num_samples=2 * rate)
    assert audio.shape == (2 * rate,) and audio.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * rate / audio.size == pytest.approx(440.0, abs=2.0)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
  # Starting later, and a little past the end: zero-padded (more than half is there).
  tail = media.read_audio(path, sample_rate=SR, num_samples=SR, start_seconds=1.25)
  assert tail.shape == (SR,) and np.all(tail[-SR // 4 + 10:] == 0.0)
  assert np.abs(tail[:SR // 2]).max() > 0.4


def test_write_wav_levels(tmp_path):
  path = tmp_path / 'a' / 'b' / 'tone.wav'
  media_writing.write_wav(path, _tone(), SR)
  rate, data = scipy.io.wavfile.read(path)
  assert rate == SR and data.dtype == np.int16 and data.shape == (2 * SR,)
  assert np.abs(data).max() == pytest.approx(0.5 * 32767, abs=2)  # Quiet audio keeps its level.
  media_writing.write_wav(path, 3.0 * _tone(), SR)
  _, data = scipy.io.wavfile.read(path)
  assert np.abs(data).max() == pytest.approx(0.9 * 32767, abs=2)  # Would clip: rescaled.


def _assert_media_error(call, path, pattern):
  with pytest.raises(media.MediaError, match=pattern) as info:
    call()
  assert os.path.basename(str(path)) in str(info.value)
  return str(info.value)


def test_errors_name_the_file_and_reason(tmp_path, clip, silent_clip):
  path, _ = clip
  video = dict(num_frames=NUM_FRAMES, fps=FPS, image_size=SIZE)
  missing = tmp_path / 'missing.mp4'
  _assert_media_error(lambda: media.read_video_clip(missing, **video), missing, 'not found')
  _assert_media_error(lambda: media.read_audio(missing, sample_rate=SR, num_samples=SR),
                      missing, 'not found')
  junk = tmp_path / 'junk.mp4'
  junk.write_bytes(np.random.default_rng(0).bytes(4096))
  _assert_media_error(lambda: media.read_video_clip(junk, **video), junk, 'cannot be decoded')
  # 24 frames at 8 fps from 0 s need 3 s of a 2 s video.
  message = _assert_media_error(
      lambda: media.read_video_clip(path, num_frames=24, fps=FPS, image_size=SIZE), path,
      'too short')
  assert '2.000 s' in message and '3.000 s' in message
  _assert_media_error(lambda: media.read_video_clip(path, **video, start_seconds=5.0), path,
                      r'too short.*7\.000 s')
  _assert_media_error(lambda: media.read_video_clip(path, **video, start_seconds=-1.0), path,
                      'negative')
  _assert_media_error(lambda: media.read_audio(silent_clip, sample_rate=SR, num_samples=SR),
                      silent_clip, 'has no audio stream')
  _assert_media_error(
      lambda: media.read_audio(path, sample_rate=SR, num_samples=SR, start_seconds=5.0), path,
      'too short')
  # Less than half of the request is there (0.75 s of 2 s).
  _assert_media_error(
      lambda: media.read_audio(path, sample_rate=SR, num_samples=2 * SR, start_seconds=1.25),
      path, 'too short')
  # An mp4 whose video track holds no frame (FFmpeg then drops the empty track).
  empty = tmp_path / 'empty.mp4'
  with av.open(str(empty), 'w') as container:
    stream = container.add_stream('mpeg4', rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    container.start_encoding()
  _assert_media_error(lambda: media.read_video_clip(empty, **video), empty,
                      'has no (video stream|decodable video frames)')
  wav = tmp_path / 'only_audio.wav'
  media_writing.write_wav(wav, _tone(), SR)
  _assert_media_error(lambda: media.read_video_clip(wav, **video), wav, 'has no video stream')


def test_mpeg4_fallback_writes_exact_duration(tmp_path):
  path = tmp_path / 'mpeg4.mp4'
  media_writing.write_video(path, _moving_square_frames(), FPS, _tone(), SR, video_codec='mpeg4')
  durations, codec = _stream_durations(str(path))
  assert codec == 'mpeg4' and durations == {'video': 2.0, 'audio': 2.0}
  out = media.read_video_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=SIZE)
  assert np.abs(out.astype(np.float32) - _moving_square_frames()).mean() < 10


def test_unsupported_aac_rate_is_resampled(tmp_path):
  # 5 kHz is not an AAC rate: the soundtrack is resampled up to the next one (7350 Hz).
  path = tmp_path / 'odd_rate.mp4'
  rate = 5000
  tone = (0.5 * np.sin(2 * np.pi * 300.0 * np.arange(2 * rate) / rate)).astype(np.float32)
  media_writing.write_video(path, _moving_square_frames(), FPS, tone, rate)
  with av.open(str(path)) as container:
    assert container.streams.audio[0].codec_context.sample_rate == 7350
  audio = media.read_audio(path, sample_rate=rate, num_samples=2 * rate)
  assert np.argmax(np.abs(np.fft.rfft(audio))) * rate / audio.size == pytest.approx(300, abs=2)


def write_streams(path, *, frames=None, fps=None, audio=None, rate=None, layout='mono',
                  pix_fmt='yuv420p', container_format=None, options=None):
  """Writes an mp4 (or `container_format`) with PyAV directly, for files that
  media_writing.py did not make.

  frames: (T, H, W, 3) uint8 at `fps` (H.264 or MPEG-4; any size with pix_fmt 'yuv444p'),
  audio: (C, S) float at `rate` Hz in channel `layout`, AAC. Either may be None.
  """
  path = str(path)
  with av.open(path, 'w', format=container_format or 'mp4', options=options or {}) as out:
    video = stream = None
    if frames is not None:
      codec = media_writing.default_video_codec() if pix_fmt == 'yuv420p' else 'libx264'
      video = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
      video.height, video.width = frames.shape[1:3]
      video.pix_fmt = pix_fmt
    if audio is not None:
      stream = out.add_stream('aac', rate=rate, layout=layout)
    for i, image in enumerate(frames if frames is not None else []):
      frame = av.VideoFrame.from_ndarray(image, format='rgb24')
      frame.pts = i
      out.mux(video.encode(frame))
    if video is not None:
      out.mux(video.encode(None))
    if audio is not None:
      frame = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32), format='fltp',
                                         layout=layout)
      frame.sample_rate, frame.pts = rate, 0
      out.mux(stream.encode(frame))
      out.mux(stream.encode(None))
  return path


def _sine(hz, seconds, rate, amplitude):
  return amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def _peaks(audio, rate, count):
  """The `count` strongest frequencies (Hz) of a waveform, sorted."""
  spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
  return sorted(np.argsort(spectrum)[-count:] * rate / audio.size)


@pytest.mark.parametrize('fps', [7.3, 29.97])
def test_odd_frame_rates_pick_the_frame_shown_at_each_time(tmp_path, fps):
  # Frame i is a flat colour whose red level encodes i; 2.2 s so every 2 s target exists.
  count = int(2.2 * fps)
  frames = np.zeros((count, 48, 64, 3), np.uint8)
  frames[..., 0] = (16 + 4 * np.arange(count))[:, None, None]
  frames[..., 1] = 128
  path = write_streams(tmp_path / 'odd_rate.mp4', frames=frames, fps=fps)
  out = media.read_video_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=32)
  assert out.shape == (NUM_FRAMES, 32, 32, 3) and out.dtype == np.uint8
  shown = np.round((out[..., 0].mean(axis=(1, 2)) - 16) / 4)
  written_rate = float(Fraction(fps).limit_denominator(1001))
  # Nearest previous, where a frame stamped within 1 ms after a target counts as at it.
  times = np.arange(NUM_FRAMES) / FPS
  np.testing.assert_array_equal(shown, np.floor((times + 1e-3) * written_rate))
  assert np.abs(out[..., 1].astype(np.float32) - 128).mean() < 3


@pytest.mark.parametrize('height,width', [(61, 97), (83, 45)])
def test_odd_and_portrait_sizes_are_centre_cropped(tmp_path, height, width):
  # Red outside the central square, green inside it with a white top-left quarter: the
  # crop must show exactly the square, the right way round.
  if not media_writing.has_encoder('libx264'):
    pytest.skip('odd sizes need 4:4:4 H.264 (libx264)')
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = np.zeros((height, width, 3), np.uint8)
  image[...] = (200, 0, 0)
  image[top:top + side, left:left + side] = (0, 200, 0)
  image[top:top + side // 2, left:left + side // 2] = 255
  path = write_streams(tmp_path / 'odd_size.mp4', frames=np.stack([image] * 8), fps=FPS,
                       pix_fmt='yuv444p')  # 4:4:4 H.264 keeps odd sizes exactly.
  with av.open(path) as container:
    context = container.streams.video[0].codec_context
    assert (context.height, context.width) == (height, width)
  out = media.read_video_clip(path, num_frames=8, fps=FPS, image_size=32).astype(np.float32)
  assert out.shape == (8, 32, 32, 3)
  # Green up to the crop's edges (no red border), white only in the top-left quarter.
  np.testing.assert_allclose(out[:, 17:, 1:-1].mean(axis=(0, 1, 2)), (0, 200, 0), atol=8)
  np.testing.assert_allclose(out[:, 1:15, 17:-1].mean(axis=(0, 1, 2)), (0, 200, 0), atol=8)
  np.testing.assert_allclose(out[:, 1:15, 1:15].mean(axis=(0, 1, 2)), 255, atol=8)


@pytest.mark.parametrize('rate', [11025, 44100])
def test_odd_sample_rates_keep_pitch_and_level(tmp_path, rate):
  path = write_streams(tmp_path / 'tone.mp4', audio=_sine(440, 2.0, rate, 0.5)[None],
                       rate=rate)
  audio = media.read_audio(path, sample_rate=SR, num_samples=2 * SR)
  assert audio.shape == (2 * SR,) and audio.dtype == np.float32
  assert _peaks(audio, SR, 1)[0] == pytest.approx(440, abs=2)
  assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_channels_are_averaged_into_mono(tmp_path):
  seconds, rate = 2.0, 44100
  same = write_streams(tmp_path / 'same.mp4', rate=rate, layout='stereo',
                       audio=[_sine(300, seconds, rate, 0.4)] * 2)
  apart = write_streams(tmp_path / 'apart.mp4', rate=rate, layout='stereo',
                        audio=[_sine(300, seconds, rate, 0.4), _sine(700, seconds, rate, 0.4)])
  surround = np.zeros((6, int(seconds * 48000)))
  surround[0] = _sine(500, seconds, 48000, 0.6)  # Front left only, of six channels.
  surround = write_streams(tmp_path / 'surround.mp4', rate=48000, layout='5.1',
                           audio=surround)
  read = lambda path: media.read_audio(path, sample_rate=SR, num_samples=2 * SR)
  rms = lambda audio: np.sqrt(np.mean(audio[SR // 4:-SR // 4]**2))
  # Identical channels keep their level (a sum, FFmpeg's own downmix, would be 3 dB up).
  assert rms(read(same)) == pytest.approx(0.4 / np.sqrt(2), rel=0.05)
  audio = read(apart)
  np.testing.assert_allclose(_peaks(audio, SR, 2), [300, 700], atol=2)
  assert rms(audio) == pytest.approx(0.2, rel=0.05)  # Two tones of amplitude 0.4 / 2.
  audio = read(surround)
  assert _peaks(audio, SR, 1)[0] == pytest.approx(500, abs=2)
  assert rms(audio) == pytest.approx(0.6 / 6 / np.sqrt(2), rel=0.1)


def test_read_clip_matches_the_single_stream_readers(clip):
  path, _ = clip
  out = media.read_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=32, sample_rate=SR,
                        num_samples=2 * SR)
  assert (out.video_padding, out.audio_padding) == (0, 0)
  np.testing.assert_array_equal(
      out.frames, media.read_video_clip(path, num_frames=NUM_FRAMES, fps=FPS, image_size=32))
  np.testing.assert_array_equal(out.waveform,
                                media.read_audio(path, sample_rate=SR, num_samples=2 * SR))


def _dirty_the_heap(rng: np.random.Generator) -> None:
  """Allocates, fills with random bytes and frees blocks of C heap, as a long-lived process has
  (a fresh one's heap is mostly zeros, which hides reads of memory nobody wrote)."""
  libc = ctypes.CDLL(None)
  libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
  blocks = []
  for size in [64, 256, 1024, 4096, 16384, 65536] * 20:
    blocks.append(libc.malloc(size))
    ctypes.memset(blocks[-1], int(rng.integers(1, 255)), size)
  for block in blocks:
    libc.free(block)


def test_the_same_frames_always_make_the_same_file(tmp_path):
  # With x264's mbtree on, 8 encodes of this clip on a dirtied heap gave 3 different files.
  source = synthetic.from_config(tiny_config('msa'), 'test')
  clip, rng, digests = source[0], np.random.default_rng(0), set()
  for _ in range(12):
    _dirty_the_heap(rng)
    path = tmp_path / 'a.mp4'
    media_writing.write_video(path, clip['frames'], source.fps, clip['waveform'],
                              source.sample_rate)
    digests.add(hashlib.md5(path.read_bytes()).hexdigest())
  assert len(digests) == 1
