"""Soundtracks for whole videos of any length, one video or a folder of them at once.

A video is cut into windows of the training clip's length that overlap by `overlap_seconds`.
Window k + 1 is sampled knowing the end of window k: the overlap's log-mel frames are
inpainted (samplers.Known) with a mask that holds the first half of the overlap and fades
over the second, so the new window continues the old one and the join is blended. Each
window is vocoded on its own and the waveforms are cross-faded (equal power) over the
overlap. Frames are decoded as windows need them and audio is written as it is made, so
memory is that of one window per video, whatever the length (two_pass also keeps a video's
log-mels, Ta x F floats a window, until it is vocoded).

Two schedules (`SCHEDULES`). 'sequential': videos are processed in lockstep, window k of up
to `batch` videos in one sampler call, a finished video's slot taking the next one, so a
folder keeps the batch full; a video of N windows costs N calls. 'two_pass' (two_pass.py):
every even window in one batched pass, told nothing of its neighbours, then every odd one
inpainting both its head and its tail from them; up to `batch` windows share a call, so a
video costs 2 calls per 2 * `batch` windows.
"""

from collections.abc import Callable, Iterator
import dataclasses
import math
import os

import numpy as np

from gmscavp_jax.data import media
from gmscavp_jax.data import media_stream
from gmscavp_jax.inference import two_pass
from gmscavp_jax.infra import errors


@dataclasses.dataclass(frozen=True)
class Windows:
  """How a config's clips tile a long video: `frames` (T) video frames per window at `fps`,
  `hop` frames between window starts, `mel_per_frame` log-mel frames per video frame and
  `samples_per_frame` audio samples per video frame."""
  frames: int
  hop: int
  fps: float
  mel_per_frame: int
  samples_per_frame: int

  @property
  def overlap(self) -> int:
    """Video frames shared by consecutive windows."""
    return self.frames - self.hop

  def count(self, total_frames: int) -> int:
    """Windows needed to cover `total_frames` (the last is padded with the last frame)."""
    return 1 + max(0, math.ceil((total_frames - self.frames) / self.hop))

  def known_mask(self) -> np.ndarray:
    """(Ta,) float32: 1 over the first half of the overlap, a raised-cosine fade to 0 over
    the second half, 0 after it: what window k + 1 keeps of window k's log-mel."""
    ta, n = self.frames * self.mel_per_frame, self.overlap * self.mel_per_frame
    mask, held = np.zeros((ta,), np.float32), n // 2
    mask[:held] = 1.0
    fade = n - held
    mask[held:n] = 0.5 * (1.0 + np.cos(np.pi * (np.arange(fade) + 1) / (fade + 1)))
    return mask


SCHEDULES = ('sequential', 'two_pass')


def check_schedule(schedule: str, geometry: Windows) -> None:
  """Raises errors.ConfigError unless `schedule` is one of SCHEDULES that `geometry` allows
  ('two_pass' samples even windows together, so they must not overlap: overlap <= T / 2)."""
  if schedule not in SCHEDULES:
    raise errors.ConfigError(f'--schedule={schedule}: expected one of {", ".join(SCHEDULES)}')
  if schedule == 'two_pass' and 2 * geometry.overlap > geometry.frames:
    raise errors.ConfigError(
        f'--schedule=two_pass: windows overlap by {geometry.overlap} of {geometry.frames} '
        f'frames; two_pass samples every other window at once and needs at most half a clip '
        f'(lower --overlap_seconds)')


