"""Which implementation of multi-head attention the UNets' attention blocks run.

- 'cudnn': cuDNN's fused (flash) attention, on an NVIDIA GPU (compute capability 8.0 or later)
  for 16-bit q, k, v of one dtype whose head dim it supports (a multiple of 8, at most 128)
  over more than one key (the unconditional model's single null key is left to XLA).
- 'chunked': on a CPU, where queries times keys exceed CHUNK_LOGITS: the queries in chunks of
  at most CHUNK_LOGITS / keys, one `lax.map` step each, heads first. XLA:CPU's one-shot
  attention writes the whole (heads, queries, keys) logits array to memory and reads it back
  through layout copies; a chunk's logits stay in cache. At full size the level-1
  self-attention (3200 positions) runs 3.8x faster (docs/speed.md); every row is computed as
  in XLA's, and equals it bit for bit in float32 on this CPU (tests/test_gpu_suite.py).
- 'xla': `jax.nn.dot_product_attention` with no `implementation` argument: everywhere else,
  which includes every attention of the `:runlocal` configs.

The choice is made at trace time from the arrays' dtypes and shapes and the default backend.
IMPLEMENTATION (a module attribute, from the environment variable GMSCAVP_ATTENTION when set)
overrides it: 'auto' (the rule above), or 'xla', 'chunked', 'cudnn' always ('cudnn' raises
where cuDNN cannot run).
"""

import math
import os

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'xla', 'chunked', 'cudnn')
# Queries x keys of one chunk's logits per head (1 MiB of float32): the fastest of 2^17-2^20
# for 3200 positions on this CPU (docs/speed.md).
CHUNK_LOGITS = 2 ** 18
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
  """'cudnn', 'chunked' or 'xla': what `attend(q, k, v)` runs.

  Args:
    q: queries (B,L,H,D); k, v: keys and values (B,S,H,D).
    backend: the jax backend ('cpu', 'gpu', 'tpu'); None: `jax.default_backend()`.
  """
  if IMPLEMENTATION not in IMPLEMENTATIONS:
    raise ValueError(f'GMSCAVP_ATTENTION (attention.IMPLEMENTATION) is {IMPLEMENTATION!r}; '
                     f'expected one of {IMPLEMENTATIONS}')
  if IMPLEMENTATION != 'auto':
    return IMPLEMENTATION
  backend = backend or jax.default_backend()
  head_dim = q.shape[-1]
  fits = (all(jnp.dtype(a.dtype) == jnp.dtype(q.dtype) for a in (k, v))
          and jnp.dtype(q.dtype) in _CUDNN_DTYPES
          and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
          and k.shape[1] > 1)  # One key (the null context): its value, nothing to fuse.
  if fits and _cudnn_capable_device(backend):
    return 'cudnn'
  return 'chunked' if backend == 'cpu' and q.shape[1] * k.shape[1] > CHUNK_LOGITS else 'xla'


def chunked(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`jax.nn.dot_product_attention(q, k, v)` with the queries in chunks: q (B,L,H,D) over k,
  v (B,S,H,D) -> (B,L,H,D); the logits in at least float32, as XLA's."""
  b, l, h, d = q.shape
  num_chunks = math.ceil(l / max(1, CHUNK_LOGITS // k.shape[1]))
  size = math.ceil(l / num_chunks)  # Even chunks; the last one padded with zero queries.
  q = jnp.pad(q, ((0, 0), (0, num_chunks * size - l), (0, 0), (0, 0)))
  q = q.reshape(b, num_chunks, size, h, d).transpose(1, 0, 3, 2, 4)  # (chunks,B,H,size,D)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B,H,S,D)
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)

  def one_chunk(q_chunk):
    logits = jnp.einsum('bhqd,bhkd->bhqk', q_chunk, k, preferred_element_type=logits_dtype)
    logits *= jnp.array(d ** -0.5, logits_dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum('bhqk,bhkd->bhqd', probs, v)

  out = jax.lax.map(one_chunk, q)  # (chunks,B,H,size,D)
  return out.transpose(1, 0, 3, 2, 4).reshape(b, num_chunks * size, h, d)[:, :l]


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Multi-head attention (B,L,H,D) of q (B,L,H,D) over k, v (B,S,H,D) (softmax(q k^T /
  sqrt(D)) v per head), with the implementation `implementation` picks."""
  choice = implementation(q, k, v)
  if choice == 'cudnn':
    return jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
  if choice == 'chunked':
    return chunked(q, k, v)
  return jax.nn.dot_product_attention(q, k, v)
