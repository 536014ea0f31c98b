"""Shapes, classifier-free-guidance nulls and gradients of the MSD UNet (tiny sizes)."""

import functools
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gmscavp_jax.models import clip_time
from gmscavp_jax.models import layers
from gmscavp_jax.models import unet
from gmscavp_jax.models import unet_blocks

B, D, K = 3, 16, 5
TA, F = 37, 19  # Odd on purpose: the UNet pads and crops.
# Video scales as the pyramid makes them: 8 frames, a 2x2 grid at scale 1, then clip level.
VIDEO_SHAPES = [(B, 8, 1, D), (B, 4, 4, D), (B, 1, 1, D)]


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.unet = ml_collections.ConfigDict(dict(
      widths=(16, 32), attention_levels=(1,), level_scales=(0, 1), blocks_per_level=1,
      num_groups=4, num_heads=2, stem_patch=(2, 8), aligned_conditioning=True,
      label_condition=False, pixel_skip=False))
  c.unet.update(overrides)
  c.data = ml_collections.ConfigDict(dict(num_frames=VIDEO_SHAPES[0][1], num_classes=K))
  return c


# The tests that run (not just trace) the UNet use one level: compiling dominates them, and
# a 1-level UNet has every kind of block (ResBlocks, middle self- and cross-attention, the
# global and aligned paths). Scale 0, with a 2x2 grid, feeds the aligned path and the
# cross-attention; scale 1 is the clip level.
RUN_LEVELS = dict(widths=(16,), attention_levels=(), level_scales=(0,))
RUN_VIDEO_SHAPES = [(B, 8, 4, D), (B, 1, 1, D)]


def inputs(seed=0, ta=TA, f=F, video_shapes=VIDEO_SHAPES):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, ta, f)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, (B,)), jnp.int32)
  video = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in video_shapes]
  return x, t, video


