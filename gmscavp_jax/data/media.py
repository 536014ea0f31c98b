"""Reading video and audio files with PyAV (FFmpeg), DESIGN §1-2.

Reading turns an mp4 (or anything FFmpeg decodes) into the arrays the rest of the package
uses: frames (T,H,W,3) uint8 resampled to the config's frame rate and square size, and a mono
float32 waveform at the config's sample rate (`read_clip` gives both, with how much of each
was padded). Writing (a WAV, an mp4 with a soundtrack) is in media_writing.py.

Times are seconds from the start of the file (the container's start time), the same origin
for video and audio so that the two stay in sync. Every problem with a file raises a
`MediaError` whose message names the file and the reason; the subclasses say which kind of
problem it is, so that a dataset builder can count and skip bad files by kind.
"""

import dataclasses
import os

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# Containers round timestamps (millisecond time bases are common), so a frame stamped up to
# this much after a sampling time still counts as "at" it.
TIME_SLACK_S = 1e-3
# Data that ends this much before the duration the container declares is a truncated file.
# Generous: without per-stream durations (Matroska) the container's duration is that of its
# longest stream, and an AAC frame lasts 128 ms at 8 kHz.
_TRUNCATION_SLACK_S = 0.5
# read_clip pads at most this fraction of the clip by default (real "10 s" clips are often
# a few frames short; 0.2 s of a 2 s request is not a clip).
DEFAULT_MAX_PAD_FRACTION = 0.1
# Top-level box types an mp4/mov file starts with (ISO base media file format).
_ISO_FIRST_BOXES = (b'ftyp', b'moov', b'mdat', b'free', b'skip', b'wide')


def clip_num_samples(num_frames: int, fps: float, sample_rate: int) -> int:
  """S: audio samples that span `num_frames` video frames at `fps`, at `sample_rate`."""
  return int(round(num_frames / fps * sample_rate))


class MediaError(ValueError):
  """A media file is missing, undecodable, or unfit for the request (`path`, `reason`)."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'{self.path}: {reason}')


# One subclass per kind of bad file, so that a dataset builder can count and skip them by kind.
class NotMediaError(MediaError):
  """The file is empty, or not a container FFmpeg can open (random bytes, text, ...)."""


class NoVideoStreamError(MediaError):
  """Video was asked for, but the file has no video stream (or one without frames)."""


class NoAudioStreamError(MediaError):
  """Audio was asked for, but the file has no audio stream."""


class TruncatedError(MediaError):
  """The file stops before its container says it ends, or its packets cannot be decoded."""


class TooShortError(MediaError):
  """Intact, but shorter than the request beyond what may be padded (durations in s)."""

  def __init__(self, path, reason: str, *, available_seconds: float, needed_seconds: float):
    super().__init__(path, reason)
    self.available_seconds, self.needed_seconds = available_seconds, needed_seconds


class TooLargeError(MediaError):
  """The file is over a size limit (an upload to the demo), checked before any decoding."""


def check_size(path: str | os.PathLike, max_bytes: int) -> None:
  """Raises TooLargeError if the file at `path` has more than `max_bytes` bytes (MediaError if
  it is missing)."""
  if not os.path.isfile(path):
    raise MediaError(path, 'not found')
  size = os.path.getsize(path)
  if size > max_bytes:
    raise TooLargeError(path, f'is too large: {size / 2**20:.1f} MB, over the limit of '
                        f'{max_bytes / 2**20:g} MB')


@dataclasses.dataclass(frozen=True)
class Clip:
  """A decoded clip: frames (T,H,W,3) uint8 (H = W), waveform (S,) float32 mono, and how
  many of the last frames repeat the last decoded one / of the last samples are zeros."""
  frames: np.ndarray
  waveform: np.ndarray
  video_padding: int
  audio_padding: int


def _check_iso_boxes(path: str, size: int) -> None:
  """Raises TruncatedError if an mp4/mov file's top-level boxes run past its end.

  A cut mp4 loses the end of its media data or the 'moov' index muxers write last, and
  FFmpeg says only "invalid data"; walking the boxes (a few reads) tells it from non-media.
  """
  kinds, offset = [], 0
  with open(path, 'rb') as f:
    while offset + 8 <= size:
      f.seek(offset)
      header = f.read(16)
      box_size, kind = int.from_bytes(header[:4], 'big'), header[4:8]
      if not kinds and kind not in _ISO_FIRST_BOXES:
        return  # Not ISO media: FFmpeg decides what it is.
      kinds.append(kind)
      if box_size == 1 and len(header) == 16:  # A 64-bit size follows the type.
        box_size = int.from_bytes(header[8:16], 'big')
      if box_size < 8:
        return  # 0: the last box, up to the end of the file; else malformed, for FFmpeg.
      if offset + box_size > size:
        raise TruncatedError(
            path, f'is truncated: its {kind.decode("latin-1")!r} box needs '
            f'{offset + box_size} bytes but the file has {size}')
      offset += box_size
  if b'mdat' in kinds and b'moov' not in kinds and b'moof' not in kinds:
    raise TruncatedError(path, "is truncated: it has media data but no 'moov' index box")


def open_media(path, start_seconds: float = 0.0):
  """av.open for reading, after checks; FFmpeg's errors become typed MediaErrors."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MediaError(path, 'not found')
  if start_seconds < 0:
    raise MediaError(path, f'start_seconds={start_seconds} is negative')
  size = os.path.getsize(path)
  if size == 0:
    raise NotMediaError(path, 'cannot be decoded: the file is empty (0 bytes)')
  _check_iso_boxes(path, size)
  try:
    return av.open(path)
  except av.error.FFmpegError as e:
    raise NotMediaError(path, f'cannot be decoded: not a media file FFmpeg can read '
                        f'({e.strerror or e})') from e


