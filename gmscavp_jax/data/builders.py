"""TFDS builders of prepared audio-visual datasets, and grain sources over them.

A prepared dataset lives in DATA_DIR/NAME/CONFIG/VERSION as ArrayRecord shards that
`tfds.builder_from_directory(...).as_data_source(split)` reads with random access and no
TensorFlow (the features are Tensor and Text only: tfds' Video and Audio features need
TensorFlow to encode). CONFIG is named from the clip geometry, e.g. `16f_8fps_64px_8000hz`
(frames, frame rate, frame size, sample rate), so several geometries of one collection
live side by side and a training config finds its own.

A record holds frames (T,H,W,3) uint8, waveform (S,) float32 mono in [-1, 1], label ()
int32 (the first class, -1 when unlabelled), labels (K,) float32 multi-hot, audio_padding
() int32 and video_padding () int32 (zero samples and repeated last frames that
media.read_clip added to a stream that ended up to 10% early), start_seconds () float32
and file (the video's path relative to VIDEOS). T = num_frames, H = W = image_size,
S = round(num_frames / fps * sample_rate), K = the dataset's classes (metadata 'classes').
Onsets are not stored (real clips have none); `PreparedSource` adds the empty onset fields
the training pipeline expects, sized by the experiment's data.max_onsets.

The builder that writes them (data/prepare/clips_builder.py) lives with the offline
preparation; this module holds what both sides share (the geometry, the features) and the
training-time reading.
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from gmscavp_jax.data import media

DATASET_VERSION = '1.0.0'
NAME_PATTERN = re.compile(r'^[a-z][a-z0-9_]*$')
# The stored fields of a record, in a fixed order ('file' last: a decoded chunk keeps it
# as 'key').
FIELDS = ('frames', 'waveform', 'label', 'labels', 'audio_padding', 'video_padding',
          'start_seconds', 'file')


@dataclasses.dataclass(eq=False)
class ClipsConfig(tfds.core.BuilderConfig):
  """The clip geometry a dataset is decoded to (its BuilderConfig); see `clips_config`."""
  num_frames: int = 16
  fps: float = 8.0
  image_size: int = 64
  sample_rate: int = 8000

  @property
  def num_samples(self) -> int:
    """S: waveform samples per clip."""
    return media.clip_num_samples(self.num_frames, self.fps, self.sample_rate)

  def geometry(self) -> dict:
    return dict(num_frames=self.num_frames, fps=self.fps, image_size=self.image_size,
                sample_rate=self.sample_rate)


def config_name(num_frames: int, fps: float, image_size: int, sample_rate: int) -> str:
  """'16f_8fps_64px_8000hz' ('.' in the frame rate written 'p': 7.5 fps -> '7p5fps')."""
  return (f'{num_frames}f_{f"{fps:g}".replace(".", "p")}fps_{image_size}px_'
          f'{sample_rate}hz')


def clips_config(num_frames: int, fps: float, image_size: int,
                 sample_rate: int) -> ClipsConfig:
  """The BuilderConfig of a geometry, validated (every value positive)."""
  for field, value in (('num_frames', num_frames), ('image_size', image_size),
                       ('sample_rate', sample_rate)):
    if int(value) != value or value <= 0:
      raise ValueError(f'{field}={value!r}: expected a positive integer')
  if not fps > 0:
    raise ValueError(f'fps={fps!r}: expected a positive frame rate')
  num_frames, image_size, sample_rate, fps = (int(num_frames), int(image_size),
                                              int(sample_rate), float(fps))
  return ClipsConfig(
      name=config_name(num_frames, fps, image_size, sample_rate), version=DATASET_VERSION,
      description=(f'{num_frames} frames at {fps:g} fps, {image_size}x{image_size}, audio '
                   f'at {sample_rate} Hz'),
      num_frames=num_frames, fps=fps, image_size=image_size, sample_rate=sample_rate)


def check_name(name: str) -> str:
  """`name` if it can name a TFDS dataset (lower_snake_case), else ValueError."""
  if not NAME_PATTERN.match(name or ''):
    raise ValueError(f'dataset name {name!r}: expected lower_snake_case (letters, digits, _, '
                     'starting with a letter), e.g. vggsound')
  return name


def features(config: ClipsConfig, num_classes: int) -> tfds.features.FeaturesDict:
  """The record spec (module docstring) of `config`'s geometry and K = num_classes."""
  tensor = tfds.features.Tensor
  # Raw bytes: without an encoding tfds stores a tensor as a protobuf list of int64/float,
  # value by value in Python, which took 57 ms of a runlocal clip's 64 ms to serialize.
  raw = tfds.features.Encoding.BYTES
  return tfds.features.FeaturesDict({
      'frames': tensor(shape=(config.num_frames, config.image_size, config.image_size, 3),
                       dtype=np.uint8, encoding=raw),
      'waveform': tensor(shape=(config.num_samples,), dtype=np.float32, encoding=raw),
      'label': tensor(shape=(), dtype=np.int32),
      'labels': tensor(shape=(num_classes,), dtype=np.float32),
      'audio_padding': tensor(shape=(), dtype=np.int32),
      'video_padding': tensor(shape=(), dtype=np.int32),
      'start_seconds': tensor(shape=(), dtype=np.float32),
      'file': tfds.features.Text(),
  })