def random_params(model, x, t, video, seed=0):
  """Every parameter random (zero-initialised output layers included), without compiling init.

  jit(init) costs ~10-25 s of compilation on 2 CPU cores; eval_shape gives the tree for free.
  A nonzero output layer is also what makes the condition visible in the output.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, video)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, s.dtype), shapes)


@pytest.mark.parametrize('widths,attention_levels,level_scales,ta,f', [
    ((16,), (0,), (0,), TA, F),
    ((16, 32), (1,), (0, 1), TA, F),
    ((16, 32), (1,), (0, 1), 80, 128),
    ((16, 32, 32), (1, 2), (0, 1, 2), TA, F),
])
def test_output_shape_equals_input_shape(widths, attention_levels, level_scales, ta, f):
  model = unet.build_unet(tiny_config(widths=widths, attention_levels=attention_levels,
                                      level_scales=level_scales))
  x, t, video = inputs(ta=ta, f=f)
  variables = jax.eval_shape(model.init, jax.random.key(0), x, t, video)
  for v in (video, None):
    out = jax.eval_shape(model.apply, variables, x, t, v)
    assert out.shape == (B, ta, f) and out.dtype == jnp.float32


def test_params_are_float32_and_tiny_count():
  model = unet.build_unet(tiny_config(), dtype=jnp.bfloat16)
  x, t, video = inputs()
  params = jax.eval_shape(model.init, jax.random.key(0), x, t, video)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  count = sum(p.size for p in jax.tree.leaves(params))
  # Regression value for the tiny config; update it deliberately when the architecture changes.
  assert count == 150_176, count
  # The video-shaped embeddings follow the scales given at init (T_l and S_l of scale 1).
  assert params['tokens_1']['time_embedding'].shape == (4, D)
  assert params['tokens_1']['space_embedding'].shape == (4, D)
  assert 'tokens_0' not in params  # Level 0 has no attention: scale 0 only feeds `aligned`.


def test_rejects_bad_level_config():
  x, t, video = inputs()
  with pytest.raises(ValueError, match='level_scales'):
    model = unet.build_unet(tiny_config(level_scales=(0,)))
    jax.eval_shape(model.init, jax.random.key(0), x, t, video)
  with pytest.raises(ValueError, match='video scales'):
    model = unet.build_unet(tiny_config(level_scales=(0, 3)))
    jax.eval_shape(model.init, jax.random.key(0), x, t, video)
  with pytest.raises(ValueError, match='stem_patch'):  # 4*8 pixels > 16 features.
    model = unet.build_unet(tiny_config(stem_patch=(4, 8)))
    jax.eval_shape(model.init, jax.random.key(0), x, t, video)


@pytest.fixture(scope='module')
def tiny():
  """The tiny model with random params, its inputs, and its jitted output and video gradient.

  One compiled function serves every drop mask (compiling dominates these tests on a CPU):
  it returns the output and the gradient of 0.5 * sum(out^2) w.r.t. the video scales.
  """
  model = unet.build_unet(tiny_config(**RUN_LEVELS))
  x, t, video = inputs(video_shapes=RUN_VIDEO_SHAPES)
  params = random_params(model, x, t, video)

  @jax.jit
  def out_and_grad(video, drop):
    out, vjp = jax.vjp(lambda v: model.apply(params, x, t, v, drop), video)
    return out, vjp(out)[0]

  return model, params, (x, t, video), out_and_grad


def test_dropped_condition_equals_unconditional(tiny):
  model, params, (x, t, video), out_and_grad = tiny
  uncond = jax.jit(lambda p, x, t: model.apply(p, x, t, None))(params, x, t)
  chex.assert_shape(uncond, (B, TA, F))
  chex.assert_tree_all_finite(uncond)
  # video=None is exactly "every example dropped".
  all_dropped, _ = out_and_grad(video, jnp.ones((B,), bool))
  np.testing.assert_allclose(all_dropped, uncond, atol=1e-5, rtol=1e-5)
  # Dropping is per example: only the middle one is unconditional, the others are
  # untouched by their neighbour's drop and differ from the unconditional output.
  cond, _ = out_and_grad(video, jnp.zeros((B,), bool))
  mixed, _ = out_and_grad(video, jnp.array([False, True, False]))
  np.testing.assert_allclose(mixed[1], uncond[1], atol=1e-5, rtol=1e-5)
  for i in (0, 2):
    np.testing.assert_allclose(mixed[i], cond[i], atol=1e-5, rtol=1e-5)
    assert np.abs(np.asarray(mixed[i] - uncond[i])).max() > 1e-2


def test_gradients_reach_every_video_scale_unless_dropped(tiny):
  _, _, (_, _, video), out_and_grad = tiny
  _, grads = out_and_grad(video, jnp.array([False, True, False]))
  # Scale 0 feeds the aligned path and the cross-attention, scale 1 the global embedding.
  for l, g in enumerate(grads):
    chex.assert_shape(g, RUN_VIDEO_SHAPES[l])
    g = np.asarray(g)
    assert np.all(g[1] == 0.0), f'scale {l}: a dropped example got a gradient'
    for i in (0, 2):
      assert np.abs(g[i]).max() > 1e-6, f'scale {l}: no gradient for example {i}'
  # The aligned path sees the mean over space, so only cross-attention makes the gradient
  # differ between the spatial tokens of one frame.
  g0 = np.asarray(grads[0])[0]
  assert np.abs(g0 - g0.mean(axis=1, keepdims=True)).max() > 1e-6


def test_bfloat16_compute_returns_float32(tiny):
  _, params, (x, t, video), out_and_grad = tiny
  model = unet.build_unet(tiny_config(**RUN_LEVELS), dtype=jnp.bfloat16)
  out = jax.jit(model.apply)(params, x, t, video)
  assert out.dtype == jnp.float32 and out.shape == (B, TA, F)
  chex.assert_tree_all_finite(out)
  ref, _ = out_and_grad(video, jnp.zeros((B,), bool))
  # bf16 keeps ~3 significant digits; the tiny net stays close to the float32 result.
  assert np.abs(np.asarray(out - ref)).max() < 0.1 * np.abs(np.asarray(ref)).max()


def test_linear_resample_matrix_aligns_centres():
  # 8 audio steps (instants i/8 of the clip) onto 4 video frames (instants j/4); rows sum to 1.
  m = clip_time.linear_resample_matrix(8, 1, 8, 4)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(m[0], [1, 0, 0, 0])  # The same instant as frame 0.
  np.testing.assert_allclose(m[1], [0.5, 0.5, 0, 0])
  np.testing.assert_allclose(m[2], [0, 1, 0, 0])
  np.testing.assert_allclose(m[7], [0, 0, 0, 1])  # After the last frame: clamped.
  # Equal grids are the identity: 4 steps of 2 audio frames onto 4 tokens of 2 frames each.
  np.testing.assert_allclose(clip_time.linear_resample_matrix(4, 2, 8, 4, 8), np.eye(4),
                             atol=1e-6)


def test_video_and_audio_share_one_clip_time_axis():
  """The clip-time codes of video tokens and audio steps at the same instant are equal."""
  # Runlocal geometry: T = 16 frames at 8 fps; Ta = 80 log-mel frames at 40 per second.
  t, ta, fps, rate = 16, 80, 8.0, 40.0
  seconds = t / fps
  # Video frame j is the picture at j / fps; the centred STFT puts mel frame k at k / rate.
  np.testing.assert_allclose(clip_time.clip_time_fractions(t, 1, t) * seconds,
                             np.arange(t) / fps, atol=1e-6)
  np.testing.assert_allclose(clip_time.clip_time_fractions(ta, 1, ta) * seconds,
                             np.arange(ta) / rate, atol=1e-6)
  code = clip_time.clip_time_encoding
  # Video frame j (VideoTokens of an unpooled scale) and the UNet's audio query at mel
  # frame 5j (stem stride 1, the full-size stem_patch) are one instant, one code.
  np.testing.assert_array_equal(code(t, 1, t), code(ta, 1, ta)[::5])
  # A scale pooled by 2 (token j: frames 2j and 2j+1, at (2j + 0.5) / fps) meets the stride-2
  # audio steps of the runlocal stem (step i: mel frames 2i and 2i+1) at i = 5j + 1.
  np.testing.assert_array_equal(code(t // 2, 2, t), code(ta // 2, 2, ta)[1::5])
  # The a2v denoiser's audio tokens: encoder step j pools mel frames 5j..5j+4 (centre 5j + 2).
  np.testing.assert_array_equal(code(t, ta / t, ta), code(ta, 1, ta)[2::5])
  # None is half a frame off: the code half a video frame later (62.5 ms) is another one.
  later = clip_time.sinusoidal_embedding(
      (np.arange(t) + 0.5).astype(np.float32) / t * np.float32(clip_time.CLIP_TIME_SCALE),
      clip_time.CLIP_TIME_DIM)
  assert np.abs(later - code(t, 1, t)).max(axis=1).min() > 0.5


def test_the_denoisers_place_their_tokens_on_the_clip_time_axis(monkeypatch):
  """Every clip-time code the UNet makes (video tokens and audio queries) is asked for on the
  grid of its own modality: video tokens pool frames of T = data.num_frames, audio steps pool
  mel frames of Ta = x.shape[1]."""
  calls = []
  encoding = clip_time.clip_time_encoding

  def recording(num_steps, stride, length):
    calls.append((num_steps, stride, length))
    return encoding(num_steps, stride, length)

  monkeypatch.setattr(clip_time, 'clip_time_encoding', recording)
  model = unet.build_unet(tiny_config(level_scales=(0, 1)))
  x, t, video = inputs(ta=80, f=16)
  jax.eval_shape(model.init, jax.random.key(0), x, t, video)
  frames = VIDEO_SHAPES[0][1]
  # Level 1 (the attention level and the middle block) attends to scale 1: 4 tokens of 2 of
  # the 8 frames; its queries are 20 steps of 2 * 2 (stem, downsample) mel frames of 80.
  assert sorted(set(calls)) == [(4, 2.0, frames), (20, 4, 80)]


def test_unpatchify_inverts_patchify():
  x = jnp.arange(2 * 4 * 6, dtype=jnp.float32).reshape(2, 4, 6, 1)
  patch = (2, 3)
  # layers.Patchify with an identity projection is the bare reshape that unpatchify undoes.
  identity = {'params': {'proj': {'kernel': jnp.eye(6), 'bias': jnp.zeros(6)}}}
  patches = layers.Patchify(6, patch).apply(identity, x)
  np.testing.assert_array_equal(unet_blocks.unpatchify(patches, patch), x[..., 0])


def test_label_oracle_changes_only_kept_conditions():
  """unet.label_condition: the labels move the conditional output, not a dropped example's
  or the unconditional model's, and are required beside a video condition."""
  model = unet.build_unet(tiny_config(label_condition=True, **RUN_LEVELS))
  x, t, video = inputs(video_shapes=RUN_VIDEO_SHAPES)
  labels = jnp.eye(K)[:B]
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, video, labels=labels))
  assert shapes['params']['label_proj']['kernel'].shape[0] == K
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, s.dtype), shapes)
  drop = jnp.array([False, True, False])
  apply = jax.jit(lambda lab: model.apply(params, x, t, video, drop_condition=drop, labels=lab))
  a, b = np.asarray(apply(labels)), np.asarray(apply(jnp.roll(labels, 1, axis=1)))
  changed = np.abs(a - b).max(axis=(1, 2))
  assert changed[0] > 1e-3 and changed[2] > 1e-3 and changed[1] == 0.0
  with pytest.raises(ValueError, match='needs labels'):
    model.apply(params, x, t, video)
  chex.assert_trees_all_close(model.apply(params, x, t, None),
                              model.apply(params, x, t, None, labels=labels))