def origin_seconds(container) -> float:
  """The container's start time in seconds (0 if unknown): time 0 of every stream."""
  return container.start_time / av.time_base if container.start_time is not None else 0.0


def declared_end(container, stream, origin: float) -> float | None:
  """Where the container says `stream` ends, in seconds from time 0 (None if it does not)."""
  if stream.duration is not None and stream.time_base is not None:
    start = float((stream.start_time or 0) * stream.time_base) - origin
    return start + float(stream.duration * stream.time_base)
  if container.duration is not None:
    return container.duration / av.time_base
  return None


def check_complete(path, container, stream, origin: float, data_end: float, kind: str):
  """Raises TruncatedError if a fully decoded stream ends well before its declared end."""
  declared = declared_end(container, stream, origin)
  if declared is not None and declared - data_end > _TRUNCATION_SLACK_S:
    raise TruncatedError(path, f'is truncated: the container says the {kind} lasts '
                         f'{declared:.3f} s but its data ends at {data_end:.3f} s')


def frame_end(frame: av.VideoFrame, time: float, default_duration: float) -> float:
  """When a frame shown at `time` (s) stops: its own duration, else `default_duration`."""
  # Frame.duration is recent PyAV (>= 13); without it every frame lasts 1 / average_rate.
  duration = getattr(frame, 'duration', None)
  duration = float(duration * frame.time_base) if duration else 0.0
  return time + (duration or default_duration)


def decode_failed(path, e: Exception, time: float) -> TruncatedError:
  """The error for FFmpeg failing (`e`) `time` seconds into the stream of `path`."""
  return TruncatedError(path, f'is corrupt: decoding failed after {time:.3f} s ({e})')


def resize_and_crop(frame: av.VideoFrame, size: int,
                     reformatter: VideoReformatter) -> np.ndarray:
  """Shorter side scaled to `size` (area averaging), centre crop to (size, size, 3) uint8.

  `reformatter` is shared by a clip's frames: it keeps its swscale context, which
  frame.to_ndarray(width=...) builds anew for every frame (3x slower at 64x64).
  """
  scale = size / min(frame.width, frame.height)
  width = max(size, round(frame.width * scale))
  height = max(size, round(frame.height * scale))
  image = reformatter.reformat(frame, width=width, height=height, format='rgb24',
                               interpolation='AREA').to_ndarray()
  top, left = (height - size) // 2, (width - size) // 2
  return image[top:top + size, left:left + size]