class NotPreparedError(FileNotFoundError):
  """The dataset (or its geometry) has not been prepared under the data dir."""


def find_prepared(data_dir: str, name: str, config: ClipsConfig) -> str:
  """DATA_DIR/NAME/CONFIG/VERSION of the newest complete version; NotPreparedError lists
  what is there instead."""
  root = os.path.join(data_dir, name)
  if not os.path.isdir(root):
    there = sorted(d for d in os.listdir(data_dir) if not d.startswith(('.', 'downloads'))) \
        if os.path.isdir(data_dir) else []
    raise NotPreparedError(
        f'{root} does not exist: dataset {name!r} is not prepared under {data_dir} '
        f'(found: {there or "nothing"}); run python -m gmscavp_jax.prepare --name={name} '
        f'--data_dir={data_dir} ...')
  config_dir = os.path.join(root, config.name)
  versions = []
  if os.path.isdir(config_dir):
    for v in os.listdir(config_dir):
      if (re.fullmatch(r'\d+\.\d+\.\d+', v)
          and os.path.isfile(os.path.join(config_dir, v, 'dataset_info.json'))):
        versions.append(tuple(int(x) for x in v.split('.')))
  if not versions:
    there = sorted(d for d in os.listdir(root) if not d.startswith('.'))
    raise NotPreparedError(
        f'{config_dir} holds no prepared dataset: {name!r} is not prepared at the geometry '
        f'{config.description} (prepared: {there or "none"})')
  return os.path.join(config_dir, '.'.join(map(str, max(versions))))


def prepared_info(builder_dir: str) -> tuple[tuple[str, ...], dict[str, int]]:
  """(class names, {split: number of records}) of a prepared dataset."""
  info = tfds.builder_from_directory(builder_dir).info
  return (tuple(info.metadata.get('classes', ())),
          {name: split.num_examples for name, split in info.splits.items()})


class PreparedSource:
  """grain random-access source over one split of a prepared dataset.

  `source[i]` is a record (module docstring) plus onsets (M,) float32 all -1,
  num_onsets () int32 0 and index () int32 = i, the fields of the synthetic source. With
  `num_records` only the first that many records are served. A dataset without classes
  gives labels of zeros (num_classes,) and label -1.
  """

  def __init__(self, builder_dir: str, split: str, *, max_onsets: int,
               num_classes: int | None = None, num_records: int | None = None):
    self._dir, self._split = builder_dir, split
    info = tfds.builder_from_directory(builder_dir).info
    if split not in info.splits:
      raise KeyError(f'{builder_dir} has no split {split!r} (splits: {sorted(info.splits)})')
    self.classes = tuple(info.metadata.get('classes', ()))
    if num_classes is not None and self.classes and num_classes != len(self.classes):
      raise ValueError(f'num_classes={num_classes}: expected {len(self.classes)}, the classes '
                       f'of {builder_dir}')
    self.num_classes = len(self.classes) if num_classes is None else num_classes
    self.split_size = info.splits[split].num_examples
    self.num_records = self.split_size if num_records is None else num_records
    if not 0 < self.num_records <= self.split_size:
      raise ValueError(f'num_records={num_records}: expected 1..{self.split_size}, the size '
                       f'of split {split!r} of {builder_dir}')
    self._max_onsets = max_onsets
    self._key = (info.name, info.config_name, str(info.version))
    self._source = None

  def __len__(self) -> int:
    return self.num_records

  def __repr__(self) -> str:  # grain compares it on restore: no paths (data may move).
    name, config, version = self._key
    return (f'PreparedSource(name={name!r}, config={config!r}, version={version!r}, '
            f'split={self._split!r}, num_records={self.num_records}, '
            f'num_classes={self.num_classes}, max_onsets={self._max_onsets})')

  def __getstate__(self):  # grain workers reopen the shards themselves.
    return {**self.__dict__, '_source': None}

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.num_records:
      raise IndexError(f'index {index} out of range for split {self._split!r} of size '
                       f'{self.num_records}')
    if self._source is None:
      self._source = tfds.builder_from_directory(self._dir).as_data_source(self._split)
    record = self._source[int(index)]
    labels = np.asarray(record['labels'], np.float32)
    if labels.size == 0 and self.num_classes:
      labels = np.zeros(self.num_classes, np.float32)
    return dict(
        frames=record['frames'], waveform=record['waveform'],
        label=np.int32(record['label']), labels=labels,
        onsets=np.full(self._max_onsets, -1.0, np.float32), num_onsets=np.int32(0),
        index=np.int32(index), audio_padding=np.int32(record['audio_padding']),
        video_padding=np.int32(record['video_padding']),
        start_seconds=np.float32(record['start_seconds']), file=record['file'])
