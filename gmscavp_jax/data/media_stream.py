"""Streaming media for videos of any length: frames decoded as they are needed, audio written
as it is made, the original video muxed with a new soundtrack; memory stays that of a window,
whatever the video's length.

`media` reads one clip at a time (the datasets' case); this module is what long videos and
folders of them go through.
"""

from collections.abc import Iterator
from fractions import Fraction
import os
import wave

import av
from av.video.reformatter import VideoReformatter
import numpy as np

from gmscavp_jax.data import media
from gmscavp_jax.data import media_writing


def probe_duration(path: str | os.PathLike) -> float:
  """Seconds of video in `path`, from the container's metadata (no decoding).

  Raises media.MediaError (or a subclass) if the file is missing, not media, has no video
  stream or declares no duration.
  """
  path = os.fspath(path)
  with media.open_media(path) as container:
    if not container.streams.video:
      raise media.NoVideoStreamError(path, 'has no video stream')
    stream = container.streams.video[0]
    origin = media.origin_seconds(container)
    end = media.declared_end(container, stream, origin)
  if end is None or not end > 0:
    raise media.MediaError(path, 'declares no duration; cannot plan its windows')
  return float(end)


def iter_frames(path: str | os.PathLike, *, fps: float, image_size: int,
                start_seconds: float = 0.0,
                end_seconds: float | None = None) -> Iterator[np.ndarray]:
  """Yields (H, W, 3) uint8 frames at start_seconds + i / fps for as long as the video lasts
  (or until end_seconds): each the decoded frame with the latest timestamp at or before that
  time, shorter side scaled to `image_size` and centre-cropped, as `media.read_video_clip`.

  One decode pass from the start of the file, one frame held at a time.

  Raises:
    media.MediaError: as `media.read_video_clip` (a corrupt stream raises TruncatedError
      when it is reached, after the frames before it were yielded).
  """
  path = os.fspath(path)
  slack = media.TIME_SLACK_S
  with media.open_media(path, start_seconds) as container:
    if not container.streams.video:
      raise media.NoVideoStreamError(path, 'has no video stream')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    reformatter = VideoReformatter()
    origin = media.origin_seconds(container)
    default_duration = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
    index, previous, image, end = 0, None, None, 0.0

    def target():
      return start_seconds + index / fps

    def wanted():
      return end_seconds is None or target() < end_seconds - slack

    try:
      for frame in container.decode(stream):
        time = frame.time - origin if frame.time is not None else end
        previous = previous or frame
        while wanted() and target() < time - slack:
          if image is None:
            image = media.resize_and_crop(previous, image_size, reformatter)
          yield image
          index += 1
        if not wanted():
          return
        if frame is not previous:
          previous, image = frame, None
        end = media.frame_end(frame, time, default_duration)
    except av.error.FFmpegError as e:
      raise media.decode_failed(path, e, end) from e
    if previous is None:
      raise media.NoVideoStreamError(path, 'has no decodable video frames')
    # The stream ran out: a file cut short says so instead of ending early.
    media.check_complete(path, container, stream, origin, end, 'video')
    while wanted() and target() < end - slack:
      if image is None:
        image = media.resize_and_crop(previous, image_size, reformatter)
      yield image
      index += 1


class WavWriter:
  """A 16-bit PCM mono WAV written in pieces (`write`), so audio of any length never sits
  in memory whole. Samples beyond [-1, 1] are clipped and counted (`clipped`)."""

  def __init__(self, path: str | os.PathLike, sample_rate: int):
    self.path, self.clipped, self.num_samples = os.fspath(path), 0, 0
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._file = wave.open(self.path, 'wb')  # pylint: disable=consider-using-with
    self._file.setnchannels(1)
    self._file.setsampwidth(2)
    self._file.setframerate(int(sample_rate))

  def write(self, waveform: np.ndarray) -> None:
    """Appends (S,) float samples."""
    waveform = np.asarray(waveform, np.float32)
    self.clipped += int(np.sum(np.abs(waveform) > 1.0))
    self.num_samples += waveform.size
    self._file.writeframes(
        np.round(np.clip(waveform, -1.0, 1.0) * 32767.0).astype('<i2').tobytes())

  def close(self) -> None:
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def iter_wav(path: str | os.PathLike, block: int) -> Iterator[np.ndarray]:
  """(S,) float32 blocks of at most `block` samples of a 16-bit mono WAV, in order."""
  with wave.open(os.fspath(path), 'rb') as f:
    while True:
      data = f.readframes(block)
      if not data:
        return
      yield np.frombuffer(data, '<i2').astype(np.float32) / 32767.0


def mux_soundtrack(video: str | os.PathLike, wav: str | os.PathLike, out: str | os.PathLike,
                   *, fps: float, image_size: int, start_seconds: float = 0.0,
                   end_seconds: float | None = None) -> None:
  """Writes `out` (mp4): the frames of `video` from start_seconds (at `fps`, shorter side
  `image_size`, as the model saw them) with `wav` as its soundtrack, both streamed: memory
  does not grow with the video's length.
  """
  with wave.open(os.fspath(wav), 'rb') as f:
    sample_rate = f.getframerate()
  rate = Fraction(fps).limit_denominator(1_000_000)
  frames = iter_frames(video, fps=fps, image_size=image_size, start_seconds=start_seconds,
                       end_seconds=end_seconds)
  with av.open(media_writing.make_parent(out), 'w', format='mp4') as container:
    stream, audio = media_writing.add_mp4_streams(container, rate, image_size, image_size,
                                                  sample_rate)
    resampler = av.AudioResampler(format='fltp', layout='mono', rate=audio.rate)
    samples_per_frame = sample_rate / float(rate)
    blocks, written = iter_wav(wav, int(round(samples_per_frame * 32))), 0
    for i, image in enumerate(frames):
      if image_size % 2:
        image = np.pad(image, ((0, 1), (0, 1), (0, 0)), mode='edge')
      frame = av.VideoFrame.from_ndarray(image, format='rgb24')
      frame.pts = i
      container.mux(stream.encode(frame))
      # Audio keeps pace with the frames: mux what the next 32 frames need.
      while written < (i + 1) * samples_per_frame:
        block = next(blocks, None)
        if block is None:
          break
        piece = av.AudioFrame.from_ndarray(block[None], format='flt', layout='mono')
        piece.sample_rate, piece.pts = sample_rate, written
        written += block.size
        for resampled in resampler.resample(piece):
          container.mux(audio.encode(resampled))
    container.mux(stream.encode(None))
    for resampled in resampler.resample(None):
      container.mux(audio.encode(resampled))
    container.mux(audio.encode(None))
