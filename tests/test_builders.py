"""TFDS builders of prepared datasets (data/builders.py) and the pipeline reading them."""

import pickle

import numpy as np
import pytest

from gmscavp_jax.core import config_validation
from gmscavp_jax.data import builders
from gmscavp_jax.data import media_writing
from gmscavp_jax.data import pipeline
from gmscavp_jax.data.prepare import clips_builder
from gmscavp_jax.data.prepare import layouts
from gmscavp_jax.data.prepare import preparation
from gmscavp_jax.infra import errors
from tests.conftest import tiny_config

SR, FPS, T, SIZE = 8000, 8.0, 8, 32
GEOMETRY = builders.clips_config(T, FPS, SIZE, SR)


def write_clip(path, seed: int, *, seconds: float = 1.0, audio: bool = True,
               silent_tail: float = 0.0) -> str:
  """A tiny mp4 of `seconds`: one solid colour (by seed), a tone whose last `silent_tail`
  seconds are silence, at 8 fps, 32x32, 8 kHz."""
  rng = np.random.default_rng(seed)
  colour = rng.integers(40, 215, 3, dtype=np.uint8)
  frames = np.broadcast_to(colour, (int(round(seconds * FPS)), SIZE, SIZE, 3)).copy()
  t = np.arange(int(seconds * SR)) / SR
  waveform = (0.5 * np.sin(2 * np.pi * (300 + 40 * seed) * t)).astype(np.float32)
  waveform[len(t) - int(silent_tail * SR):] = 0.0
  media_writing.write_video(path, frames, FPS, waveform if audio else None, SR)
  return str(path)


def test_config_names_and_geometry_checks():
  assert GEOMETRY.name == '8f_8fps_32px_8000hz' and GEOMETRY.num_samples == 8000
  assert builders.config_name(16, 7.5, 64, 16000) == '16f_7p5fps_64px_16000hz'
  assert builders.clips_config(40, 4.0, 224, 8000).num_samples == 80000
  with pytest.raises(ValueError, match='num_frames=0: expected a positive integer'):
    builders.clips_config(0, 8.0, 32, 8000)
  with pytest.raises(ValueError, match='fps=0.0: expected a positive frame rate'):
    builders.clips_config(8, 0.0, 32, 8000)
  with pytest.raises(ValueError, match="'VGG Sound': expected lower_snake_case"):
    builders.check_name('VGG Sound')