def test_pixel_skip_adds_a_per_bin_gain_times_the_input(tiny):
  """unet.pixel_skip: the prediction plus g * x, g (B,F) projected from the embedding; zero
  at init, so a run starts from the model without it."""
  base_model, params, (x, t, video), _ = tiny
  base = np.asarray(jax.jit(base_model.apply)(params, x, t, video))
  model = unet.build_unet(tiny_config(pixel_skip=True, **RUN_LEVELS))
  init = jax.eval_shape(model.init, jax.random.key(0), x, t, video)['params']['pixel_skip']
  emb_dim = 4 * RUN_LEVELS['widths'][0]
  assert init['kernel'].shape == (emb_dim, F) and init['bias'].shape == (F,)
  rng = np.random.default_rng(1)
  apply = jax.jit(lambda skip: model.apply({'params': {**params['params'], 'pixel_skip': skip}},
                                           x, t, video))
  zero = {'kernel': jnp.zeros((emb_dim, F)), 'bias': jnp.zeros((F,))}
  np.testing.assert_allclose(apply(zero), base, rtol=1e-5, atol=1e-6)
  bias = jnp.asarray(rng.normal(size=F), jnp.float32)
  np.testing.assert_allclose(apply({**zero, 'bias': bias}) - base, bias * np.asarray(x),
                             rtol=1e-4, atol=1e-5)
  # With a kernel the gain follows each example's embedding (its t): one gain per example and
  # mel bin, the same at every time step.
  skip = {'kernel': jnp.asarray(rng.normal(size=(emb_dim, F)), jnp.float32), 'bias': bias}
  added, xs = np.asarray(apply(skip)) - base, np.asarray(x)
  gain = np.sum(added * xs, axis=1) / np.sum(xs * xs, axis=1)  # (B,F), least squares over time.
  np.testing.assert_allclose(added, gain[:, None, :] * xs, rtol=1e-4, atol=1e-5)
  assert np.abs(gain[0] - gain[1]).max() > 1e-3


