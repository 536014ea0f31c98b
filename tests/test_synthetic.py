"""Tests of the embedded synthetic audio-visual benchmark (DESIGN §4)."""

import hashlib
import pickle

import numpy as np
import pytest

from configs import common
from gmscavp_jax.data import audio
from gmscavp_jax.data import synthetic
from gmscavp_jax.evaluators import suite

# Tiny sizes: 2 s clips of 8 frames at 4 fps, 24x24 pixels, 8 kHz audio.
TINY = dict(num_clips=12, seed=0, num_classes=16, num_frames=8, fps=4.0, image_size=24,
            sample_rate=8000, max_onsets=32)
SECONDS, NUM_SAMPLES = 2.0, 16000


def _source(**overrides):
  return synthetic.SyntheticAVSource(**dict(dict(TINY, split='train'), **overrides))


@pytest.fixture(scope='module')
def source():
  return _source()


def _assert_clips_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _differs(a, b):
  return not (np.array_equal(a['frames'], b['frames']) and
              np.array_equal(a['waveform'], b['waveform']))


def test_shapes_and_dtypes(source):
  clip = source[3]
  expected = dict(frames=((8, 24, 24, 3), np.uint8), waveform=((NUM_SAMPLES,), np.float32),
                  label=((), np.int32), labels=((16,), np.float32),
                  visible=((16,), np.float32), flashing=((16,), np.float32),
                  onsets=((32,), np.float32),
                  num_onsets=((), np.int32), index=((), np.int32))
  assert {k: (v.shape, v.dtype) for k, v in clip.items()} == expected
  assert int(clip['index']) == 3
  assert len(source) == 12 and source.num_samples == NUM_SAMPLES


def test_visible_classes_are_every_objects_and_leave_the_clips_as_they_were():
  test = _source(split='test', num_clips=4)
  clip = test[0]
  assert clip['visible'][clip['label']] == 1.0  # The first sounding object is on screen.
  for i in range(len(test)):
    c = test[i]
    assert np.all(c['visible'] >= c['labels']) and set(np.unique(c['visible'])) <= {0.0, 1.0}
    assert 1 <= c['visible'].sum() <= 3  # 1-3 objects, distractors may repeat a class.
  assert any(test[i]['visible'].sum() > test[i]['labels'].sum() for i in range(len(test)))
  # Every other field of these clips, bit for bit as before `visible` existed: the digest was
  # taken from the code without it.
  digest = hashlib.sha256()
  for i in range(len(test)):
    c = test[i]
    for key in sorted(set(c) - {'visible', 'flashing'}):
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(c[key]).tobytes())
  assert digest.hexdigest() == (
      '016fb52b634de5186a439542508bca3aaac443a07f9f7009b3b6afbd7237733c')


def test_only_sounding_classes_flash_and_the_video_oracle_counts_them():
  """flashing (K,) <= labels; the video oracle is right on a clip with a flash and right
  with probability |sounding| / |visible| on one without."""
  test = _source(split='test', num_clips=24)
  seen = 0
  for i in range(len(test)):
    c = test[i]
    assert np.all(c['flashing'] <= c['labels']) and set(np.unique(c['flashing'])) <= {0., 1.}
    seen += int(c['flashing'].any())
  assert 0 < seen < len(test)  # Some clips have a flash, some have only bounces.
  assert suite.video_oracle_class_acc(np.eye(3)[[0, 1]], np.array([[1, 1, 0], [1, 1, 1]]),
                                      np.array([[0, 0, 0], [0, 1, 0]])) == 75.0


def test_same_key_gives_identical_clips(source):
  _assert_clips_equal(source[5], source[5])
  _assert_clips_equal(source[5], _source()[5])  # A fresh instance, as in a grain worker.
  _assert_clips_equal(source[5], pickle.loads(pickle.dumps(source))[5])


def test_different_index_split_or_seed_gives_different_clips(source):
  assert _differs(source[0], source[1])
  assert _differs(source[0], _source(split='test')[0])
  assert _differs(source[0], _source(split='validation')[0])
  assert _differs(source[0], _source(seed=1)[0])


def test_class_definitions_depend_on_seed_only(source):
  other_split = _source(split='test', num_clips=1)
  for a, b in zip(source.kernels, other_split.kernels):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(source.class_f0, other_split.class_f0)
  assert not np.array_equal(source.class_f0, _source(seed=1).class_f0)


def test_timbres_are_distinct(source):
  f0 = np.sort(source.class_f0)
  assert np.all(f0[1:] / f0[:-1] > 1.08)  # At least ~1.3 semitones apart.
  # Looks: every class has its own (shape, colour) pair.
  looks = {(int(s), tuple(np.round(c, 3))) for s, c in
           zip(source.class_shapes, source.class_colours)}
  assert len(looks) == source.num_classes