def test_decode_item_gives_a_record(tmp_path):
  path = write_clip(tmp_path / 'a.mp4', 1)
  item = layouts.Item(key='a.mp4', path=path, start_seconds=0.0, labels=(2, 0), split='train')
  record = clips_builder.decode_item(item, GEOMETRY, num_classes=3)
  assert set(record) == set(builders.FIELDS)
  assert record['frames'].shape == (T, SIZE, SIZE, 3) and record['frames'].dtype == np.uint8
  assert record['waveform'].shape == (SR,) and record['waveform'].dtype == np.float32
  assert np.abs(record['waveform']).max() <= 1.0
  assert record['label'] == 2 and record['label'].dtype == np.int32
  np.testing.assert_array_equal(record['labels'], [1.0, 0.0, 1.0])
  assert record['audio_padding'] == 0 and record['video_padding'] == 0
  assert record['file'] == 'a.mp4'
  # Padding is what the decoder added, not quiet audio: a silent last half-second is data.
  quiet = write_clip(tmp_path / 'quiet.mp4', 2, silent_tail=0.5)
  item = layouts.Item('quiet.mp4', quiet, 0.0, (), 'test')
  record = clips_builder.decode_item(item, GEOMETRY, num_classes=3)
  assert record['audio_padding'] == 0 and not record['waveform'][-SR // 4:].any()
  assert record['label'] == -1 and not record['labels'].any()


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """DATA_DIR of dataset 'tiny': 6 train and 3 test clips, classes ('a', 'b')."""
  root = tmp_path_factory.mktemp('tiny')
  rows = []
  for i in range(9):
    split = 'test' if i >= 6 else 'train'
    write_clip(root / 'videos' / f'clip{i}.mp4', i)
    rows.append(f'clip{i}.mp4,{"ab"[i % 2]},{split}')
  with open(root / 'meta.csv', 'w', encoding='utf-8') as f:
    f.write('\n'.join(rows) + '\n')
  dataset = layouts.load('generic', str(root / 'videos'), str(root / 'meta.csv'))
  report = preparation.prepare(dataset, data_dir=str(root / 'data'), name='tiny',
                               config=GEOMETRY, workers=0, chunk_size=4, progress=False)
  assert report['ok'] == 9 and report['bad'] == 0
  return dict(data_dir=str(root / 'data'), dir=report['dataset_dir'], dataset=dataset)


def test_prepared_source_serves_records_in_dataset_order(prepared):
  source = builders.PreparedSource(prepared['dir'], 'train', max_onsets=5)
  assert len(source) == 6 and source.classes == ('a', 'b') and source.num_classes == 2
  for i in range(len(source)):
    record = source[i]
    assert record['file'] == f'clip{i}.mp4'.encode()  # tfds' shuffling is disabled.
    assert record['index'] == i and record['index'].dtype == np.int32
    assert record['label'] == i % 2
    np.testing.assert_array_equal(record['labels'], np.eye(2, dtype=np.float32)[i % 2])
    np.testing.assert_array_equal(record['onsets'], np.full(5, -1.0, np.float32))
    assert record['num_onsets'] == 0 and record['num_onsets'].dtype == np.int32
  # The shards hold exactly what decoding gave.
  item = prepared['dataset'].items[3]
  expected = clips_builder.decode_item(item, GEOMETRY, 2)
  np.testing.assert_array_equal(source[3]['frames'], expected['frames'])
  np.testing.assert_array_equal(source[3]['waveform'], expected['waveform'])
  with pytest.raises(IndexError, match='index 6 out of range'):
    source[6]


def test_prepared_source_repr_pickle_and_limits(prepared):
  source = builders.PreparedSource(prepared['dir'], 'test', max_onsets=4, num_records=2)
  assert repr(source) == ("PreparedSource(name='tiny', config='8f_8fps_32px_8000hz', "
                          "version='1.0.0', split='test', num_records=2, num_classes=2, "
                          'max_onsets=4)')
  assert prepared['data_dir'] not in repr(source)  # A moved data dir restores the iterator.
  copy = pickle.loads(pickle.dumps(source))
  assert len(copy) == 2 and copy[1]['file'] == b'clip7.mp4'
  with pytest.raises(ValueError, match="num_records=4: expected 1..3, the size of split 'test'"):
    builders.PreparedSource(prepared['dir'], 'test', max_onsets=4, num_records=4)
  with pytest.raises(ValueError, match='num_classes=5: expected 2'):
    builders.PreparedSource(prepared['dir'], 'test', max_onsets=4, num_classes=5)
  with pytest.raises(KeyError, match="no split 'validation'"):
    builders.PreparedSource(prepared['dir'], 'validation', max_onsets=4)


def test_find_prepared_says_what_is_there(prepared):
  assert builders.find_prepared(prepared['data_dir'], 'tiny', GEOMETRY) == prepared['dir']
  with pytest.raises(builders.NotPreparedError, match=r"'vgg' is not prepared .*found: "
                     r"\['tiny'\]"):
    builders.find_prepared(prepared['data_dir'], 'vgg', GEOMETRY)
  other = builders.clips_config(16, 8.0, 64, 8000)
  with pytest.raises(builders.NotPreparedError, match=r"16 frames at 8 fps, 64x64.*prepared: "
                     r"\['8f_8fps_32px_8000hz'\]"):
    builders.find_prepared(prepared['data_dir'], 'tiny', other)


def _config(prepared, **overrides):
  config = tiny_config('msa', **{'data.name': 'tiny', 'data.data_dir': prepared['data_dir'],
                                 'data.num_classes': 2, 'train.batch_size': 4,
                                 'eval.num_test_clips': 2, 'eval.batch_size': 2,
                                 'eval.num_generate_clips': 2, 'eval.num_summary_clips': 1,
                                 **overrides})
  return config


def test_make_source_reads_the_prepared_set_through_grain(prepared):
  config = _config(prepared)
  config_validation.validate(config)
  assert (config.data.num_frames, config.data.fps, config.data.image_size,
          config.audio.sample_rate) == (T, FPS, SIZE, SR)  # The prepared geometry.
  batch = next(iter(pipeline.train_loader(config)))
  expected = dict(frames=((4, T, SIZE, SIZE, 3), np.uint8), waveform=((4, SR), np.float32),
                  label=((4,), np.int32), labels=((4, 2), np.float32),
                  onsets=((4, config.data.max_onsets), np.float32),
                  num_onsets=((4,), np.int32), index=((4,), np.int32))
  assert {k: (batch[k].shape, batch[k].dtype) for k in pipeline.TRAIN_FIELDS} == expected
  assert set(batch['index'].tolist()) <= set(range(6)) and (batch['onsets'] == -1).all()
  # Evaluation reads the first eval.num_test_clips test clips, in order.
  batches = list(pipeline.eval_loader(config))
  assert [b['index'].tolist() for b in batches] == [[0, 1]]
  assert [f.decode() for f in batches[0]['file']] == ['clip6.mp4', 'clip7.mp4']


@pytest.mark.parametrize('overrides,message', [
    ({'data.data_dir': None}, r"config.data.data_dir=None: expected the --data_dir where "
                              r"dataset 'tiny'"),
    ({'data.name': 'vgg'}, r"config.data.name='vgg' .*not prepared under"),
    ({'data.fps': 4.0}, r'8 frames at 4 fps.*prepared: \[.8f_8fps_32px_8000hz.\]'),
    ({'data.num_classes': 3}, r'config.data.num_classes=3: expected 2, the classes'),
    ({'eval.num_test_clips': 4}, r"config.eval.num_test_clips=4: expected at most 3, the clips "
                                 r"of split 'test' of "),
])
def test_make_source_errors_name_the_field(prepared, overrides, message):
  with pytest.raises(errors.ConfigError, match=message):
    pipeline.make_source(_config(prepared, **overrides), 'test')


def test_validation_accepts_dataset_names_only():
  config = tiny_config('msa', **{'data.name': 'my_set', 'data.data_dir': '/data'})
  config_validation.validate(config)
  config.data.name = 'My Set'
  with pytest.raises(errors.ConfigError, match="config.data.name='My Set': "
                     "expected 'synthetic' or the lower_snake_case name"):
    config_validation.validate(config)


def test_a_split_over_the_memory_buffer_spills_to_disk_without_tensorflow(tmp_path,
                                                                         monkeypatch):
  # tfds' Shuffler spills a split beyond MAX_MEM_BUFFER_SIZE (1 GB) to bucket files through
  # tf.io.gfile; at 0 bytes every record takes that path, as in a full-size dataset.
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 0)
  for i in range(3):
    write_clip(tmp_path / 'videos' / f'c{i}.mp4', i)
  (tmp_path / 'meta.csv').write_text(
      ''.join(f'c{i}.mp4,a,{"test" if i == 2 else "train"}\n' for i in range(3)))
  dataset = layouts.load('generic', str(tmp_path / 'videos'), str(tmp_path / 'meta.csv'))
  tf_before = shuffle.tf
  report = preparation.prepare(dataset, data_dir=str(tmp_path / 'data'), name='spilled',
                               config=GEOMETRY, workers=0, progress=False)
  assert shuffle.tf is tf_before  # The shim is gone after the build.
  source = builders.PreparedSource(report['dataset_dir'], 'train', max_onsets=2)
  assert [source[i]['file'] for i in range(2)] == [b'c0.mp4', b'c1.mp4']
  expected = clips_builder.decode_item(dataset.items[1], GEOMETRY, 1)
  np.testing.assert_array_equal(source[1]['frames'], expected['frames'])
