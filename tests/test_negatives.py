"""CMMD negatives: each transform on hand-made series, derangements, and make_negatives'
info against a recomputation from the individual transforms."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax.data import negatives
from gmscavp_jax.data import synthetic

# Jitted once per static configuration: op-by-op dispatch compiles every primitive (~3 s).
_make_negatives = jax.jit(negatives.make_negatives,
                          static_argnames=('min_shift', 'max_shift', 'min_split_fraction',
                                           'kinds'))

def test_temporal_shift_moves_an_impulse():
  length, t0 = 10, np.array([0, 3, 9, 5])
  shift = np.array([2, -1, 3, 0])
  x = np.zeros((4, length, 2), np.float32)
  x[np.arange(4), t0] = 1.0
  out = np.asarray(negatives.temporal_shift(jnp.asarray(x), jnp.asarray(shift)))
  for b in range(4):
    expected = np.zeros((length, 2), np.float32)
    expected[(t0[b] + shift[b]) % length] = 1.0
    np.testing.assert_array_equal(out[b], expected)
  np.testing.assert_array_equal(
      negatives.temporal_shift(jnp.asarray(x), jnp.zeros(4, jnp.int32)), x)


def test_segment_swap_pieces():
  x = jnp.arange(3 * 8, dtype=jnp.float32).reshape(3, 8)
  other = -x - 1.0
  split = np.array([2, 5, 7])
  other_first = np.array([True, False, True])
  out = np.asarray(negatives.segment_swap(x, other, jnp.asarray(split),
                                          jnp.asarray(other_first)))
  for b in range(3):
    left, right = (other, x) if other_first[b] else (x, other)
    np.testing.assert_array_equal(out[b, :split[b]], np.asarray(left)[b, :split[b]])
    np.testing.assert_array_equal(out[b, split[b]:], np.asarray(right)[b, split[b]:])


def test_segment_swap_broadcasts_over_feature_axes():
  x = jnp.zeros((2, 4, 3, 2))
  other = jnp.ones((2, 4, 3, 2))
  out = negatives.segment_swap(x, other, jnp.array([1, 3]), jnp.array([False, True]))
  np.testing.assert_array_equal(out[:, :, 0, 0], [[0, 1, 1, 1], [1, 1, 1, 0]])


def test_random_swap():
  x = jnp.arange(6).reshape(3, 2)
  np.testing.assert_array_equal(negatives.random_swap(x, jnp.array([2, 0, 1])),
                                [[4, 5], [0, 1], [2, 3]])


@pytest.mark.parametrize('batch_size', [2, 3, 16])
def test_derangement_has_no_fixed_points(batch_size):
  for seed in range(5):
    partner = np.asarray(negatives.derangement(jax.random.PRNGKey(seed), batch_size))
    assert partner.dtype == np.int32
    np.testing.assert_array_equal(np.sort(partner), np.arange(batch_size))
    assert np.all(partner != np.arange(batch_size))


def test_derangement_needs_two():
  with pytest.raises(ValueError, match='batch_size=1'):
    negatives.derangement(jax.random.PRNGKey(0), 1)


def _random_batch(shape):
  # numpy, not jax.random: the inputs need no tracing, and this skips a compile.
  return jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)


def _recompute(x, info, kinds):
  """Each example's negative from info, by the individual transforms (on the whole batch,
  then picked per example: one dispatch per transform keeps the test fast)."""
  other = negatives.random_swap(x, info['partner'])
  candidates = dict(
      shift=np.asarray(negatives.temporal_shift(x, info['shift'])),
      segment_swap=np.asarray(negatives.segment_swap(x, other, info['split'],
                                                     info['other_first'])),
      random_swap=np.asarray(other))
  return np.stack([candidates[kinds[k]][b] for b, k in enumerate(np.asarray(info['kind']))])


@pytest.mark.parametrize('kinds', [negatives.KINDS, ('random_swap', 'shift')])
def test_make_negatives_info_matches_output(kinds):
  batch, length = 64, 20
  x = _random_batch((batch, length, 3))
  out, info = _make_negatives(jax.random.PRNGKey(1), x, min_shift=2, max_shift=6,
                              kinds=kinds)
  assert out.shape == x.shape
  assert {k: v.dtype for k, v in info.items()} == dict(
      kind=jnp.int32, shift=jnp.int32, split=jnp.int32, other_first=jnp.bool_,
      partner=jnp.int32)
  np.testing.assert_array_equal(np.asarray(out), _recompute(x, info, kinds))
  kind = np.asarray(info['kind'])
  assert kind.min() >= 0 and kind.max() < len(kinds)
  assert set(kind.tolist()) == set(range(len(kinds)))  # 64 draws hit every kind.
  magnitude = np.abs(np.asarray(info['shift']))
  assert magnitude.min() >= 2 and magnitude.max() <= 6
  assert np.any(np.asarray(info['shift']) < 0) and np.any(np.asarray(info['shift']) > 0)
  split = np.asarray(info['split'])
  assert split.min() >= 5 and split.max() <= 15  # [0.25 * 20, 0.75 * 20].
  assert np.all(np.asarray(info['partner']) != np.arange(batch))
  # Distinct random inputs: no negative equals its own positive.
  assert np.all(np.any(np.asarray(out) != np.asarray(x), axis=(1, 2)))


def test_make_negatives_under_jit_matches_eager():
  # Same shapes and arguments as test_make_negatives_info_matches_output[kinds0], which
  # checks the jitted output against info: only the eager side compiles here.
  x = _random_batch((64, 20, 3))
  jit_out, jit_info = _make_negatives(jax.random.PRNGKey(3), x, min_shift=2, max_shift=6,
                                      kinds=negatives.KINDS)
  eager_out, eager_info = negatives.make_negatives(jax.random.PRNGKey(3), x, min_shift=2,
                                                   max_shift=6)
  np.testing.assert_array_equal(jit_out, eager_out)
  for key in eager_info:
    np.testing.assert_array_equal(jit_info[key], eager_info[key])


@pytest.mark.parametrize('kwargs, match', [
    (dict(min_shift=0, max_shift=3), 'min_shift=0'),
    (dict(min_shift=4, max_shift=3), 'max_shift=3'),
    (dict(min_shift=1, max_shift=10), r'L=10'),
    (dict(min_shift=1, max_shift=3, min_split_fraction=0.6), 'min_split_fraction'),
    (dict(min_shift=1, max_shift=3, min_split_fraction=0.0), 'min_split_fraction'),
    (dict(min_shift=1, max_shift=3, kinds=()), 'kinds'),
    (dict(min_shift=1, max_shift=3, kinds=('shift', 'flip')), 'kinds'),
    (dict(min_shift=1, max_shift=3, kinds=('shift', 'shift')), 'kinds'),
])
def test_make_negatives_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    negatives.make_negatives(jax.random.PRNGKey(0), jnp.zeros((4, 10)), **kwargs)


def test_make_negatives_bad_shapes():
  with pytest.raises(ValueError, match='x must be'):
    negatives.make_negatives(jax.random.PRNGKey(0), jnp.zeros(10), min_shift=1, max_shift=2)
  with pytest.raises(ValueError, match='batch_size=1'):
    negatives.make_negatives(jax.random.PRNGKey(0), jnp.zeros((1, 10)), min_shift=1,
                             max_shift=2)


def test_no_positive_left_in_the_negatives():
  # Every value unique: a position of a negative equals its positive only where it kept it.
  batch, length = 64, 20
  x = jnp.arange(batch * length * 3, dtype=jnp.float32).reshape(batch, length, 3)
  out, info = _make_negatives(jax.random.PRNGKey(5), x, min_shift=2, max_shift=6,
                              kinds=negatives.KINDS)  # The shapes compiled above.
  kept = np.all(np.asarray(out) == np.asarray(x), axis=2).sum(axis=1)  # (B,) positions kept.
  kind, split = np.asarray(info['kind']), np.asarray(info['split'])
  other_first = np.asarray(info['other_first'])
  for b in range(batch):
    name = negatives.KINDS[kind[b]]
    if name == 'segment_swap':  # Only its own piece is left, the other is the partner's.
      assert kept[b] == (length - split[b] if other_first[b] else split[b])
      assert 0 < kept[b] < length
    else:  # Shifted by 2-6 of 20 steps, or another clip: nothing of it at its own time.
      assert kept[b] == 0, (name, b)


def test_shift_steps_from_seconds():
  assert negatives.shift_steps(0.2, 1.0, 8.0) == (2, 8)  # runlocal: 8 fps video features.
  assert negatives.shift_steps(0.2, 1.0, 4.0) == (1, 4)  # Full size: 0.8 frames rounds to 1.
  assert negatives.shift_steps(0.01, 0.05, 8.0) == (1, 1)  # A shift moves at least one step.
  assert negatives.shift_steps(0.2, 1.0, 8000) == (1600, 8000)  # The evaluator's waveforms.


def test_hue_rotate_turns_each_clip_by_one_angle_and_keeps_saturation_and_value():
  frames = np.random.default_rng(4).integers(0, 256, (6, 2, 3, 3, 3)).astype(np.uint8)
  frames[:, :, 0, 0] = 77  # A grey pixel has no hue to turn.
  turned, angle = negatives.hue_rotate(jax.random.key(1), jnp.asarray(frames), (90.0, 270.0))
  turned, angle = np.asarray(turned), np.asarray(angle)
  assert turned.dtype == np.uint8 and turned.shape == frames.shape
  assert set(angle) == {90.0, 270.0}  # Both angles over 6 clips, this key.
  for b in range(frames.shape[0]):
    for idx in np.ndindex(*frames.shape[1:4]):
      h, s, v = colorsys.rgb_to_hsv(*(frames[b][idx] / 255.0))
      want = np.array(colorsys.hsv_to_rgb((h + angle[b] / 360.0) % 1.0, s, v)) * 255.0
      np.testing.assert_allclose(turned[b][idx], want, atol=0.5 + 1e-3)
  np.testing.assert_array_equal(turned[:, :, 0, 0], 77)
  floats, _ = negatives.hue_rotate(jax.random.key(1), jnp.asarray(frames / 255.0), (90.0, 270.0))
  np.testing.assert_allclose(np.asarray(floats) * 255.0, turned, atol=0.5 + 1e-3)


def test_quarter_turns_map_the_synthetic_class_colours_onto_each_other():
  """The default hue_negative_angles make the synthetic world's negatives look like clips of
  its other classes: every class colour turned by 90, 180 or 270 degrees is a class colour."""
  colours = synthetic.SyntheticAVSource(split='train', num_clips=4, seed=0).class_colours
  for angle in (90.0, 180.0, 270.0):
    turned, _ = negatives.hue_rotate(jax.random.key(0), jnp.asarray(colours[:, None]), (angle,))
    gaps = np.abs(np.asarray(turned)[:, 0, None] - colours[None]).max(axis=-1)  # (K, K)
    assert np.all(gaps.min(axis=1) < 1e-5)
    assert not np.allclose(np.asarray(turned)[:, 0], colours)


@pytest.mark.parametrize('angles', [(), (0.0,), (90.0, 360.0)])
def test_hue_rotate_bad_angles(angles):
  with pytest.raises(ValueError, match='hue turns'):
    negatives.hue_rotate(jax.random.key(0), jnp.zeros((1, 1, 2, 2, 3)), angles)
