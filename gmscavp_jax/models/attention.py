"""Which implementation `jax.nn.dot_product_attention` runs in the UNets' attention blocks.

cuDNN's fused (flash) attention on an NVIDIA GPU (compute capability 8.0 or later) for 16-bit
q, k, v of one dtype whose head dim it supports (a multiple of 8, at most 128) over more
than one key (the unconditional model's single null key is left to XLA); XLA's
everywhere else, CPU included, through the very call the blocks made before (no
`implementation` argument), so CPU and float32 results are unchanged bit for bit. The choice is
made at trace time from the arrays' dtypes and shapes and the default backend.

IMPLEMENTATION (a module attribute, from the environment variable GMSCAVP_ATTENTION when set)
overrides it: 'auto' (the rule above), 'xla' (never cuDNN, e.g. to compare against it or
around a cuDNN that refuses a shape) or 'cudnn' (always; raises where cuDNN cannot run).
"""

import os

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn')
IMPLEMENTATION = os.environ.get('GMSCAVP_ATTENTION', 'auto')
# Head dims cuDNN's flash attention takes on every GPU it supports (256 on Hopper and later).
CUDNN_MAX_HEAD_DIM = 128
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _cudnn_capable_device(backend: str) -> bool:
  """Whether the default backend is a CUDA GPU of compute capability 8.0 or later."""
  if backend != 'gpu':
    return False
  capability = getattr(jax.devices()[0], 'compute_capability', None)  # CUDA devices only.
  try:
    return capability is not None and float(capability) >= 8.0
  except ValueError:
    return False


def implementation(q: jax.Array, k: jax.Array, v: jax.Array,
                   backend: str | None = None) -> str:
  """'cudnn' or 'xla': what `attend(q, k, v)` runs.

  Args:
    q: queries (B,L,H,D); k, v: keys and values (B,S,H,D).
    backend: the jax backend ('cpu', 'gpu', 'tpu'); None: `jax.default_backend()`.
  """
  if IMPLEMENTATION not in IMPLEMENTATIONS:
    raise ValueError(f'GMSCAVP_ATTENTION (attention.IMPLEMENTATION) is {IMPLEMENTATION!r}; '
                     f'expected one of {IMPLEMENTATIONS}')
  if IMPLEMENTATION != 'auto':
    return IMPLEMENTATION
  head_dim = q.shape[-1]
  fits = (all(jnp.dtype(a.dtype) == jnp.dtype(q.dtype) for a in (k, v))
          and jnp.dtype(q.dtype) in _CUDNN_DTYPES
          and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
          and k.shape[1] > 1)  # One key (the null context): its value, nothing to fuse.
  return 'cudnn' if fits and _cudnn_capable_device(backend or jax.default_backend()) else 'xla'


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Multi-head attention (B,L,H,D) of q (B,L,H,D) over k, v (B,S,H,D) (softmax(q k^T /
  sqrt(D)) v per head), with the implementation `implementation` picks."""
  if implementation(q, k, v) == 'cudnn':
    return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
  return jax.nn.dot_product_attention(q, k, v)