def _decode_video(path, num_frames: int, fps: float, image_size: int, start_seconds: float,
                  max_pad_frames: int) -> tuple[np.ndarray, int]:
  """(T, H, W, 3) uint8 frames and how many were padded; see read_video_clip."""
  if num_frames <= 0 or not fps > 0 or image_size <= 0:
    raise ValueError(f'num_frames={num_frames}, fps={fps} and image_size={image_size} must '
                     'be positive')
  path = os.fspath(path)
  targets = start_seconds + np.arange(num_frames) / fps
  with open_media(path, start_seconds) as container:
    if not container.streams.video:
      raise NoVideoStreamError(path, 'has no video stream')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    reformatter = VideoReformatter()
    origin = origin_seconds(container)
    default_duration = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
    picks = []  # Output frames, in order.
    previous, previous_image, end, exhausted = None, None, 0.0, True
    try:
      for frame in container.decode(stream):
        time = frame.time - origin if frame.time is not None else end
        if previous is None:
          previous = frame  # Times before the first frame (a late-starting stream) take it.
        # Every target before this frame gets the previous one; only those are converted.
        while len(picks) < num_frames and targets[len(picks)] < time - TIME_SLACK_S:
          if previous_image is None:
            previous_image = resize_and_crop(previous, image_size, reformatter)
          picks.append(previous_image)
        if len(picks) == num_frames:
          exhausted = False
          break
        if frame is not previous:
          previous, previous_image = frame, None
        end = frame_end(frame, time, default_duration)
    except av.error.FFmpegError as e:
      raise decode_failed(path, e, end) from e
    if exhausted:
      check_complete(path, container, stream, origin, end, 'video')
    if previous is None:
      raise NoVideoStreamError(path, 'has no decodable video frames')
    # Targets after the last decoded frame are valid only while that frame lasts.
    while len(picks) < num_frames and targets[len(picks)] < end - TIME_SLACK_S:
      if previous_image is None:
        previous_image = resize_and_crop(previous, image_size, reformatter)
      picks.append(previous_image)
    padding = num_frames - len(picks)
    if padding > max_pad_frames:
      needed = targets[-1] + 1 / fps
      allowed = f'; up to {max_pad_frames} frames may be padded' if max_pad_frames else ''
      raise TooShortError(
          path, f'is too short: the video lasts {end:.3f} s but {needed:.3f} s are needed '
          f'(start {start_seconds:g} s + {num_frames} frames at {fps:g} fps){allowed}',
          available_seconds=max(end - start_seconds, 0.0), needed_seconds=needed - start_seconds)
    if padding:  # Within the tolerance: the last frame lasts a little longer.
      picks += [previous_image if previous_image is not None else
                resize_and_crop(previous, image_size, reformatter)] * padding
  return np.stack(picks), padding


def _to_mono(frames) -> list[np.ndarray]:
  """Resampled planar float frames -> (n,) float32 chunks, the mean over channels."""
  return [frame.to_ndarray().mean(axis=0, dtype=np.float32) for frame in frames]


def _decode_audio(path, sample_rate: int, num_samples: int, start_seconds: float,
                  max_pad_samples: float) -> tuple[np.ndarray, int]:
  """(S,) float32 mono audio and how many zeros were padded at its end; see read_audio."""
  if sample_rate <= 0 or num_samples <= 0:
    raise ValueError(f'sample_rate={sample_rate} and num_samples={num_samples} must be positive')
  path = os.fspath(path)
  first = int(round(start_seconds * sample_rate))
  with open_media(path, start_seconds) as container:
    if not container.streams.audio:
      raise NoAudioStreamError(path, 'has no audio stream')
    stream = container.streams.audio[0]
    origin = origin_seconds(container)
    chunks, have, head, started = [], 0, 0, False
    resampler, setup, exhausted = None, None, True
    try:
      for frame in container.decode(stream):
        if not started and frame.time is not None:
          # Index 0 of the decoded audio must be time 0: a stream starting after the
          # container is silent until then, one starting before it has `head` extra samples.
          offset = int(round((frame.time - origin) * sample_rate))
          chunks.append(np.zeros(max(offset, 0), np.float32))
          have, head = max(offset, 0), max(-offset, 0)
        started = True
        # A resampler takes one input format; streams may switch (e.g. stereo <-> 5.1).
        if (frame.format.name, frame.layout.name, frame.sample_rate) != setup:
          if resampler is not None:
            chunks += _to_mono(resampler.resample(None))
          # Planar float in the input's own layout: channels are averaged into mono here,
          # as librosa does (FFmpeg's own downmix adds correlated channels at +3 dB).
          resampler = av.AudioResampler(format='fltp', rate=sample_rate)
          setup = (frame.format.name, frame.layout.name, frame.sample_rate)
        for chunk in _to_mono(resampler.resample(frame)):
          chunks.append(chunk)
          have += chunk.size
        if have >= head + first + num_samples:
          exhausted = False
          break
      else:
        if resampler is not None:
          chunks += _to_mono(resampler.resample(None))  # What the resampler holds back.
    except av.error.FFmpegError as e:
      raise decode_failed(path, e, max(have - head, 0) / sample_rate) from e
    waveform = np.concatenate(chunks or [np.zeros(0, np.float32)])[head:]
    if exhausted:
      check_complete(path, container, stream, origin, waveform.size / sample_rate, 'audio')
    end = declared_end(container, stream, origin)
    if end is not None:
      # Decoders also return the encoder's padding of the last frame (up to 1024 samples of
      # AAC); the declared duration says where the real audio ends.
      waveform = waveform[:int(round(end * sample_rate))]
  clip = waveform[first:first + num_samples].astype(np.float32)
  padding = num_samples - clip.size
  if padding > max_pad_samples:
    raise TooShortError(
        path, f'is too short: {clip.size / sample_rate:.3f} s of audio after '
        f'{start_seconds:g} s, but {num_samples / sample_rate:.3f} s are needed',
        available_seconds=clip.size / sample_rate, needed_seconds=num_samples / sample_rate)
  return np.pad(clip, (0, padding)), padding


