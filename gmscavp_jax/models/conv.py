"""A 3x3 'SAME' convolution whose kernel gradient can be one matmul instead of XLA's.

XLA:CPU computes the kernel gradient of a convolution (the "weight gradient") with its own
convolution kernel, which at the full-size UNet's widths (128-384 channels over 1000x32
log-mel grids) runs 1.3-2x slower than writing it as a matmul of the im2col patches with
the output gradient (measured per op, docs/speed.md "Convolution weight gradients"); at
:runlocal widths (<= 64 channels) XLA's own is as fast or faster. So the forward pass and
the input gradient stay XLA's convolution, and only the kernel gradient is chosen:
'xla', 'matmul', or 'auto' (the matmul on a CPU for >= MATMUL_MIN_CHANNELS input channels,
XLA's elsewhere: a GPU's or TPU's convolution gradients are their own fast kernels).

Parameters are those of flax's nn.Conv ('kernel' (3,3,C,F), 'bias' (F,)), so checkpoints
and the forward values are the same with either choice.
"""

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

WEIGHT_GRADS = ('auto', 'xla', 'matmul')
MATMUL_MIN_CHANNELS = 128
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=_DIMS)


def _patches(x: jnp.ndarray, k: int) -> jnp.ndarray:
  """(B,H,W,C) -> (B*H*W, k*k*C): the zero-padded k x k neighbourhood of every pixel, in
  the (row, column, channel) order of an HWIO kernel reshaped to (k*k*C, F)."""
  b, h, w, c = x.shape
  lo = (k - 1) // 2
  xp = jnp.pad(x, [(0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)])
  cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(k) for j in range(k)], -1)
  return cols.reshape(b * h * w, k * k * c)


@jax.custom_vjp
def conv_matmul_grad(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """XLA's 'SAME' convolution (B,H,W,C) x (k,k,C,F) -> (B,H,W,F); its kernel gradient is
  patches^T @ dy, one (k*k*C, B*H*W) x (B*H*W, F) matmul."""
  return _conv(x, kernel)


def _forward(x, kernel):
  return _conv(x, kernel), (x, kernel)


def _backward(residuals, dy):
  x, kernel = residuals
  _, input_grad = jax.vjp(lambda x_: _conv(x_, kernel), x)
  k, _, c, f = kernel.shape
  dk = jnp.dot(_patches(x, k).T, dy.reshape(-1, f)).reshape(k, k, c, f)
  return input_grad(dy)[0], dk.astype(kernel.dtype)


conv_matmul_grad.defvjp(_forward, _backward)


def uses_matmul_grad(weight_grad: str, in_channels: int) -> bool:
  """Whether a convolution with `in_channels` inputs takes the matmul kernel gradient."""
  if weight_grad not in WEIGHT_GRADS:
    raise ValueError(f'weight_grad={weight_grad!r}: expected one of {WEIGHT_GRADS}')
  if weight_grad == 'auto':
    return jax.default_backend() == 'cpu' and in_channels >= MATMUL_MIN_CHANNELS
  return weight_grad == 'matmul'


class Conv3x3(nn.Module):
  """nn.Conv(features, (3, 3), padding='SAME') on (B,H,W,C), with the kernel gradient of
  `weight_grad` (module docstring). Parameters float32, computed in `dtype`."""
  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  weight_grad: str = 'auto'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    chex.assert_rank(x, 4)
    c = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (3, 3, c, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    conv = conv_matmul_grad if uses_matmul_grad(self.weight_grad, c) else _conv
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)
