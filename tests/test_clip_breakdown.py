"""One clip's cost (issue 22): guided sampling makes one batched denoiser call per step, equal
to the two calls it replaces; the video encoder runs once per request; the stage breakdown
tool (tools/clip_breakdown.py) times the real inference path."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax.core import bidirectional
from gmscavp_jax.core import sampling
from gmscavp_jax.core import steps
from gmscavp_jax.diffusion import guidance as guidance_lib
from gmscavp_jax.models import unet
from gmscavp_jax.tools import clip_breakdown
from tests.conftest import tiny_config

B = 2


def _random_params(config, models, scale=0.05, seed=0):
  """Every parameter random (zero-initialised output layers too, so that the condition
  reaches the output), from the shapes alone: no compiled init."""
  shapes = jax.eval_shape(functools.partial(steps.init_params, config, models),
                          jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * scale, s.dtype), shapes)


def _frames(config, seed=0):
  d = config.data
  return jnp.asarray(np.random.default_rng(seed).integers(
      0, 256, (B, d.num_frames, d.image_size, d.image_size, 3)), jnp.uint8)


def _two_calls(monkeypatch):
  """From here on the samplers guide with two calls: a BatchedDenoiser's `single` alone."""
  guided = guidance_lib.guided_output
  monkeypatch.setattr(guidance_lib, 'guided_output', lambda fn, x, t, w, *interval: guided(
      getattr(fn, 'single', fn), x, t, w, *interval))


def test_batched_guidance_equals_two_unet_calls():
  """guided_output with a real UNet: one masked call at batch 2B equals uncond + w (cond -
  uncond) from two calls; w = 0 and 1 stay the single call, bit for bit."""
  config = tiny_config('msa_msd')
  model = unet.build_unet(config)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(B, steps.num_mel_frames(config), config.audio.n_mels)),
                  jnp.float32)
  t = jnp.asarray([3, 700], jnp.int32)
  video = [jnp.asarray(rng.normal(size=v.shape), jnp.float32)
           for v in steps.dummy_video_scales(config, B)]
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, video)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, s.dtype), shapes)

  def single(x, t, conditional):
    return model.apply(params, x, t, video if conditional else None)

  def masked(x, t, conditional):
    return model.apply(params, x, t, [jnp.concatenate([v, v]) for v in video],
                       drop_condition=~conditional)

  batched = guidance_lib.BatchedDenoiser(single, masked)
  guided = jax.jit(guidance_lib.guided_output, static_argnums=(0, 3))
  for w in (0.0, 1.0):
    np.testing.assert_array_equal(guided(batched, x, t, w), guided(single, x, t, w))
  one, two = guided(batched, x, t, 5.0), guided(single, x, t, 5.0)
  assert float(jnp.abs(two - guided(single, x, t, 1.0)).max()) > 1e-2  # Guidance shows.
  np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-5)


def test_sample_step_batched_guidance_equals_the_two_call_path(monkeypatch):
  """The whole sampling program (video scales tiled, drop mask): same log-mel as two calls."""
  config = tiny_config('msa_msd')
  models = steps.build_models(config)
  params, inputs = _random_params(config, models), {'frames': _frames(config)}
  run = lambda: np.asarray(jax.jit(functools.partial(
      sampling.sample_step, models=models, config=config, sampler='dpmpp2m', num_steps=3,
      guidance=3.0))(params, inputs, jax.random.key(4)))
  one = run()
  _two_calls(monkeypatch)
  np.testing.assert_allclose(one, run(), rtol=1e-5, atol=1e-5)


