"""Shapes and invariants of the encoders, the pyramid and the GMSCAVP module (tiny sizes)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from gmscavp_jax.models import encoders
from gmscavp_jax.models import gmscavp
from gmscavp_jax.models import pyramid

B, T, HW, TA, F = 2, 4, 16, 18, 32  # TA = 18 -> 9 -> 5 audio frames: not a multiple of T.
POOLS, GRIDS, D = (1, 2, 4), (2, 1, 1), 16


def tiny_config(mode='pool'):
  c = common.apply_variant(common.base_config(), 'runlocal')
  c.data.num_frames, c.data.image_size = T, HW
  c.model.video_patch = 4
  c.model.video_widths = (8, 16)
  c.model.audio_widths = (8, 16)
  c.model.num_groups = 4
  c.model.embed_dim = D
  c.model.scale_pools, c.model.scale_grids = POOLS, GRIDS
  c.model.pyramid = mode
  return c


def inputs(seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (B, T, HW, HW, 3), dtype=np.uint8)
  log_mel = rng.normal(size=(B, TA, F)).astype(np.float32) * 3.0 - 5.0
  return jnp.asarray(frames), jnp.asarray(log_mel)


def _key():
  # rbg keys compile ~3x faster than threefry for init on CPU; values do not matter here.
  return jax.random.key(0, impl='unsafe_rbg')


@pytest.fixture(scope='module')
def model_and_vars():
  model = gmscavp.build_model(tiny_config())
  frames, log_mel = inputs()
  return model, jax.jit(model.init)(_key(), frames, log_mel)


def test_frames_to_float():
  frames = jnp.array([0, 51, 255], jnp.uint8)
  np.testing.assert_allclose(encoders.frames_to_float(frames), [-1.0, -0.6, 1.0], atol=1e-6)
  np.testing.assert_allclose(encoders.frames_to_float(frames.astype(jnp.float32) / 255.0),
                             [-1.0, -0.6, 1.0], atol=1e-6)


@pytest.mark.parametrize('dtype', [jnp.uint8, jnp.float32])
def test_video_encoder_shape(dtype):
  enc = encoders.VideoEncoder(patch=4, widths=(8, 16), blocks_per_stage=1, num_groups=4)
  frames = jax.ShapeDtypeStruct((B, T, HW, HW, 3), dtype)
  params = jax.eval_shape(enc.init, _key(), frames)
  out = jax.eval_shape(enc.apply, params, frames)
  assert out.shape == (B, T, HW // 8, HW // 8, 16) and out.dtype == jnp.float32


@pytest.mark.parametrize('stem', ['patchify', 'conv'])
def test_video_stems_give_the_same_grid(stem):
  enc = encoders.VideoEncoder(patch=4, widths=(8, 16), blocks_per_stage=1, num_groups=4,
                              stem=stem)
  frames = jax.ShapeDtypeStruct((B, T, HW, HW, 3), jnp.uint8)
  out = jax.eval_shape(enc.apply, jax.eval_shape(enc.init, _key(), frames), frames)
  assert out.shape == (B, T, HW // 8, HW // 8, 16)


def test_conv_stem_is_a_stride_2_conv_over_the_half_patchify():
  """The im2col conv equals lax's 3x3 stride-2 conv with one pixel of zero padding."""
  stem = encoders.ConvStem(features=5, patch=4)
  x = jax.random.normal(jax.random.key(1), (2, 3, 16, 16, 3))
  params = stem.init(_key(), x)
  got = stem.apply(params, x)
  p = params['params']
  h = jax.nn.gelu(_half_patchify(p['patchify']['proj'], x))
  kernel = p['conv']['kernel'].reshape(3, 3, h.shape[-1], 5)
  want = jax.lax.conv_general_dilated(
      h.reshape((-1,) + h.shape[2:]), kernel, (2, 2), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + p['conv']['bias']
  np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-4)
  chex.assert_shape(got, (2, 3, 4, 4, 5))