def windows(config, overlap_seconds: float | None = None) -> Windows:
  """The `Windows` of `config`'s clips; overlap default: a quarter of the clip, in frames.

  Raises errors.ConfigError if the overlap is not between one frame and half a clip, or if a
  video frame is not a whole number of log-mel frames (the windows' log-mels must line up).
  """
  d, a = config.data, config.audio
  t = int(d.num_frames)
  overlap = t // 4 if overlap_seconds is None else int(round(overlap_seconds * d.fps))
  if not 1 <= overlap <= t // 2:
    raise errors.ConfigError(
        f'--overlap_seconds={overlap_seconds}: expected between one frame ({1 / d.fps:g} s) and '
        f'half a clip ({t // 2 / d.fps:g} s)')
  samples = a.sample_rate / d.fps
  if samples != int(samples) or int(samples) % a.hop_length:
    raise errors.ConfigError(
        f'audio.sample_rate / data.fps = {samples:g} samples per video frame is not a multiple '
        f'of audio.hop_length={a.hop_length}: long videos need windows whose log-mels line up')
  return Windows(frames=t, hop=t - overlap, fps=float(d.fps),
                 mel_per_frame=int(samples) // a.hop_length, samples_per_frame=int(samples))


def span_frames(fps: float, available_seconds: float, duration: float | None) -> int:
  """Video frames (>= 1) of a span: `available_seconds` of video from the start point, cut
  to `duration` (None: all of it); a frame that ends within media.TIME_SLACK_S counts."""
  seconds = available_seconds if duration is None else min(available_seconds, duration)
  return max(1, int(math.floor(seconds * fps + media.TIME_SLACK_S)))


def num_windows(geometry: Windows, job: 'Job') -> int:
  """Windows `run` makes for `job`, whose `video_seconds` has been probed (a video shorter
  than its start point counts one: `run` reports it when it starts)."""
  available = max(job.video_seconds - job.start_seconds, 0.0)
  return geometry.count(span_frames(geometry.fps, available, job.duration))


@dataclasses.dataclass
class Job:
  """One video to give a soundtrack: `video` in, `wav` and `mp4` out, from `start_seconds`
  for `duration` seconds (None: to the end). `video_seconds` is the video's probed length
  where the caller has it (None: probed when the job starts)."""
  video: str
  wav: str
  mp4: str
  start_seconds: float = 0.0
  duration: float | None = None
  video_seconds: float | None = None


def _equal_power(old: np.ndarray, new: np.ndarray) -> np.ndarray:
  """Cross-fade of two (S,) signals: cos^2 + sin^2 = 1 keeps the power of uncorrelated ones
  (two Griffin-Lim phases of one log-mel are)."""
  w = (np.arange(old.size) + 0.5) / old.size * (np.pi / 2)
  return old * np.cos(w) + new * np.sin(w)


class Track:
  """One video on its way through the windows: its frames, its previous window and its
  audio so far. `run` creates one per video and calls `next_window`, `known` and `add`."""

  def __init__(self, job: Job, config, geometry: Windows):
    self.job, self.geometry = job, geometry
    d = config.data
    length = job.video_seconds
    if length is None:
      length = media_stream.probe_duration(job.video)
    if length <= job.start_seconds:
      raise media.TooShortError(job.video, f'lasts {length:.3f} s, '
                                f'less than --start_seconds={job.start_seconds:g}',
                                available_seconds=length, needed_seconds=job.start_seconds)
    self.total_frames = span_frames(d.fps, length - job.start_seconds, job.duration)
    self.num_windows = geometry.count(self.total_frames)
    self.end_seconds = job.start_seconds + self.total_frames / d.fps
    self._image_size = d.image_size
    self._windows = self.iter_windows()
    self.index, self.prev_mel, self._tail = 0, None, np.zeros((0,), np.float32)
    self.mels: list[np.ndarray | None] = []  # The two-pass schedule's log-mels (Ta,F).
    self._wav = media_stream.WavWriter(job.wav + '.partial', config.audio.sample_rate)

  def iter_windows(self, parity: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (k, (T, H, W, 3) uint8 frames) of every window k (or of those with k % 2 ==
    `parity`) in one new decode pass; past the video's end its last frame is repeated.
    Raises media.MediaError if the video turns out corrupt."""
    g = self.geometry
    frames = media_stream.iter_frames(
        self.job.video, fps=g.fps, image_size=self._image_size,
        start_seconds=self.job.start_seconds, end_seconds=self.end_seconds)
    keep, last = [], None
    for k in range(self.num_windows):
      keep = keep[g.hop:]
      while len(keep) < g.frames:
        frame = next(frames, None)
        if frame is None:
          if last is None:
            raise media.NoVideoStreamError(self.job.video, 'has no decodable video frames')
          frame = last
        last = frame
        keep.append(frame)
      if parity is None or k % 2 == parity:
        yield k, np.stack(keep)

  def next_window(self) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of the current window (`iter_windows`' next)."""
    return next(self._windows)[1]

  def known(self) -> tuple[np.ndarray | None, np.ndarray]:
    """(known_mel (Ta,F) or None, mask (Ta,)) for the current window: the previous window's
    log-mel from its hop on with `Windows.known_mask`; (None, zeros) for the first window."""
    g = self.geometry
    if self.prev_mel is None:
      return None, np.zeros((g.frames * g.mel_per_frame,), np.float32)
    shift = g.hop * g.mel_per_frame
    mel = np.concatenate([self.prev_mel[shift:], np.zeros_like(self.prev_mel[:shift])])
    return mel, g.known_mask()

  @property
  def clipped(self) -> int:
    """Audio samples clipped so far (beyond [-1, 1])."""
    return self._wav.clipped

  def add(self, mel: np.ndarray, wave: np.ndarray) -> bool:
    """Takes the current window's log-mel (Ta,F) and waveform (T * spf,); writes the audio
    that no later window changes. Returns True when the video is complete."""
    g, spf = self.geometry, self.geometry.samples_per_frame
    overlap, hop = g.overlap * spf, g.hop * spf
    start = 0
    if self.index:  # The previous window's tail and this window's head cover the same time.
      self._write(_equal_power(self._tail, wave[:overlap]))
      start = overlap
    last = self.index == self.num_windows - 1
    self._write(wave[start:] if last else wave[start:hop])
    self._tail = wave[hop:]
    self.prev_mel, self.index = mel, self.index + 1
    return last

  def _write(self, wave: np.ndarray) -> None:
    """Writes up to the video's end (later samples belong to padded frames)."""
    spf = self.geometry.samples_per_frame
    room = self.total_frames * spf - self._wav.num_samples
    self._wav.write(wave[:max(room, 0)])

  def finish(self, config) -> None:
    """Closes the WAV, muxes the mp4, and renames both into place (a rerun skips them)."""
    self._wav.close()
    d = config.data
    media_stream.mux_soundtrack(self.job.video, self._wav.path, self.job.mp4 + '.partial',
                                fps=d.fps, image_size=d.image_size,
                                start_seconds=self.job.start_seconds,
                                end_seconds=self.end_seconds)
    os.replace(self._wav.path, self.job.wav)
    os.replace(self.job.mp4 + '.partial', self.job.mp4)

  def abandon(self) -> None:
    """Removes the partial files of a video that failed."""
    self._wav.close()
    for path in (self._wav.path, self.job.mp4 + '.partial'):
      if os.path.exists(path):
        os.remove(path)


def run(soundtracker, jobs: list[Job], *, batch: int, overlap_seconds: float | None = None,
        schedule: str = 'sequential', seed: int = 0,
        on_window: Callable[[int], None] | None = None,
        on_done: Callable[[Job, dict], None] | None = None,
        on_failed: Callable[[Job, media.MediaError], None] | None = None, **sampler_args) -> None:
  """Gives every job's video a whole soundtrack with `soundtracker`'s generator.

  `schedule` (SCHEDULES, see the module docstring): 'sequential' samples window k of up to
  `batch` videos per call; 'two_pass' up to `batch` windows per call, even ones, then odd
  ones. Calls keep one shape (idle rows padded; two_pass: one per group of videos, `batch`
  but for a last small group), so one program serves the run. `on_window(n)` is called
  after each sampler call with the n windows it made, `on_done(job, info)` when a video's
  files are in place (info: 'windows', 'seconds' of audio, 'clipped' samples),
  `on_failed(job, error)` for a video that cannot be read (its partial files removed; the
  others go on). `sampler_args` are `sampling.Generator.generate`'s. Raises
  errors.ConfigError for a bad overlap or schedule.
  """
  geometry = windows(soundtracker.config, overlap_seconds)
  check_schedule(schedule, geometry)
  run_schedule = _run_two_pass if schedule == 'two_pass' else _run_sequential
  run_schedule(soundtracker, jobs, batch=batch, geometry=geometry, seed=seed,
               on_window=on_window or (lambda n: None),
               on_done=on_done or (lambda job, info: None),
               on_failed=on_failed or (lambda job, error: None), sampler_args=sampler_args)


def _finish(track: Track, config, on_done, on_failed) -> None:
  """Puts a complete video's files in place and reports it (or its failed mux)."""
  try:
    track.finish(config)
  except media.MediaError as e:  # Its frames failed on the second pass (the mux).
    track.abandon()
    on_failed(track.job, e)
    return
  on_done(track.job, {'windows': track.num_windows,
                      'seconds': track.total_frames / track.geometry.fps,
                      'clipped': track.clipped})


def _run_sequential(soundtracker, jobs, *, batch, geometry, seed, on_window, on_done,
                    on_failed, sampler_args) -> None:
  """`run`'s 'sequential' schedule: window k of up to `batch` videos per sampler call."""
  config = soundtracker.config
  ta, f = geometry.frames * geometry.mel_per_frame, config.audio.n_mels
  pending, slots = list(reversed(jobs)), [None] * batch
  round_index = 0
  while True:
    inputs = []
    for i in range(batch):
      while slots[i] is None and pending:
        job = pending.pop()
        try:
          slots[i] = Track(job, config, geometry)
        except media.MediaError as e:
          on_failed(job, e)
      if slots[i] is not None:
        try:
          frames = slots[i].next_window()
        except media.MediaError as e:
          slots[i].abandon()
          on_failed(slots[i].job, e)
          slots[i] = None
          continue
        inputs.append((i, frames) + slots[i].known())
    if not inputs:
      if pending:
        continue
      return
    size = config.data.image_size
    frames = np.zeros((batch, geometry.frames, size, size, 3), np.uint8)
    known_mel = np.zeros((batch, ta, f), np.float32)
    mask = np.zeros((batch, ta), np.float32)
    for row, (_, window, mel, m) in enumerate(inputs):
      frames[row], mask[row] = window, m
      if mel is not None:
        known_mel[row] = mel
    mels = soundtracker.generate_batch(frames, known_mel=known_mel, known_mask=mask,
                                       seed=seed * 1_000_003 + round_index, **sampler_args)
    waves = soundtracker.vocode(mels, seed=seed * 1_000_003 + round_index)
    round_index += 1
    for row, (i, *_) in enumerate(inputs):
      track = slots[i]
      if track.add(mels[row], waves[row]):
        slots[i] = None
        _finish(track, config, on_done, on_failed)
    on_window(len(inputs))


def _run_two_pass(soundtracker, jobs, *, batch, geometry, seed, on_window, on_done,
                  on_failed, sampler_args) -> None:
  """`run`'s 'two_pass' schedule (two_pass.run) with this module's `Track`s."""
  config = soundtracker.config
  two_pass.run(soundtracker, jobs, batch=batch, geometry=geometry, seed=seed,
               start=lambda job: Track(job, config, geometry),
               finish=lambda track: _finish(track, config, on_done, on_failed),
               on_window=on_window, on_failed=on_failed, sampler_args=sampler_args)


def run_one(soundtracker, job: Job, *, overlap_seconds: float | None = None,
            schedule: str = 'sequential', batch: int | None = None, seed: int = 0,
            on_window: Callable[[int], None] | None = None, **sampler_args) -> dict:
  """`run` for one job: its on_done info ('windows', 'seconds', 'clipped'); raises the
  media.MediaError of a video that cannot be read (its partial files removed). `batch`:
  windows per call of the 'two_pass' schedule (None: the config's eval.batch_size)."""
  info, failures = {}, []
  if schedule != 'two_pass':
    batch = 1  # One video: window k is the only row.
  run(soundtracker, [job], batch=batch or soundtracker.config.eval.batch_size,
      overlap_seconds=overlap_seconds, schedule=schedule, seed=seed,
      on_window=on_window, on_done=lambda _, i: info.update(i),
      on_failed=lambda _, error: failures.append(error), **sampler_args)
  if failures:
    raise failures[0]
  return info
