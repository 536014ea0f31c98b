"""The two-pass schedule of long-video soundtracks (long_video.run(schedule='two_pass')).

Windows overlap by at most half a clip, so the even windows (0, 2, 4, ...) of a video do not
overlap each other: pass 1 samples them all, up to `batch` per sampler call, told nothing of
their neighbours. Pass 2 samples every odd window k knowing both of its neighbours: its head
is inpainted from window k - 1 with `Windows.known_mask` (held over the first half of the
overlap, fading over the second) and its tail from window k + 1 with that mask reversed
(fading in, then held), less window k + 1's first frames (`SKIP_START`). A video of N
windows costs about 2 * ceil(N / 2 / batch) calls instead of the sequential schedule's N.

Videos go in groups: whole videos are taken until the group has `batch` even windows (or the
jobs run out), so short videos of a folder share calls and a long one is a group of its own.
A group's calls all have R rows, the fewest that cover its even windows in ceil(evens /
batch) calls (idle rows padded). Its log-mels (Ta x F floats a window) are kept until it is
vocoded, in window order, R windows a call, and its audio written; frames are decoded once
per pass, R windows held at a time.
"""

from collections.abc import Callable
import itertools

import numpy as np

from gmscavp_jax.data import media


# Log-mel frames at the start of a generated window that its successor's tail does not
# inpaint: a window sampled alone starts quieter (at msa_msd:runlocal its frames 0 and 1 are
# 2.3 and 0.6 below the rest), as a training clip's first STFT frames are padded.
SKIP_START = 2


def known(geometry, before: np.ndarray,
          after: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
  """(known_mel (Ta,F), mask (Ta,)) of an odd window of `geometry` (long_video.Windows): its
  head is window k - 1's log-mel `before` (Ta,F) from its hop on, masked by
  `geometry.known_mask()`; its tail is window k + 1's `after` (Ta,F; None for a video's last
  window) up to the overlap, masked by the same mask reversed but 0 over its first
  SKIP_START frames."""
  n, hop = geometry.overlap * geometry.mel_per_frame, geometry.hop * geometry.mel_per_frame
  if 2 * n > before.shape[0]:
    raise ValueError(f'two_pass needs an overlap of at most half a window: {n} of '
                     f'{before.shape[0]} log-mel frames')
  head = geometry.known_mask()[:n]
  mel, mask = np.zeros_like(before), np.zeros((before.shape[0],), np.float32)
  mel[:n], mask[:n] = before[hop:], head
  if after is not None:
    mel[-n:], mask[-n:] = after[:n], head[::-1]
    mask[mask.size - n:][:SKIP_START] = 0.0  # (A view: also right when n <= SKIP_START.)
  return mel, mask


def run(soundtracker, jobs: list, *, batch: int, geometry, seed: int,
        start: Callable, finish: Callable, on_window: Callable[[int], None],
        on_failed: Callable, sampler_args: dict) -> None:
  """Soundtracks for `jobs` (long_video.Job) in two passes, up to `batch` windows a call.

  `start(job)` makes a job's long_video.Track (raises media.MediaError for a video that
  cannot be read: `on_failed(job, error)` is called and the others go on); `finish(track)`
  puts a complete video's files in place. `on_window(n)` is called after each sampler call
  with the n windows it made; `sampler_args` are `sampling.Generator.generate`'s.
  """
  pending, counts = list(reversed(jobs)), [0, 0]
  evens = lambda group: sum((t.num_windows + 1) // 2 for t in group)
  while pending:
    group = []
    while pending and evens(group) < batch:
      job = pending.pop()
      try:
        group.append(start(job))
      except media.MediaError as e:
        on_failed(job, e)
    if group:  # Calls of equal rows: 100 even windows at batch 64 go as 50 + 50, not 64 + 64.
      rows = -(-evens(group) // -(-evens(group) // batch))
      _group(soundtracker, group, rows, geometry, seed, counts, finish, on_window, on_failed,
             sampler_args)


def _group(soundtracker, group: list, rows: int, g, seed: int, counts: list, finish,
           on_window, on_failed, sampler_args: dict) -> None:
  """Samples `group`'s even windows, then its odd ones, `rows` per call (idle rows padded,
  so every call has one shape); then vocodes every window in order, `rows` per call, and
  finishes the videos. `counts`: the run's sampler and vocoder calls so far (their seeds)."""
  config = soundtracker.config
  ta, f, size = g.frames * g.mel_per_frame, config.audio.n_mels, config.data.image_size
  failed = []
  for track in group:
    track.mels = [None] * track.num_windows

  def requests(parity):  # (track, k, frames) of one pass, one decode per video.
    for track in group:
      if track in failed or (parity and track.num_windows < 2):
        continue
      try:
        for k, frames in track.iter_windows(parity):
          yield track, k, frames
      except media.MediaError as e:  # Its windows already sampled are dropped with it.
        failed.append(track)
        track.abandon()
        on_failed(track.job, e)

  for parity in (0, 1):
    todo = requests(parity)
    while chunk := list(itertools.islice(todo, rows)):
      frames = np.zeros((rows, g.frames, size, size, 3), np.uint8)
      known_mel = np.zeros((rows, ta, f), np.float32)
      mask = np.zeros((rows, ta), np.float32)
      for row, (track, k, window) in enumerate(chunk):
        frames[row] = window
        if parity:
          after = track.mels[k + 1] if k + 1 < track.num_windows else None
          known_mel[row], mask[row] = known(g, track.mels[k - 1], after)
      mels = soundtracker.generate_batch(frames, known_mel=known_mel, known_mask=mask,
                                         seed=seed * 1_000_003 + counts[0], **sampler_args)
      counts[0] += 1
      for row, (track, k, _) in enumerate(chunk):
        track.mels[k] = mels[row]
      on_window(len(chunk))
  order = [(t, k) for t in group if t not in failed for k in range(t.num_windows)]
  for begin in range(0, len(order), rows):
    part = order[begin:begin + rows]
    mels = np.zeros((rows, ta, f), np.float32)
    for row, (track, k) in enumerate(part):
      mels[row], track.mels[k] = track.mels[k], None  # Each log-mel is let go once vocoded.
    waves = soundtracker.vocode(mels, seed=seed * 1_000_003 + counts[1])
    counts[1] += 1
    for row, (track, _) in enumerate(part):
      if track.add(mels[row], waves[row]):
        finish(track)
