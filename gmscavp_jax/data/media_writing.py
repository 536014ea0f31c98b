"""Writing the files a user looks at with PyAV (FFmpeg): a 16-bit WAV, and an mp4 (H.264 +
AAC) with a soundtrack muxed in. Reading is in media.py.
"""

from fractions import Fraction
import functools
import os

import av
import numpy as np
import scipy.io.wavfile

from gmscavp_jax.data import media

# Peak that audio is rescaled to when it would otherwise clip on writing.
_SAFE_PEAK = 0.9
_AUDIO_ENCODER = 'aac'


def _safe_level(waveform: np.ndarray) -> np.ndarray:
  """(S,) float32, rescaled to a peak of 0.9 if it would clip (|x| > 1), else unchanged."""
  waveform = np.asarray(waveform, np.float32)
  if waveform.ndim != 1:
    raise ValueError(f'waveform must be (S,), got shape {waveform.shape}')
  if not np.all(np.isfinite(waveform)):
    raise ValueError('waveform has NaN or infinite samples')
  peak = float(np.max(np.abs(waveform), initial=0.0))
  return waveform * np.float32(_SAFE_PEAK / peak) if peak > 1.0 else waveform


def make_parent(path) -> str:
  """Creates the parent directory of `path` if needed; returns `path` as a str."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return path


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> None:
  """Writes (S,) float audio in [-1, 1] as a 16-bit PCM mono WAV (creating parent dirs).

  Audio that would clip (peak above 1) is rescaled to a peak of 0.9; quieter audio keeps its
  level, so a generated clip can be compared with the real one by ear.
  """
  waveform = _safe_level(waveform)
  pcm = np.round(np.clip(waveform, -1.0, 1.0) * 32767.0).astype(np.int16)
  scipy.io.wavfile.write(make_parent(path), int(sample_rate), pcm)


@functools.lru_cache(maxsize=None)
def has_encoder(name: str) -> bool:
  """Whether PyAV's FFmpeg build can encode with codec `name` (e.g. 'libx264')."""
  try:
    av.codec.Codec(name, 'w')
  except (av.codec.codec.UnknownCodecError, ValueError):
    return False
  return True


def default_video_codec() -> str:
  """'libx264' (H.264) when FFmpeg has it, else 'mpeg4' (MPEG-4 part 2, always built in)."""
  return 'libx264' if has_encoder('libx264') else 'mpeg4'


def aac_rate(sample_rate: int) -> int:
  """`sample_rate` if the AAC encoder takes it, else the next supported rate above it."""
  rates = sorted(av.codec.Codec(_AUDIO_ENCODER, 'w').audio_rates or ())
  if not rates or sample_rate in rates:
    return sample_rate
  return next((r for r in rates if r >= sample_rate), rates[-1])


def add_mp4_streams(
    container: av.container.OutputContainer, rate: Fraction, height: int, width: int,
    sample_rate: int | None = None, *, video_codec: str | None = None
) -> tuple[av.VideoStream, av.AudioStream | None]:
  """Adds the streams of this project's mp4s (`write_video`, media_stream's
  `mux_soundtrack`) to an open output `container`.

  Video: `video_codec` (default `default_video_codec()`) in yuv420p at frame `rate`, so its
  time base is 1 / rate and frame i's pts is i; height x width rounded up to even sizes
  (yuv420p halves the chroma resolution), so odd-sized frames must be padded to match.
  Audio, only with `sample_rate`: mono AAC at `aac_rate(sample_rate)` (the stream's `rate`).

  Returns:
    (video stream, audio stream or None).
  """
  codec = video_codec or default_video_codec()
  video = container.add_stream(codec, rate=rate)
  video.height, video.width = height + height % 2, width + width % 2
  video.pix_fmt = 'yuv420p'
  if codec == 'libx264':
    # crf 18: visually lossless; the default 23 smears small frames. mbtree off: x264's
    # macroblock-tree reads memory it never wrote, so the same frames gave up to 30
    # different files in 40 encodes (measured at 32x32 to 96x32 and 64x64); without it every
    # encode is the same, which reruns of prepare and render rely on.
    video.options = {'crf': '18', 'x264-params': 'mbtree=0'}
  else:
    video.bit_rate = 4_000_000  # mpeg4's default (200 kb/s) is blocky at any real size.
  audio = None
  if sample_rate:
    audio = container.add_stream(_AUDIO_ENCODER, rate=aac_rate(int(sample_rate)), layout='mono')
  return video, audio


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float,
                waveform: np.ndarray | None = None, sample_rate: int | None = None, *,
                video_codec: str | None = None) -> None:
  """Writes (T, H, W, 3) uint8 frames, and optionally a soundtrack, as an mp4.

  Video: `video_codec` (default `default_video_codec()`: H.264, else MPEG-4 part 2) in
  yuv420p at `fps`, lasting exactly T / fps. yuv420p needs even sizes, so an odd height or
  width is padded by repeating the last row or column. Audio: (S,) float `waveform` at
  `sample_rate` Hz, cut or zero-padded to the video's length T / fps, rescaled like
  `write_wav` if it would clip, encoded as mono AAC (at `sample_rate` when the encoder takes
  it, else resampled up to the next rate it does). Parent directories are created.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f'frames must be (T, H, W, 3) uint8 with T > 0, got {frames.shape} '
                     f'{frames.dtype}')
  if not fps > 0:
    raise ValueError(f'fps={fps} must be positive')
  if waveform is not None and not sample_rate:
    raise ValueError('a waveform needs its sample_rate')
  # Pad odd sizes to even by edge replication (yuv420p halves the chroma resolution).
  height, width = frames.shape[1:3]
  frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode='edge')
  rate = Fraction(fps).limit_denominator(1_000_000)  # Keeps NTSC's 30000/1001 exact.
  with av.open(make_parent(path), 'w', format='mp4') as container:
    if waveform is not None:
      num_samples = media.clip_num_samples(len(frames), float(rate), sample_rate)
      waveform = _safe_level(waveform)[:num_samples]
      waveform = np.pad(waveform, (0, num_samples - waveform.size))
    video, audio = add_mp4_streams(container, rate, *frames.shape[1:3],
                                   sample_rate if waveform is not None else None,
                                   video_codec=video_codec)
    # The stream's time base is 1 / rate, so frame i's pts is i and the last frame lasts
    # 1 / fps: the video stream's duration is exactly T / fps.
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(image, format='rgb24')
      frame.pts = i
      container.mux(video.encode(frame))
    container.mux(video.encode(None))
    if audio is not None:
      frame = av.AudioFrame.from_ndarray(waveform[None], format='flt', layout='mono')
      frame.sample_rate, frame.pts = int(sample_rate), 0
      if audio.rate != sample_rate:
        resampler = av.AudioResampler(format='fltp', layout='mono', rate=audio.rate)
        audio_frames = resampler.resample(frame) + resampler.resample(None)
      else:
        audio_frames = [frame]  # The encoder converts flt to its fltp itself.
      for audio_frame in audio_frames:
        container.mux(audio.encode(audio_frame))
      container.mux(audio.encode(None))