def read_video_clip(path: str | os.PathLike, *, num_frames: int, fps: float, image_size: int,
                    start_seconds: float = 0.0) -> np.ndarray:
  """Decodes `num_frames` frames at `fps` from `start_seconds`: (T, H, W, 3) uint8, H = W.

  Output frame i shows the decoded frame with the latest timestamp at or before
  start_seconds + i / fps (nearest-previous resampling to the config's frame rate, so a
  25 fps file read at 8 fps skips frames and a 4 fps file repeats them). Each is resized so
  that its shorter side is `image_size`, then centre-cropped to a square.

  The video must contain every sampled time: it may be at most one output frame period
  shorter than start_seconds + num_frames / fps (real "10 s" clips are often 9.98 s).
  Decoding starts at the beginning of the file (no seek: exact, and cheap for the short
  clips of audio-visual datasets); only the picked frames are converted to RGB.

  Raises:
    MediaError: the file is missing or `start_seconds` is negative; subclasses:
      NotMediaError, NoVideoStreamError (also a stream without frames), TruncatedError,
      TooShortError.
    ValueError: num_frames, fps or image_size is not positive.
  """
  return _decode_video(path, num_frames, fps, image_size, start_seconds, max_pad_frames=0)[0]


def read_audio(path: str | os.PathLike, *, sample_rate: int, num_samples: int,
               start_seconds: float = 0.0) -> np.ndarray:
  """Decodes `num_samples` samples from `start_seconds`: (S,) float32 mono at `sample_rate`.

  FFmpeg's resampler (av.AudioResampler) converts any rate, and the channels of any layout
  are averaged into mono. Audio that ends a little early is zero-padded at the end; less
  than half of the request is an error.

  Raises:
    MediaError: the file is missing or `start_seconds` is negative; subclasses:
      NotMediaError, NoAudioStreamError, TruncatedError, TooShortError (less than half of
      the requested samples after `start_seconds`).
    ValueError: sample_rate or num_samples is not positive.
  """
  return _decode_audio(path, sample_rate, num_samples, start_seconds,
                       max_pad_samples=num_samples / 2)[0]


def read_clip(path: str | os.PathLike, *, num_frames: int, fps: float, image_size: int,
              sample_rate: int, num_samples: int, start_seconds: float = 0.0,
              max_pad_seconds: float | None = None) -> Clip:
  """Decodes both streams of one clip, as a dataset builder needs them (a `Clip`).

  Frames (T, H, W, 3) uint8 as `read_video_clip`, waveform (S,) float32 mono as
  `read_audio`, but either stream may end up to `max_pad_seconds` early (default
  DEFAULT_MAX_PAD_FRACTION of the clip's length): the video repeats its last frame, the
  audio is zero-padded, and the Clip records how many frames and samples were padded.

  Raises:
    MediaError: as read_video_clip and read_audio, each subclass for its kind of problem;
      TooShortError when a stream would need more than `max_pad_seconds` of padding.
    ValueError: a size or rate is not positive, or max_pad_seconds is negative.
  """
  if max_pad_seconds is not None and not max_pad_seconds >= 0:
    raise ValueError(f'max_pad_seconds={max_pad_seconds} must be non-negative')

  def tolerance(seconds: float, rate: float) -> int:  # Frames or samples that may be padded.
    pad = DEFAULT_MAX_PAD_FRACTION * seconds if max_pad_seconds is None else max_pad_seconds
    return int(pad * rate + 1e-6)

  frames, video_padding = _decode_video(path, num_frames, fps, image_size, start_seconds,
                                        tolerance(num_frames / fps, fps))
  waveform, audio_padding = _decode_audio(path, sample_rate, num_samples, start_seconds,
                                          tolerance(num_samples / sample_rate, sample_rate))
  return Clip(frames, waveform, video_padding, audio_padding)
