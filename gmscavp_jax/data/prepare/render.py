"""Renders the synthetic benchmark as a VGGSound-style folder of mp4 files (DESIGN §4, §7).

The real-dataset path (mp4 folder -> TFDS builder -> training -> retrieval) can then run end
to end here, on files whose content is known. The layout is VGGSound's:

  OUT/vggsound.csv                            rows `ytid,start_seconds,label,split`, no header
  OUT/VIDEOS/<ytid>_<start_seconds:06d>.mp4   H.264 (or MPEG-4) video + AAC audio
  OUT/synthetic_render.json                   the synthetic settings the clips were made with

Clip `index` of split `split` is the synthetic clip of the same split and index
(`synthetic.from_config(config, split)[index]`), so test row i of the CSV is synthetic test
clip i; its ytid is `clip_id(split, index)` and start_seconds is 0 (each file is the clip).
The label column is the class name `class_name(label, num_classes)`, e.g. 'class 07': a name
like VGGSound's, zero-padded so that the sorted names list the classes in id order.

Each mp4 is written under a temporary name and renamed when complete, so a killed run can be
started again: files that exist are kept (their labels are recomputed, which costs a few ms
per clip against tens to hundreds for encoding). Only one run may write a folder at a time.
"""

import contextlib
import csv
import io
import json
import multiprocessing
import os

import ml_collections
import tqdm

from gmscavp_jax.data import media_writing
from gmscavp_jax.data import synthetic
from gmscavp_jax.infra import errors

CSV_NAME = 'vggsound.csv'
VIDEO_DIR = 'VIDEOS'
SPEC_NAME = 'synthetic_render.json'
SPLITS = ('train', 'test')
_PARTIAL = '.partial'  # Suffix of files being written (hidden, and not '*.mp4').


def clip_id(split: str, index: int) -> str:
  """The 11-character YouTube-like id of clip `index` of `split`, e.g. 'te000000042'."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is unknown; expected one of {SPLITS}')
  if not 0 <= index < 10**9:
    raise ValueError(f'index={index} must be in [0, 10**9)')
  return f'{split[:2]}{index:09d}'


def video_filename(ytid: str, start_seconds: int = 0) -> str:
  """VGGSound's file name of a clip: '<ytid>_<start_seconds as 6 digits>.mp4'."""
  return f'{ytid}_{int(start_seconds):06d}.mp4'


def class_name(label: int, num_classes: int) -> str:
  """The CSV label of synthetic class `label`: 'class NN', zero-padded to sort by id."""
  return f'class {int(label):0{len(str(num_classes - 1))}d}'


def _spec(config: ml_collections.ConfigDict) -> dict:
  """The settings that decide a rendered clip's content."""
  return {'seed': int(config.data.seed),
          'num_classes': int(config.data.num_classes),
          'num_frames': int(config.data.num_frames), 'fps': float(config.data.fps),
          'image_size': int(config.data.image_size),
          'sample_rate': int(config.audio.sample_rate)}


def _check_spec(out_dir: str, spec: dict) -> None:
  """Records `spec` in a new folder; refuses a folder rendered with other settings."""
  path = os.path.join(out_dir, SPEC_NAME)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != spec:
      changed = {k: (old.get(k), v) for k, v in spec.items() if old.get(k) != v}
      raise errors.ConfigError(
          f'{out_dir}: was rendered with other synthetic settings (field: (then, now)) '
          f'{changed}; use another folder or empty it')
    return
  _write_atomically(path, json.dumps(spec, indent=2) + '\n')


def _write_atomically(path: str, text: str) -> None:
  with open(path + _PARTIAL, 'w', newline='') as f:
    f.write(text)
  os.replace(path + _PARTIAL, path)


