"""The audio-video offset in seconds, found by the alignment classifier (a DeSync-style metric).

Align Acc says whether a pair looks aligned, not by how much it is off. Here each clip's audio
is shifted circularly against its video over a grid of offsets (-max..+max seconds), the
dataset's alignment classifier scores every shifted pair, and the offset whose pair it finds
most aligned is the clip's estimated offset: positive when the audio is late (its events come
after the video's). The field's DeSync (av-benchmark, with Synchformer) is the mean absolute
offset of this kind. The classifier was trained with shifts of at least
evaluator.min_shift_seconds as negatives, so offsets smaller than that are hard for it to tell
apart from 0; an offset read within one grid step of the truth is as good as the grid allows.
"""

from collections.abc import Callable

import numpy as np

MAX_SECONDS = 1.0
STEP_SECONDS = 0.1
# The known offset of the shifted ground-truth row: it must be recovered.
SHIFTED_SECONDS = 0.5


def shift_grid(frame_rate: float, max_seconds: float = MAX_SECONDS,
               step_seconds: float = STEP_SECONDS) -> np.ndarray:
  """(S,) int offsets in log-mel frames, from -max to +max seconds in steps of `step_seconds`
  (rounded to whole frames, at least one frame a step), 0 included."""
  step = max(int(round(step_seconds * frame_rate)), 1)
  reach = int(round(max_seconds * frame_rate)) // step
  return np.arange(-reach, reach + 1) * step


def shift_audio(log_mel: np.ndarray, frames: int) -> np.ndarray:
  """Log-mels (N,Ta,F) moved `frames` later in time, circularly (as the evaluator's shifted
  negatives are made): out[:, t] = log_mel[:, t - frames]."""
  return np.roll(log_mel, frames, axis=1)


def estimate_offsets(aligned_prob: Callable[[np.ndarray, np.ndarray], np.ndarray],
                     frames: np.ndarray, log_mel: np.ndarray, frame_rate: float, *,
                     max_seconds: float = MAX_SECONDS,
                     step_seconds: float = STEP_SECONDS) -> np.ndarray:
  """(N,) estimated offsets in seconds of each audio against its video.

  Args:
    aligned_prob: (frames (N,...), log_mel (N,Ta,F)) -> (N,) probability the pairs are aligned
      (classifiers.EvaluatorSet.aligned_prob).
    frames: the N videos.
    log_mel: their audio, (N,Ta,F).
    frame_rate: log-mel frames per second.
  Returns:
    offsets d: moving the audio d seconds earlier makes the pair most aligned (positive: the
    audio is late). Ties go to the smallest |d|.
  """
  grid = shift_grid(frame_rate, max_seconds, step_seconds)
  grid = grid[np.argsort(np.abs(grid), kind='stable')]  # argmax keeps the first: nearest 0.
  probs = np.stack([aligned_prob(frames, shift_audio(log_mel, -int(d))) for d in grid], axis=1)
  return grid[np.argmax(probs, axis=1)] / frame_rate


def offset_keys(prefix: str, offsets: np.ndarray) -> dict:
  """PREFIX/sync_offset_abs_s (the mean |offset|, DeSync's number), PREFIX/sync_offset_s (the
  mean signed offset) and PREFIX/sync_offset_median_abs_s, in seconds."""
  offsets = np.asarray(offsets, np.float64)
  return {f'{prefix}/sync_offset_abs_s': float(np.mean(np.abs(offsets))),
          f'{prefix}/sync_offset_s': float(np.mean(offsets)),
          f'{prefix}/sync_offset_median_abs_s': float(np.median(np.abs(offsets)))}