def _half_patchify(proj, x):
  """The 2x2 patchify of x (B,T,H,W,C) with the stem's own Dense params."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, t, h // 2, w // 2, 4 * c) @ proj['kernel'] + proj['bias']


@pytest.mark.parametrize('ta', [TA, 16, 3])
def test_audio_encoder_resamples_time_to_num_frames(ta):
  enc = encoders.AudioEncoder(widths=(8, 16), blocks_per_stage=1, num_groups=4, num_frames=T)
  log_mel = jax.ShapeDtypeStruct((B, ta, F), jnp.float32)
  params = jax.eval_shape(enc.init, _key(), log_mel)
  assert jax.eval_shape(enc.apply, params, log_mel).shape == (B, T, 16)


def test_resample_time_pools_when_divisible():
  x = jnp.arange(2 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 3)
  np.testing.assert_allclose(encoders.resample_time(x, 4), (x[:, 0::2] + x[:, 1::2]) / 2)
  chex.assert_shape(encoders.resample_time(x, 3), (2, 3, 3))
  chex.assert_shape(encoders.resample_time(x, 12), (2, 12, 3))


@pytest.mark.parametrize('mode', ['pool', 'conv'])
def test_pyramid_shapes(mode):
  pyr = pyramid.Pyramid(embed_dim=D, scale_pools=POOLS, scale_grids=GRIDS, mode=mode)
  video = jax.ShapeDtypeStruct((B, T, 4, 4, 8), jnp.float32)
  audio = jax.ShapeDtypeStruct((B, T, 12), jnp.float32)
  params = jax.eval_shape(pyr.init, _key(), video, audio)
  vs, as_ = jax.eval_shape(pyr.apply, params, video, audio)
  assert len(vs) == len(as_) == len(POOLS)
  for p, g, v, a in zip(POOLS, GRIDS, vs, as_):
    assert v.shape == (B, T // p, g * g, D) and a.shape == (B, T // p, 1, D)
  with pytest.raises(ValueError):
    jax.eval_shape(pyr.init, _key(), jnp.ones((B, 6, 4, 4, 8)), jnp.ones((B, 6, 12)))


def test_adaptive_avg_pool_2d_bins():
  x = jnp.arange(5 * 5, dtype=jnp.float32).reshape(1, 1, 5, 5, 1)
  y = pyramid.adaptive_avg_pool_2d(x, 2)
  # PyTorch bins for 5 -> 2: [0, 3) and [2, 5).
  np.testing.assert_allclose(y[0, 0, :, 0], [x[0, 0, :3, :3].mean(), x[0, 0, :3, 2:].mean(),
                                             x[0, 0, 2:, :3].mean(), x[0, 0, 2:, 2:].mean()],
                             rtol=1e-6)  # Sums in another order; a wrong bin is off by >= 1.


def test_gmscavp_outputs(model_and_vars):
  model, variables = model_and_vars
  frames, log_mel = inputs(1)
  out = jax.jit(model.apply)(variables, frames, log_mel)
  assert set(out) == {'video', 'video_features', 'audio', 'temperature'}
  # The per-frame features the pyramid pooled (the contrastive diffusion loss's negatives).
  assert out['video_features'].shape[:2] == (B, T) and out['video_features'].ndim == 5
  for p, g, v, a in zip(POOLS, GRIDS, out['video'], out['audio']):
    chex.assert_shape(v, (B, T // p, g * g, D))
    chex.assert_shape(a, (B, T // p, 1, D))
    chex.assert_type([v, a], jnp.float32)
  np.testing.assert_allclose(out['temperature'], [0.07] * len(POOLS), rtol=1e-6)
  # Each modality alone gives exactly what the joint call gives (retrieval relies on it).
  apply = jax.jit(model.apply, static_argnames='method')
  vs = apply(variables, frames, method=gmscavp.GMSCAVP.embed_video)
  as_ = apply(variables, log_mel, method=gmscavp.GMSCAVP.embed_audio)
  chex.assert_trees_all_close(vs, out['video'], atol=1e-6)
  chex.assert_trees_all_close(as_, out['audio'], atol=1e-6)
  chex.assert_tree_all_finite(out)
  # Float frames in [0, 1] are the same images as uint8 frames.
  vs_float = apply(variables, frames.astype(jnp.float32) / 255.0,
                   method=gmscavp.GMSCAVP.embed_video)
  chex.assert_trees_all_close(vs_float, vs, atol=1e-4)


def test_temperatures_are_clipped_and_stop_gradient_at_bounds(model_and_vars):
  model, variables = model_and_vars
  log_t = jnp.log(jnp.array([1e-4, 0.07, 50.0]))

  def temps(log_t):
    params = dict(variables['params'], log_temperature=log_t)
    return model.apply({'params': params}, method=gmscavp.GMSCAVP.temperatures)

  np.testing.assert_allclose(temps(log_t), [0.01, 0.07, 1.0], rtol=1e-5)
  grad = jax.grad(lambda x: temps(x).sum())(log_t)
  np.testing.assert_allclose(grad, [0.0, 0.07, 0.0], rtol=1e-5)


def test_retrieval_embedding():
  rng = np.random.default_rng(0)
  scales = [jnp.asarray(rng.normal(size=(3, T // p, g * g, D)), jnp.float32)
            for p, g in zip(POOLS, GRIDS)]
  e = pyramid.retrieval_embedding(scales, pooling='clip')
  chex.assert_shape(e, (3, len(POOLS) * D))
  np.testing.assert_allclose(jnp.linalg.norm(e, axis=-1), 1.0, rtol=1e-5)
  e1 = pyramid.retrieval_embedding(scales, scale_index=1, pooling='clip')
  chex.assert_shape(e1, (3, D))
  mean1 = np.asarray(scales[1]).mean(axis=(1, 2))
  np.testing.assert_allclose(e1, mean1 / np.linalg.norm(mean1, axis=-1, keepdims=True),
                             rtol=1e-5)
  # The concatenation holds every scale's unit vector, scaled by 1/sqrt(L).
  np.testing.assert_allclose(e[:, D:2 * D] * math.sqrt(len(POOLS)), e1, rtol=1e-5)


def test_segment_retrieval_scores_time_aligned_segments():
  """pooling 'segments': a dot product of two embeddings is the mean over scales of the mean
  over time of the cosines of time-aligned segments (each the mean over space)."""
  rng = np.random.default_rng(1)
  make = lambda: [jnp.asarray(rng.normal(size=(3, T // p, g * g, D)), jnp.float32)
                  for p, g in zip(POOLS, GRIDS)]
  video, audio = make(), make()
  ev, ea = (pyramid.retrieval_embedding(x) for x in (video, audio))
  chex.assert_shape(ev, (3, sum(T // p for p in POOLS) * D))
  np.testing.assert_allclose(jnp.linalg.norm(ev, axis=-1), 1.0, rtol=1e-5)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  want = np.mean([np.einsum('itd,jtd->ijt', unit(np.asarray(v).mean(2)),
                            unit(np.asarray(a).mean(2))).mean(-1)
                  for v, a in zip(video, audio)], axis=0)
  np.testing.assert_allclose(ev @ ea.T, want, rtol=1e-5, atol=1e-6)
  # Timing counts: the same segments in another order score lower than in their own.
  rolled = [jnp.roll(v, 1, axis=1) for v in video]
  er = pyramid.retrieval_embedding(rolled)
  assert float(ev[0] @ ev[0]) > float(er[0] @ ev[0])
  # One segment (T_l = 1): the same as the clip mean.
  coarse = [jnp.asarray(rng.normal(size=(3, 1, 4, D)), jnp.float32)]
  np.testing.assert_allclose(pyramid.retrieval_embedding(coarse),
                             pyramid.retrieval_embedding(coarse, pooling='clip'), rtol=1e-6)
  with pytest.raises(ValueError, match='pooling'):
    pyramid.retrieval_embedding(coarse, pooling='frames')


def test_build_model_full_and_runlocal_sizes_and_bf16():
  """Shape-only checks (eval_shape: nothing is compiled) at the configs' real sizes."""
  for variant in ('', 'runlocal'):
    c = common.apply_variant(common.base_config(), variant)
    t, s = c.data.num_frames, c.data.image_size
    ta = int(t / c.data.fps * c.audio.sample_rate) // c.audio.hop_length
    frames = jax.ShapeDtypeStruct((2, t, s, s, 3), jnp.uint8)
    log_mel = jax.ShapeDtypeStruct((2, ta, c.audio.n_mels), jnp.float32)
    model = gmscavp.build_model(c, dtype=jnp.bfloat16)
    variables = jax.eval_shape(model.init, _key(), frames, log_mel)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    out = jax.eval_shape(model.apply, variables, frames, log_mel)
    for p, g, v, a in zip(c.model.scale_pools, c.model.scale_grids, out['video'],
                          out['audio']):
      assert v.shape == (2, t // p, g * g, c.model.embed_dim) and v.dtype == jnp.float32
      assert a.shape == (2, t // p, 1, c.model.embed_dim) and a.dtype == jnp.float32
    assert out['video'][-1].shape[1] == 1  # The coarsest scale is clip level.


@pytest.mark.parametrize('policy', ['full', 'save_dots'])
def test_remat_keeps_param_names_and_gradients(policy):
  def encoder(remat):
    return encoders.AudioEncoder(widths=(8, 16), blocks_per_stage=1, num_groups=4,
                                 num_frames=T, remat=remat)
  log_mel = jax.random.normal(_key(), (B, 16, F))
  params = encoder('none').init(_key(), log_mel)
  # Same names: checkpoints load across the switch.
  assert jax.tree.structure(encoder(policy).init(_key(), log_mel)) == jax.tree.structure(params)

  def grads(remat):
    return jax.grad(lambda p: jnp.sum(encoder(remat).apply(p, log_mel) ** 2))(params)

  chex.assert_trees_all_close(grads(policy), grads('none'), rtol=1e-5, atol=1e-6)
