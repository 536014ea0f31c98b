"""The spoken/handwritten digits set: valid generic-layout files, image bright exactly while a
digit sounds, and test speakers and images kept out of train. Needs no scikit-learn: the test
passes its own tiny images."""

import os

import numpy as np
import pytest
import scipy.io.wavfile

from gmscavp_jax.data import media
from gmscavp_jax.data.prepare import digits_av
from gmscavp_jax.data.prepare import layouts

GEOMETRY = digits_av.Geometry(num_frames=16, fps=8.0, image_size=32, sample_rate=8000)


def _fake_fsdd(folder):
  """10 digits x 2 speakers of 0.3 s tones with 50 ms of silence around each."""
  for digit in range(10):
    for speaker in ('ann', 'bob'):
      t = np.arange(2400) / 8000
      tone = 0.5 * np.sin(2 * np.pi * (300 + 100 * digit) * t)
      wave = np.concatenate([np.zeros(400), tone, np.zeros(400)])
      scipy.io.wavfile.write(os.path.join(folder, f'{digit}_{speaker}_0.wav'), 8000,
                             np.round(wave * 32767).astype(np.int16))


def _images():
  """(20, 8, 8) blocks in [0, 1] and their digits 0-9 (two images per digit)."""
  images = np.zeros((20, 8, 8), np.float32)
  images[:, 2:6, 2:6] = 1.0
  return images, np.arange(20) % 10


def test_utterances_are_trimmed_and_placed_inside_the_clip(tmp_path):
  _fake_fsdd(tmp_path)
  wave = digits_av.load_utterance(str(tmp_path / '1_ann_0.wav'), 8000, max_seconds=1.0)
  assert abs(len(wave) - 2400) <= 80 and np.max(np.abs(wave)) == pytest.approx(1.0)
  rng = np.random.default_rng(0)
  for _ in range(20):
    intervals = digits_av.place_utterances([2400, 4000], GEOMETRY, rng)
    (s0, e0), (s1, e1) = intervals
    assert 0 <= s0 and e0 + 0.25 <= s1 + 1e-9 and e1 <= 2.0
  assert digits_av.place_utterances([9000, 9000], GEOMETRY, rng) is None


def test_image_is_bright_exactly_while_a_digit_sounds():
  rng = np.random.default_rng(1)
  utterances = [np.ones(2400, np.float32), np.ones(3000, np.float32)]
  image = np.ones((8, 8), np.float32)
  frames, waveform, intervals = digits_av.render_clip(utterances, image, GEOMETRY, rng, dim=0.2)
  assert frames.shape == (16, 32, 32, 3) and waveform.shape == (16000,)
  # Sound exactly inside the intervals.
  sounding = np.zeros(16000, bool)
  for start, end in intervals:
    sounding[int(round(start * 8000)):int(round(end * 8000))] = True
  assert np.all(waveform[sounding] != 0) and np.all(waveform[~sounding] == 0)
  # A frame is bright iff its centre time is sounding.
  centre_sounds = sounding[((np.arange(16) + 0.5) / 8 * 8000).astype(int)]
  peaks = frames.max(axis=(1, 2, 3))
  assert centre_sounds.any() and not centre_sounds.all()
  np.testing.assert_array_equal(peaks == 255, centre_sounds)
  np.testing.assert_array_equal(peaks == round(0.2 * 255), ~centre_sounds)


def test_build_writes_a_generic_layout_set_with_held_out_speakers(tmp_path):
  fsdd, out = tmp_path / 'fsdd', tmp_path / 'out'
  fsdd.mkdir()
  _fake_fsdd(fsdd)
  recordings = digits_av.find_recordings(str(fsdd))
  images, labels = _images()
  with pytest.raises(ValueError, match='no recording or image of digits'):
    digits_av.build(str(out), [r for r in recordings if r.digit != 5], images, labels,
                    GEOMETRY, num_train=10, num_test=10, test_speakers=('bob',))
  with pytest.raises(ValueError, match='test_speakers'):
    digits_av.build(str(out), recordings, images, labels, GEOMETRY, num_train=10,
                    num_test=10, test_speakers=('nobody',))
  summary = digits_av.build(str(out), recordings, images, labels, GEOMETRY, num_train=10,
                            num_test=10, test_speakers=('bob',), test_image_share=0.5)
  dataset = layouts.load('generic', str(out), summary['csv'])
  assert dataset.classes == tuple('0123456789')
  assert [len(dataset.split_items(s)) for s in ('train', 'test')] == [10, 10]
  assert [item.labels for item in dataset.split_items('test')] == [(d,) for d in range(10)]
  agree = []
  for item in dataset.items:
    frames = media.read_video_clip(item.path, num_frames=16, fps=8.0, image_size=32)
    audio = media.read_audio(item.path, sample_rate=8000, num_samples=16000)
    # The decoded image is bright on some frames and dim on others, and bright where the
    # decoded audio is loud at the frame's centre time (+-5 ms).
    brightness = frames.max(axis=(1, 2, 3)).astype(int)
    assert brightness.max() > 200 and brightness.min() < 100
    centres = ((np.arange(16) + 0.5) * 1000).astype(int)
    loud = [np.sqrt(np.mean(audio[c - 40:c + 40] ** 2)) > 0.05 for c in centres]
    agree.append((brightness > 150) == np.array(loud))
  # AAC smears a few ms at an utterance's edges, where a centre may fall.
  assert np.mean(agree) >= 0.95, np.mean(agree)