def test_a2v_sampling_batched_guidance_equals_the_two_call_path(monkeypatch):
  """The audio->video denoiser's guided sampling goes through one batched call too."""
  config = tiny_config('msa_msd', **{'train.bidirectional_interval': 2})
  models = steps.build_models(config)
  params = _random_params(config, models)
  wave = jnp.asarray(np.random.default_rng(2).normal(size=(
      B, int(config.data.num_frames / config.data.fps * config.audio.sample_rate))) * 0.1,
      jnp.float32)
  run = lambda: np.asarray(jax.jit(functools.partial(
      bidirectional.sample_frames, models=models, config=config, sampler='ddim', num_steps=2,
      guidance=3.0))(params, wave, jax.random.key(0)))
  one = run()
  _two_calls(monkeypatch)
  np.testing.assert_allclose(one, run(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('guidance,interval,calls', [(5.0, (), [2 * B]), (1.0, (), [B]),
                                                     (5.0, (1.0, float('inf')), [B, 2 * B])])
def test_the_video_encoder_runs_once_per_request(guidance, interval, calls):
  """Traced (no compile): one encoder call outside the sampler's loop, and one UNet call per
  step (at twice the batch when guided; with a guidance interval the step's lax.cond traces
  both, of which one runs)."""
  config = tiny_config('msa_msd')
  models = steps.build_models(config)
  params = jax.eval_shape(functools.partial(steps.init_params, config, models),
                          jax.random.key(0))
  frames = jax.ShapeDtypeStruct((B,) + _frames(config).shape[1:], jnp.uint8)
  counts = clip_breakdown.trace_counts(
      params, {'frames': frames}, jax.random.key(0), models=models, config=config,
      settings=dict(sampler='dpmpp2m', num_steps=4, guidance=guidance, eta=0.0,
                    guidance_interval=interval))
  assert counts == {'encoder_calls': 1, 'unet_calls_per_step': len(calls),
                    'unet_batch': calls, 'loops_taking_frames': 0}
  clip_breakdown.check({'trace': counts})

  # The loop check sees an encoder inside a loop: frames closed over by a scan's body.
  def per_step(frames):
    return jax.lax.scan(lambda c, _: (c + frames.astype(jnp.float32).mean(), None), 0.0,
                        jnp.arange(3))[0]
  jaxpr = jax.make_jaxpr(per_step)(frames)
  assert clip_breakdown._loops_taking(jaxpr.jaxpr, frames.shape, frames.dtype) == 1  # pylint: disable=protected-access


def test_breakdown_times_every_stage_of_one_clip(tmp_path):
  """The tool end to end at tiny size: every stage timed, the request too, files written."""
  config = tiny_config('msa_msd')
  result = clip_breakdown.breakdown(
      config, str(tmp_path), video=None, repeats=1, end_to_end=True,
      sampler_args=dict(sampler=None, num_steps=2, guidance=None, eta=None,
                        guidance_interval=(1.0, float('inf'))),
      vocoder='griffin_lim', evaluator_dir=str(tmp_path / 'evaluators'))
  clip_breakdown.check(result)
  assert set(result['stages']) == set(clip_breakdown.STAGES)
  for stage in result['stages'].values():
    assert 0 < stage['best_s'] <= stage['median_s'] and len(stage['runs_s']) == 1
  assert result['stages']['sampler']['compile_s'] > 0
  assert result['settings']['num_steps'] == 2 and result['settings']['vocoder'] == 'griffin_lim'
  # eval.guidance 5 at batch 1 where the noise level is above 1 (the first of the two steps):
  # one call of 2; the conditional model alone (one call of 1) at the last.
  assert result['trace']['unet_batch'] == [1, 2]
  assert result['settings']['denoiser_calls'] == 3
  assert result['end_to_end']['median_s'] > 0
  assert {'synthetic_clip.mp4', 'clip'} <= set(os.listdir(tmp_path))
  assert set(os.listdir(tmp_path / 'clip')) == {
      'synthetic_clip.wav', 'synthetic_clip.mp4', 'synthetic_clip_spectrogram.png'}
  json.dumps(result)
  text = clip_breakdown.table(result)
  assert all(f'| {s} |' in text for s in clip_breakdown.STAGES) and 'whole request' in text
