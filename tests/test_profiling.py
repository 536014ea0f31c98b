"""The profile reader: FLOPs from HLO shapes, op classification, and a real traced run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax.infra import perf
from gmscavp_jax.infra import profiling


def _matmul_and_conv(x, w, img, kernel):
  y = jnp.tanh(x @ w)
  z = jax.lax.conv_general_dilated(img, kernel, (1, 1), 'VALID',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y.sum() + z.sum()


def test_dot_and_conv_flops_from_shapes_match_xla_cost_analysis():
  args = (jnp.ones((64, 96)), jnp.ones((96, 80)), jnp.ones((2, 12, 10, 8)),
          jnp.ones((3, 3, 8, 16)))
  compiled = jax.jit(_matmul_and_conv).lower(*args).compile()
  instructions, _ = profiling.parse_hlo(compiled.as_text())
  flops = sum(profiling.matmul_flops(i, instructions) for i in instructions.values()
              if i.opcode in ('dot', 'convolution'))
  expected = 2 * 64 * 96 * 80 + 2 * (2 * 10 * 8 * 16) * (3 * 3 * 8)
  assert flops == expected
  # XLA also counts the elementwise and reduction FLOPs, a few percent here.
  np.testing.assert_allclose(flops, perf.compiled_flops(compiled), rtol=0.05)


def test_source_of_names_the_module_and_the_direction():
  assert (profiling.source_of('jit(train_step)/transpose(jvp(GMSCAVP))/GMSCAVP.embed_video/'
                              'video_encoder/stem/add') ==
          'bwd GMSCAVP.embed_video/video_encoder/stem')
  assert (profiling.source_of('jit(train_step)/jvp(UNet)/while/body/down0_block0/conv1/'
                              'conv_general_dilated') == 'fwd UNet/down0_block0/conv1')
  assert profiling.source_of('jit(f)/mul') == 'fwd mul'


def test_profile_of_a_traced_loop_counts_its_time_and_flops(tmp_path):
  m, k, n, trips = 128, 256, 192, 4
  w = jax.random.normal(jax.random.key(0), (k, k)) / 16
  proj = jax.random.normal(jax.random.key(1), (k, n))

  @jax.jit
  def f(x):
    x, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, length=trips)
    return x @ proj

  x = jnp.ones((m, k))
  compiled = f.lower(x).compile()
  result = profiling.profile(lambda: compiled(x), compiled.as_text(), num_steps=3,
                             peak_flops_per_sec=1e12, logdir=str(tmp_path))
  assert list(tmp_path.rglob('*.xplane.pb')), 'the trace stays on disk for TensorBoard'
  # The loop body's matmul counts once per trip.
  assert result.matmul_flops == 2 * m * k * k * trips + 2 * m * k * n
  assert result.by_category['matmul/conv'] > 0
  assert result.step_s > 0
  assert 0 < result.matmul_efficiency
  mfu = result.matmul_flops / (result.step_s * 1e12)
  assert result.matmul_time * result.matmul_efficiency == pytest.approx(mfu)
  report = result.report()
  assert 'MFU of the matmul FLOPs' in report and 'matmul/conv' in report


def test_weight_gradient_convolutions_are_told_apart():
  img, kernel = jnp.ones((2, 20, 16, 4)), jnp.ones((3, 3, 4, 8))

  def conv(img, kernel):
    return jax.lax.conv_general_dilated(img, kernel, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum()

  def convs_of(fn):
    instructions, _ = profiling.parse_hlo(jax.jit(fn).lower(img, kernel).compile().as_text())
    return [i for i in instructions.values() if i.opcode == 'convolution']

  forward = convs_of(conv)
  assert forward and not any(profiling.is_weight_grad(c) for c in forward)
  kernel_grad = convs_of(jax.grad(conv, argnums=1))
  assert kernel_grad and all(profiling.is_weight_grad(c) for c in kernel_grad)
