"""The TFDS builder that writes a prepared dataset (data/builders.py describes its records).

Its examples come either from decoded chunk files written by data/prepare/preparation.py (the
local, resumable path) or, for Apache Beam, from decoding the layout's items inside the Beam
pipeline (see gmscavp_jax/prepare.py).
"""

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from gmscavp_jax.data import builders
from gmscavp_jax.data import media
from gmscavp_jax.data.prepare import layouts


def decode_item(item: layouts.Item, config: builders.ClipsConfig, num_classes: int) -> dict:
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

  VERSION = tfds.core.Version(builders.DATASET_VERSION)
  RELEASE_NOTES = {
      builders.DATASET_VERSION: 'Decoded frames and mono audio at the config geometry.'}

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
        features=builders.features(config, len(self._classes)),
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
      yield str(key), {**{k: arrays[k][i] for k in builders.FIELDS[:-1]}, 'file': str(key)}


def _beam_examples(items, config: builders.ClipsConfig, num_classes: int):
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


def make_builder(name: str, config: builders.ClipsConfig, data_dir: str,
                 **kwargs) -> ClipsBuilder:
  """A ClipsBuilder named `name` (DATA_DIR/NAME/CONFIG/VERSION); kwargs: classes, layout,
  chunks or items (see ClipsBuilder)."""
  # The config listed as the class's own: tfds then takes it without a warning.
  cls = type(f'Clips_{builders.check_name(name)}', (ClipsBuilder,),
             {'name': name, 'BUILDER_CONFIGS': [config]}, skip_registration=True)
  return cls(config=config, data_dir=data_dir, file_format='array_record', **kwargs)