class _Renderer:
  """Renders clips (split, index) into `video_dir`; one per worker process."""

  def __init__(self, config: ml_collections.ConfigDict, video_dir: str):
    self.sources = {split: synthetic.from_config(config, split) for split in SPLITS}
    self.video_dir = video_dir

  def __call__(self, task: tuple[str, int]) -> tuple[str, int, int, bool]:
    """(split, index) -> (split, index, label, whether the mp4 was written)."""
    split, index = task
    source = self.sources[split]
    clip = source[index]
    path = os.path.join(self.video_dir, video_filename(clip_id(split, index)))
    written = not os.path.exists(path)
    if written:
      partial = os.path.join(self.video_dir, '.' + os.path.basename(path) + _PARTIAL)
      media_writing.write_video(partial, clip['frames'], source.fps, clip['waveform'],
                                source.sample_rate)
      os.replace(partial, path)  # Atomic: a file with the final name is complete.
    return split, index, int(clip['label']), written


_worker_renderer = None  # The _Renderer of a pool worker process.


def _init_worker(config, video_dir):
  global _worker_renderer
  _worker_renderer = _Renderer(config, video_dir)


def _render_in_worker(task):
  return _worker_renderer(task)


def render_vggsound_layout(config: ml_collections.ConfigDict, out_dir: str | os.PathLike, *,
                           num_train: int, num_test: int, workers: int = 0,
                           progress: bool = True) -> dict[str, int]:
  """Renders synthetic train clips 0..num_train-1 and test clips 0..num_test-1 into `out_dir`.

  Clips have the config's data.num_frames, data.fps, data.image_size and audio.sample_rate;
  the layout is in the module docstring. `workers` processes render in parallel (0: this
  process), with a tqdm progress bar if `progress`. Clips whose mp4 exists are kept. The CSV
  is written last, so its presence means every listed mp4 is there.

  Returns:
    {'train': num_train, 'test': num_test, 'written': mp4 files written by this call,
     'skipped': those that already existed}.
  Raises:
    errors.ConfigError (a ValueError): a count is negative, or `out_dir` holds
      clips rendered with other settings.
  """
  if num_train < 0 or num_test < 0 or workers < 0:
    raise errors.ConfigError(
        f'num_train={num_train}, num_test={num_test} and workers={workers} must be '
        'non-negative')
  out_dir = os.fspath(out_dir)
  video_dir = os.path.join(out_dir, VIDEO_DIR)
  os.makedirs(video_dir, exist_ok=True)
  config = config.copy_and_resolve_references()
  # Splits as long as asked: clip i depends only on (seed, split, i), not the split's size.
  config.data.num_train_clips = max(num_train, 1)
  config.eval.num_test_clips = max(num_test, 1)
  _check_spec(out_dir, _spec(config))
  for name in os.listdir(video_dir):  # Left by a killed run; no other run writes here.
    if name.endswith(_PARTIAL):
      os.remove(os.path.join(video_dir, name))

  tasks = [('train', i) for i in range(num_train)] + [('test', i) for i in range(num_test)]
  labels, written = {}, 0
  workers = min(workers, len(tasks))
  with contextlib.ExitStack() as stack:
    bar = stack.enter_context(tqdm.tqdm(total=len(tasks), unit='clip', disable=not progress,
                                        desc=f'rendering {out_dir}'))
    if workers:
      # 'spawn': the caller may run jax threads, which a fork would copy in mid-state.
      pool = stack.enter_context(multiprocessing.get_context('spawn').Pool(
          workers, initializer=_init_worker, initargs=(config, video_dir)))
      results = pool.imap_unordered(_render_in_worker, tasks,
                                    chunksize=max(1, min(16, len(tasks) // (8 * workers))))
    else:
      results = map(_Renderer(config, video_dir), tasks)
    for split, index, label, was_written in results:
      labels[split, index] = label
      written += was_written
      bar.update()

  num_classes = int(config.data.num_classes)
  text = io.StringIO()
  csv.writer(text, lineterminator='\n').writerows(
      (clip_id(split, i), 0, class_name(labels[split, i], num_classes), split)
      for split, i in tasks)
  _write_atomically(os.path.join(out_dir, CSV_NAME), text.getvalue())
  return {'train': num_train, 'test': num_test, 'written': written,
          'skipped': len(tasks) - written}

