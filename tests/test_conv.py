"""models/conv.py: the 3x3 convolution with a choice of kernel gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmscavp_jax.models import conv


def _inputs(c=6, f=5):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 7, 5, c)), jnp.float32)
  return x, nn.Conv(f, (3, 3), name='c').init(jax.random.key(0), x)['params']


@pytest.mark.parametrize('weight_grad', ['xla', 'matmul'])
def test_forward_is_flax_conv_bit_for_bit_with_the_same_params(weight_grad):
  x, params = _inputs()
  expected = nn.Conv(5, (3, 3)).apply({'params': params}, x)
  got = conv.Conv3x3(5, weight_grad=weight_grad).apply({'params': params}, x)
  np.testing.assert_array_equal(got, expected)


def test_matmul_kernel_gradient_equals_xlas():
  x, params = _inputs()
  dy = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 5, 5)), jnp.float32)

  def grads(weight_grad):
    loss = lambda p, x: jnp.sum(conv.Conv3x3(5, weight_grad=weight_grad).apply(
        {'params': p}, x) * dy)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

  (p_xla, x_xla), (p_mm, x_mm) = grads('xla'), grads('matmul')
  np.testing.assert_array_equal(x_mm, x_xla)  # The input gradient is XLA's in both.
  np.testing.assert_allclose(p_mm['kernel'], p_xla['kernel'], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(p_mm['bias'], p_xla['bias'])
  assert float(jnp.abs(p_xla['kernel']).max()) > 1.0  # Not a vacuous comparison.


def test_auto_takes_the_matmul_on_cpu_for_wide_inputs_only():
  assert jax.default_backend() == 'cpu'
  assert conv.uses_matmul_grad('auto', conv.MATMUL_MIN_CHANNELS)
  assert not conv.uses_matmul_grad('auto', conv.MATMUL_MIN_CHANNELS - 1)
  assert conv.uses_matmul_grad('matmul', 8) and not conv.uses_matmul_grad('xla', 512)
  with pytest.raises(ValueError, match="weight_grad='fast'"):
    conv.uses_matmul_grad('fast', 8)
