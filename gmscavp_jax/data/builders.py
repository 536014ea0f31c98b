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

The builder's examples come either from decoded chunk files written by
data/prepare/preparation.py (the local, resumable path) or, for Apache Beam, from decoding the
layout's items inside the Beam pipeline (see gmscavp_jax/prepare.py).
"""

import dataclasses
import os
import re

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from gmscavp_jax.data.prepare import layouts
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


def decode_item(item: layouts.Item, config: ClipsConfig, num_classes: int) -> dict:
  """Decodes one clip into a record (module docstring); raises media.MediaError if bad."""
  # Either stream may be a little short (real "10 s" clips often are): read_clip pads up to
  # 10% of the clip and says how much, so a user can filter on it.
  clip = media.read_clip(item.path, num_frames=config.num_frames, fps=config.fps,
                         image_size=config.image_size, sample_rate=config.sample_rate,
                         num_samples=config.num_samples, start_seconds=item.start_seconds)
  if not np.all(np.isfinite(clip.waveform)):
    raise media.MediaError(item.path, 'has NaN or infinite audio samples')
  labels = np.zeros(num_classes, np.float32)
  labels[list(item.labels)] = 1.0
  return dict(
      frames=clip.frames,
      # AAC decoding overshoots full scale slightly; records promise [-1, 1].
      waveform=np.clip(clip.waveform, -1.0, 1.0).astype(np.float32),
      label=np.int32(item.labels[0] if item.labels else -1), labels=labels,
      audio_padding=np.int32(clip.audio_padding), video_padding=np.int32(clip.video_padding),
      start_seconds=np.float32(item.start_seconds), file=item.key)


class ClipsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builds one prepared dataset; make instances with `make_builder` (it sets the name)."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {DATASET_VERSION: 'Decoded frames and mono audio at the config geometry.'}

  def __init__(self, *, classes=(), layout: str = '', chunks: dict | None = None,
               items: dict | None = None, **kwargs):
    """`chunks` ({split: [chunk .npz paths]}) or `items` ({split: [Item]}, for Beam)."""
    self._classes, self._layout = tuple(classes), layout
    self._chunks, self._items = chunks, items
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Audio-visual clips of a {self._layout or "prepared"} layout, '
                    'decoded by gmscavp_jax.prepare.',
        features=features(config, len(self._classes)),
        metadata=tfds.core.MetadataDict(classes=list(self._classes), layout=self._layout,
                                        geometry=config.geometry()),
        # grain shuffles at read time; keeping the chunks' order skips tfds' shuffle pass.
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # The videos are local: nothing to download.
    if self._items is not None:
      return {split: self._generate_examples(items=items)
              for split, items in self._items.items() if items}
    if self._chunks is None:
      raise ValueError(f'{self.name}: expected decoded chunks or items to build from')
    return {split: self._generate_examples(chunks=paths)
            for split, paths in self._chunks.items() if paths}

  def _generate_examples(self, chunks=None, items=None):
    if items is not None:
      return _beam_examples(items, self.builder_config, len(self._classes))
    return _chunk_examples(chunks)


def _chunk_examples(paths):
  """(key, record) of every decoded clip in the chunk files, in order."""
  for path in paths:
    with np.load(path, allow_pickle=False) as chunk:
      arrays = {k: chunk[k] for k in chunk.files if not k.startswith('failed_')}
    for i, key in enumerate(arrays['key']):  # np.savez reserves the name 'file'.
      yield str(key), {**{k: arrays[k][i] for k in FIELDS[:-1]}, 'file': str(key)}


def _beam_examples(items, config: ClipsConfig, num_classes: int):
  """A Beam PTransform decoding `items` into (position, record); bad files are counted in
  Beam's metrics ('bad_files', by reason) and logged, then skipped."""
  beam = tfds.core.lazy_imports.apache_beam
  # Integer keys: with shuffling disabled tfds orders the records by key (dataset order).
  return ('Create' >> beam.Create(list(enumerate(items)))
          | 'Decode' >> beam.FlatMap(_decode_or_skip, config=config, num_classes=num_classes))


def _decode_or_skip(position_item, *, config, num_classes):
  """[(position, record)], or [] for a bad file (runs on the Beam workers)."""
  beam = tfds.core.lazy_imports.apache_beam
  position, item = position_item
  try:
    return [(position, decode_item(item, config, num_classes))]
  except media.MediaError as e:
    beam.metrics.Metrics.counter('bad_files', e.reason.split(':')[0]).inc()
    logging.warning('skipped %s', e)
    return []


def make_builder(name: str, config: ClipsConfig, data_dir: str, **kwargs) -> ClipsBuilder:
  """A ClipsBuilder named `name` (DATA_DIR/NAME/CONFIG/VERSION); kwargs: classes, layout,
  chunks or items (see ClipsBuilder)."""
  # The config listed as the class's own: tfds then takes it without a warning.
  cls = type(f'Clips_{check_name(name)}', (ClipsBuilder,),
             {'name': name, 'BUILDER_CONFIGS': [config]}, skip_registration=True)
  return cls(config=config, data_dir=data_dir, file_format='array_record', **kwargs)


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