def test_onsets_sorted_in_range_and_padded(source):
  for i in range(len(source)):
    clip = source[i]
    n = int(clip['num_onsets'])
    onsets = clip['onsets']
    assert 2 <= n <= 32  # Every sounding object has at least two events.
    assert np.all(np.diff(onsets[:n]) >= 0)
    assert np.all((onsets[:n] >= 0) & (onsets[:n] < SECONDS))
    assert np.all(onsets[n:] == -1.0)


def test_onsets_beyond_max_are_dropped():
  full, capped = _source()[2], _source(max_onsets=1)[2]
  assert capped['onsets'].shape == (1,) and int(capped['num_onsets']) == 1
  assert capped['onsets'][0] == full['onsets'][0]
  np.testing.assert_array_equal(capped['waveform'], full['waveform'])


def test_audio_energy_is_high_after_onsets(source):
  window = 400  # 50 ms at 8 kHz.
  for i in range(len(source)):
    clip = source[i]
    y = clip['waveform']
    assert np.abs(y).max() <= 1.0
    windows = y[:len(y) // window * window].reshape(-1, window)
    quietest = np.sort(np.sqrt(np.mean(windows**2, axis=1)))[:3].mean()
    for onset in clip['onsets'][:int(clip['num_onsets'])]:
      start = int(round(onset * source.sample_rate))
      after = y[start:start + window]
      if len(after) < window // 4:  # Too close to the end of the clip to judge.
        continue
      assert np.sqrt(np.mean(after**2)) > 2.0 * quietest, (i, onset)


def test_labels_are_the_sounding_classes(source):
  for i in range(len(source)):
    clip = source[i]
    label, labels = int(clip['label']), clip['labels']
    assert 0 <= label < source.num_classes
    assert labels[label] == 1.0
    assert set(np.unique(labels)) <= {0.0, 1.0} and 1 <= labels.sum() <= 2


def test_frames_show_objects(source):
  frames = source[0]['frames'].reshape(8, -1, 3)
  for frame in frames:  # Background plus at least one object in every frame.
    assert len(np.unique(frame, axis=0)) > 1


def test_wall_impacts_are_exact():
  # x starts 0.3 into a span of 0.8 moving at +1/s: walls at s = 0.8 (t = 0.5) and
  # s = 1.6 (t = 1.3); y moves at -0.5/s from 0.2: wall at s = 0 (t = 0.4).
  times, speeds = synthetic._wall_impacts(
      np.array([0.4, 0.3]), np.array([1.0, -0.5]), np.array([0.1, 0.1]),
      np.array([0.8, 0.8]), 1.5)
  np.testing.assert_allclose(times, [0.4, 0.5, 1.3])
  np.testing.assert_allclose(speeds, [0.5, 1.0, 1.0])


def test_repr_is_stable_and_names_parameters(source):
  text = repr(source)
  assert text == repr(_source())
  assert "split='train'" in text and 'seed=0' in text and 'num_clips=12' in text
  assert text != repr(_source(seed=1)) and text != repr(_source(split='test'))


def test_bad_index_raises(source):
  for index in (-1, 12, 100):
    with pytest.raises(IndexError, match=rf'index {index} .* size 12'):
      source[index]
  assert int(source[np.int64(11)]['index']) == 11


@pytest.mark.parametrize('argument, value', [
    ('split', 'dev'), ('num_clips', 0), ('num_frames', 0), ('image_size', -4),
    ('num_classes', 0), ('sample_rate', 0), ('max_onsets', 0), ('fps', 0.0), ('seed', -1),
])
def test_bad_arguments_raise(argument, value):
  with pytest.raises(ValueError, match=argument):
    _source(**{argument: value})


def test_log_mel_path_matches_audio_module():
  config = common.apply_variant(common.base_config(), 'runlocal')
  src = _source(audio_cfg=config.audio)
  clip = src[0]
  assert clip['log_mel'].shape == (80, 128) and clip['log_mel'].dtype == np.float32
  np.testing.assert_array_equal(
      clip['log_mel'], np.asarray(audio.log_mel_from_config(clip['waveform'], config.audio)))
  assert 'n_mels' in repr(src)


def test_from_config():
  config = common.apply_variant(common.base_config(), 'runlocal')
  train = synthetic.from_config(config, 'train')
  test = synthetic.from_config(config, 'test')
  assert len(train) == config.data.num_train_clips
  assert len(test) == len(synthetic.from_config(config, 'validation'))
  assert len(test) == config.eval.num_test_clips
  assert train[0]['frames'].shape == (16, 64, 64, 3)
  assert train[0]['waveform'].shape == (16000,)
  with pytest.raises(ValueError, match='split'):
    synthetic.from_config(config, 'dev')
