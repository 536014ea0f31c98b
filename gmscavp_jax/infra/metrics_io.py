"""Where metrics go: WORKDIR/metrics.jsonl, TensorBoard, and the console (with rate and ETA).

Only process 0 writes files (the multi-host convention); every process may log to its console.
"""

import json
import os
import time

from absl import logging
import jax
import numpy as np


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard, and images to TensorBoard."""

  def __init__(self, workdir: str):
    self._enabled = jax.process_index() == 0
    self._jsonl = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self._enabled:
      # Imported here so that tools reading results never pay for TensorBoard's import.
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(logdir=os.path.join(workdir, 'tensorboard'))

  def write_scalars(self, step: int, scalars: dict) -> None:
    """Writes `{name: float}` at `step`: one JSON line `{"step": N, name: value, ...}`."""
    if not self._enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self._jsonl, 'a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in scalars.items():
      # TensorBoard tags allow no '@'; the JSONL keeps the DESIGN §7 names.
      self._tb.add_scalar(k.replace('@', '_'), float(v), int(step))

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """Writes one (H, W, 3) uint8 image to TensorBoard."""
    if self._enabled:
      self._tb.add_image(name, image, int(step), dataformats='HWC')

  def write_audio(self, step: int, name: str, waveform: np.ndarray, sample_rate: int) -> None:
    """Writes one (S,) float waveform in [-1, 1] to TensorBoard."""
    if self._enabled:
      self._tb.add_audio(name, np.asarray(waveform, np.float32), int(step),
                         sample_rate=int(sample_rate))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  """The rows of a metrics.jsonl file (empty if it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise
      # The last row of a process killed while writing it: the resumed run writes it again.
      logging.warning('%s: dropping a cut-off last row (%d characters)', path, len(line))
  return rows


def truncate_jsonl(path: str, after_step: int, evaluations_of_it: bool = False) -> None:
  """Drops rows with step > `after_step`: a resumed run rewrites the steps it repeats; with
  `evaluations_of_it`, the evaluation rows (rows without a train loss) of `after_step` too,
  for a run that evaluates that step again."""
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  rows = read_jsonl(path)
  kept = [r for r in rows if r['step'] < after_step or r['step'] == after_step and not (
      evaluations_of_it and 'train/loss' not in r)]
  # Always rewritten (atomically): a row cut off by a kill is gone from `rows` but not from
  # the file, and the next row appended would continue its line.
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  os.replace(tmp, path)


class Progress:
  """Steps/s and ETA between console log lines."""

  def __init__(self, start_step: int, num_steps: int):
    self._num_steps = num_steps
    self._last_step, self._last_time = start_step, time.perf_counter()

  def update(self, step: int) -> dict:
    """Returns `{'steps_per_sec': r}` since the last call and logs the rate and ETA."""
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self._num_steps - step) / max(rate, 1e-9)
    logging.info('step %d/%d  %.2f steps/s  ETA %s', step, self._num_steps, rate,
                 time.strftime('%H:%M:%S', time.gmtime(eta)))
    return {'steps_per_sec': rate}