def test_apply_in_chunks_is_the_same_function_and_gradient(tiny, monkeypatch):
  """Chunks of 2 of a batch of 3 (the last shorter), the condition dropped for one example:
  the same output and parameter gradient as one call; -1 resolves by the device."""
  model, params, (x, t, video), _ = tiny
  drop = jnp.array([False, True, False])

  def loss(p, chunk):
    out = unet.apply_in_chunks(functools.partial(model.apply, p), chunk, x, t, video,
                               drop_condition=drop, labels=None)
    return 0.5 * jnp.sum(out**2), out

  (whole, out1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, 0), has_aux=True))(params)
  (parts, out2), g2 = jax.jit(jax.value_and_grad(lambda p: loss(p, 2), has_aux=True))(params)
  np.testing.assert_allclose(out2, out1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(parts, whole, rtol=1e-5)
  # Each leaf against its own largest entry, or a thousandth of the tree's largest for a leaf
  # that is zero in exact arithmetic (a key bias: softmax ignores a shift of every key).
  largest = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g1))
  worst = max(float(jnp.max(jnp.abs(a - b))) / max(float(jnp.max(jnp.abs(b))), 1e-3 * largest)
              for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)))
  assert worst < 1e-4
  # The unconditional model (video None) goes through the same split.
  none = unet.apply_in_chunks(functools.partial(model.apply, params), 2, x, t, None)
  np.testing.assert_allclose(none, model.apply(params, x, t, None), rtol=1e-5, atol=1e-5)
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  assert unet.batch_chunk(-1) == unet.AUTO_CPU_CHUNK and unet.batch_chunk(0) == 0
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  assert unet.batch_chunk(-1) == 0 and unet.batch_chunk(4) == 4
